"""What a committed offset remembers besides the offset: the commit metadata string.

Kafka stores a short string with every committed offset, atomically with it (and, in
exactly-once mode, inside the same transaction as the predictions). The service
keeps two things there, per input partition:

- ``replay_mark``: records below this offset were fully handled; when a restart
  re-reads them, their dead letters are not sent a second time;
- ``streams``: per stream of the partition, the start of its first window that was
  *not* published yet. On assignment the aligner is told (``Aligner.resume``), so
  windows that were published before stay closed when their records are re-read;
- ``provisional`` (revisions on): per stream whose provisional predictions ran ahead of its
  finals, the start of its first window without one, so a restart does not publish a
  provisional prediction of the same window again (exactly once per window and revision);
- ``text_wait`` (``text_wait_ms`` auto): per stream whose transcript's wait budget was learnt, the worst
  recent need it was learnt from (``stream/learned_wait.py``), so a restart waits for a slow transcript
  at once instead of losing its first words while it learns again;
- ``output``: the predictions topic the group publishes to, so that another group's service starting on the
  same input topics can tell it would publish every window a second time there (``other_groups.py``).

Encoding (JSON, ASCII, at most :data:`MAX_CHARS` characters, because brokers refuse
commit metadata above ``offset.metadata.max.bytes``, 4096 by default)::

    {"v":1,"r":<replay_mark>,"h":<hop_ns>,"b":<base>,"s":{"<stream>":<k>,...},"q":{"<stream>":<k>,...},"g":1,
     "w":{"<stream>":<ms>,...},"o":"<predictions topic>"}

(``q`` and ``w`` only when some stream has one; ``g`` only when the windows were staggered; ``o`` when the
service said; readers from before them ignore them.)

where a stream's time is stored as ``(b + k) * h`` nanoseconds, rounded down to a multiple of the
hop: a window start lies within one hop above it (exactly on it unless windows are staggered),
and ``Aligner.resume`` rounds it up onto the stream's own grid. When the streams do not fit, the
ones a restart would not read again go first (streams that ended: they keep only the rejection
of their stale records), then the ones furthest behind (they lose only the duplicate protection).

A restart onto another grid (a model or setting with another hop, staggering switched) cannot round a
staggered stream's time onto its old grid: :meth:`Checkpoint.on_grid` adds the stream's old offset back
(``h`` and ``g`` say what the grid was), so the new grid resumes at its first window starting at or after
the old one's first unpublished start, in every stream alike.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field, replace

from fusionstream.stream.windows import stream_offset_ns

log = logging.getLogger(__name__)

VERSION = 1
#: Kafka's default ``offset.metadata.max.bytes`` is 4096; keep clear of it.
MAX_CHARS = 3900
#: A checkpoint that leaves streams out is said at most this often.
WARNING_INTERVAL_S = 60.0
_warned_at = -WARNING_INTERVAL_S


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """The metadata committed with one input partition's offset."""

    replay_mark: int = -1
    #: stream id -> start (ns) of the stream's first window not yet published.
    streams: Mapping[str, int] = field(default_factory=dict)
    #: stream id -> start (ns) of the stream's first window without a provisional prediction.
    provisional: Mapping[str, int] = field(default_factory=dict)
    #: The grid the times were written on (decoded checkpoints only): its hop, and whether it was staggered
    #: (None: written before that was recorded).
    hop_ns: int = 0
    staggered: bool | None = None
    #: stream id -> the worst need (ns) its transcript's learnt wait budget came from.
    text_wait: Mapping[str, int] = field(default_factory=dict)
    #: The predictions topic of the service that committed it (None: not said).
    output: str | None = None

    def encode(self, hop_ns: int, *, staggered: bool = False, max_chars: int = MAX_CHARS,
               first: Collection[str] = ()) -> str:
        """The metadata string. When it would not fit, streams are left out: those furthest behind, and the
        streams named in ``first`` (the ones a restart reads again) only after every other one; a warning
        (once a minute at most) says so only when one of those is left out."""
        if hop_ns <= 0:
            raise ValueError("hop_ns must be positive")
        # Rounded down: a staggered stream's start ``offset + k * hop`` (offset < hop) is stored as ``k``, and
        # Aligner.resume rounds ``k * hop`` up onto the stream's grid, back to the same start.
        ticks = {sid: until // hop_ns for sid, until in self.streams.items()}
        needed = frozenset(first) & ticks.keys()
        ordered = sorted(ticks.items(), key=lambda kv: (kv[0] in needed, kv[1]), reverse=True)
        # Each stream takes at least 6 characters ("a":0,): no more than that many can fit, whatever their ids.
        ordered = ordered[: max(len(needed), max_chars // 6 + 1)]
        keep = len(ordered)
        while True:
            chosen = ordered[:keep]
            base = min((k for _, k in chosen), default=0)
            doc: dict[str, object] = {
                "v": VERSION, "r": self.replay_mark, "h": hop_ns, "b": base, "s": {s: k - base for s, k in chosen},
            }
            ahead = {s: self.provisional[s] // hop_ns - base for s, _ in chosen if s in self.provisional}
            if ahead:
                doc["q"] = ahead
            if staggered:
                doc["g"] = 1
            waits = {s: -(-self.text_wait[s] // 1_000_000) for s, _ in chosen if s in self.text_wait}
            if waits:
                doc["w"] = waits
            if self.output is not None:
                doc["o"] = self.output
            text = json.dumps(doc, separators=(",", ":"), ensure_ascii=True)
            if len(text) <= max_chars or keep == 0:
                break
            # Shrink proportionally to the excess, at least by one stream.
            keep = min(keep - 1, int(keep * max_chars / len(text)))
        global _warned_at
        if keep < len(needed) and time.monotonic() - _warned_at >= WARNING_INTERVAL_S:
            _warned_at = time.monotonic()  # a partition's checkpoint is encoded up to five times a second
            log.warning(
                "commit metadata holds %d of the %d streams a restart would read again on one partition (limit %d "
                "characters); the %d furthest behind lose duplicate protection on restart: use more partitions "
                "(said once a minute at most)", keep, len(needed), max_chars, len(needed) - keep,
            )
        return text

    @classmethod
    def decode(cls, text: str | None) -> Checkpoint | None:
        """Parse metadata written by :meth:`encode`; None for empty, foreign or damaged metadata."""
        if not text:
            return None
        try:
            data = json.loads(text)
            if not isinstance(data, dict) or data.get("v") != VERSION:
                return None
            hop, base, mark = int(data["h"]), int(data["b"]), int(data["r"])
            streams = {str(sid): (base + int(k)) * hop for sid, k in dict(data["s"]).items()}
            provisional = {str(sid): (base + int(k)) * hop for sid, k in dict(data.get("q", {})).items()}
            staggered = bool(data["g"]) if "g" in data else None
            text_wait = {str(sid): int(ms) * 1_000_000 for sid, ms in dict(data.get("w", {})).items()}
            output = str(data["o"]) if "o" in data else None
        except (ValueError, TypeError, KeyError):
            log.warning("ignoring commit metadata that is not a fusionstream checkpoint: %.80r", text)
            return None
        if hop <= 0:
            return None
        return cls(replay_mark=mark, streams=streams, provisional=provisional, hop_ns=hop, staggered=staggered,
                   text_wait=text_wait, output=output)

    @staticmethod
    def output_of(text: str | None) -> str | None:
        """The predictions topic a checkpoint names, without a word for metadata that is not one (another
        application's, read by :mod:`.other_groups`): None then, or when the checkpoint does not say."""
        try:
            data = json.loads(text or "")
        except ValueError:
            return None
        output = data.get("o") if isinstance(data, dict) and data.get("v") == VERSION else None
        return output if isinstance(output, str) else None

    def on_grid(self, hop_ns: int, staggered: bool) -> Checkpoint:
        """These times for a service whose grid is ``hop_ns`` (``staggered`` or not): as they are on the grid
        they were written on; on another, each staggered stream's time gets its old offset back (rounded down
        to the old hop, it would otherwise resume up to a hop early on the new grid, before windows it
        published). A checkpoint that does not say whether it was staggered is taken to be as ``staggered``."""
        was_staggered = staggered if self.staggered is None else self.staggered
        if not self.hop_ns or not was_staggered or (self.hop_ns == hop_ns and staggered):
            return self

        def exact(times: Mapping[str, int]) -> dict[str, int]:
            return {sid: t + stream_offset_ns(sid, self.hop_ns) for sid, t in times.items()}

        return replace(self, streams=exact(self.streams), provisional=exact(self.provisional), hop_ns=hop_ns,
                       staggered=staggered)

    @staticmethod
    def merge(checkpoints: list[Checkpoint | None], *, provisional: bool = False,
              text_wait: bool = False) -> dict[str, int]:
        """The streams (or, with ``provisional``, the provisional marks; with ``text_wait``, the learnt
        waits) of several checkpoints (the three topics of one partition), the latest (largest) per stream."""
        merged: dict[str, int] = {}
        for checkpoint in checkpoints:
            if checkpoint is None:
                continue
            times = checkpoint.text_wait if text_wait else checkpoint.provisional if provisional else checkpoint.streams
            for sid, until in times.items():
                if until > merged.get(sid, -(2**63)):
                    merged[sid] = until
        return merged
