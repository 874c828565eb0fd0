"""Event-time alignment of three modalities into hopping windows, per stream (docs/architecture.md#alignment).

The aligner is pure and synchronous: items in, closed windows out. It has no Kafka
and no clock of its own; callers pass the processing time (``now_ns``), so tests,
replays and the service all drive it the same way and get the same windows.

Per stream it keeps each modality's items sorted by start time. A window ``[s, s + W)`` with ``s`` on the
stream's grid (a multiple of the hop, plus the stream's offset when windows are staggered) is built only when it
closes, by slicing those buffers, so overlapping windows share items without copies. Items are pruned once no
unemitted window can contain them.
"""

from __future__ import annotations

import bisect
from collections import OrderedDict
from collections.abc import Collection, Iterable

from fusionstream.stream.admission import Admission, AlignerStats
from fusionstream.stream.amendments import amend, amendable, rebuild
from fusionstream.stream.assemble import build_window
from fusionstream.stream.buffers import ENDED, NEVER, ModalityBuffer, StreamState, stream_watermark
from fusionstream.stream.frames_ahead import frames_due
from fusionstream.stream.learned_wait import learn_wait, learned_need, resume_waits
from fusionstream.stream.records import MODALITIES, AudioChunk, Frame, MediaItem, Modality, Progress, Record
from fusionstream.stream.resample import resample
from fusionstream.stream.windows import Window, WindowConfig


def last_instant(item: MediaItem | Record) -> int:
    """The last nanosecond an item covers; a frame (or a zero-length segment) is an instant."""
    if item.modality is Modality.VIDEO or item.t_end_ns <= item.t_start_ns:
        return item.t_start_ns
    return item.t_end_ns - 1


