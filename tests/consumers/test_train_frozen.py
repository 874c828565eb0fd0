"""`fusionstream train OUT --encoders DIR`: fusion heads on frozen encoders, written as complete format-2 models.

The encoders directory is the shipped model's video and audio encoders (`fusionstream model import
--from-model`), trained on the synthetic digits, so a head fitted on a couple of minutes of
synthetic streams is well above chance. One cache serves the whole module: the first training
embeds, everything after reads the embeddings.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from fusionstream.consumers.training.embed_cache import EmbeddedSet, encoders_key
from fusionstream.consumers.training.frozen import FrozenOptions, FrozenResult, frozen_train_command
from fusionstream.consumers.training.frozen_data import coverage
from fusionstream.engines.backends import open_runtime
from fusionstream.engines.manifest import load_manifest
from fusionstream.engines.manifest_check import check_model_dir
from tests.mediafiles import srt_for, write_digit_clip

CLI = [sys.executable, "-m", "fusionstream"]
SHIPPED = Path(__file__).resolve().parents[2] / "engines" / "models" / "default"
#: Seconds of synthetic training streams (validation gets 60 s: a quarter, at least 60).
SECONDS = 120
EPOCHS = 20
#: Measured on these streams (seed 0, 91 clear validation windows): the seven heads 0.90-0.99 fused (weighted
#: 0.989 kept); chance is 0.1. Held-out test voices (`evaluate --seconds 60`): 0.90.
LEAST_ACCURACY = 0.75

pytestmark = pytest.mark.slow


def run(*args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=timeout, check=False)


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("frozen")


@pytest.fixture(scope="module")
def encoders(work: Path) -> Path:
    out = work / "encoders"
    done = run("model", "import", str(out), "--from-model", str(SHIPPED), "--modalities", "video,audio")
    assert done.returncode == 0, done.stderr + done.stdout
    return out


@pytest.fixture(scope="module")
def single(work: Path, encoders: Path) -> tuple[Path, subprocess.CompletedProcess[str]]:
    """The single-label head, through the command line (every head, the best kept)."""
    out = work / "single"
    done = run("train", str(out), "--encoders", str(encoders), "--train-seconds", str(SECONDS), "--workers", "1",
               "--cache", str(work / "cache"), "--head-epochs", str(EPOCHS))
    assert done.returncode == 0, done.stderr + done.stdout
    return out, done


def train(work: Path, encoders: Path, name: str, **options: object) -> FrozenResult:
    return frozen_train_command(FrozenOptions(out=work / name, encoders=encoders, train_seconds=SECONDS, workers=1,
                                              cache=work / "cache", head_epochs=EPOCHS, **options))  # type: ignore[arg-type]


def test_single_label_head_makes_a_complete_checked_model(single: tuple[Path, subprocess.CompletedProcess[str]],
                                                          encoders: Path) -> None:
    out, done = single
    manifest, reports = check_model_dir(out)  # what `fusionstream model check` runs
    assert manifest.servable and manifest.source_format == 2
    assert manifest.task is not None and manifest.task.kind == "single_label"
    assert manifest.task.classes == tuple(str(d) for d in range(10))
    assert manifest.fusion is not None and manifest.fusion.activation == "softmax"
    assert manifest.fusion.inputs == {"video": "emb_video", "audio": "emb_audio"} and manifest.fusion.mask == "mask"
    assert [r.graph for r in reports] == ["video", "audio", "fusion"]
    doc = json.loads((out / "model.json").read_text())
    assert doc["modalities"] == json.loads((encoders / "model.json").read_text())["modalities"]  # copied verbatim
    for name in ("video.onnx", "audio.onnx"):
        assert (out / name).read_bytes() == (encoders / name).read_bytes()
    validation = doc["metrics"]["validation"]
    assert validation["accuracy"] >= LEAST_ACCURACY, validation
    assert set(doc["metrics"]["heads"]) == {"concat", "weighted", "gmu", "attention", "decision", "graph", "vae"}
    # the chosen head is within half a point of the best fused accuracy (near-ties go to the most robust)
    assert doc["metrics"]["heads"][doc["fusion"]["method"]]["accuracy"] == validation["accuracy"]
    assert validation["accuracy"] >= max(h["accuracy"] for h in doc["metrics"]["heads"].values()) - 0.005
    assert "fusion heads on validation windows" in done.stdout


def test_the_cache_makes_refitting_skip_the_embedding(work: Path, encoders: Path,
                                                      single: tuple[Path, subprocess.CompletedProcess[str]]) -> None:
    cached = sorted((work / "cache").glob("embeddings-*.npz"))
    assert len(cached) == 2  # training and validation windows
    result = train(work, encoders, "weighted", fusion="weighted", version="refit-1")
    assert result.cached == (True, True)
    assert result.embedding_seconds < 2.0  # reading two small files, not rendering and encoding
    assert sorted((work / "cache").glob("embeddings-*.npz")) == cached
    assert load_manifest(work / "weighted").version == "refit-1"
    assert result.metrics["validation"]["accuracy"] > 0.5


def test_a_head_refitted_the_same_day_gets_a_new_version(work: Path, encoders: Path,
                                                         single: tuple[Path, subprocess.CompletedProcess[str]]) -> None:
    """Predictions carry the model's version: a format-2 model replaced on the day it was made must not reuse it."""
    today = time.strftime("%Y.%m.%d")
    first = train(work, encoders, "twice", fusion="concat")
    second = train(work, encoders, "twice", fusion="concat")
    assert first.out == second.out and load_manifest(second.out).version in (f"{today}.2", f"{today}.3")


