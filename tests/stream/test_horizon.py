"""The aligner skips the watermark of a stream whose newest data cannot end a window yet
(``StreamState.newest_ns``): a shortcut only, so every window, revision and close must be the same as
when it computes every watermark, on feeds that arrive late, out of order, with gaps, progress and ends."""

from __future__ import annotations

import random

import pytest
from test_aligner import T0, chunk, frame, segment

from fusionstream.stream.aligner import ENDED, Aligner
from fusionstream.stream.records import Modality, Progress
from fusionstream.stream.windows import WindowConfig
from fusionstream.units import MS


class Exhaustive(Aligner):
    """An aligner that never skips: every stream's newest is "unbounded", so each watermark is computed."""

    def add(self, item, now_ns):  # type: ignore[no-untyped-def]
        admission = super().add(item, now_ns)
        self._unbound()
        return admission

    def progress(self, progress, now_ns):  # type: ignore[no-untyped-def]
        super().progress(progress, now_ns)
        self._unbound()

    def _unbound(self) -> None:
        for state in self._streams.values():
            state.newest_ns = ENDED


def deliveries(seed: int) -> list[tuple[int, object]]:
    """Three streams of frames, chunks and words, each delivered late by its own jitter (words up to
    700 ms after they end), with text progress, a gap in one stream's audio, a camera that says it
    stopped and comes back, and sources that end."""
    rng = random.Random(seed)
    out: list[tuple[int, object]] = []
    for n, stream in enumerate(("a", "b", "c")):
        for t in range(0, 6000, 66):
            if stream == "b" and 3000 <= t < 3600:
                continue  # the camera dropped, said so, and came back
            out.append((t + 66 + rng.randint(0, 80), frame(t, stream)))
        if stream == "b":
            out.append((3200, Progress(stream, Modality.VIDEO, T0 + 3000 * MS, ended=True)))
        for t in range(0, 6000, 40):
            if stream == "b" and 2000 <= t < 2600:
                continue  # a gap: the microphone dropped out
            out.append((t + 40 + rng.randint(0, 10), chunk(t, stream=stream, value=0.1)))
        for t in range(0, 6000, 450):
            end = t + 300
            arrives = end + rng.randint(300, 700)
            out.append((arrives, segment(t, end, "word", stream)))
            out.append((arrives, Progress(stream, Modality.TEXT, T0 + end * MS)))
        if n == 2:  # stream c's sources say they ended
            for modality in Modality:
                out.append((6800, Progress(stream, modality, T0 + 6000 * MS, ended=True)))
    return sorted(out, key=lambda pair: pair[0])


def replay(aligner: Aligner, schedule: list[tuple[int, object]], fetch_ms: int = 15) -> list[tuple]:
    """Fetch-sized batches, then what the pipeline calls after each (and its 100 ms ticks)."""
    seen: list[tuple] = []

    def note(windows: list, kind: str) -> None:
        seen.extend((kind, w.window_id, w.revision, w.final, w.closed_by, w.frame_times_ns, w.coverage,
                     w.transcript) for w in windows)

    i, now_ms, ticked = 0, 0, 0
    while i < len(schedule) or now_ms < 9000:
        now_ms += fetch_ms
        now = T0 + now_ms * MS
        while i < len(schedule) and schedule[i][0] <= now_ms:
            item = schedule[i][1]
            if isinstance(item, Progress):
                aligner.progress(item, now)
            else:
                aligner.add(item, now)  # type: ignore[arg-type]
            i += 1
        recent = aligner.take_recent()
        note(aligner.poll(now, recent), "poll")
        note(aligner.provisional(now, streams=recent), "provisional")
        note(aligner.ready(now), "ready")
        if now_ms - ticked >= 100:
            ticked = now_ms
            note(aligner.poll(now), "tick")
            note(aligner.provisional(now), "tick provisional")
    return seen


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("revisions", [False, True])
def test_skipping_watermarks_changes_no_window(seed: int, revisions: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    config = WindowConfig(
        lateness_ns=200 * MS,
        wait_ns=((Modality.TEXT, 700 * MS),),
        provisional_without=frozenset({Modality.TEXT}) if revisions else frozenset(),
        idle_timeout_ns=1500 * MS,
    )
    schedule = deliveries(seed)
    computed = {"fast": 0, "every": 0}
    original = Aligner._watermark

    def counting(kind: str):  # type: ignore[no-untyped-def]
        def watermark(self, state, now_ns, without=frozenset()):  # type: ignore[no-untyped-def]
            computed[kind] += 1
            return original(self, state, now_ns, without)
        return watermark

    monkeypatch.setattr(Aligner, "_watermark", counting("fast"))
    aligner = Aligner(config)
    fast = replay(aligner, schedule)
    assert aligner._streams["b"].newest_ns < ENDED, "a camera that came back: the shortcut is taken again"
    monkeypatch.setattr(Aligner, "_watermark", counting("every"))
    every = replay(Exhaustive(config), schedule)
    assert fast == every
    finals = {w[1] for w in fast if w[3]}
    assert len(finals) >= 3 * 11, "every stream's windows closed"
    assert any(not w[3] for w in fast) == revisions
    assert computed["fast"] < 0.9 * computed["every"], "the shortcut was taken"
