"""What computes: encoders, fusion heads, export and inference backends (docs/architecture.md).

``engines`` takes plain numpy arrays and never imports ``stream`` or Kafka. Importing it is
cheap: torch is imported only by the training/export API (``MultimodalModel``, ``make_head``,
``export_model``, ``check_parity``, resolved lazily below) and each backend imports its
runtime when activated.

Typical use (either model format, any backend; the caller encodes only the present rows)::

    from fusionstream.engines import open_runtime

    with open_runtime("onnxruntime", model_dir) as runtime:
        prep = runtime.preprocess
        frames = runtime.encode_frames(prep.video_frames(frames))     # [B * K, size], K frames a window
        embeddings = {
            "video": frames.reshape(len(samples), -1, runtime.sizes["video"]).mean(axis=1),
            "audio": runtime.encode("audio", prep.audio_feed(samples)),       # samples [B, N]
            "text": runtime.encode("text", prep.text_feed(transcripts)),
        }
        probs = runtime.fuse(embeddings, mask)      # float32 [B, classes], mask [B, modalities]
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from fusionstream.engines.backends import BACKENDS, Backend, Runtime, load_backend, open_runtime
from fusionstream.engines.errors import BackendUnavailable, EngineError, InputError, ModelDirError
from fusionstream.engines.features import Batch, Row, frames_to_array, make_row, random_batch, text_to_ids
from fusionstream.engines.spec import FUSION_HEADS, MODALITIES, ModelSpec

if TYPE_CHECKING:
    from fusionstream.engines.export import check_parity, export_model
    from fusionstream.engines.fusion import make_head
    from fusionstream.engines.model import MultimodalModel, modality_dropout

#: Names that need torch, and the module that defines each (imported on first access).
_LAZY = {
    "MultimodalModel": "fusionstream.engines.model",
    "modality_dropout": "fusionstream.engines.model",
    "make_head": "fusionstream.engines.fusion",
    "export_model": "fusionstream.engines.export",
    "check_parity": "fusionstream.engines.export",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'engines' has no attribute {name!r}")


__all__ = [
    "BACKENDS",
    "FUSION_HEADS",
    "MODALITIES",
    "Backend",
    "BackendUnavailable",
    "Batch",
    "EngineError",
    "InputError",
    "ModelDirError",
    "ModelSpec",
    "MultimodalModel",
    "Row",
    "Runtime",
    "check_parity",
    "export_model",
    "frames_to_array",
    "load_backend",
    "make_head",
    "make_row",
    "modality_dropout",
    "open_runtime",
    "random_batch",
    "text_to_ids",
]
