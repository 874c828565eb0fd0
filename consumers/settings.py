"""One typed settings object for every command (docs/settings.md).

Precedence, lowest first: defaults < a TOML file (``--config``) < environment
variables ``FUSIONSTREAM_<FIELD>`` < command-line flags. Secrets are ``SecretStr``
so they never appear in logs or ``repr``. docs/settings.md lists every field.
"""

from __future__ import annotations

import re
from contextvars import ContextVar
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from fusionstream.stream.errors import FusionStreamError
from fusionstream.stream.records import Modality
from fusionstream.stream.windows import WindowConfig
from fusionstream.units import MS

if TYPE_CHECKING:
    from fusionstream.engines.manifest import Manifest
    from fusionstream.engines.spec import ModelSpec

_CONFIG_FILE: ContextVar[Path | None] = ContextVar("fusionstream_config_file", default=None)


def default_model_dir() -> Path:
    """The model shipped inside the package."""
    return Path(__file__).resolve().parent.parent / "engines" / "models" / "default"


#: Frames per window and sample rate of windows for a model without video or audio (any would do: its
#: records of that modality are not aligned).
_NO_VIDEO_FRAMES = WindowConfig().frames_per_window
_NO_AUDIO_RATE = WindowConfig().sample_rate


def model_geometry(spec: ModelSpec | Manifest) -> tuple[int, int]:
    """``(frames per window, sample rate)`` the aligner needs for this model."""
    from fusionstream.engines.manifest import AudioPreprocess, Manifest, VideoPreprocess

    if not isinstance(spec, Manifest):
        return spec.frames_per_window, spec.sample_rate
    frames, rate = _NO_VIDEO_FRAMES, _NO_AUDIO_RATE
    for modality in spec.modalities.values():
        if isinstance(modality.preprocess, VideoPreprocess):
            frames = modality.preprocess.frames
        elif isinstance(modality.preprocess, AudioPreprocess):
            rate = modality.preprocess.sample_rate
    return frames, rate


class SettingsFileError(FusionStreamError, ValueError):
    """A ``--config`` file that cannot be read as TOML (one line: the file, the line and column)."""


class ModelWindowMismatch(FusionStreamError):
    """``window_ms``/``hop_ms`` disagree with the windows the model was trained on (``model.json``)."""


#: What the broker takes as a topic's name (Kafka's Topic.validate).
_TOPIC = re.compile(r"[a-zA-Z0-9._-]{1,249}")
_TOPICS = ("video_topic", "audio_topic", "text_topic", "predictions_topic", "deadletter_topic")
_CUDA_DEVICE = re.compile(r"cuda(:\d+)?")