class Aligner:
    """Groups items into per-stream hopping windows and closes them by watermark or timeout."""

    def __init__(self, config: WindowConfig | None = None, modalities: Collection[Modality] = MODALITIES) -> None:
        """``modalities``: those a stream's windows wait for even before the stream sent any of it (a model's
        declared modalities; a record of another one should not reach the aligner)."""
        self.config = config or WindowConfig()
        self._awaited = frozenset(modalities)
        self.stats = AlignerStats()
        self._streams: dict[str, StreamState] = {}
        # Evicted streams keep how far they were emitted: a stale record cannot re-open (re-emit) a published window.
        self._tombstones: OrderedDict[str, int] = OrderedDict()
        #: Streams resumed, before they reopen: where their windows were published to, and their provisionals.
        self._resumed: dict[str, int] = {}
        self._provisional_resume: dict[str, int] = {}
        #: Streams that took an item or progress since :meth:`take_recent` last asked.
        self._recent: set[str] = set()
        self._budgets: dict[Modality, int] = dict(self.config.wait_ns)
        #: Streams resumed with a learnt wait budget (the worst need, by modality), before they reopen.
        self._wait_resume: dict[str, dict[Modality, int]] = {}
        #: Modalities with input not read yet (set by the service): windows wait for them however far they lag.
        self.behind: frozenset[Modality] = frozenset()

    # -- intake ---------------------------------------------------------------------------------

    def add(self, item: MediaItem, now_ns: int) -> Admission:
        """Buffer one decoded item; report which windows it joined (none means late)."""
        cfg = self.config
        last_ns = last_instant(item)
        starts = cfg.stream_starts(item.stream_id, item.t_start_ns, last_ns)
        first, last = starts.start, starts.stop - 1
        state = self._streams.get(item.stream_id)
        emitted_until = state.next_start_ns if state else self._tombstones.get(item.stream_id)
        missed = 0
        # The stream learns its wait budget from this record (``text_wait_ms`` auto), unless its topic has
        # records unread: then it is late because the service is behind, not its source.
        learner = state if item.modality in cfg.learn_wait and item.modality not in self.behind else None
        if emitted_until is not None and emitted_until > first:
            resumed = state.resumed_until_ns if state else self._resumed.get(item.stream_id, NEVER)
            missed = max(0, min(len(starts), -(-(emitted_until - max(first, resumed)) // cfg.hop_ns)))
            first = emitted_until
        elif (state is not None and first < state.first_start_ns
              and starts[-1] + cfg.window_ns <= self._watermark(state, now_ns)):
            # Before its first window closed, a stream takes records from before its first one, but not one
            # whose every window the watermark has passed (a producer resending an old buffer): those
            # windows would have closed before it came, and it made windows from before the stream began.
            missed, first = len(starts), last + 1
        if first > last:
            self.stats.late += 1
            if learner is not None:
                learn_wait(learner, cfg, item.modality, (item.t_start_ns, item.t_end_ns), starts.start, self._budgets)
            if state is not None:
                self._arrived_late(state, item, now_ns)
            return Admission((), missed, closed_until_ns=emitted_until)
        if isinstance(item, AudioChunk) and item.sample_rate != cfg.sample_rate:
            item = AudioChunk(
                item.stream_id,
                item.t_start_ns,
                item.t_end_ns,
                resample(item.samples, item.sample_rate, cfg.sample_rate),
                cfg.sample_rate,
                item.ref,
                item.complete,
            )
        if state is not None and (state.buffers[item.modality].holds(item)
                                  or (state.retired is not None and state.retired[item.modality].holds(item))):
            self.stats.duplicates += 1
            return Admission((), missed, duplicate=True)
        if learner is not None:  # not a copy resent (a producer's retry): that says nothing of the feed
            learn_wait(learner, cfg, item.modality, (item.t_start_ns, item.t_end_ns), starts.start, self._budgets)
        amending = amendable(cfg, state, starts.start, first)
        before = {start: rebuild(cfg, item.stream_id, state, start) for start in amending}
        if state is None:
            state = StreamState({m: ModalityBuffer() for m in MODALITIES}, emitted_until, first, now_ns,
                                offset_ns=cfg.offset_ns(item.stream_id),
                                provisional_until_ns=(resumed := self._provisional_resume.pop(item.stream_id, NEVER)),
                                resumed_provisional_ns=resumed,
                                resumed_until_ns=self._resumed.pop(item.stream_id, NEVER),
                                retired={m: ModalityBuffer() for m in MODALITIES} if self._amends else None,
                                arrived_ns=now_ns)
            self._streams[item.stream_id] = state
            resume_waits(state, cfg, self._wait_resume.pop(item.stream_id, {}), self._budgets)
            self._tombstones.pop(item.stream_id, None)
            self.stats.open_streams = len(self._streams)
        self._recent.add(item.stream_id)
        buffer = state.buffers[item.modality]
        buffer.insert(item, last_ns)
        if item.t_end_ns > buffer.latest_end_ns:
            buffer.latest_end_ns = item.t_end_ns
        # A record from before the point its source said it ended (complete to there) is a straggler, not the
        # source back: un-ended by it, a budgeted transcript was waited for by every later window.
        if buffer.ended and item.t_start_ns >= buffer.complete_ns:
            buffer.ended = False
        if item.complete and item.t_end_ns > buffer.complete_ns:
            buffer.complete_ns = item.t_end_ns
        self._advance_newest(state, item.t_end_ns)
        buffer.last_arrival_ns = now_ns
        state.last_arrival_ns = now_ns
        if first < state.first_start_ns:
            state.first_start_ns = first
        self.stats.items += 1
        self.stats.partly_late += missed > 0
        queued = len(state.amended)
        amended = tuple(amend(cfg, state, item, before)) if before else ()
        self.stats.amended += len(state.amended) - queued
        return Admission(amended + tuple(range(first, last + 1, cfg.hop_ns)), missed)

    def _arrived_late(self, state: StreamState, item: MediaItem, now_ns: int) -> None:
        """A late item joins no window, but its source is alive and has come this far: without it, a transcript
        that fell behind stayed behind (and silent, to the idle timeout), so its next words were late too. It
        never makes a source that said it ended waited for again (nor does an on-time straggler: see :meth:`add`).
        The stream is not kept alive by it: a device whose clock went back sends nothing but late records, and its
        last windows waited for the idle timeout as long as it sent them (a minute and more)."""
        buffer = state.buffers[item.modality]
        if item.t_end_ns > buffer.latest_end_ns:
            buffer.latest_end_ns = item.t_end_ns
        self._advance_newest(state, item.t_end_ns)
        buffer.last_arrival_ns = now_ns
        self._recent.add(item.stream_id)  # its watermark may have moved: polled after this fetch

    @property
    def _amends(self) -> bool:
        """Whether closed windows are revised when a partly late record changes them: with revisions on."""
        return bool(self.config.provisional_without)

    def progress(self, progress: Progress, now_ns: int) -> None:
        """Take a progress record: its modality of its stream is complete up to ``progress.t_ns``, so
        the watermark need not wait the allowed lateness for it there (docs/wire-format.md#progress);
        ``ended``: stop waiting for the modality until it sends again. A stream with nothing
        buffered has no window to close: the progress of a stream not open here is dropped (its
        producer repeats it as it goes on)."""
        self.stats.progress += 1
        state = self._streams.get(progress.stream_id)
        if state is None:
            return
        self._recent.add(progress.stream_id)
        buffer = state.buffers[progress.modality]
        if progress.t_ns > buffer.complete_ns:
            buffer.complete_ns = progress.t_ns
        buffer.ended = progress.ended
        self._advance_newest(state, progress.t_ns, ended=progress.ended)
        buffer.last_arrival_ns = now_ns
        state.last_arrival_ns = now_ns

    @staticmethod
    def _advance_newest(state: StreamState, t_ns: int, *, ended: bool = False) -> None:
        """Keep ``state.newest_ns`` (see there) past ``t_ns``, and ENDED while any source says it ended: the
        watermark of the modalities left (a provisional window's) can then be ENDED, whatever the newest."""
        if ended:
            state.newest_ns = ENDED
        elif state.newest_ns == ENDED:
            if not any(b.ended for b in state.buffers.values()):  # every source that ended has sent again
                state.newest_ns = max(max(b.latest_end_ns, b.complete_ns) for b in state.buffers.values())
        elif t_ns > state.newest_ns:
            state.newest_ns = t_ns

    # -- closing --------------------------------------------------------------------------------

    def take_recent(self) -> set[str]:
        """The streams that took an item or progress since the last call: the only ones whose watermark
        can have moved since, but by the clock (a modality or stream falling silent), which a periodic
        :meth:`poll` of every stream covers."""
        recent, self._recent = self._recent, set()
        return recent

    def poll(self, now_ns: int, streams: Collection[str] | None = None, limit: int | None = None) -> list[Window]:
        """Close every window the watermark has passed, or whose stream has gone silent: of every stream, or of
        ``streams`` only (those of :meth:`take_recent`, right after a fetch: a poll of each of many streams per
        fetch was most of the aligner's time); with ``limit``, no more streams once that many windows closed."""
        cfg = self.config
        window_ns = cfg.window_ns
        closed: list[Window] = []
        for stream_id in list(self._streams) if streams is None else [s for s in streams if s in self._streams]:
            if limit is not None and len(closed) >= limit:
                break  # the rest at a later poll: a burst of silent streams built 20,000 windows (1.3 GB) at once
            state = self._streams[stream_id]
            if state.amended:
                closed += state.amended
                state.amended = []
            silent_for = now_ns - state.last_arrival_ns
            if silent_for >= cfg.idle_timeout_ns:
                closed += self._emit_until(stream_id, state, None, "timeout")
                if silent_for >= cfg.evict_after_ns:
                    self._evict(stream_id, state)
            elif state.newest_ns >= _floor(state) + window_ns:  # else no window can close: skip the watermark
                closed += self._emit_until(stream_id, state, self._watermark(state, now_ns), "watermark")
        return closed

    def ready(self, now_ns: int, limit: int = 64) -> list[Window]:
        """Open windows whose audio (or, without audio, video) has passed the window's end, kept
        open by the allowed lateness, a caption still running or a lagging modality: each is
        offered once, built as it would close now, so the caller can start on its encoders
        meanwhile (``closed_by`` is ``"ready"``). A record arriving later still joins the
        window; what closes is the authority. At most ``limit`` windows a call.
        """
        cfg = self.config
        offered: list[Window] = []
        reach = cfg.lateness_ns - cfg.window_ns  # what _media_complete can add to the newest, less a window
        for stream_id, state in self._streams.items():
            start = max(_floor(state), state.offered_until_ns)
            if state.newest_ns + reach < start or now_ns - state.last_arrival_ns >= cfg.idle_timeout_ns:
                continue
            complete = self._media_complete(state, now_ns)
            state.offered_until_ns = self._offer(stream_id, state, start, complete, limit, offered, final=True)
        return offered

    def frames_due(self, streams: Collection[str], limit: int) -> list[tuple[str, Frame]]:
        """``(stream, frame)`` for the frames these streams' open windows will sample, picked already and not
        given out before (``fusionstream.stream.frames_ahead``), at most ``limit``: to encode ahead."""
        due: list[tuple[str, Frame]] = []
        for stream_id in streams:
            state = self._streams.get(stream_id)
            if state is not None and len(due) < limit:
                due += [(stream_id, f) for f in frames_due(self.config, state, _floor(state), limit - len(due))]
        return due

    def _offer(self, stream_id: str, state: StreamState, start: int, until: int, limit: int, offered: list[Window],
               *, final: bool) -> int:
        """Append to ``offered`` the windows from ``start`` that end by ``until`` (``ready``'s, or provisional
        ones unless ``final``), skipping gaps; returns the start of the first window not offered."""
        cfg = self.config
        reason = "ready" if final else "provisional"
        while start + cfg.window_ns <= until and len(offered) < limit:
            window = self._build(stream_id, state, start, reason, final=final)
            if window is not None:
                offered.append(window)
                if not final:
                    state.provisioned.add(start)
                start += cfg.hop_ns
                continue
            # A gap, or the end (``until`` is unbounded once every source ended): on to the next item, if any.
            following = self._first_start_after(state, start)
            if following is None:
                break
            start = max(start + cfg.hop_ns, cfg.starts_overlapping(following, following, state.offset_ns).start)
        return start

    def _media_complete(self, state: StreamState, now_ns: int) -> int:
        """How far a window's encoders could run on final data: as far as the audio has come (the
        costly encoder), unless it lags the video by more than the allowed lateness (a gap in
        the audio: the window closes without it), then as far as the video has come. A stream
        with neither uses the watermark's rule without its lateness. Data arriving after all
        costs only its own share of the encoding at the close."""
        cfg = self.config
        live = {
            modality: state.buffers[modality].latest_end_ns
            for modality in (Modality.AUDIO, Modality.VIDEO)
            if state.buffers[modality].latest_end_ns != NEVER
            and now_ns - state.buffers[modality].last_arrival_ns < cfg.idle_timeout_ns
        }
        if not live:
            return self._watermark(state, now_ns) + cfg.lateness_ns
        newest = max(live.values())
        audio = live.get(Modality.AUDIO, NEVER)
        return audio if audio >= newest - cfg.lateness_ns else newest

    @staticmethod
    def _first_start_after(state: StreamState, t_ns: int) -> int | None:
        later = [
            b.starts[i] for b in state.buffers.values() if (i := bisect.bisect_left(b.starts, t_ns)) < len(b.starts)
        ]
        return min(later, default=None)

    def flush(self, stream_ids: list[str] | None = None) -> list[Window]:
        """Close every window of these streams (all by default): end of input, or shutdown."""
        closed: list[Window] = []
        for stream_id in list(self._streams) if stream_ids is None else stream_ids:
            state = self._streams.get(stream_id)
            if state is not None:
                closed += state.amended
                state.amended = []
                closed += self._emit_until(stream_id, state, None, "flush")
        return closed

    def drop(self, stream_ids: list[str]) -> None:
        """Forget these streams without emitting (their partitions moved to another instance)."""
        for stream_id in stream_ids:
            self._streams.pop(stream_id, None)
            self._tombstones.pop(stream_id, None)
            self._provisional_resume.pop(stream_id, None)
            self._resumed.pop(stream_id, None)
            self._wait_resume.pop(stream_id, None)
        self.stats.open_streams = len(self._streams)

    def resume(self, stream_id: str, emitted_until_ns: int, provisional_until_ns: int | None = None) -> None:
        """Treat every window of ``stream_id`` starting before ``emitted_until_ns`` as already emitted.

        For a restart, or a new owner of the stream's partition: the windows published before stay closed,
        so replayed records cannot emit them again (records that belong only to them are late). The time is
        rounded up to a window start of the stream's grid (as is ``provisional_until_ns``); a stream never
        moves backwards. Meant for a stream with no open state: an open stream's buffered windows before the
        time are discarded, not emitted.
        ``provisional_until_ns``: windows before it had their provisional prediction published
        (revisions on); they get none again, and their final is revision 1.
        """
        offset = self.config.offset_ns(stream_id)
        until = self.config.first_start_from(emitted_until_ns, offset)
        state = self._streams.get(stream_id)
        if provisional_until_ns is not None:  # provisional predictions published before: not again
            provisional_until_ns = self.config.first_start_from(provisional_until_ns, offset)
            if state is not None:
                state.provisional_until_ns = max(state.provisional_until_ns, provisional_until_ns)
                state.resumed_provisional_ns = max(state.resumed_provisional_ns, provisional_until_ns)
            else:
                self._provisional_resume[stream_id] = provisional_until_ns
        if state is not None:
            state.resumed_until_ns = max(state.resumed_until_ns, until)
            if state.next_start_ns is None or state.next_start_ns < until:
                state.next_start_ns = until
                state.provisioned = {start for start in state.provisioned if start >= until}
                for buffer in state.buffers.values():
                    buffer.prune_before(until)
            return
        self._resumed[stream_id] = max(self._resumed.get(stream_id, NEVER), until)
        if self._tombstones.get(stream_id, NEVER) < until:
            self._tombstones[stream_id] = until
            self._tombstones.move_to_end(stream_id)
            while len(self._tombstones) > self.config.tombstones:
                self._tombstones.popitem(last=False)

    def is_open(self, stream_id: str, start_ns: int) -> bool:
        """Whether the window of ``stream_id`` starting at ``start_ns`` can still take records."""
        state = self._streams.get(stream_id)
        return state is not None and (state.next_start_ns is None or start_ns >= state.next_start_ns)

    def watermark(self, stream_id: str, now_ns: int) -> int | None:
        """The stream's current watermark (None if unknown), for metrics and tests."""
        state = self._streams.get(stream_id)
        return None if state is None else self._watermark(state, now_ns)

    def learned_waits(self, stream_ids: Iterable[str], modality: Modality) -> dict[str, int]:
        """Per stream of ``stream_ids`` whose ``modality`` has a learnt wait budget past its warm-up, the
        worst recent need it comes from: for the checkpoint, to :meth:`resume_waits` after a restart."""
        if modality not in self.config.learn_wait:
            return {}
        return {sid: need for sid in stream_ids if (need := learned_need(self._streams.get(sid), modality,
                                                                          self._wait_resume.get(sid))) is not None}

    def resume_waits(self, stream_id: str, needs: dict[Modality, int]) -> None:
        """Start ``stream_id``'s learnt wait budgets from an earlier run's :meth:`learned_waits`."""
        state = self._streams.get(stream_id)
        if state is None:
            self._wait_resume[stream_id] = {m: need for m, need in needs.items() if m in self.config.learn_wait}
        else:
            resume_waits(state, self.config, needs, self._budgets)

    def wait_budgets(self, modality: Modality) -> dict[str, int]:
        """Per open stream, the wait budget ``modality`` is held to now, set or learnt (none: left out)."""
        return {sid: budget for sid, state in self._streams.items()
                if (budget := (self._budgets if state.budgets is None else state.budgets).get(modality)) is not None}

    @property
    def stream_ids(self) -> list[str]:
        return list(self._streams)

    def buffered_items(self) -> int:
        return sum(len(b.items) for s in self._streams.values() for b in s.buffers.values())

    def provisional(self, now_ns: int, limit: int = 64, streams: Collection[str] | None = None) -> list[Window]:
        """Open windows whose every modality but ``config.provisional_without`` is complete past their
        end, while one of those is not (docs/predictions.md#revisions): each offered once, built from
        what is there (``final`` False, ``closed_by`` ``"provisional"``, no ``refs``: its records are
        still needed by the final). The window's final, from :meth:`poll`, has revision 1. Call it
        after :meth:`poll`, which closes the windows that need no provisional. ``streams``: as :meth:`poll`'s."""
        cfg = self.config
        if not cfg.provisional_without:
            return []
        offered: list[Window] = []
        chosen = self._streams.items() if streams is None else [
            (s, self._streams[s]) for s in streams if s in self._streams]
        for stream_id, state in chosen:
            start = max(_floor(state), state.provisional_until_ns)
            if state.newest_ns < start + cfg.window_ns or now_ns - state.last_arrival_ns >= cfg.idle_timeout_ns:
                continue  # nothing can end by the fast modalities' watermark (at most the newest), or silent
            fast = self._watermark(state, now_ns, without=cfg.provisional_without)
            state.provisional_until_ns = self._offer(stream_id, state, start, fast, limit, offered, final=False)
        return offered

    def _watermark(self, state: StreamState, now_ns: int, without: frozenset[Modality] = frozenset()) -> int:
        """The end up to which every modality waited for is complete: a modality's newest event time
        less the allowed lateness, or what its producer promised (progress) if that is further. A
        modality is waited for while it is within ``max_skew`` of the newest, sent something (media
        or progress) within ``idle_timeout``, and has not said its source ended; one that has sent
        nothing yet, for ``max_skew`` (or its budget) past each window's end, during the stream's first
        ``idle_timeout``. A modality with a
        wait budget (``wait_ns``, e.g. ``text_wait_ms``) is waited for, silent or lagging, but holds each window
        at most that long behind the newest: its side is never further back than the newest less its budget
        (no bound while it is in :attr:`behind` and not silent: its records are unread, not late)."""
        budgets = self._budgets if state.budgets is None else state.budgets
        return stream_watermark(state, self.config, budgets, now_ns, without, self._awaited, self.behind)

    def _emit_until(self, stream_id: str, state: StreamState, watermark: int | None, reason: str) -> list[Window]:
        """Emit, in start order, the windows with data whose end is at or before ``watermark``."""
        cfg = self.config
        if watermark is not None and _floor(state) + cfg.window_ns > watermark:
            return []  # the usual answer after a fetch: not even the first window not emitted has ended
        closed: list[Window] = []
        while True:
            earliest = min((b.starts[0] for b in state.buffers.values() if b.starts), default=None)
            if earliest is None:
                break
            start = cfg.starts_overlapping(earliest, earliest, state.offset_ns).start
            floor = _floor(state)
            start = max(start, floor)
            if watermark is not None and start + cfg.window_ns > watermark:
                break
            # A window that had a provisional prediction gets its final as revision 1.
            revision = 1 if start in state.provisioned or start < state.resumed_provisional_ns else 0
            state.provisioned.discard(start)
            window = self._build(stream_id, state, start, reason, revision=revision)
            if revision and state.retired is not None:
                state.revisions[start] = revision  # an amendment of it is the revision after
            state.next_start_ns = start + cfg.hop_ns
            self._prune(state)
            if window is not None:
                closed.append(window)
        self._count(closed, reason)
        return closed

    def _prune(self, state: StreamState) -> None:
        """Drop the items no open window needs; with amendments on, keep them a window longer."""
        assert state.next_start_ns is not None
        if state.retired is None:
            for buffer in state.buffers.values():
                buffer.prune_before(state.next_start_ns)
            return
        kept_from = state.next_start_ns - self.config.window_ns
        for modality, buffer in state.buffers.items():
            buffer.retire_before(state.next_start_ns, state.retired[modality])
            state.retired[modality].prune_before(kept_from)
        for start in [s for s in state.revisions if s < kept_from]:
            del state.revisions[start]

    def _count(self, closed: list[Window], reason: str) -> None:
        self.stats.windows += len(closed)
        if reason == "watermark":
            self.stats.closed_by_watermark += len(closed)
        elif reason == "timeout":
            self.stats.closed_by_timeout += len(closed)
        else:
            self.stats.closed_by_flush += len(closed)

    def _evict(self, stream_id: str, state: StreamState) -> None:
        del self._streams[stream_id]
        if state.next_start_ns is not None:
            self._tombstones[stream_id] = state.next_start_ns
            while len(self._tombstones) > self.config.tombstones:
                self._tombstones.popitem(last=False)
        self.stats.evicted_streams += 1
        self.stats.open_streams = len(self._streams)

    # -- building -------------------------------------------------------------------------------

    def _build(self, stream_id: str, state: StreamState, start: int, reason: str, *, revision: int = 0,
               final: bool = True) -> Window | None:
        return build_window(self.config, stream_id, state.buffers, start, reason, revision=revision, final=final)


def _floor(state: StreamState) -> int:
    """Start of the stream's first window not emitted yet (or of its first window, before any)."""
    return state.first_start_ns if state.next_start_ns is None else state.next_start_ns


__all__ = ["Admission", "Aligner", "AlignerStats", "last_instant"]
