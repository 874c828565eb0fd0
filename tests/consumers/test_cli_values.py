"""Values a hurried operator types that passed the command line's checks and ended in a traceback: `inf` through
every `x >= N` range (an OverflowError deep inside), `train` into an existing file (a whole training run lost to
the FileExistsError at its end), `--train-seconds 0`."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from test_cli_errors import error_line, fusionstream


def _run(command: list[str], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """``fusionstream COMMAND``, with ``OUT`` standing for a directory under ``tmp_path`` that does not exist."""
    return fusionstream(*(str(tmp_path / "out") if part == "OUT" else part for part in command))

@pytest.mark.parametrize(("command", "option"), [
    (["demo", "--fast", "--quiet", "--seconds", "inf"], "--seconds"),
    (["demo", "--fast", "--quiet", "--seconds", "1e400"], "--seconds"),
    (["produce", "synthetic", "--fast", "-q", "--seconds", "inf"], "--seconds"),
    (["view", "--lookback", "inf", "--port", "0"], "--lookback"),
    (["train", "OUT", "--train-seconds", "inf"], "--train-seconds"),
])
def test_a_value_that_is_not_a_finite_number_is_a_usage_error(tmp_path: Path, command: list[str],
                                                              option: str) -> None:
    done = _run(command, tmp_path)
    assert done.returncode == 2, done.stderr
    line = error_line(done)
    assert f"Invalid value for '{option}'" in line and "is not a finite number" in line, line


def test_train_refuses_an_existing_file_as_its_model_directory_before_it_trains(tmp_path: Path) -> None:
    taken = tmp_path / "clip.mp4"
    taken.write_bytes(b"not a directory")
    done = fusionstream("train", str(taken), "--epochs", "1", "--train-seconds", "10")
    assert done.returncode == 2 and "is a file" in error_line(done)
    assert taken.read_bytes() == b"not a directory"
    done = fusionstream("train", str(tmp_path / "out"), "--train-seconds", "0")
    assert done.returncode == 2 and "--train-seconds" in error_line(done)
    assert not (tmp_path / "out").exists()


def test_kafka_tail_until_the_end_of_a_topic_that_does_not_exist_fails(kafka_bootstrap: str,
                                                                       topic_prefix: str) -> None:
    """It printed a WARNING and exited 0: a mistyped --topic read as an empty one in a script."""
    done = fusionstream("tail", "--until-end", "--bootstrap", kafka_bootstrap, "--topic",
                        f"{topic_prefix}.no-such-topic")
    assert done.returncode == 1, done.stderr
    banner, error = done.stderr.strip().splitlines()  # no WARNING of aiokafka's about the same topic between
    assert banner.startswith("tailing ")
    assert error == (f"fusionstream: error: topic {topic_prefix}.no-such-topic does not exist: nothing to read (is "
                     "its name right? --topic, or the FUSIONSTREAM_*_TOPIC settings)"), done.stderr


def test_a_directory_where_a_file_belongs_and_a_host_that_does_not_resolve_are_said_as_such(tmp_path: Path) -> None:
    """They read "does not exist", "no such caption file" and "unknown error -2 (choose another with --port)"."""
    done = fusionstream("topics", "describe", "--config", str(tmp_path))
    assert done.returncode == 2 and f"settings file {tmp_path} is a directory, not a TOML file" in error_line(done)
    done = fusionstream("produce", "captions", str(tmp_path))
    assert done.returncode == 2 and f"{tmp_path} is a directory, not a caption file" in error_line(done)


def test_kafka_view_on_a_host_that_does_not_resolve_names_the_host(kafka_bootstrap: str) -> None:
    done = fusionstream("view", "--host", "no-such-host.invalid", "--port", "0", "--bootstrap", kafka_bootstrap)
    assert done.returncode == 1, done.stderr
    line = error_line(done)
    assert line.startswith("fusionstream: error: cannot serve the viewer on no-such-host.invalid:0: "), line
    assert line.endswith("(--host takes an address of this machine, e.g. 127.0.0.1 or 0.0.0.0)"), line


def test_an_empty_caption_file_and_a_directory_that_is_no_model_say_what_is_wrong(tmp_path: Path) -> None:
    """An empty .srt was "published 0 records", exit 0; build-engine on a CPU box said tensorrt was missing
    before it looked at the directory."""
    empty = tmp_path / "empty.srt"
    empty.write_text("")
    done = fusionstream("produce", "captions", str(empty), "--bootstrap", "127.0.0.1:1")
    assert done.returncode == 1 and error_line(done).endswith(f"{empty}: no caption cues in it (an SRT or WebVTT file)")
    done = fusionstream("build-engine", str(tmp_path))
    assert done.returncode == 1 and "not a model directory" in error_line(done)


def test_help_on_a_narrow_terminal_keeps_the_options_names() -> None:
    """At 40 columns `tail --help` showed `--from…`, `--unti…`: no flag could be told from another."""
    done = fusionstream("tail", "--help", columns="40")
    assert done.returncode == 0
    for name in ("--from-beginning", "--until-end", "--finals-only", "--dead-letters"):
        assert name in done.stdout, name


@pytest.mark.parametrize("columns", ["60", "80"])
@pytest.mark.parametrize("command", [["serve"], ["tail"], ["produce", "video"]])
def test_help_folds_a_long_word_instead_of_cutting_it(command: list[str], columns: str) -> None:
    """At 80 columns (and any width under 100) help read `FUSIONSTREAM_INSTA…`, `host:port[,host:po…` and
    `--read-uncommit…`: an environment variable's name could not be read at any width."""
    done = fusionstream(*command, "--help", columns=columns)
    assert done.returncode == 0
    assert "…" not in done.stdout, [line for line in done.stdout.splitlines() if "…" in line]
    text = "".join(line.strip("│ ") for line in done.stdout.splitlines())  # the folded pieces, joined again
    assert "FUSIONSTREAM_BOOTSTRAP_SERVERS" in text