class Settings(BaseSettings):
    """Every knob of fusionstream; see docs/settings.md."""

    # An empty variable (`FUSIONSTREAM_TEXT_WAIT_MS=`, as compose files write an unset one) means the default.
    # allow_inf_nan off: `inf` from the environment or a file passed every range check (>= 0 holds) and ended in
    # an OverflowError traceback, or a broker_wait_s that never ran out.
    model_config = SettingsConfigDict(env_prefix="FUSIONSTREAM_", frozen=True, extra="forbid", env_ignore_empty=True,
                                      allow_inf_nan=False)

    # Kafka
    bootstrap_servers: str = Field("localhost:9092", description="Kafka bootstrap servers, comma-separated.")
    video_topic: str = Field("fs.video", description="Input topic of video frames.")
    audio_topic: str = Field("fs.audio", description="Input topic of audio chunks.")
    text_topic: str = Field("fs.text", description="Input topic of transcript segments.")
    predictions_topic: str = Field("fs.predictions", description="Output topic: one prediction per window.")
    deadletter_topic: str = Field("fs.deadletter", description="Where undecodable and late records go, with a reason.")
    partitions: int = Field(4, ge=1, description="Partitions when fusionstream creates the topics (all three equal).")
    group_id: str = Field("fusionstream", description="Consumer group of the inference service.")
    client_id: str = Field("fusionstream", description="Kafka client id prefix.")
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = Field(
        "PLAINTEXT", description="Kafka security protocol (any case)."
    )
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = Field(
        None, description="SASL mechanism, any case (needs sasl_username and sasl_password)."
    )
    sasl_username: str | None = Field(None, description="SASL user name.")
    sasl_password: SecretStr | None = Field(None, description="SASL password; a secret, never printed.")
    ssl_cafile: Path | None = Field(None, description="CA bundle (PEM) for TLS to the brokers; unset: the system's.")
    ssl_certfile: Path | None = Field(
        None, description="This client's certificate (PEM, its chain after it; the key too unless ssl_keyfile), for "
        "a broker that asks for one (ssl.client.auth=required: mutual TLS).",
    )
    ssl_keyfile: Path | None = Field(None, description="The private key of ssl_certfile (PEM, unencrypted).")
    exactly_once: bool = Field(False, description="Publish predictions and commit offsets in one Kafka transaction.")
    broker_wait_s: float = Field(
        60.0, ge=0,
        description="serve and view: how long to keep trying to reach the broker at start (backoff 0.5 s doubling "
        "to 5 s) before exiting with status 1.",
    )
    produce_hold_s: float = Field(
        300.0, ge=40,
        description="produce: how long records wait for a broker that is away (restarting, no partition leader) "
        "before produce gives up with status 1; they are sent in order once it is back.",
    )
    create_topics: bool = Field(
        True, description="serve and produce: create missing topics at start; off: they must exist (a missing one is "
        "an error)."
    )

    # Model
    model_dir: Path = Field(default_factory=default_model_dir, description="Model directory (ONNX files + model.json).")
    backend: str = Field("onnxruntime", description="Inference backend: onnxruntime, torch or tensorrt (any name "
                         "registered in fusionstream.engines.backends.BACKENDS).")
    device: str = Field("cpu", description="Device for the torch backend: cpu, cuda or cuda:N (a GPU's index).")
    threads: int = Field(
        0, ge=0, description="Intra-op threads for ONNX Runtime / torch (0 = auto: one per core but one where a "
        "pipeline runs beside the engine, as in serve and demo, so its Python thread keeps a core; every core for "
        "the engine alone).",
    )
    precision: Literal["auto", "fp32", "fp16", "int8"] = Field(
        "auto",
        description="auto = the backend's default (fp16 for tensorrt, else fp32); int8 runs the int8 encoders "
        "of `fusionstream quantize` (onnxruntime); fp16 is for GPUs (tensorrt, torch on cuda).",
    )
    cuda_graphs: bool = Field(True, description="torch on CUDA: capture each graph per batch size and replay it.")
    engine_cache: Path | None = Field(
        None, description="Where the tensorrt backend keeps its engines (default ~/.cache/fusionstream/tensorrt)."
    )

    # Windows (docs/architecture.md#alignment)
    window_ms: int = Field(
        1000, gt=0,
        description="Window length W. Unset, the model's (model.json); set, it must equal the model's: serve "
        "refuses to start otherwise. 1000 only for a model that declares none.",
    )
    hop_ms: int = Field(
        500, gt=0,
        description="Hop H between window starts (H = W: tumbling). Unset, the model's where model.json declares "
        "one; set, it must equal it.",
    )
    lateness_ms: int = Field(200, ge=0, description="How long the watermark waits behind the slowest modality.")
    max_skew_ms: int = Field(2000, ge=0, description="A modality this far behind the newest is not waited for.")
    max_future_ms: int = Field(
        3_600_000, ge=1000,
        description="How far past the service's wall clock a record's event time may be; a record beyond it is "
        "dead-lettered as future (taken, it would move its stream's watermark there and make every record after "
        "it late).",
    )
    text_wait_ms: int | Literal["auto", "off"] = Field(
        "auto",
        description="The transcript's wait budget: a window waits for its text until the newest modality is this far "
        "past the window's end, no longer. auto: each stream learns it from how late its words arrive "
        "(docs/predictions.md#revisions); off: text more than max_skew_ms behind, or silent for "
        "idle_timeout_ms, is not waited for at all.",
    )
    revisions: bool = Field(
        False,
        description="Early predictions with revisions: a provisional prediction when video and audio are complete, "
        "the final when the text is (docs/predictions.md#revisions).",
    )
    stagger_windows: bool = Field(
        True,
        description="Offset each stream's window starts from the hop grid by a fixed amount from its id, so many "
        "streams' windows do not all close at once (docs/architecture.md#staggered-windows); false: every window "
        "starts at a multiple of the hop.",
    )
    idle_timeout_ms: int = Field(
        2000, ge=0, description="Processing time after which a silent modality/stream stops holding windows open "
        "(text with a text_wait_ms budget, set or learned, is held to it instead)."
    )
    evict_after_s: float = Field(
        30.0, gt=0, description="Processing time after which a silent stream's state is dropped."
    )

    # Pipeline
    max_batch: int = Field(32, ge=1, description="Largest inference batch (windows across streams).")
    max_delay_ms: float = Field(2.0, ge=0, description="Longest a closed window waits for its batch to fill.")
    queue_windows: int = Field(256, ge=1, description="Closed windows buffered before intake pauses (backpressure).")
    # One is enough: OpenCV releases the GIL while it decodes, and a second thread running the
    # Python half of intake only contends for the GIL (about a quarter more intake CPU on 2 cores).
    decode_workers: int = Field(1, ge=1, description="Threads decoding JPEG/PCM off the event loop.")
    speculate: bool = Field(
        True, description="Encode open windows ahead while the engine is idle: whole windows whose media is complete "
        "while they wait out the lateness, and with revisions on each frame as soon as the video passes it."
    )

    # Processes (docs/operations.md#workers)
    workers: int | Literal["auto"] = Field(
        1,
        description="serve: service processes on this host, supervised (restarted when one dies) and sharing "
        "/metrics and /healthz; auto = one per 2 cores up to the partition count (4 at most on a GPU). 1 = one "
        "process, no supervisor.",
    )

    # Observability
    metrics_port: int = Field(9108, ge=0, le=65535, description="Prometheus /metrics and /healthz port (0 = off).")
    metrics_host: str = Field("0.0.0.0", description="Address /metrics and /healthz listen on: every interface "
                              "(0.0.0.0, for a Prometheus elsewhere), or 127.0.0.1 for this host only.")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = Field(
        "INFO", description="Logging level: DEBUG, INFO, WARNING, ERROR or CRITICAL (any case).")

    @field_validator("log_level", "security_protocol", "sasl_mechanism", mode="before")
    @classmethod
    def _name_in_any_case(cls, name: object) -> object:
        # Java clients' configs and Kafka's docs write these in any case (`sasl_ssl`, `scram-sha-512`).
        return name.strip().upper() if isinstance(name, str) else name

    @field_validator("backend", "precision", "device", mode="before")
    @classmethod
    def _lower_name(cls, name: object) -> object:
        return name.strip().lower() if isinstance(name, str) else name  # INT8 and ONNXRUNTIME, as EXACTLY_ONCE=YES

    @field_validator("device")
    @classmethod
    def _torch_device(cls, device: str) -> str:
        # torch's own refusal of "tpu" was a 54-line traceback at the first window.
        if device != "cpu" and not _CUDA_DEVICE.fullmatch(device):
            raise ValueError(f"device must be cpu, cuda or cuda:N (a GPU's index), not {device!r}")
        return device

    @field_validator("video_topic", "audio_topic", "text_topic", "predictions_topic", "deadletter_topic")
    @classmethod
    def _topic_name(cls, topic: str) -> str:
        # The broker's own rule; an empty name went as far as "missing topic(s): ; create them ...".
        if not _TOPIC.fullmatch(topic):
            raise ValueError(f"{topic!r} is not a Kafka topic name (1 to 249 of the letters, digits, '.', '_', '-')")
        return topic

    @field_validator("group_id")
    @classmethod
    def _group_named(cls, group: str) -> str:
        if not group.strip():
            raise ValueError("group_id must not be empty (the broker refuses it: InvalidGroupIdError)")
        return group

    @field_validator("bootstrap_servers")
    @classmethod
    def _host_port_list(cls, servers: str) -> str:
        # aiokafka raises a bare ValueError deep in its connect (a traceback) on "host:abc"; say it here.
        for server in servers.split(","):
            server = server.strip()
            bare = ":" not in server or (server.startswith("[") and server.endswith("]"))  # a host, or [IPv6]
            host, _, port = (server, "", "9092") if bare else server.rpartition(":")
            if "://" in server or not host.strip("[]") or not (port.isdigit() and 0 < int(port) < 65536):
                raise ValueError(f"{server.strip()!r} is not host:port (e.g. localhost:9092; "
                                 "several separated by commas)")
        return servers

    @field_validator("backend")
    @classmethod
    def _known_backend(cls, name: str) -> str:
        # The registry, not a list here: a new backend is one module and one line there.
        from fusionstream.engines.backends import BACKENDS

        if name not in BACKENDS:
            raise ValueError(f"unknown backend {name!r}; choose one of {', '.join(BACKENDS)}")
        return name

    @field_validator("text_wait_ms", mode="before")
    @classmethod
    def _budget_auto_or_off(cls, value: Any) -> Any:
        if isinstance(value, str):
            text = value.strip().lower()
            if text in ("auto", "off"):
                return text
            if not text.removeprefix("-").isdigit():
                raise ValueError(f"text_wait_ms must be a whole number of milliseconds, 'auto' or 'off', not {value!r}")
            value = int(text)  # a negative one: said below
        if value is None:  # the setting's meaning before 'auto' was the default
            return "off"
        if not isinstance(value, int) or isinstance(value, bool):  # 1.5 in TOML: one line, not one per union member
            raise ValueError(f"text_wait_ms must be a whole number of milliseconds, 'auto' or 'off', not {value!r}")
        if value < 0:
            raise ValueError(f"text_wait_ms must be at least 0, 'auto' or 'off', not {value}")
        return value

    @field_validator("workers", mode="before")
    @classmethod
    def _count_or_auto(cls, value: Any) -> Any:
        # Before pydantic tries each member of the union, so a bad value is one message, not one per member.
        if isinstance(value, str):
            text = value.strip().lower()
            if text == "auto" or text.removeprefix("-").isdigit():
                return text if text == "auto" else int(text)  # a negative count: the check below says so
            raise ValueError(f"workers must be a whole number of processes or 'auto', not {value!r}")
        return value

    @field_validator("workers")
    @classmethod
    def _positive_workers(cls, workers: int | str) -> int | str:
        if isinstance(workers, int) and workers < 1:
            raise ValueError(f"workers must be at least 1 or 'auto', not {workers}")
        return workers

    @model_validator(mode="after")
    def _check(self) -> Settings:
        # Only when both are given: an unset one is the model's (check_model_windows), e.g. a 400 ms model's
        # window set alone, with its own hop, is no conflict with the default hop of 500.
        if {"hop_ms", "window_ms"} <= self.model_fields_set and self.hop_ms > self.window_ms:
            raise ValueError(f"hop_ms {self.hop_ms} is longer than window_ms {self.window_ms}")
        topics = {name: getattr(self, name) for name in _TOPICS}
        for name, topic in topics.items():
            others = [other for other in _TOPICS if other != name and topics[other] == topic]
            if others and name < others[0]:  # each pair said once
                raise ValueError(f"{name} and {others[0]} are both {topic!r}: every topic has one job (the service "
                                 "would read its own predictions as input, or mix two modalities)")
        if self.sasl_mechanism and not (self.sasl_username and self.sasl_password):
            raise ValueError("sasl_mechanism needs sasl_username and sasl_password")
        if self.security_protocol.startswith("SASL") and not self.sasl_mechanism:
            raise ValueError(f"security_protocol {self.security_protocol} needs sasl_mechanism (PLAIN, SCRAM-SHA-256 "
                             "or SCRAM-SHA-512), sasl_username and sasl_password")
        if self.ssl_keyfile is not None and self.ssl_certfile is None:
            raise ValueError("ssl_keyfile needs ssl_certfile (the certificate it is the key of)")
        self._check_tls_files()
        return self

    def _check_tls_files(self) -> None:
        """Read the TLS files now: a missing or unreadable one was a traceback from deep in a client's start."""
        import ssl

        context = ssl.create_default_context()
        for name, load in (("ssl_cafile", lambda: context.load_verify_locations(cafile=str(self.ssl_cafile))),
                           ("ssl_certfile", lambda: context.load_cert_chain(
                               str(self.ssl_certfile), str(self.ssl_keyfile) if self.ssl_keyfile else None))):
            path = getattr(self, name)
            if path is None:
                continue
            try:
                load()
            except FileNotFoundError:
                raise ValueError(f"{name} {path}: no such file") from None
            except (OSError, ssl.SSLError) as exc:
                what = "certificates" if name == "ssl_cafile" else "a certificate and its key"
                raise ValueError(f"{name} {path}: not {what} in PEM ({exc.strerror or exc})") from None

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        config_file = _CONFIG_FILE.get()
        if config_file is not None:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=config_file))
        return tuple(sources)

    @classmethod
    def load(cls, config_file: Path | None = None, **flags: Any) -> Settings:
        """Build settings from all sources; ``flags`` left as ``None`` fall through to lower sources."""
        if config_file is not None and not config_file.is_file():
            what = "is a directory, not a TOML file" if config_file.is_dir() else "does not exist"
            raise FileNotFoundError(f"settings file {config_file} {what}")
        if config_file is not None:
            import tomllib

            # Parsed here too, so that a syntax error is the one line that names the file, not a traceback
            # from inside pydantic-settings.
            try:
                data = tomllib.loads(config_file.read_text(encoding="utf-8"))
            except (tomllib.TOMLDecodeError, UnicodeDecodeError, OSError) as exc:
                raise SettingsFileError(f"settings file {config_file} is not valid TOML: {exc}") from None
            from fusionstream.consumers.settings_toml import toml_type_errors

            if errors := toml_type_errors(data, cls.model_fields):
                raise SettingsFileError(f"settings file {config_file}: {'; '.join(errors)}")
        token = _CONFIG_FILE.set(config_file)
        try:
            return cls(**{k: v for k, v in flags.items() if v is not None})
        finally:
            _CONFIG_FILE.reset(token)

    def window_config(self, *, frames_per_window: int, sample_rate: int, window_ns: int | None = None,
                      hop_ns: int | None = None) -> WindowConfig:
        """The aligner's settings; K and the sample rate come from the model (and the window and hop, when given)."""
        return WindowConfig(
            window_ns=self.window_ms * MS if window_ns is None else window_ns,
            hop_ns=self.hop_ms * MS if hop_ns is None else hop_ns,
            frames_per_window=frames_per_window,
            sample_rate=sample_rate,
            lateness_ns=self.lateness_ms * MS,
            max_skew_ns=self.max_skew_ms * MS,
            max_future_ns=self.max_future_ms * MS,
            idle_timeout_ns=self.idle_timeout_ms * MS,
            evict_after_ns=max(int(self.evict_after_s * 1e9), self.idle_timeout_ms * MS),
            provisional_without=frozenset({Modality.TEXT}) if self.revisions else frozenset(),
            wait_ns=((Modality.TEXT, self.text_wait_ms * MS),) if isinstance(self.text_wait_ms, int) else (),
            learn_wait=frozenset({Modality.TEXT}) if self.text_wait_ms == "auto" else frozenset(),
            stagger=self.stagger_windows,
        )

    def model_window_config(self, spec: ModelSpec | Manifest) -> WindowConfig:
        """The aligner's settings for ``spec``'s model, its window and hop as :meth:`check_model_windows` gives them.

        Everything that runs a model on windows built from these settings (serve, demo, bench)
        should build its windows here: a model fed windows of another length or hop than it
        was trained on runs without an error and predicts worse. ``spec`` is a format-1
        :class:`ModelSpec` or a (format-2) :class:`Manifest`, whose video preprocessing gives the
        frames per window and audio preprocessing the sample rate.
        """
        window_ns, hop_ns = self.check_model_windows(spec)
        frames, rate = model_geometry(spec)
        return self.window_config(frames_per_window=frames, sample_rate=rate, window_ns=window_ns, hop_ns=hop_ns)

    def check_model_windows(self, spec: ModelSpec | Manifest) -> tuple[int, int]:
        """The window and hop (ns) to run ``spec``'s model with: the model's, unless ``window_ms``/``hop_ms``
        were set (flag, environment or file). A set value that disagrees with the model raises
        :class:`ModelWindowMismatch` (one line naming both values and the setting to change); a model that
        declares no hop runs at the set hop, or the default one (no longer than its window)."""
        # The model.json fields that say so: format 2 writes milliseconds under "window".
        fields = ("window_ns", "hop_ns") if getattr(spec, "source_format", 1) == 1 else ("window.length_ms",
                                                                                        "window.hop_ms")
        declared = {"window_ms": ("window", fields[0], spec.window_ns),
                    "hop_ms": ("hop", fields[1], getattr(spec, "hop_ns", None))}
        wrong = {name: (label, field, model_ns) for name, (label, field, model_ns) in declared.items()
                 if model_ns is not None and name in self.model_fields_set and getattr(self, name) * MS != model_ns}
        if wrong:
            found = "; ".join(
                f"{name}={getattr(self, name)} disagrees with the model's {label} of {model_ns / MS:g} ms ({field})"
                for name, (label, field, model_ns) in wrong.items()
            )
            fix = " and ".join(f"FUSIONSTREAM_{name.upper()}={model_ns / MS:g}"
                               for name, (_, _, model_ns) in wrong.items())
            raise ModelWindowMismatch(
                f"{found} in {Path(self.model_dir) / 'model.json'}: unset {' and '.join(wrong)} to take the "
                f"model's, or set {fix} (or in the --config file); the model was trained on its windows"
            )
        window_ns = spec.window_ns or self.window_ms * MS
        model_hop = declared["hop_ms"][2]
        if model_hop is not None:
            return window_ns, model_hop
        hop_ns = self.hop_ms * MS
        if "hop_ms" not in self.model_fields_set:
            hop_ns = min(hop_ns, window_ns)
        elif hop_ns > window_ns:
            raise ModelWindowMismatch(f"hop_ms={self.hop_ms} is longer than the model's window of "
                                      f"{window_ns / MS:g} ms ({fields[0]}): a hop must not exceed the window")
        return window_ns, hop_ns

    def kafka_security(self) -> dict[str, Any]:
        """aiokafka keyword arguments for authentication and TLS."""
        options: dict[str, Any] = {"security_protocol": self.security_protocol}
        if self.sasl_mechanism:
            options |= {
                "sasl_mechanism": self.sasl_mechanism,
                "sasl_plain_username": self.sasl_username,
                "sasl_plain_password": self.sasl_password.get_secret_value() if self.sasl_password else None,
            }
        if self.security_protocol in ("SSL", "SASL_SSL"):
            from aiokafka.helpers import create_ssl_context

            options["ssl_context"] = create_ssl_context(
                cafile=str(self.ssl_cafile) if self.ssl_cafile else None,
                certfile=str(self.ssl_certfile) if self.ssl_certfile else None,
                keyfile=str(self.ssl_keyfile) if self.ssl_keyfile else None,
            )
        return options
