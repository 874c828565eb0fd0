"""What our producers tell the service about their progress (docs/wire-format.md#progress).

A source that sends a modality in event-time order (a file's tracks, a camera, a microphone, a
caption file, the recogniser) knows more than its records say: nothing earlier will follow. Saying
so lets the service close a window as soon as every modality is complete past its end, instead of
waiting out the allowed lateness, or, for a sparse transcript, the next word:

- every video and audio record gets the complete flag (``FLAG_COMPLETE``; readers of version 1 ignore it);
  a text source sets it itself, where no later cue starts before a cue's end;
- a file's captions, merged in event time with its frames and audio, are complete up to the time
  of the newest frame or chunk sent: a progress record says so every ``every_ns`` of event time,
  so windows between cues need not wait for the next cue;
- when the source ends, or fails (a camera that dropped), each of its modalities gets a progress
  record marked ``ended``, so the service stops waiting for it at once.

Progress records are version 2: a service from before them dead-letters them (``--no-progress``
leaves them out, keeping the flags, which every reader accepts).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Iterator

from fusionstream.stream.media import progress_record
from fusionstream.stream.records import FLAG_COMPLETE, Encoding, Modality, Record

#: Least event time between two progress records of one modality (the format asks 100-500 ms).
EVERY_NS = 250_000_000


class ProgressAnnouncer:
    """Adds the complete flag and progress records to a source's records (:meth:`__call__`), and
    remembers how far each modality got, so that a producer stopped from outside (Ctrl-C, SIGTERM)
    can still say ``ended`` (:meth:`ended`) instead of leaving the service to wait out the lateness."""

    def __init__(self, *, follow_text: bool = False, every_ns: int = EVERY_NS) -> None:
        self.follow_text = follow_text
        self.every_ns = every_ns
        # Per (stream, modality): the next seq to use and the newest t_end sent.
        self._seq: dict[tuple[str, Modality], int] = {}
        self._reached: dict[tuple[str, Modality], int] = {}
        #: Modalities whose source already sent its own ``ended`` (the recogniser does) since its last record.
        self._said_ended: set[tuple[str, Modality]] = set()

    def ended(self) -> list[Record]:
        """An ``ended`` progress record for each modality seen that has not said so itself.

        Safe to call from another thread than the one iterating: it reads copies, and a record the
        source made but nobody sent only leaves a gap in ``seq``, which readers do not rely on."""
        reached, seq, said = dict(self._reached), dict(self._seq), set(self._said_ended)
        return [
            progress_record(key[0], key[1], seq.get(key, 0), t_ns, ended=True)
            for key, t_ns in reached.items()
            if key not in said
        ]

    def __call__(self, records: Iterable[Record]) -> Iterator[Record]:
        seq, reached = self._seq, self._reached
        text_told: dict[str, int] = {}
        try:
            for record in records:
                key = (record.stream_id, record.modality)
                seq[key] = max(seq.get(key, 0), record.seq + 1)
                if record.encoding is Encoding.PROGRESS:
                    reached[key] = max(reached.get(key, record.t_end_ns), record.t_end_ns)
                    if record.meta.get("ended"):
                        self._said_ended.add(key)
                    yield record
                    continue
                self._said_ended.discard(key)
                reached[key] = max(reached.get(key, record.t_end_ns), record.t_end_ns)
                if record.modality is Modality.TEXT:
                    # Only a text source knows whether a later cue starts inside this one (cues of two
                    # speakers overlap): it sets the flag itself where it holds.
                    yield record
                else:
                    yield dataclasses.replace(record, flags=record.flags | FLAG_COMPLETE)
                if self.follow_text and record.modality is not Modality.TEXT:
                    # Merged by start time: every cue starting before this record's start has been sent.
                    told = text_told.get(record.stream_id)
                    if told is None or record.t_start_ns - told >= self.every_ns:
                        text_told[record.stream_id] = record.t_start_ns
                        text = (record.stream_id, Modality.TEXT)
                        reached[text] = max(reached.get(text, record.t_start_ns), record.t_start_ns)
                        yield progress_record(record.stream_id, Modality.TEXT, seq.get(text, 0), record.t_start_ns)
        except Exception:
            yield from self.ended()  # a failed source (a camera that dropped) says so before its error
            raise
        # Not marked as said: they may still sit in a queue when the producer is stopped, which then sends
        # them again (a repeated progress record does no harm).
        yield from self.ended()


def without_progress_records(records: Iterable[Record]) -> Iterator[Record]:
    """``records`` less the progress records (for a service from before them); the flags stay."""
    return (r for r in records if r.encoding is not Encoding.PROGRESS)


__all__ = ["EVERY_NS", "ProgressAnnouncer", "without_progress_records"]
