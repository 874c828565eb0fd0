"""The embedding cache behind frame and caption reuse."""

from __future__ import annotations

import numpy as np
import pytest

from consumers.pipeline.reuse import EmbeddingCache


def test_the_cache_forgets_the_least_recently_used_row_first() -> None:
    cache: EmbeddingCache[str] = EmbeddingCache(2)
    cache.put("a", np.zeros(2))
    cache.put("b", np.ones(2))
    assert cache.get("a") is not None  # "a" is now the most recent
    cache.put("c", np.full(2, 2.0))
    assert len(cache) == 2 and cache.get("b") is None
    np.testing.assert_array_equal(cache.get("a"), np.zeros(2))
    np.testing.assert_array_equal(cache.get("c"), np.full(2, 2.0))
    with pytest.raises(ValueError):
        EmbeddingCache(0)