def test_multi_label_head_has_sigmoid_scores_and_thresholds(work: Path, encoders: Path,
                                                            single: tuple[Path, object]) -> None:
    result = train(work, encoders, "multi", task="multi_label", fusion="concat")
    manifest, _ = check_model_dir(work / "multi")
    assert manifest.task is not None and manifest.task.kind == "multi_label" and len(manifest.task.thresholds) == 10
    assert all(0 < t < 1 for t in manifest.task.thresholds)
    assert manifest.fusion is not None and manifest.fusion.activation == "sigmoid"
    assert result.metrics["validation"]["micro_f1"] > 0.6
    windows = EmbeddedSet.load(sorted((work / "cache").glob("embeddings-*.npz"))[0])
    with open_runtime("onnxruntime", manifest.directory) as runtime:
        mask = windows.mask[:7].astype(np.float32)
        scores = runtime.fuse({m: windows.emb[m][:7] * mask[:, i : i + 1] for i, m in enumerate(windows.modalities)},
                              mask)
    assert scores.shape == (7, 10) and ((scores >= 0) & (scores <= 1)).all()


def test_embedding_head_exports_the_fused_vector(work: Path, encoders: Path, single: tuple[Path, object]) -> None:
    result = train(work, encoders, "embedding", task="embedding", embedding_size=16, fusion="gmu")
    manifest, reports = check_model_dir(work / "embedding")
    assert manifest.task is not None and manifest.task.kind == "embedding" and manifest.task.size == 16
    assert manifest.fusion is not None and manifest.fusion.activation == "none"
    assert manifest.fusion.output == "embedding" and reports[-1].output_size == 16
    assert result.metrics["validation"]["accuracy"] > 0.5  # the training classifier on the vector


def test_evaluate_a_format_2_model(work: Path, single: tuple[Path, object]) -> None:
    out, _ = single
    done = run("evaluate", str(out), "--seconds", "60", "--cache", str(work / "cache"), "--json")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["task"] == "single_label" and result["windows"] > 50
    assert set(result["single"]) == set(result["without"]) == {"video", "audio"}  # the declared ones only
    assert result["fused"] >= 0.6 and result["fused"] >= max(result["single"].values()) - 0.05


def test_the_trained_model_serves(single: tuple[Path, object]) -> None:
    out, _ = single
    done = run("demo", "--model", str(out), "--fast", "--seconds", "4")
    assert done.returncode == 0, done.stderr + done.stdout


def test_refusals_are_one_line(work: Path, encoders: Path) -> None:
    done = run("train", str(work / "x"), "--task", "multi_label")
    assert done.returncode == 2 and "--task: only with --encoders" in done.stderr
    done = run("train", str(work / "x"), "--encoders", str(encoders), "--epochs", "3")
    assert done.returncode == 2 and "--epochs: not with --encoders" in done.stderr
    done = run("train", str(encoders), "--encoders", str(encoders))
    assert done.returncode == 1 and "this is the encoders directory" in done.stderr
    done = run("train", str(work / "x"), "--encoders", str(SHIPPED))
    assert done.returncode == 1 and "a format-1 model directory" in done.stderr
    assert "Traceback" not in done.stderr
    done = run("train", str(work / "x"), "--encoders", str(encoders), "--no-augment")
    assert done.returncode == 2 and "--no-augment: not with --encoders" in done.stderr


