"""Source progress (docs/wire-format.md#progress): the record, what an old reader does with it, and
how the aligner closes windows on it instead of waiting out the lateness or the next word."""

from __future__ import annotations

import dataclasses
import struct

import numpy as np
import pytest
from test_aligner import T0, av, chunk, frame, segment
from test_wire import doc_dump

from fusionstream.stream import wire
from fusionstream.stream.aligner import Aligner
from fusionstream.stream.errors import BadRecord
from fusionstream.stream.media import audio_record, decode_media, decode_wire, progress_record, text_record
from fusionstream.stream.records import FLAG_COMPLETE, AudioChunk, Modality, Progress, TextSegment
from fusionstream.stream.windows import WindowConfig
from fusionstream.units import MS

T = 1_767_225_600_000_000_000


def v1_reader(value: bytes) -> tuple[int, int, int]:
    """A client written from the version-1 page alone: it checks the magic and the version, as that
    page told it to, ignores the flags byte, and returns (modality, encoding, payload length)."""
    magic, version, modality, encoding, _flags, sid_len, _seq, _t0, _t1, meta_len, payload_len = struct.unpack_from(
        ">2sBBBBHQqqII", value
    )
    if magic != b"FS":
        raise ValueError("bad-magic")
    if version != 1:
        raise ValueError("unsupported-version")
    if encoding not in (1, 2, 3, 4, 5):
        raise ValueError("unknown-encoding")
    assert len(value) == 40 + sid_len + meta_len + payload_len
    return modality, encoding, payload_len


def test_documented_progress_example_bytes() -> None:
    """The progress example of docs/wire-format.md, byte for byte."""
    data = wire.encode(progress_record("cam-01", Modality.TEXT, 8, T + 700_000_000))
    expected = (
        b"FS\x02\x03\x06\x00\x00\x06"
        + struct.pack(">Q", 8)
        + bytes.fromhex("1886725217b32700") * 2
        + struct.pack(">II", 0, 0)
        + b"cam-01"
    )
    assert data == expected and len(data) == 46
    assert doc_dump("encoding progress") == data, "the page's dump is what encode writes"
    item = decode_wire(data)
    assert item == Progress("cam-01", Modality.TEXT, T + 700_000_000, False)


def test_progress_round_trips_and_bad_ones_are_refused() -> None:
    ended = progress_record("cam", Modality.VIDEO, 3, T, ended=True)
    assert wire.decode(wire.encode(ended)) == ended
    assert decode_media(ended) == Progress("cam", Modality.VIDEO, T, True)
    good = wire.encode(progress_record("cam", Modality.AUDIO, 1, T))
    with_payload = good[:36] + struct.pack(">I", 1) + good[40:] + b"x"
    with pytest.raises(BadRecord) as bad:
        wire.decode(with_payload)
    assert bad.value.reason == "bad-progress"
    as_version_1 = good[:2] + b"\x01" + good[3:]
    with pytest.raises(BadRecord) as bad:
        wire.decode(as_version_1)
    assert bad.value.reason == "unknown-encoding", "encoding 6 is defined by version 2 only"


def test_complete_flag_round_trips_and_a_version_1_reader_reads_flagged_media_but_rejects_progress() -> None:
    samples = np.zeros(640, np.float32)
    flagged = [
        audio_record("cam", 1, T, samples, 16_000, complete=True),
        text_record("cam", 2, T, T + 300 * MS, "seven", complete=True),
    ]
    for record in flagged:
        data = wire.encode(record)
        assert data[5] == FLAG_COMPLETE and wire.decode(data) == record
        assert v1_reader(data)[2] == len(record.payload), "old readers ignore the flags byte"
        item = decode_media(record)
        assert isinstance(item, AudioChunk | TextSegment) and item.complete
    assert not decode_media(text_record("cam", 3, T, T + 1, "x")).complete
    with pytest.raises(ValueError, match="unsupported-version"):
        v1_reader(wire.encode(progress_record("cam", Modality.TEXT, 4, T)))


