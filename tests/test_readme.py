"""The README's commands, run as written, so the quick start cannot drift from the product.

- the quick start's `make demo`, as a new user runs it;
- every command of the "Commands" block answers `--help` and has the options the README shows;
- the live run on a local broker (serve, produce, tail, view), against the test broker: the
  only thing the test changes is the environment (broker address, topic names, metrics port).
"""

from __future__ import annotations

import inspect
import itertools
import os
import re
import shlex
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import pytest

from fusionstream.consumers.cli import view as view_command

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
BIN = Path(sys.executable).parent


def _block_after(heading: str) -> list[str]:
    """The command lines (comments stripped) of the first code block after ``heading``."""
    tail = README[README.index(heading):]
    block = re.search(r"```(?:bash)?\n(.*?)```", tail, re.S)
    assert block, f"no code block after {heading!r} in README.md"
    return [line.split("#")[0].strip() for line in block.group(1).splitlines() if line.split("#")[0].strip()]


def _command(line: str, env: dict[str, str], **kwargs: object) -> subprocess.Popen[str]:
    argv = shlex.split(line)
    if argv[0] == "fusionstream":
        argv[0] = str(BIN / "fusionstream")
    return subprocess.Popen(argv, cwd=ROOT, env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True, **kwargs)  # type: ignore[call-overload]


@contextmanager
def _running(line: str, env: dict[str, str]) -> Iterator[subprocess.Popen[str]]:
    proc = _command(line, env)
    try:
        yield proc
    finally:
        with suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        for pipe in (proc.stdout, proc.stderr):
            if pipe is not None:
                pipe.close()


@pytest.mark.slow
def test_quick_start_make_demo_runs_as_written() -> None:
    lines = _block_after("## Quick start")
    assert lines[0].startswith("make demo"), lines
    env = {**os.environ, "PYTHON": sys.executable}
    # Relative when it can be: make cannot take a path with spaces in a variable used as a target.
    venv = os.path.relpath(BIN.parent, ROOT) if BIN.parent.is_relative_to(ROOT) else str(BIN.parent)
    demo = subprocess.run(["make", "demo", f"VENV={venv}"], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300, check=False)
    assert demo.returncode == 0, demo.stderr[-2000:]
    # One line per window and a summary, as the README says under the quick start.
    assert len([line for line in demo.stdout.splitlines() if line.lstrip().startswith("cam")]) >= 40, demo.stdout
    assert "accuracy" in demo.stdout.lower()


def test_every_command_of_the_commands_block_has_the_options_the_readme_shows() -> None:
    block = _block_after("## Commands")
    assert len(block) >= 10
    for line in block:
        words = line.split()
        assert words[0] == "fusionstream", line
        command = [words[1]] if words[1] != "produce" else ["produce"]
        shown = set(re.findall(r"(--[a-z][a-z0-9-]*)", line))
        usage = subprocess.run([str(BIN / "fusionstream"), *command, "--help"], capture_output=True, text=True,
                               timeout=60, check=False, env={**os.environ, "COLUMNS": "200"})
        assert usage.returncode == 0, f"{line}: {usage.stderr}"
        for option in shown:
            # "--fp16/--fp32" style pairs show both halves in the help.
            assert option in usage.stdout, f"README shows {option} for `fusionstream {words[1]}`, its --help does not"


@pytest.mark.kafka
@pytest.mark.slow
def test_live_run_on_a_local_broker_works_as_written(kafka_bootstrap: str, topic_prefix: str) -> None:
    lines = _block_after("A live run on a local broker")
    assert lines[0] == "make kafka-start", "the first step starts the broker (here: the test broker)"
    assert "scripts/kafka.sh start" in (ROOT / "Makefile").read_text()
    serve, produce, tail, view = lines[1:]
    assert serve.startswith("fusionstream serve") and produce.startswith("fusionstream produce synthetic")
    assert tail.startswith("fusionstream tail") and view.startswith("fusionstream view")
    env = {
        **os.environ,
        "FUSIONSTREAM_BOOTSTRAP_SERVERS": kafka_bootstrap,
        "FUSIONSTREAM_VIDEO_TOPIC": f"{topic_prefix}.video",
        "FUSIONSTREAM_AUDIO_TOPIC": f"{topic_prefix}.audio",
        "FUSIONSTREAM_TEXT_TOPIC": f"{topic_prefix}.text",
        "FUSIONSTREAM_PREDICTIONS_TOPIC": f"{topic_prefix}.predictions",
        "FUSIONSTREAM_DEADLETTER_TOPIC": f"{topic_prefix}.deadletter",
        "FUSIONSTREAM_GROUP_ID": topic_prefix,
        "FUSIONSTREAM_METRICS_PORT": "0",
        "COLUMNS": "200",
    }
    streams = int(re.search(r"--streams (\d+)", produce).group(1))  # type: ignore[union-attr]
    with _running(serve, env) as service:
        # serve creates the topics; the producer needs them (docs/wire-format.md, "Topics").
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and service.poll() is None:
            listed = subprocess.run([str(BIN / "python"), "-c", _TOPICS_READY, kafka_bootstrap, topic_prefix],
                                    capture_output=True, text=True, timeout=60, check=False)
            if listed.stdout.strip() == "ready":
                break
            time.sleep(0.5)
        assert service.poll() is None, service.stderr.read() if service.stderr else ""
        with _running(produce, env), _running(tail, env) as printer, _running(view, env) as viewer:
            seen: dict[str, int] = {}
            deadline = time.monotonic() + 90
            assert printer.stdout is not None
            while time.monotonic() < deadline and (len(seen) < streams or min(seen.values()) < 2):
                line = printer.stdout.readline()
                assert line, f"tail ended: {printer.stderr.read() if printer.stderr else ''}"
                stream = line.split()[0]
                seen[stream] = seen.get(stream, 0) + 1
            assert len(seen) == streams and min(seen.values()) >= 2, seen
            port = inspect.signature(view_command).parameters["port"].default  # as written: the default port
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10) as page:
                assert page.status == 200 and b"<html" in page.read().lower()
            assert viewer.poll() is None


_TOPICS_READY = """
import asyncio, sys
from aiokafka.admin import AIOKafkaAdminClient
async def main():
    admin = AIOKafkaAdminClient(bootstrap_servers=sys.argv[1])
    await admin.start()
    try:
        names = set(await admin.list_topics())
    finally:
        await admin.close()
    wanted = {f"{sys.argv[2]}.{t}" for t in ("video", "audio", "text", "predictions", "deadletter")}
    print("ready" if wanted <= names else "waiting")
asyncio.run(main())
"""


def test_the_fusion_heads_table_is_the_shipped_comparison() -> None:
    """The README shows docs/fusion-heads.md (which `train --compare` writes with the shipped model): a retrained
    model's comparison once left the README a model behind."""
    shipped = [line for line in (ROOT / "docs" / "fusion-heads.md").read_text().splitlines() if line.startswith("|")]
    section = README[README.index("### All seven fusion heads"):].splitlines()
    first = next(i for i, line in enumerate(section) if line.startswith("| head |"))
    shown = list(itertools.takewhile(lambda line: line.startswith("|"), section[first:]))
    assert len(shipped) == 9 and shown == shipped