def test_export_refuses_a_format_2_model_in_one_line(single: tuple[Path, object]) -> None:
    """`export` re-exports format-1 torch weights; a model of imported encoders has none (it was a traceback)."""
    out, _ = single
    done = run("export", str(out), "--out", str(out.parent / "exported"))
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
    assert "format 2 model" in done.stderr and "no torch weights to export" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and not (out.parent / "exported").exists()


def test_version_names_the_model(work: Path, encoders: Path, single: tuple[Path, object]) -> None:
    """Two models trained the same day into two directories would share the date: --version names each."""
    done = run("train", str(work / "named"), "--encoders", str(encoders), "--fusion", "weighted", "--version",
               "shop-7", "--train-seconds", str(SECONDS), "--workers", "1", "--cache", str(work / "cache"),
               "--head-epochs", str(EPOCHS))
    assert done.returncode == 0, done.stderr + done.stdout
    assert load_manifest(work / "named").version == "shop-7"


def test_cache_key_follows_the_encoder_bytes_not_the_path(tmp_path: Path, encoders: Path) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(encoders, copy)
    assert encoders_key(load_manifest(copy)) == encoders_key(load_manifest(encoders))
    with (copy / "audio.onnx").open("ab") as handle:
        handle.write(b"\0")  # any change to a graph's bytes
    assert encoders_key(load_manifest(copy)) != encoders_key(load_manifest(encoders))
    doc = json.loads((copy / "model.json").read_text())
    doc["version"] = "another"  # the version does not change embeddings
    (copy / "model.json").write_text(json.dumps(doc))
    (copy / "audio.onnx").write_bytes((encoders / "audio.onnx").read_bytes())
    assert encoders_key(load_manifest(copy)) == encoders_key(load_manifest(encoders))


@pytest.mark.parametrize("modalities", [("text",), ("video", "audio"), ("video", "audio", "text"),
                                        ("video", "audio", "text", "depth")], ids=len)
def test_projected_heads_take_any_declared_subset(modalities: tuple[str, ...]) -> None:
    import torch

    from fusionstream.engines.fusion import HEADS
    from fusionstream.engines.fusion.projected import ProjectedHead

    sizes = dict(zip(modalities, (24, 40, 8, 12), strict=False))
    for name in HEADS:
        head = ProjectedHead(name, sizes, 5).eval()
        assert head.modalities == modalities and head.head.n_modalities == len(modalities), name  # no padding
        embs = [torch.randn(4, s) for s in sizes.values()]
        mask = torch.ones(4, len(sizes))
        mask[0] = 0  # nothing present: still finite
        mask[1, -1] = 0  # the last modality absent: its embedding cannot matter
        spoiled = [e.clone() for e in embs]
        spoiled[-1][1] = float("nan")
        with torch.no_grad():
            out = head(*embs, mask)
            junk = [torch.full_like(e, float("nan")) for e in embs]
            absent = head(*junk, torch.zeros(4, len(sizes)))
            torch.testing.assert_close(head(*spoiled, mask)[1], out[1])
        assert out.shape == (4, 5) and torch.isfinite(out).all() and torch.isfinite(absent).all(), name


