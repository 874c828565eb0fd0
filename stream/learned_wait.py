"""A wait budget learned per stream from how late its records arrive (``text_wait_ms = "auto"``).

A live ASR or captioner delivers each word some time after it was spoken, and how long differs from one
feed to the next (0.1 s for a captioner, 1–2 s for a streaming recogniser). A fixed budget is either too
short for the slow feed (its words miss their windows) or too long for the quick one (every window's final
waits for nothing). So each stream measures, for every record of the modality, how far its other
modalities had already come past the end of the record's first window when the record arrived: the
budget that record needed. The stream's budget is the largest need among its recent records, with a
margin for the next one being a little later.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from collections.abc import Mapping

    from fusionstream.stream.records import Modality
    from fusionstream.stream.windows import WindowConfig


_NEVER = -(2**63)  # buffers.NEVER (buffers imports this module)
#: How many records a bucket of needs spans: the worst need of the last 64–128 records is remembered.
BUCKET = 64
#: How many of a stream's latest records are remembered to tell a copy from a record that is late.
RECENT = 16
#: Until this many records were measured, the budget is at least ``max_skew_ns``: a few words do not say
#: how late the feed's next ones may be, and the allowed skew is what was waited for before anything was learnt.
WARM_UP = 8


class _Reach(Protocol):
    latest_end_ns: int
    complete_ns: int


class StreamState(Protocol):
    """What these functions use of ``buffers.StreamState`` (which holds a :class:`LearnedWait`, so this
    module cannot import it)."""

    @property
    def buffers(self) -> Mapping[Modality, _Reach]: ...

    learned: dict[Modality, LearnedWait]
    budgets: dict[Modality, int] | None


@dataclass(slots=True)
class LearnedWait:
    """The worst need among a stream's recent records of one modality, in two buckets (O(1) memory)."""

    current_max: int = 0
    previous_max: int = 0
    in_bucket: int = 0
    measured: int = 0
    #: The spans of the last few records measured: a copy of one (a producer's retry) is not measured again.
    recent: deque[tuple[int, int]] = field(default_factory=lambda: deque(maxlen=RECENT))

    @property
    def worst_ns(self) -> int:
        """The worst need remembered (what a restart resumes from)."""
        return max(self.current_max, self.previous_max)

    def observe(self, need_ns: int) -> None:
        if need_ns > self.current_max:
            self.current_max = need_ns
        self.in_bucket += 1
        self.measured += 1
        if self.in_bucket == BUCKET:
            self.previous_max, self.current_max, self.in_bucket = self.current_max, 0, 0

    def budget_ns(self, *, margin_ns: int, floor_ns: int, cap_ns: int) -> int:
        """The wait budget: the worst recent need plus a quarter and ``margin_ns``, at least ``floor_ns``
        while warming up, at most ``cap_ns``."""
        worst = self.worst_ns
        budget = worst + worst // 4 + margin_ns
        if self.measured < WARM_UP:
            budget = max(budget, floor_ns)
        return min(budget, cap_ns)


def learn_wait(state: StreamState, cfg: WindowConfig, modality: Modality, span: tuple[int, int],
               first_start_ns: int, fixed: Mapping[Modality, int]) -> None:
    """Measure a record of ``modality`` spanning ``span`` (start, end) arriving now, whose first window starts
    at ``first_start_ns``, and set ``state.budgets`` to ``fixed`` with the modality's learned budget. The
    record is measured against its stream's other modalities (how far they had come), so the first records
    of a stream, before any other modality arrived, teach nothing; nor does a copy of one of the last
    records measured, however late (a producer that resends its last second after a reconnect)."""
    reach = max((max(b.latest_end_ns, b.complete_ns) for m, b in state.buffers.items() if m is not modality),
                default=_NEVER)
    if reach == _NEVER:
        return
    need = reach - (first_start_ns + cfg.window_ns)
    if need > cfg.learned_wait_max_ns:
        return  # no budget would have had it in time: a stale record (an old buffer resent), not the feed's pace
    learned = state.learned.get(modality)
    if learned is None:
        learned = state.learned[modality] = LearnedWait()
    if span in learned.recent:
        return
    learned.recent.append(span)
    learned.observe(max(0, need))
    _set_budget(state, cfg, modality, learned, fixed)


def resume_waits(state: StreamState, cfg: WindowConfig, needs: Mapping[Modality, int],
                 fixed: Mapping[Modality, int]) -> None:
    """Start ``state``'s budgets from the worst needs an earlier run had learnt (kept in its checkpoint), as
    if measured: without them, a restarted service waited for a slow transcript as for none until its words
    had taught the budget again, and lost the first of them. What this run measured itself is kept."""
    for modality, need in needs.items():
        if modality in cfg.learn_wait and modality not in state.learned:
            learned = state.learned[modality] = LearnedWait(previous_max=need, measured=WARM_UP)
            _set_budget(state, cfg, modality, learned, fixed)


def learned_need(state: StreamState | None, modality: Modality, resumed: Mapping[Modality, int] | None) -> int | None:
    """The worst recent need of ``modality``'s learnt budget in ``state``, once past its warm-up (or, for a
    stream not open again since a restart, the one it was ``resumed`` with): what a checkpoint keeps."""
    if state is None:
        return None if resumed is None else resumed.get(modality)
    learned = state.learned.get(modality)
    return None if learned is None or learned.measured < WARM_UP else learned.worst_ns


def _set_budget(state: StreamState, cfg: WindowConfig, modality: Modality, learned: LearnedWait,
                fixed: Mapping[Modality, int]) -> None:
    budget = learned.budget_ns(margin_ns=cfg.lateness_ns, floor_ns=cfg.max_skew_ns, cap_ns=cfg.learned_wait_max_ns)
    if state.budgets is None or state.budgets.get(modality) != budget:
        state.budgets = {**fixed, modality: budget}


__all__ = ["BUCKET", "RECENT", "WARM_UP", "LearnedWait", "learn_wait", "learned_need", "resume_waits"]
