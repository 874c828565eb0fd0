"""The command line's errors: one plain line on stderr whatever the terminal's width or a path's length,
usage errors with exit status 2 and a pointer to --help, Ctrl-C as exit status 130 without a traceback."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fusionstream.consumers.cli_errors import describe, one_line

REPO_ROOT = Path(__file__).resolve().parents[2]
FUSIONSTREAM = [sys.executable, "-m", "fusionstream"]
DEADLINE_S = 60.0


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def fusionstream(*args: str, columns: str = "80", **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*FUSIONSTREAM, *args], env={**os.environ, "COLUMNS": columns, **env}, cwd=REPO_ROOT,
        capture_output=True, text=True, timeout=DEADLINE_S, check=False,
    )  # fmt: skip


def error_line(done: subprocess.CompletedProcess[str]) -> str:
    """stderr's only line, which must be an error; returns it."""
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("fusionstream: error: "), done.stderr
    return lines[0]


@pytest.fixture
def long_dir(tmp_path: Path) -> Path:
    long = tmp_path / ("a-rather-long-directory-name-" * 5)
    long.mkdir()
    assert len(str(long)) > 100
    return long


@pytest.mark.parametrize("columns", ["60", "250"])
def test_usage_errors_are_one_line_with_exit_status_2(long_dir: Path, columns: str) -> None:
    missing = long_dir / "nope.mp4"
    done = fusionstream("demo", "--video", str(missing), columns=columns)
    assert done.returncode == 2
    line = error_line(done)
    assert f"'{missing}' does not exist" in line and line.endswith("(see 'fusionstream demo --help')")

    done = fusionstream("topics", "create", "--partitions", "0", columns=columns)
    assert done.returncode == 2
    assert "--partitions" in error_line(done) and "(see 'fusionstream topics create --help')" in done.stderr

    done = fusionstream("no-such-command", columns=columns)
    assert done.returncode == 2 and "No such command 'no-such-command'" in error_line(done)

    done = fusionstream("demo", "--labels", str(missing), columns=columns)  # exists=True is checked first
    assert done.returncode == 2 and "does not exist" in error_line(done)


@pytest.mark.parametrize("columns", ["60", "250"])
def test_failures_are_one_line_with_exit_status_1(long_dir: Path, columns: str) -> None:
    bootstrap = f"127.0.0.1:{_closed_port()}"
    for args in (["tail", "--json"], ["view", "--port", "0"], ["topics", "describe"]):
        # view waits broker_wait_s for a broker to come, as serve does: not here.
        done = fusionstream(*args, "--bootstrap", bootstrap, columns=columns, FUSIONSTREAM_BROKER_WAIT_S="0")
        assert done.returncode == 1, (args, done.stderr)
        line = error_line(done)
        assert f"cannot reach Kafka at {bootstrap}" in line and "make kafka-start" in line, args

    # tail's "tailing ..." line comes first (it is no error); the error is still one line.
    done = fusionstream("tail", "--bootstrap", bootstrap, columns=columns)
    assert done.returncode == 1
    info, error = done.stderr.splitlines()
    assert info.startswith("tailing ") and error.startswith("fusionstream: error: cannot reach Kafka")

    done = fusionstream("tail", "--config", str(long_dir / "fs.toml"), columns=columns)
    assert done.returncode == 2 and f"settings file {long_dir / 'fs.toml'} does not exist" in error_line(done)

    bad_toml = long_dir / "bad.toml"
    bad_toml.write_text("bootstrap_servers = 127.0.0.1:9392\n")  # unquoted: a TOML syntax error
    for args in (["tail"], ["serve"], ["topics", "describe"]):
        done = fusionstream(*args, "--config", str(bad_toml), columns=columns)
        assert done.returncode == 1 and "Traceback" not in done.stderr, (args, done.stderr)
        assert f"settings file {bad_toml} is not valid TOML" in error_line(done) and "line 1" in error_line(done)

    done = fusionstream("tail", columns=columns, FUSIONSTREAM_MAX_BATCH="0")
    assert done.returncode == 1
    assert ("invalid settings: max_batch (from FUSIONSTREAM_MAX_BATCH): Input should be greater than or equal to 1"
            in error_line(done))
    # A bad value and a misspelt key in the file: each named with where it came from.
    typo = long_dir / "typo.toml"
    typo.write_text('max_batchh = 8\nhop_ms = -5\n')
    done = fusionstream("tail", "--config", str(typo), columns=columns)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert f"hop_ms (from {typo}): Input should be greater than" in error_line(done)
    assert f"unknown setting 'max_batchh' in {typo} (did you mean max_batch?)" in error_line(done)
    typo.write_text('hop_ms = "x"\n')  # a string where TOML has integers: said before pydantic converts anything
    done = fusionstream("tail", "--config", str(typo), columns=columns)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert f"{typo}: hop_ms: 'x' is a string, where the setting takes an integer" in error_line(done)


