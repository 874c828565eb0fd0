"""`--asr` when things go wrong: a recogniser killed mid-stream, its producer killed or stopped.

What is asserted: a recogniser killed mid-stream stops the source with one error naming its stream (not a
traceback, not a hang); recogniser processes never outlive their producer (a `kill -9` of it left each
one, about 165 MB, waiting on its queue for ever); SIGTERM stops `produce` as Ctrl-C does."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from fusionstream.stream.records import Modality
from fusionstream.stream.sources import SyntheticAV, SyntheticConfig
from tests.consumers.test_produce import _env

FUSIONSTREAM = [sys.executable, "-m", "fusionstream"]


def _gone(pid: int, within_s: float) -> bool:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        if not Path(f"/proc/{pid}").exists() or "Z" in _state(pid):
            return True
        time.sleep(0.2)
    return False


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "gone"


def _children(pid: int) -> list[int]:
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def test_a_killed_recogniser_is_one_error_line_naming_its_stream() -> None:
    from fusionstream.consumers.producers.asr import Recognisers
    from fusionstream.consumers.producers.errors import RecogniserError
    from fusionstream.stream.sources.asr import AsrConfig

    records = list(SyntheticAV(SyntheticConfig(streams=2, seconds=8, seed=3)).records())
    media = [r for r in records if r.modality is not Modality.TEXT]
    first = media[0].stream_id if media[0].modality is Modality.AUDIO else next(
        r.stream_id for r in media if r.modality is Modality.AUDIO)
    recognisers = Recognisers(AsrConfig(grammar="digits"), streams=2, processes=2, progress=False)
    killed = recognisers._workers[0][0]  # the recogniser of the first stream with audio
    passed: list[object] = []

    def source():  # type: ignore[no-untyped-def]
        for i, record in enumerate(media):
            if i == len(media) // 3:
                os.kill(killed.pid, signal.SIGKILL)
                killed.join(timeout=10)
            yield record

    with pytest.raises(RecogniserError, match=rf"the speech recogniser of {first} stopped \(exit status -9\)"):
        for record in recognisers.transcripts(source()):
            passed.append(record)
    assert len([r for r in passed if r.modality is not Modality.TEXT]) >= len(media) // 3
    assert all(not worker.is_alive() for worker, _ in recognisers._workers)  # the other one closed too


def test_recognisers_do_not_outlive_a_producer_killed_with_sigkill(tmp_path: Path) -> None:
    script = tmp_path / "holder.py"
    script.write_text(
        "from fusionstream.consumers.producers.asr import Recognisers\n"
        "from fusionstream.stream.sources.asr import AsrConfig\n"
        "if __name__ == '__main__':\n"
        "    r = Recognisers(AsrConfig(grammar='digits'), streams=1, processes=1)\n"
        "    print(r._workers[0][0].pid, flush=True)\n"
        "    import time; time.sleep(120)\n"
    )
    holder = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None
        recogniser = int(holder.stdout.readline())
        assert not _gone(recogniser, 0.5)  # waiting for audio
        holder.kill()
        holder.wait(timeout=10)
        assert _gone(recogniser, 10), "the recogniser outlived its producer"
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait(timeout=10)
        if holder.stdout is not None:
            holder.stdout.close()


@pytest.mark.kafka
def test_sigterm_stops_produce_asr_as_ctrl_c_does(kafka_bootstrap: str) -> None:
    env = _env(kafka_bootstrap, f"asr-term-{uuid.uuid4().hex[:8]}")
    producer = subprocess.Popen(
        [*FUSIONSTREAM, "produce", "synthetic", "--streams", "1", "--seconds", "60", "--asr", "--asr-grammar",
         "digits"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        recognisers: list[int] = []
        while time.monotonic() < deadline and not recognisers:
            recognisers = [c for c in _children(producer.pid) if "fusionstream-asr" in _cmdline(c)
                           or "multiprocessing" in _cmdline(c)]
            time.sleep(0.3)
        assert recognisers, "no recogniser process seen"
        time.sleep(3)  # publishing
        producer.send_signal(signal.SIGTERM)
        _, stderr = producer.communicate(timeout=60)
    finally:
        if producer.poll() is None:
            producer.kill()
    assert producer.returncode == 130, stderr[-2000:]
    assert "Traceback" not in stderr and "stopped after" in stderr, stderr[-2000:]  # the Ctrl-C summary
    for pid in recognisers:
        assert _gone(pid, 10), f"recogniser {pid} outlived produce"


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_text().replace("\0", " ")
    except OSError:
        return ""
