"""Amendments: closed windows built again when a partly late record changes them (revisions on).

A window closed and published keeps its items a while (``StreamState.retired``: the last window
length before the first open window). A record that arrives after that window closed, but joins a
later, open one too, changes what the closed window holds: the window is built again with it and
queued as an amended final (docs/predictions.md#revisions). Amendments of one window queued before
the service takes them (one :meth:`~fusionstream.stream.aligner.Aligner.poll`) are one revision:
after a broker outage a backlog brought 33 late chunks into one window, and each was a final of its
own.
"""

from __future__ import annotations

from fusionstream.stream.assemble import build_window
from fusionstream.stream.buffers import StreamState
from fusionstream.stream.records import MODALITIES, MediaItem
from fusionstream.stream.windows import Window, WindowConfig


def amendable(config: WindowConfig, state: StreamState | None, first: int, emitted_until: int) -> list[int]:
    """The closed windows from ``first`` on that a record joining ``emitted_until`` and later can still
    amend: those whose items are kept (the last ``window_ns`` before the first open window)."""
    if state is None or state.retired is None or first >= emitted_until:
        return []
    # Only windows this aligner closed itself: after a resume (a restart, a new owner) the windows before
    # it were published by an earlier run, and the records re-read for the open ones were in them already.
    kept_from = max(emitted_until - config.window_ns, state.first_start_ns)
    return [start for start in range(first, emitted_until, config.hop_ns) if start >= kept_from]


def rebuild(config: WindowConfig, stream_id: str, state: StreamState | None, start: int, *, revision: int = 0,
            refs: tuple[object, ...] = ()) -> Window | None:
    """A closed window as it would be built now, from its kept items and those still buffered."""
    assert state is not None and state.retired is not None
    buffers = {m: state.retired[m].joined(state.buffers[m]) for m in MODALITIES}
    return build_window(config, stream_id, buffers, start, "amended", revision=revision, refs=refs)


def amend(config: WindowConfig, state: StreamState, item: MediaItem, before: dict[int, Window | None]) -> list[int]:
    """Queue a new revision of each closed window in ``before`` that ``item`` (now buffered) changed, or
    fold ``item`` into the revision already queued for it; returns the windows' starts. Their records were
    released with their earlier finals: an amendment releases the records that made it only."""
    own = () if item.ref is None else (item.ref,)
    queued = {window.t_start_ns: index for index, window in enumerate(state.amended)}
    amended: list[int] = []
    for start, old in before.items():
        index = queued.get(start)
        if index is not None:
            pending = state.amended[index]
            new = rebuild(config, item.stream_id, state, start, revision=pending.revision, refs=pending.refs + own)
            if new is not None:
                state.amended[index] = new
                amended.append(start)
            continue
        revision = state.revisions.get(start, 0) + 1
        new = rebuild(config, item.stream_id, state, start, revision=revision, refs=own)
        if new is None or (old is not None and inputs(old) == inputs(new)):
            continue  # e.g. a frame no sampling instant picks: the window's prediction stands
        state.revisions[start] = revision
        state.amended.append(new)
        amended.append(start)
    return amended


def inputs(window: Window) -> tuple[object, ...]:
    """What a window's prediction depends on, to tell whether an amendment changed it."""
    return (window.frame_times_ns, window.coverage, window.mask, tuple(s.text for s in window.text))


__all__ = ["amend", "amendable", "inputs", "rebuild"]