def test_an_engine_error_is_one_line(long_dir: Path) -> None:
    not_a_model = long_dir / "model"
    not_a_model.mkdir()
    done = fusionstream("evaluate", str(not_a_model), "--seconds", "1", columns="60")
    assert done.returncode == 1
    assert str(not_a_model) in error_line(done) and "Traceback" not in done.stderr


def test_help_still_works() -> None:
    for args in (["--help"], ["produce", "video", "--help"], ["topics", "create", "--help"], ["demo", "--help"]):
        done = fusionstream(*args, columns="250")
        assert done.returncode == 0, (args, done.stderr)
        assert "Usage: fusionstream " in done.stdout, args
    assert "--out" in fusionstream("demo", "--help", columns="250").stdout
    # No command: the help, and click's exit status for it.
    done = fusionstream()
    assert done.returncode == 2 and "Usage: fusionstream " in done.stdout + done.stderr


def test_one_line_and_describe() -> None:
    from pydantic import ValidationError

    from fusionstream.consumers.settings import Settings

    assert one_line("a\n  b\tc \n") == "a b c"
    with pytest.raises(ValidationError) as caught:
        Settings.load(max_batch=0, hop_ms=5000)
    text = describe(caught.value)
    assert text.startswith("invalid settings: ") and "max_batch: " in text and "\n" not in text
    assert describe(TimeoutError()) == "TimeoutError()"


def _interrupt(args: list[str], ready: str, stream: str = "stderr") -> subprocess.CompletedProcess[str]:
    """Start ``fusionstream ARGS``, wait for ``ready`` on its ``stream``, send SIGINT, wait for the end."""
    proc = subprocess.Popen([*FUSIONSTREAM, *args], cwd=REPO_ROOT, text=True, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    pipe = proc.stdout if stream == "stdout" else proc.stderr
    assert pipe is not None
    deadline = time.monotonic() + DEADLINE_S
    seen = ""
    while ready not in seen:  # readline blocks: the line comes, or the process ends (EOF)
        line = pipe.readline()
        assert line and time.monotonic() < deadline, f"no {ready!r} from {args}: {seen}"
        seen += line
    time.sleep(1.0)  # into the command's main loop
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=DEADLINE_S)
    return subprocess.CompletedProcess(args, proc.returncode, *((seen + out, err) if stream == "stdout"
                                                               else (out, seen + err)))


def test_ctrl_c_in_the_demo_is_exit_status_130_without_a_traceback() -> None:
    done = _interrupt(["demo", "--seconds", "60", "--streams", "1"], "fusionstream demo", stream="stdout")
    assert done.returncode == 130, done.stderr
    assert "Traceback" not in done.stderr and "KeyboardInterrupt" not in done.stderr


def test_kafka_ctrl_c_in_tail_is_exit_status_130_without_a_traceback(kafka_bootstrap: str) -> None:
    done = _interrupt(["tail", "--bootstrap", kafka_bootstrap], "tailing ")
    assert done.returncode == 130, done.stderr
    assert "Traceback" not in done.stderr and "KeyboardInterrupt" not in done.stderr


def test_a_fenced_producer_says_what_to_change() -> None:
    """Two supervisors with the same --instance-id: each worker's one line was aiokafka's "There is a newer
    producer using the same transactional_id or transaction timeout occurred", naming no setting."""
    from aiokafka.errors import ProducerFenced

    from fusionstream.consumers.service.publisher import _describe

    for error in (ProducerFenced(), RuntimeError("send failed")):
        if not isinstance(error, ProducerFenced):
            error.__cause__ = ProducerFenced()
        text = _describe(error)
        assert "two live instances with the same --instance-id fence each other" in text
        assert "\n" not in text
    assert "--instance-id" not in _describe(RuntimeError("send failed"))
