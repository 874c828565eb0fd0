"""A restart keeps each stream's learnt transcript wait (``text_wait_ms`` auto) in its checkpoint.

An outside integrator's bursty recogniser (a sentence published 3 s after it ends) had taught its stream a
budget of about 10 s; after a SIGTERM and a restart the new instance resumed the stream's windows but not
its budget, waited for the transcript as for none, and the first sentence published after the restart went
to the dead-letter topic whole (10 words late). The same feed without a restart lost only its first sentence.
"""

from __future__ import annotations

import dataclasses
from types import SimpleNamespace

import numpy as np

from fusionstream.consumers.service.checkpoint import Checkpoint
from fusionstream.consumers.service.handover import Handover
from fusionstream.stream.aligner import Aligner
from fusionstream.stream.records import AudioChunk, Frame, MediaItem, Modality, TextSegment
from fusionstream.stream.windows import WindowConfig
from fusionstream.units import MS, NS

T0 = 1_767_225_600 * NS
AUTO = WindowConfig(learn_wait=frozenset({Modality.TEXT}))
TP = ("fs.video", 0)


@dataclasses.dataclass
class Fetched:
    offset: int
    key: bytes


def _live(stream_id: str, from_ms: int, to_ms: int, word_delay_ms: int) -> list[tuple[int, MediaItem]]:
    """(arrival, item): 10 fps frames and 40 ms audio as they end, a 300 ms word every second published
    ``word_delay_ms`` after it ends."""
    out: list[tuple[int, MediaItem]] = []
    for t in range(from_ms, to_ms, 100):
        out.append((T0 + (t + 100) * MS, Frame(stream_id, T0 + t * MS, T0 + (t + 100) * MS,
                                               np.zeros((4, 4, 3), np.uint8))))
    for t in range(from_ms, to_ms, 40):
        out.append((T0 + (t + 40) * MS, AudioChunk(stream_id, T0 + t * MS, T0 + (t + 40) * MS,
                                                   np.zeros(640, np.float32), 16_000)))
    for t in range(from_ms, to_ms, 1000):
        out.append((T0 + (t + 300 + word_delay_ms) * MS, TextSegment(stream_id, T0 + t * MS, T0 + (t + 300) * MS,
                                                                      "seven")))
    return sorted(out, key=lambda d: d[0])


def _run(aligner: Aligner, feed: list[tuple[int, MediaItem]]) -> list[TextSegment]:
    """Feed it, polling as it goes; the words that came late."""
    late = []
    for at, item in feed:
        if aligner.add(item, at).late and isinstance(item, TextSegment):
            late.append(item)
        aligner.poll(at)
    return late


def test_the_learnt_wait_survives_a_restart_through_the_checkpoint() -> None:
    aligner = Aligner(AUTO)
    handover = Handover(AUTO.hop_ns)
    handover.bind(aligner)
    handover.assign({TP: None})
    before = _live("asr", 0, 30_000, word_delay_ms=2_600)
    handover.fetched(TP, [Fetched(i, b"asr") for i in range(len(before))])
    late_before = _run(aligner, before)
    assert len(late_before) <= 3  # only the first words, while the budget is learnt
    learnt = aligner.wait_budgets(Modality.TEXT).get("asr")
    assert learnt is not None and learnt >= 2_600 * MS
    handover.prediction_acknowledged(SimpleNamespace(stream_id="asr", t_start_ns=T0 + 25 * NS, refs=[]))
    offset, metadata = handover.to_commit()[TP]
    checkpoint = Checkpoint.decode(metadata)
    assert checkpoint is not None and set(checkpoint.text_wait) == {"asr"}

    def restart(metadata: str) -> list[TextSegment]:
        restarted = Aligner(AUTO)
        again = Handover(AUTO.hop_ns)
        again.bind(restarted)
        again.assign({TP: SimpleNamespace(offset=offset, metadata=metadata)})
        return _run(restarted, _live("asr", 26_000, 40_000, word_delay_ms=2_600))

    assert restart(metadata) == []
    # The same restart from a checkpoint without the learnt wait (a release before it): its first words late.
    without = Checkpoint(checkpoint.replay_mark, checkpoint.streams).encode(AUTO.hop_ns, staggered=False)
    assert len(restart(without)) >= 1


def test_the_learnt_wait_round_trips_and_merges_across_the_partitions_topics() -> None:
    written = Checkpoint(3, {"a": 10 * NS, "b": 20 * NS}, text_wait={"a": 2_345_600_000}).encode(AUTO.hop_ns)
    decoded = Checkpoint.decode(written)
    assert decoded is not None and decoded.text_wait == {"a": 2_346 * MS}  # whole ms, rounded up
    other = Checkpoint.decode(Checkpoint(3, {"a": 10 * NS}, text_wait={"a": 900 * MS}).encode(AUTO.hop_ns))
    assert Checkpoint.merge([decoded, None, other], text_wait=True) == {"a": 2_346 * MS}
    assert Checkpoint.decode(Checkpoint(3, {"a": 10 * NS}).encode(AUTO.hop_ns)).text_wait == {}  # type: ignore[union-attr]