def test_coverage_and_multi_hot_targets_of_overlapping_spans() -> None:
    # class 0 on [0, 6) s in two overlapping spans, class 1 on [2, 4) s: a window [1, 3) s has both.
    s = 1_000_000_000
    spans = [(0, 4 * s, 0), (3 * s, 6 * s, 0), (2 * s, 4 * s, 1)]
    cover = coverage(spans, 3, 1 * s, 3 * s)
    assert cover.tolist() == [1.0, 0.5, 0.0]
    data = EmbeddedSet({"audio": np.zeros((2, 4), np.float32)}, np.ones((2, 1), bool),
                       np.stack([cover, coverage(spans, 3, 6 * s, 7 * s)]), ("a", "b", "c"))
    assert data.targets.tolist() == [[True, True, False], [False, False, False]]
    assert data.label.tolist() == [0, -1] and data.clear.tolist() == [True, False]
    assert data.certain.tolist() == [False, True]  # class b covers half of the first: neither in nor out
    # A single_label head on such windows is warned of (it was capped at ~0.5 accuracy, silently).
    from rich.console import Console

    from fusionstream.consumers.training.frozen import _warn_of_overlapping_labels

    console = Console(record=True, width=300)
    _warn_of_overlapping_labels(data, console)
    assert "1 of 2 windows have two or more labels at once" in console.export_text()
    console = Console(record=True, width=300)
    one_label = EmbeddedSet({"audio": np.zeros((1, 4), np.float32)}, np.ones((1, 1), bool),
                            np.array([[1.0, 0.0, 0.0]], np.float32), ("a", "b", "c"))
    _warn_of_overlapping_labels(one_label, console)
    assert console.export_text() == ""
    # Spans that touch (0-3 s "a", 3-6 s "b"): the window across their boundary has half of each, one label at a
    # time, and is not warned of (an outside user's clips were).
    touching = [(0, 3 * s, 0), (3 * s, 6 * s, 1)]
    straddling = coverage(touching, 3, 2 * s + s // 2, 3 * s + s // 2)
    assert straddling.tolist() == [0.5, 0.5, 0.0]
    console = Console(record=True, width=300)
    _warn_of_overlapping_labels(EmbeddedSet({"audio": np.zeros((1, 4), np.float32)}, np.ones((1, 1), bool),
                                            straddling[None], ("a", "b", "c")), console)
    assert console.export_text() == ""


def test_cli_default_head_epochs_match() -> None:
    from fusionstream.consumers.training import frozen_cli, frozen_heads

    assert frozen_cli.HEAD_EPOCHS == frozen_heads.HEAD_EPOCHS


def test_multi_label_clips_with_overlapping_spans(tmp_path: Path, encoders: Path,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    # labels.csv may give a span several labels: "speech" covers clips 0 and 1 beside their digits. A "cross"
    # span past a clip's end labels nothing: the class is warned of (it was accepted silently with --encoders,
    # and the model declared a class it never saw), and so is the span.
    from rich.console import Console

    data = tmp_path / "clips"
    data.mkdir()
    rows = ["file,start_s,end_s,label"]
    for n, digits in enumerate([[1, 4, 1], [4, 1, 4], [1, 1, 4]]):
        name = f"clip{n}.mp4"
        write_digit_clip(data / name, digits)
        (data / f"clip{n}.srt").write_text(srt_for(digits))
        rows += [f"{name},{2 * i},{2 * i + 2},{'one' if d == 1 else 'four'}" for i, d in enumerate(digits)]
        if n < 2:
            rows.append(f"{name},0,6,speech")
    rows.append("clip2.mp4,20,25,cross")
    (data / "labels.csv").write_text("\n".join(rows) + "\n")
    console = Console(record=True, width=300)
    result = frozen_train_command(FrozenOptions(out=tmp_path / "model", encoders=encoders, data=data, workers=1,
                                                task="multi_label", fusion="concat", head_epochs=EPOCHS,
                                                cache=tmp_path / "cache"), console)
    assert "too few clear training windows for 'cross' (0)" in console.export_text()
    assert any("clip2.mp4: 1 span(s) end after the clip's" in r.getMessage() for r in caplog.records)
    manifest, _ = check_model_dir(tmp_path / "model")
    assert manifest.task is not None and manifest.task.kind == "multi_label"
    assert manifest.task.classes == ("cross", "four", "one", "speech") and len(manifest.task.thresholds) == 4
    windows = EmbeddedSet.load(next((tmp_path / "cache").glob("embeddings-*.npz")))
    assert (windows.targets.sum(axis=1) == 2).sum() >= 10  # a digit and speech at once
    assert result.metrics["validation"]["windows"] >= 5


def test_a_model_replaced_on_the_day_it_was_trained_gets_a_new_version(tmp_path: Path) -> None:
    """Predictions carry the model's version, so a retrain must not reuse the one it replaces."""
    from fusionstream.consumers.training.train import model_version

    assert model_version(tmp_path / "new", "2026.12.05") == "2026.12.05"  # nothing there yet
    shipped = Path(__file__).resolve().parents[2] / "engines/models/default/model.json"
    spec = json.loads(shipped.read_text())
    for previous, expected in (("2026.12.05", "2026.12.05.2"), ("2026.12.05.2", "2026.12.05.3"),
                               ("2026.12.04", "2026.12.05"), ("2026.12.05-mine", "2026.12.05")):
        (tmp_path / "model.json").write_text(json.dumps({**spec, "version": previous}))
        assert model_version(tmp_path, "2026.12.05") == expected, previous
