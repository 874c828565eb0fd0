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

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Mapping

    from fusionstream.stream.buffers import StreamState
    from fusionstream.stream.records import Modality
    from fusionstream.stream.windows import WindowConfig

_NEVER = -(2**63)  # buffers.NEVER (buffers imports this module)
#: How many records a bucket of needs spans: the worst need of the last 64–128 records is remembered.
BUCKET = 64
#: Until this many records were measured, the budget is at least ``max_skew_ns``: a few words do not say
#: how late the feed's next ones may be, and the allowed skew is what was waited for before anything was learnt.
WARM_UP = 8


@dataclass(slots=True)
class LearnedWait:
    """The worst need among a stream's recent records of one modality, in two buckets (O(1) memory)."""

    current_max: int = 0
    previous_max: int = 0
    in_bucket: int = 0
    measured: int = 0

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
        worst = max(self.current_max, self.previous_max)
        budget = worst + worst // 4 + margin_ns
        if self.measured < WARM_UP:
            budget = max(budget, floor_ns)
        return min(budget, cap_ns)


def learn_wait(state: StreamState, cfg: WindowConfig, modality: Modality, first_start_ns: int,
               fixed: Mapping[Modality, int]) -> None:
    """Measure a record of ``modality`` arriving now, whose first window starts at ``first_start_ns``, and
    set ``state.budgets`` to ``fixed`` with the modality's learned budget. The record is measured against
    its stream's other modalities (how far they had come), so the first records of a stream, before any
    other modality arrived, teach nothing."""
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
    learned.observe(max(0, need))
    budget = learned.budget_ns(margin_ns=cfg.lateness_ns, floor_ns=cfg.max_skew_ns, cap_ns=cfg.learned_wait_max_ns)
    if state.budgets is None or state.budgets.get(modality) != budget:
        state.budgets = {**fixed, modality: budget}


__all__ = ["BUCKET", "WARM_UP", "LearnedWait", "learn_wait"]
