"""What the tensorrt backend derives without a GPU: each graph's optimisation profile, read from real
ONNX graphs of either format and the manifest, and the cache key of a plan. (Building and running
engines needs TensorRT and a GPU: tests/engines/test_gpu.py.)"""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from fusionstream.consumers.settings import default_model_dir
from fusionstream.engines import ModelDirError
from fusionstream.engines.backends.tensorrt import OPT_TOKENS, EngineKey, input_profiles
from fusionstream.engines.manifest import load_manifest
from tests.onnxgraphs import write_model

SHIPPED = default_model_dir()
BATCH = (1, 8, 16)


def _profiles(model_dir: Path) -> dict[str, dict]:
    manifest = load_manifest(model_dir)
    return {graph: input_profiles(manifest, graph, model_dir / file, BATCH)
            for graph, file in manifest.graph_files().items()}


def test_format_1_profiles_come_from_its_graphs() -> None:
    profiles = _profiles(SHIPPED)
    assert profiles["video"] == {"frame": ((1, 3, 64, 64), (8, 3, 64, 64), (16, 3, 64, 64))}  # per frame
    assert profiles["audio"] == {"audio": ((1, 16000), (8, 16000), (16, 16000))}
    assert profiles["text"] == {"text": ((1, 256), (8, 256), (16, 256))}
    embedding = ((1, 64), (8, 64), (16, 64))
    assert profiles["fusion"] == {"video": embedding, "audio": embedding, "text": embedding,
                                  "mask": ((1, 3), (8, 3), (16, 3))}


def test_format_2_dynamic_axes_come_from_the_manifest(tmp_path: Path) -> None:
    # tokenizer text [B, tokens] with tokens dynamic in the graph; NHWC whole-window video
    write_model(tmp_path, video={"frames": 3, "layout": "nhwc"}, per_frame=False, audio={}, text=True)
    profiles = _profiles(tmp_path)
    tokens = min(OPT_TOKENS, 6)  # max_tokens 6
    assert profiles["text"] == {name: ((1, 1), (8, tokens), (16, 6)) for name in ("input_ids", "attention_mask")}
    assert profiles["video"] == {"pixel_values": ((1, 3, 8, 10, 3), (8, 3, 8, 10, 3), (16, 3, 8, 10, 3))}
    assert profiles["audio"] == {"input_values": ((1, 100), (8, 100), (16, 100))}
    assert profiles["fusion"] == {"emb_video": ((1, 6), (8, 6), (16, 6)), "emb_audio": ((1, 5), (8, 5), (16, 5)),
                                  "emb_text": ((1, 4), (8, 4), (16, 4)), "mask": ((1, 3), (8, 3), (16, 3))}


def test_a_graph_that_disagrees_with_the_manifest_is_refused_naming_it(tmp_path: Path) -> None:
    write_model(tmp_path, audio={})
    shutil.copy2(SHIPPED / "frame.onnx", tmp_path / "audio.onnx")  # 4-d frames where audio [B, samples] is declared
    manifest = load_manifest(tmp_path)
    with pytest.raises(ModelDirError, match=r"audio\.onnx: input 'frame' .* does not take what the manifest declares"):
        input_profiles(manifest, "audio", tmp_path / "audio.onnx", BATCH)


def test_a_plan_is_keyed_by_everything_it_depends_on(tmp_path: Path) -> None:
    graph = tmp_path / "audio.onnx"
    shutil.copy2(SHIPPED / "audio.onnx", graph)
    profile = _profiles(SHIPPED)["audio"]
    common = {"gpu": "NVIDIA H200", "compute_capability": "9.0", "tensorrt": "10.3", "fp16": True,
              "opt_batch": 8, "max_batch": 16}
    key = EngineKey.for_file(graph, **common, profile=profile)  # type: ignore[arg-type]
    assert key == EngineKey.for_file(graph, **common, profile=profile)  # type: ignore[arg-type]
    assert key.plan_path(tmp_path, "audio") == tmp_path / f"audio-{key.digest}.plan"
    longer = {"audio": ((1, 32000), (8, 32000), (16, 32000))}
    changed = [
        EngineKey.for_file(graph, **(common | {"fp16": False}), profile=profile),  # type: ignore[arg-type]
        EngineKey.for_file(graph, **(common | {"gpu": "NVIDIA L4"}), profile=profile),  # type: ignore[arg-type]
        EngineKey.for_file(graph, **(common | {"max_batch": 32}), profile=profile),  # type: ignore[arg-type]
        EngineKey.for_file(graph, **common, profile=longer),  # type: ignore[arg-type]
    ]
    graph.write_bytes(graph.read_bytes() + b"\0")  # another file, another hash
    changed.append(EngineKey.for_file(graph, **common, profile=profile))  # type: ignore[arg-type]
    assert len({key.digest, *(k.digest for k in changed)}) == 1 + len(changed)
    json.dumps(key.__dict__)  # the key is plain data (it is hashed as JSON)


@pytest.mark.skipif(importlib.util.find_spec("tensorrt") is not None, reason="tensorrt is installed here")
def test_build_engine_on_format_2_says_in_one_line_what_is_missing(tmp_path: Path) -> None:
    write_model(tmp_path, audio={}, text=True)
    done = subprocess.run([sys.executable, "-m", "fusionstream", "build-engine", str(tmp_path)], capture_output=True,
                          text=True, timeout=120, check=False)
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "tensorrt backend: the `tensorrt` package is not installed" in lines[0], done.stderr