def test_text_progress_closes_windows_without_waiting_for_the_next_word() -> None:
    """A word every 1.5 s, delivered late: without progress each window waits for the next word
    (or max_skew); with the captioner saying "decoded up to T", it closes as soon as T passes its end."""
    config = WindowConfig(lateness_ns=200 * MS)
    waiting, told = Aligner(config), Aligner(config)
    for aligner in (waiting, told):
        for item in av("s", 0, 1920, text=False):
            aligner.add(item, 0)
        aligner.add(segment(100, 400, "one"), 0)
    assert waiting.poll(0) == [] and told.poll(0) == []
    told.progress(Progress("s", Modality.TEXT, T0 + 1920 * MS), 0)
    closed = told.poll(0)
    # Video and audio reach 1.92 s and wait out 200 ms of lateness; text is complete to 1.92 s.
    assert [(w.t_start_ns - T0) // MS for w in closed] == [-500, 0, 500]
    assert waiting.poll(0) == [] and told.stats.progress == 1


def test_progress_and_complete_media_skip_the_lateness_wait() -> None:
    config = WindowConfig(lateness_ns=200 * MS)
    aligner = Aligner(config, [Modality.VIDEO, Modality.AUDIO])  # a model without text
    for t in np.arange(0, 1000, 40):
        item = chunk(t)
        aligner.add(AudioChunk(item.stream_id, item.t_start_ns, item.t_end_ns, item.samples, item.sample_rate,
                               item.ref, complete=True), 0)
    aligner.add(frame(0), 0)
    # The video's newest frame is at 0 ms: it is waited for until its progress says more.
    assert [w.t_start_ns for w in aligner.poll(0)] == []
    aligner.progress(Progress("s", Modality.VIDEO, T0 + 1000 * MS), 0)
    assert aligner.watermark("s", 0) == T0 + 1000 * MS, "no lateness subtracted from promises"
    assert [(w.t_start_ns - T0) // MS for w in aligner.poll(0)] == [-500, 0]


def test_an_ended_source_is_not_waited_for_until_it_sends_again() -> None:
    aligner = Aligner(WindowConfig(lateness_ns=0))
    for item in av("s", 0, 1000, text=False):
        aligner.add(item, 0)
    aligner.add(segment(0, 300, "one"), 0)
    assert aligner.watermark("s", 0) == T0 + 300 * MS
    aligner.progress(Progress("s", Modality.TEXT, T0 + 300 * MS, ended=True), 0)
    assert aligner.watermark("s", 0) == T0 + 1000 * MS
    aligner.add(segment(1000, 1100, "two"), 0)
    for item in av("s", 1000, 1800, text=False):
        aligner.add(item, 0)
    assert aligner.watermark("s", 0) == T0 + 1100 * MS, "a new word ends the pause: text is waited for again"


def test_progress_of_a_stream_not_open_here_is_dropped_and_partly_late_records_are_counted() -> None:
    aligner = Aligner(WindowConfig(lateness_ns=0))
    aligner.progress(Progress("other", Modality.TEXT, T0), 0)
    assert aligner.stream_ids == []
    for item in av("s", 0, 2000, text=False):
        aligner.add(item, 0)
    assert aligner.poll(0) == [], "text, not seen yet, is waited for"
    aligner.poll(WindowConfig().idle_timeout_ns)  # no longer, once the stream is open for the idle timeout
    edge = aligner._streams["s"].next_start_ns - T0
    # A transcript segment spanning the edge: two of its three windows closed, the third is open.
    admission = aligner.add(segment(edge / MS - 100, edge / MS + 100, "late"), 0)
    assert admission.partly_late and admission.missed == 2 and len(admission.window_starts) == 1
    assert aligner.stats.partly_late == 1 and aligner.stats.late == 0


def test_a_stream_whose_every_source_ended_closes_all_its_windows() -> None:
    aligner = Aligner(WindowConfig(lateness_ns=200 * MS))
    for item in av("s", 0, 3000):
        aligner.add(item, 0)
    for modality in Modality:
        aligner.progress(Progress("s", modality, T0 + 3000 * MS, ended=True), 0)
    closed = aligner.poll(0)
    assert [(w.t_start_ns - T0) // MS for w in closed] == list(range(-500, 3000, 500))
    assert {w.closed_by for w in closed} == {"watermark"}


def test_provisional_windows_come_before_their_final_once_each() -> None:
    config = WindowConfig(lateness_ns=200 * MS, provisional_without=frozenset({Modality.TEXT}))
    aligner = Aligner(config)
    for item in av("s", 0, 2000, text=False):
        aligner.add(item, 0)
    aligner.add(segment(200, 500, "one"), 0)
    assert aligner.poll(0) == []
    early = aligner.provisional(0)
    # Video and audio are complete to 1.8 s (2 s less the lateness); the text is not.
    assert [(w.t_start_ns - T0) // MS for w in early] == [-500, 0, 500]
    assert all(not w.final and w.closed_by == "provisional" and w.refs == () for w in early)
    assert early[0].transcript == "one", "built from what is there"
    assert aligner.provisional(0) == [], "each window is offered once"
    aligner.progress(Progress("s", Modality.TEXT, T0 + 2000 * MS), 0)
    final = aligner.poll(0)
    assert [(w.t_start_ns - T0) // MS for w in final] == [-500, 0, 500]
    assert all(w.final and w.revision == 1 and w.refs for w in final)
    # A window that closes with every modality in needs no provisional: its first prediction is final.
    for item in av("s", 2000, 2600):
        aligner.add(item, 0)
    aligner.progress(Progress("s", Modality.TEXT, T0 + 2600 * MS), 0)
    closed = aligner.poll(0)
    assert closed and all(w.revision == 0 and w.final for w in closed)
    assert aligner.provisional(0) == []


def test_a_wait_budget_caps_how_long_finals_wait_for_a_modality() -> None:
    budget = WindowConfig(lateness_ns=0, wait_ns=((Modality.TEXT, 500 * MS),))
    aligner = Aligner(budget)
    for item in av("s", 0, 1000, text=False):
        aligner.add(item, 0)
    aligner.add(segment(0, 600, "one"), 0)
    assert aligner.watermark("s", 0) == T0 + 600 * MS, "400 ms behind: within its budget"
    for item in av("s", 1000, 1400, text=False):
        aligner.add(item, 0)
    # The text is now more than its 500 ms budget behind: a window waits for it until the newest data is
    # 500 ms past the window's end, no longer (dropping the text altogether would close the windows whose
    # budget has not run out, and make the words still coming for them late).
    assert aligner.watermark("s", 0) == T0 + 900 * MS


def test_provisional_windows_stop_at_the_data_when_the_fast_sources_ended() -> None:
    aligner = Aligner(WindowConfig(lateness_ns=0, provisional_without=frozenset({Modality.TEXT})))
    for item in av("s", 0, 1000, text=False):
        aligner.add(item, 0)
    aligner.add(segment(0, 100, "one"), 0)
    for modality in (Modality.VIDEO, Modality.AUDIO):
        aligner.progress(Progress("s", modality, T0 + 1000 * MS, ended=True), 0)
    early = aligner.provisional(0)  # the fast side's watermark is unbounded: it must still end
    assert [(w.t_start_ns - T0) // MS for w in early] == [-500, 0, 500]


def test_a_modality_that_starts_after_the_others_loses_nothing_within_the_skew() -> None:
    """A camera whose first frames arrive after 1.2 s of its microphone's audio (complete, even): the windows
    wait for the video as for a modality that lags, so no frame is late and the first windows have video."""
    aligner = Aligner(WindowConfig(lateness_ns=200 * MS), [Modality.VIDEO, Modality.AUDIO])
    closed = []
    for t in np.arange(0, 1200, 40):
        item = chunk(t)
        aligner.add(AudioChunk(item.stream_id, item.t_start_ns, item.t_end_ns, item.samples, item.sample_rate,
                               item.ref, complete=True), 0)
        closed += aligner.poll(0)
    assert closed == [], "a window closed before the video had a chance to start"
    frames = [frame(t) for t in np.arange(0, 1200, 1000 / 15)]
    assert not any(aligner.add(f, 300 * MS).late for f in frames)
    closed = aligner.poll(300 * MS) + aligner.flush()
    assert aligner.stats.late == 0 and aligner.stats.partly_late == 0
    assert {(w.t_start_ns - T0) // MS: w.mask[0] for w in closed} == {-500: True, 0: True, 500: True, 1000: True}


def test_a_modality_that_never_comes_is_waited_for_within_bounds() -> None:
    config = WindowConfig(lateness_ns=0)

    def stream_without_text(aligner: Aligner) -> None:
        for item in av("s", 0, 4000, text=False):
            aligner.add(item, 0)

    # Until the newest (the latest record's start, 3960 ms) is the allowed skew (2 s) past a window's end...
    aligner = Aligner(config)
    stream_without_text(aligner)
    assert [(w.t_start_ns - T0) // MS for w in aligner.poll(0)] == [-500, 0, 500]
    # ...or the stream has been open for the idle timeout (processing time)...
    aligner = Aligner(config)
    stream_without_text(aligner)
    assert len(aligner.poll(config.idle_timeout_ns - 1)) == 3
    aligner.add(frame(3990), config.idle_timeout_ns)  # the camera goes on
    assert [(w.t_start_ns - T0) // MS for w in aligner.poll(config.idle_timeout_ns)][-1] == 3000
    # ...or its producer says it has none (an ended source), or the model does not use it: no wait at all.
    aligner = Aligner(config)
    stream_without_text(aligner)
    aligner.progress(Progress("s", Modality.TEXT, T0, ended=True), 0)
    assert [(w.t_start_ns - T0) // MS for w in aligner.poll(0)][-1] == 3000
    aligner = Aligner(config, [Modality.VIDEO, Modality.AUDIO])
    stream_without_text(aligner)
    assert [(w.t_start_ns - T0) // MS for w in aligner.poll(0)][-1] == 3000


@pytest.mark.parametrize("complete", [False, True], ids=["no-flags", "complete-flags"])
@pytest.mark.parametrize("cue_ms", [3000, 4500])
def test_a_long_caption_cue_does_not_make_real_time_video_and_audio_look_behind(complete: bool, cue_ms: int) -> None:
    """A captioner sends each cue at its start; a cue lasts seconds, longer than ``max_skew_ms``. Its end is no
    reason to stop waiting for a camera and a microphone delivering in real time: none of their records is
    late, also when every record carries the complete flag as our producers send them (a cue's flag then
    promises the text up to the cue's end, seconds ahead of the camera)."""
    aligner = Aligner(WindowConfig(lateness_ns=200 * MS))
    items = av("s", 0, 9000, text=False) + [segment(t, t + cue_ms, "seven") for t in range(0, 9000, cue_ms)]
    items = [dataclasses.replace(item, complete=complete) for item in items]
    items.sort(key=lambda item: item.t_start_ns)  # in the order they are sent: a cue at its start
    closed = []
    for item in items:
        assert not aligner.add(item, 0).late
        closed += aligner.poll(0)
    closed += aligner.flush()
    assert aligner.stats.late == 0 and aligner.stats.partly_late == 0
    assert len(closed) >= 17 and all(w.mask[0] and w.mask[1] for w in closed if 0 <= w.t_start_ns - T0 < 8500 * MS)