def test_kafka_a_camera_that_cannot_be_opened_is_one_line(kafka_bootstrap: str) -> None:
    """OpenCV's WARN lines about each backend it tried came before the error."""
    done = fusionstream("produce", "camera", "99", "--bootstrap", kafka_bootstrap)
    assert done.returncode == 1
    assert error_line(done).startswith("fusionstream: error: cannot open camera 99 (is a camera connected")


def test_a_setting_that_is_not_a_finite_number_is_one_line_from_the_environment_or_a_file(tmp_path: Path) -> None:
    """`inf` passed every range check there too: an OverflowError traceback, or a broker_wait_s that never ran out."""
    done = fusionstream("topics", "describe", FUSIONSTREAM_EVICT_AFTER_S="inf")
    assert done.returncode == 1
    assert "evict_after_s (from FUSIONSTREAM_EVICT_AFTER_S): Input should be a finite number" in error_line(done)
    config = tmp_path / "wait.toml"
    config.write_text("broker_wait_s = inf\n")
    done = fusionstream("topics", "describe", "--config", str(config))
    assert done.returncode == 1
    assert f"broker_wait_s (from {config}): Input should be a finite number" in error_line(done)


@pytest.mark.parametrize(("command", "expected"), [
    (["train", "OUT", "--fusion", "foo"], "Invalid value for '--fusion': 'foo' is not one of concat, weighted"),
    (["serve", "--workers", "lots"], "workers (from the command line): workers must be a whole number"),
    (["demo", "--fast", "--quiet", "--backend", "nope"], "backend (from the command line): unknown backend 'nope'"),
    # It was taken without a word, and the demo ran (or, with --asr, refused it as a failure, exit 1).
    (["demo", "--fast", "--quiet", "--asr-grammar", "klingon"], "'--asr-grammar': 'klingon' is not one of 'general'"),
    (["produce", "synthetic", "--asr-grammar", "klingon"], "'--asr-grammar': 'klingon' is not one of 'general'"),
])
def test_a_choice_the_command_line_gets_wrong_is_a_usage_error_like_any_other(tmp_path: Path, command: list[str],
                                                                            expected: str) -> None:
    """They exited 1 while a value out of range exited 2: a script could not tell a typo from a failure."""
    done = _run(command, tmp_path)
    assert done.returncode == 2, done.stderr
    line = error_line(done)
    assert expected in line and f"(see 'fusionstream {command[0]}" in line and line.endswith(" --help')"), line
    assert not (tmp_path / "out").exists()


def test_a_bad_setting_from_the_environment_stays_a_failure_not_a_usage_error() -> None:
    """No option was mistyped: the environment names the culprit, and no --help would show it."""
    done = fusionstream("serve", FUSIONSTREAM_WORKERS="lots")
    assert done.returncode == 1, done.stderr
    line = error_line(done)
    assert "workers (from FUSIONSTREAM_WORKERS)" in line and "--help" not in line, line
