"""The transcript's wait budget each stream learns from how late its words arrive (``text_wait_ms`` auto).

The feeds are :mod:`test_late_transcript`'s: live video and audio, words of 250-500 ms in spoken order with
pauses of 2-4 s now and then, each published some time after it ends.
"""

from __future__ import annotations

import statistics

import numpy as np
import pytest
from test_late_transcript import SEEDS, T0, _live_av, _missed, _replay, _words

from fusionstream.stream.aligner import Aligner
from fusionstream.stream.learned_wait import BUCKET, WARM_UP, LearnedWait
from fusionstream.stream.records import Modality, TextSegment
from fusionstream.stream.windows import NS, WindowConfig
from fusionstream.units import MS

AUTO = WindowConfig(learn_wait=frozenset({Modality.TEXT}))
OFF = WindowConfig()


def _p95(waits: list[int]) -> float:
    return float(np.percentile(waits, 95))


def test_no_word_of_a_late_word_at_a_time_transcript_is_lost() -> None:
    # Words published 0.3-1.5 s after they end: with nothing learnt (off) some are lost whole, more partly.
    assert statistics.mean(_missed(seed, OFF)[0] for seed in SEEDS) > 0.05
    assert all(_missed(seed, AUTO) == (0.0, 0.0) for seed in SEEDS)


def test_a_slower_recogniser_is_learnt_after_its_first_words() -> None:
    # 0.8-2.5 s: most words are late without a budget; learning loses only some of the first few (the
    # warm-up waits max_skew_ms, 2 s, less than they need).
    feed = {"delay_ms": (800, 2500)}
    assert statistics.mean(_missed(seed, OFF, **feed)[0] for seed in SEEDS) > 0.5
    lost = [sum(_missed(seed, AUTO, **feed)) for seed in SEEDS]
    assert statistics.mean(lost) <= 0.05, lost


def test_a_prompt_captioner_holds_windows_less_than_the_allowed_skew() -> None:
    # 50-200 ms: the learnt budget is well under max_skew_ms, and no word misses a window for it.
    for seed in SEEDS[:4]:
        late, partly, waits = _replay(seed, AUTO, delay_ms=(50, 200))
        _, _, waits_off = _replay(seed, OFF, delay_ms=(50, 200))
        assert (late, partly) == (0.0, 0.0)
        assert _p95(waits) <= 1.5 * NS and _p95(waits) < _p95(waits_off)


def test_a_captioner_that_stopped_costs_each_window_its_learnt_budget() -> None:
    late, partly, waits = _replay(1, AUTO, delay_ms=(50, 200), stop_ms=20_000)
    assert (late, partly) == (0.0, 0.0)
    # Every window after the last word waits out the budget (no longer), as with a budget set by hand.
    assert 0.4 * NS <= statistics.median(waits[-60:]) <= 1.2 * NS


def _prompt_stream(aligner: Aligner, words_until_ms: int, until_ms: int = 30_000) -> int:
    """Feed live video and audio up to ``until_ms`` and a word every 500 ms up to ``words_until_ms``, each
    delivered 300 ms after it ends; return the last delivery's instant."""
    last = 0
    for at, _, item in sorted(_live_av(30) + _words(words_until_ms), key=lambda d: (d[0], d[1])):
        if at > T0 + until_ms * MS:
            break
        aligner.add(item, at)  # type: ignore[arg-type]
        aligner.poll(at)
        last = at
    return last


def test_a_resent_word_and_a_text_backlog_teach_nothing() -> None:
    aligner = Aligner(AUTO)
    assert aligner.wait_budgets(Modality.TEXT).get("s") is None  # nothing learnt: the allowed skew, as before
    now = _prompt_stream(aligner, 20_000, until_ms=20_700)
    learnt = aligner.wait_budgets(Modality.TEXT).get("s")
    assert learnt is not None and 0.2 * NS <= learnt <= 0.6 * NS
    # A producer's retry of the last word, 0.9 s after it ended, after its first window closed: a copy.
    resent = TextSegment("s", T0 + 19_500 * MS, T0 + 19_800 * MS, "seven")
    assert aligner.add(resent, now).duplicate
    assert aligner.wait_budgets(Modality.TEXT).get("s") == learnt
    # Words read from a backlog on the text topic: late because the service is behind, not the feed.
    aligner.behind = frozenset({Modality.TEXT})
    for k in range(BUCKET * 2):
        aligner.add(TextSegment("s", T0 + (19_900 + k) * MS, T0 + (19_901 + k) * MS, "x"), now)
    assert aligner.wait_budgets(Modality.TEXT).get("s") == learnt
    aligner.behind = frozenset()
    assert aligner.add(TextSegment("s", T0 + 19_000 * MS, T0 + 19_100 * MS, "eight"), now).late
    assert aligner.wait_budgets(Modality.TEXT).get("s") > 1.0 * NS  # a word this late, read as it comes, teaches


def test_a_budget_set_by_hand_is_not_learnt_over() -> None:
    aligner = Aligner(WindowConfig(wait_ns=((Modality.TEXT, 700 * MS),)))
    _prompt_stream(aligner, 20_000)
    assert aligner.wait_budgets(Modality.TEXT).get("s") == 700 * MS


def test_the_budget_is_the_worst_recent_need_with_a_margin() -> None:
    limits = {"margin_ns": 200, "floor_ns": 2000, "cap_ns": 10_000}
    learned = LearnedWait()
    for _ in range(WARM_UP - 1):
        learned.observe(400)
    assert learned.budget_ns(**limits) == 2000  # warming up: at least the floor
    learned.observe(400)
    assert learned.budget_ns(**limits) == 400 + 100 + 200
    learned.observe(8000)
    assert learned.budget_ns(**limits) == 10_000  # capped
    for _ in range(2 * BUCKET):
        learned.observe(100)
    assert learned.budget_ns(**limits) == 100 + 25 + 200  # the 8 s word is forgotten after two buckets


@pytest.mark.parametrize("need", [0, 5])
def test_a_word_on_time_needs_nothing(need: int) -> None:
    learned = LearnedWait()
    for _ in range(WARM_UP):
        learned.observe(need)
    assert learned.budget_ns(margin_ns=0, floor_ns=NS, cap_ns=NS) == need + need // 4


def test_a_copy_resent_after_its_windows_closed_teaches_nothing() -> None:
    # An outside integrator's producer resent every word 3 s later: each copy was late (dead-lettered, as
    # documented) and taught the budget as if the feed were 3 s late: windows with no word waited 1.5-3 s.
    words = _words(20_000)
    copies = [(at + 3 * NS, order, item) for at, order, item in words]
    budgets = []
    for feed in (words, words + copies):
        aligner = Aligner(AUTO)
        for at, _, item in sorted(_live_av(30) + feed, key=lambda d: (d[0], d[1])):
            aligner.add(item, at)  # type: ignore[arg-type]
            aligner.poll(at)
        budgets.append(aligner.wait_budgets(Modality.TEXT).get("s"))
    assert budgets[0] is not None and budgets[1] == budgets[0]
