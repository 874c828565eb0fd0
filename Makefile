# One command runs the demo (`make demo`), one runs the tests (`make test`).
# Both create .venv/ and install the project on first use.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: install demo test lint model kafka-start kafka-stop soak bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(BIN)/fusionstream demo

test: install
	scripts/test.sh

# The soak test at full length (10 minutes of live streams; `make test` runs it for 2). Its figures
# (memory, lag, windows lost) are printed as a JSON line and kept in $(SOAK_ARTIFACTS)/soak.json.
SOAK_SECONDS ?= 600
SOAK_ARTIFACTS ?= .cache/soak
soak: install
	FUSIONSTREAM_SOAK_SECONDS=$(SOAK_SECONDS) FUSIONSTREAM_ARTIFACTS=$(SOAK_ARTIFACTS) \
		scripts/test.sh -m soak -s tests/consumers/test_soak.py

# Every stage side by side (engine, pipeline, Kafka service, naive baseline), the most live
# streams the service sustains through the broker, and its latency at half that load: about five minutes.
bench: install
	scripts/bench.sh $(BENCH_ARGS)

lint: install
	$(BIN)/ruff check fusionstream stream engines consumers tests scripts

kafka-start:
	scripts/kafka.sh start

kafka-stop:
	scripts/kafka.sh stop

# Retrains the shipped model and the fusion-head comparison (about 50 minutes on 2 cores):
# 8 epochs from scratch, then a fine-tune of the encoders on freshly rendered data, both on
# augmented streams (docs/training.md#augmentation); then its int8 encoders and its evaluation.
model: install
	$(BIN)/fusionstream train .cache/model-stage1 --fusion decision --train-seconds 9600 --cache .cache/windows
	$(BIN)/fusionstream train engines/models/default --init .cache/model-stage1 --epochs 5 --seed 1 \
		--compare docs/fusion-heads.md --cache .cache/windows
	$(BIN)/fusionstream quantize engines/models/default
	$(BIN)/fusionstream evaluate engines/models/default --cache .cache/windows

clean:
	rm -rf $(VENV) docker/kafka/target .kafka
