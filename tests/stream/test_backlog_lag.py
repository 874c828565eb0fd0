"""A modality whose records wait unread (``Aligner.behind``) is waited for however far it lags: the lag is
the service's (a backlog), not its source's, so neither ``max_skew_ms`` nor a wait budget closes a window
without it."""

from __future__ import annotations

import pytest
from test_aligner import T0, av

from fusionstream.stream.aligner import Aligner
from fusionstream.stream.records import Modality
from fusionstream.stream.windows import WindowConfig
from fusionstream.units import MS


def _video_first_then_audio(aligner: Aligner, behind: frozenset[Modality]) -> list:
    """20 s of a stream's video and text read before its audio (which another stream's records delayed)."""
    items = av("s", 0, 20_000)
    closed = []
    aligner.behind = behind
    for item in [i for i in items if not hasattr(i, "samples")]:
        aligner.add(item, 0)
        closed += aligner.poll(0)
    for item in [i for i in items if hasattr(i, "samples")]:
        aligner.add(item, 0)
        closed += aligner.poll(0)
    aligner.behind = frozenset()
    return closed + aligner.flush()


@pytest.mark.parametrize("budget", [None, 700], ids=["skew", "text-budget"])
def test_a_modality_behind_is_waited_for_however_far_it_lags(budget: int | None) -> None:
    config = WindowConfig(lateness_ns=200 * MS, wait_ns=() if budget is None else ((Modality.AUDIO, budget * MS),))
    aligner = Aligner(config)
    closed = _video_first_then_audio(aligner, frozenset({Modality.AUDIO}))
    assert aligner.stats.late == 0 and aligner.stats.partly_late == 0
    full = [w for w in closed if 0 <= w.t_start_ns - T0 <= 18_500 * MS]
    assert len(full) == 38 and all(all(w.mask) for w in full)


def test_the_same_lag_from_a_source_left_behind_is_not_waited_for() -> None:
    """Without ``behind``, audio 20 s behind the video is a source that fell behind: windows close on the
    others (``max_skew_ms``) and its records come too late, as before."""
    aligner = Aligner(WindowConfig(lateness_ns=200 * MS))
    _video_first_then_audio(aligner, frozenset())
    assert aligner.stats.late > 0
