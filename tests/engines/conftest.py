"""Engines test settings."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread() -> Iterator[None]:
    # The test models are tiny: with two OpenMP threads on a busy 2-core machine each op waits
    # for a descheduled worker (measured: 1.4 s vs 0.03 s for one training step). Restored after
    # each module so tests elsewhere keep torch's default.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
