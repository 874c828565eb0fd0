"""`fusionstream evaluate --renderer pillow`: the shipped model on held-out streams drawn by the second renderer."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from fusionstream.consumers.training.evaluate import heldout_parts
from fusionstream.consumers.training.frozen_data import DIGITS, SyntheticPart, data_key
from fusionstream.engines.manifest import load_manifest

#: Seconds of held-out streams: the fewest that give a dozen clear windows with seed 10000.
SECONDS = 12


def _evaluate(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "fusionstream", "evaluate", *args], capture_output=True, text=True,
                          timeout=600, check=False)


def test_pillow_renderer_scores_the_shipped_model(shipped_model: Path, tmp_path: Path) -> None:
    done = _evaluate(str(shipped_model), "--renderer", "pillow", "--seconds", str(SECONDS), "--json",
                     "--cache", str(tmp_path))
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["renderer"] == "pillow" and result["clean"] is False
    assert result["windows"] > 0 and isinstance(result["fused"], float) and 0.0 <= result["fused"] <= 1.0
    assert all(0.0 <= v <= 1.0 for v in (*result["single"].values(), *result["without"].values()))
    assert "(pillow renderer)" in done.stderr  # the table's title says which set it is
    assert len(list(tmp_path.glob("evaluation-*.npz"))) == 1


def test_renderers_share_the_plan_but_not_the_cache_key(shipped_model: Path) -> None:
    manifest = load_manifest(shipped_model)
    sets = {name: heldout_parts(manifest, seconds=SECONDS, seed=10_000, data=None, renderer=name)[1]
            for name in ("opencv", "pillow")}
    assert heldout_parts(manifest, seconds=SECONDS, seed=10_000, data=None)[1] == sets["opencv"]  # the default
    assert data_key(sets["opencv"], DIGITS) != data_key(sets["pillow"], DIGITS)
    for cv, pil in zip(sets["opencv"], sets["pillow"], strict=True):
        assert isinstance(cv, SyntheticPart) and isinstance(pil, SyntheticPart)
        assert (cv.config.renderer, pil.config.renderer) == ("opencv", "pillow")
        assert cv.config.seed == pil.config.seed and cv.config.voices == pil.config.voices


def test_unknown_renderer_and_renderer_on_clips_are_one_line_errors(shipped_model: Path, tmp_path: Path) -> None:
    done = _evaluate(str(shipped_model), "--renderer", "blender")
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1
    assert "unknown renderer 'blender': choose opencv or pillow" in done.stderr
    done = _evaluate(str(shipped_model), "--renderer", "pillow", "--data", str(tmp_path))
    assert done.returncode == 1 and "do not apply to --data clips" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
