"""Checkpoints under stream churn: thousands of cameras that came and went must not crowd out the live ones,
nor be rebuilt and said too full five times a second while the service is idle (an outside tester's finding:
2,389 ended streams on a partition, a warning 28 times a second and a third of a core with no input)."""

from __future__ import annotations

import logging

import pytest
from test_service_handover import A0, HOP, V0, Acked, Rec, Stored, handover

from fusionstream.consumers.service import checkpoint as checkpoint_module
from fusionstream.consumers.service.checkpoint import Checkpoint
from fusionstream.consumers.service.handover import Handover

ENDED = 2_000


def _churn(h: Handover) -> None:
    """2,000 one-record cameras on fs.video 0, each published and released, then two live ones."""
    h.assign({V0: None, A0: None})
    for i in range(ENDED):
        h.fetched(V0, [Rec(i, f"churn-{i:05d}".encode())])
        h.admitted(("fs.video", 0, i), 1)
        h.prediction_acknowledged(Acked(f"churn-{i:05d}", 10**12 + i * HOP, [("fs.video", 0, i)]))
    # Two live cameras, far behind the churned ones in event time, with records still in open windows.
    h.fetched(V0, [Rec(ENDED, b"live-a"), Rec(ENDED + 1, b"live-b")])
    for offset in (ENDED, ENDED + 1):
        h.admitted(("fs.video", 0, offset), 1)
    h.provisional_acknowledged(Acked("live-a", 5 * 10**9, []))
    h.provisional_acknowledged(Acked("live-b", 6 * 10**9, []))


def test_streams_a_restart_reads_again_keep_their_place_and_no_warning_is_said(
    caplog: pytest.LogCaptureFixture,
) -> None:
    h, _ = handover()
    _churn(h)
    with caplog.at_level(logging.WARNING):
        offset, metadata = h.to_commit()[V0]
    checkpoint = Checkpoint.decode(metadata)
    assert offset == ENDED and checkpoint is not None
    assert {"live-a", "live-b"} <= set(checkpoint.streams), "the live streams are the ones a restart re-reads"
    assert 100 < len(checkpoint.streams) < ENDED, "ended streams fill what room is left, newest first"
    assert "churn-01999" in checkpoint.streams and "churn-00000" not in checkpoint.streams
    assert not caplog.records, "only ended streams were left out: nothing a restart reads again lost its protection"


def test_an_unchanged_partition_is_not_encoded_again(monkeypatch: pytest.MonkeyPatch) -> None:
    h, _ = handover()
    _churn(h)
    chosen = h.to_commit()
    h.committed(chosen)
    calls = []
    encode = Checkpoint.encode

    def counted(self: Checkpoint, *args: object, **kwargs: object) -> str:
        calls.append(1)
        return encode(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(Checkpoint, "encode", counted)
    for _ in range(25):  # five seconds of commit ticks with no input
        assert h.to_commit() == {}
    assert calls == [], "an idle service encodes nothing"
    h.fetched(V0, [Rec(ENDED + 2, b"live-a")])
    h.to_commit()
    assert calls, "a new record makes the checkpoints be computed again"


def test_a_partition_too_full_of_live_streams_is_said_once_a_minute(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(checkpoint_module, "_warned_at", -checkpoint_module.WARNING_INTERVAL_S)
    h, _ = handover()
    h.assign({V0: None})
    live = [f"live-camera-with-a-long-name-{i:04d}" for i in range(400)]
    h.fetched(V0, [Rec(i, stream.encode()) for i, stream in enumerate(live)])
    for i, stream in enumerate(live):
        h.admitted(("fs.video", 0, i), 1)
        h.provisional_acknowledged(Acked(stream, 10**9, []))
    with caplog.at_level(logging.WARNING):
        for i in range(10):
            h.fetched(V0, [Rec(400 + i, live[i].encode())])
            h.to_commit()
    said = [r.getMessage() for r in caplog.records if "commit metadata" in r.getMessage()]
    assert len(said) == 1, said
    assert "of the 400 streams a restart would read again" in said[0] and "use more partitions" in said[0]


def test_a_resumed_stream_counts_as_read_again_until_the_position_passes_it(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Where a resumed stream's records are is known only once they are read again: until the position has
    passed the commit it resumed from, it counts as one a restart reads again; after, it gives way."""
    monkeypatch.setattr(checkpoint_module, "_warned_at", -checkpoint_module.WARNING_INTERVAL_S)
    h, _ = handover()
    ahead = {f"ahead-{i:04d}": 10**12 for i in range(900)}  # far ahead in event time: first by time alone
    meta = Checkpoint(streams={"cam-1": 2 * 10**9, **ahead}).encode(HOP, max_chars=100_000)
    h.assign({V0: Stored(10, meta)})
    with caplog.at_level(logging.WARNING):
        h.to_commit()
    assert any("of the 901 streams a restart would read again" in r.getMessage() for r in caplog.records)

    caplog.clear()
    monkeypatch.setattr(checkpoint_module, "_warned_at", -checkpoint_module.WARNING_INTERVAL_S)
    h.fetched(V0, [Rec(10, b"cam-2"), Rec(11, b"cam-3")])
    h.admitted(("fs.video", 0, 10), 1)
    h.admitted(("fs.video", 0, 11), 1)
    h.prediction_acknowledged(Acked("cam-2", 3 * 10**9, [("fs.video", 0, 10)]))
    h.provisional_acknowledged(Acked("cam-3", 3 * 10**9, []))  # its record stays held: the position is 11
    with caplog.at_level(logging.WARNING):
        offset, metadata = h.to_commit()[V0]
    checkpoint = Checkpoint.decode(metadata)
    assert offset == 11 and checkpoint is not None
    assert "cam-3" in checkpoint.streams, "its record at 11 is read again after a restart from 11"
    assert "cam-1" not in checkpoint.streams, "nothing of cam-1 is at or above 11: it gives way to time order"
    assert not caplog.records, "the resumed streams are no longer ones a restart reads again"
