"""Latency of a backend on synthetic batches: per graph and end to end (for ``fusionstream bench``).

Numbers are medians over repeats after a warm-up, measured in this process on random but
well-formed inputs with every modality present (the worst case: no encoder is skipped).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np

from fusionstream.engines.backends.base import Backend
from fusionstream.engines.features import random_batch
from fusionstream.engines.spec import MODALITIES


def _median_ms(run: Callable[[], Any], repeats: int, warmup: int) -> float:
    for _ in range(warmup):
        run()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return float(np.median(times) * 1e3)


def measure_latency(
    backend: Backend, batch_size: int, *, repeats: int = 30, warmup: int = 5, seed: int = 0
) -> dict[str, float]:
    """Median milliseconds per batch for each graph (``video``, ``audio``, ``text``, ``fusion``), for
    ``infer`` end to end (``total``, validation included) and per window (``per_window`` = total / B).

    ``backend`` must be active.
    """
    batch = random_batch(backend.spec, batch_size, seed, p_present=1.0)
    out = {
        name: _median_ms(lambda n=name: backend.encode(n, getattr(batch, n)), repeats, warmup) for name in MODALITIES
    }
    embeddings = backend.infer_embeddings(batch)
    out["fusion"] = _median_ms(lambda: backend.fuse(*embeddings, batch.mask), repeats, warmup)
    out["total"] = _median_ms(lambda: backend.infer(batch), repeats, warmup)
    out["per_window"] = out["total"] / batch_size
    return out
