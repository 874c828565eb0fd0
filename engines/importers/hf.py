"""Hugging Face model directories (what ``save_pretrained`` writes), read from disk only.

Nothing here downloads: models load with ``local_files_only=True`` from a directory the user
has. transformers is imported inside :func:`load_model`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fusionstream.engines.importers.common import ImportSourceError, quiet

if TYPE_CHECKING:
    from torch import nn

#: Weight files ``save_pretrained`` writes (a sharded checkpoint has the index file).
WEIGHTS = ("model.safetensors", "pytorch_model.bin", "model.safetensors.index.json", "pytorch_model.bin.index.json")
CONFIG = "config.json"


def read_json(path: Path) -> dict[str, Any]:
    """A JSON object from ``path``, or the one-line refusal naming the file."""
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ImportSourceError(f"{path}: cannot read it: {exc}") from None
    if not isinstance(doc, dict):
        raise ImportSourceError(f"{path}: expected a JSON object, got {type(doc).__name__}")
    return doc


def check_dir(path: Path, option: str) -> dict[str, Any]:
    """Refuse ``path`` unless it is a Hugging Face model directory; return its ``config.json``."""
    if not path.is_dir():
        raise ImportSourceError(f"{option} {path}: not a directory")
    config = path / CONFIG
    if not config.is_file():
        raise ImportSourceError(
            f"{config}: missing: {option} takes a Hugging Face model directory (what save_pretrained writes)"
        )
    if not any((path / name).is_file() for name in WEIGHTS):
        raise ImportSourceError(f"{path}: no weights: expected one of {', '.join(WEIGHTS)}")
    doc = read_json(config)
    if not isinstance(doc.get("model_type"), str):
        raise ImportSourceError(f"{config}: model_type: missing (transformers needs it to pick the architecture)")
    return doc


def load_model(path: Path) -> nn.Module:
    """``AutoModel.from_pretrained(path, local_files_only=True)`` in float32 eval mode, eager attention
    (it exports everywhere); a failure is the one-line refusal naming the directory."""
    try:
        import transformers
    except ImportError:
        raise ImportSourceError("transformers is not installed: pip install 'fusionstream[import]'") from None
    bars = transformers.utils.logging.is_progress_bar_enabled()
    transformers.utils.logging.disable_progress_bar()
    try:
        with quiet():
            try:
                model = transformers.AutoModel.from_pretrained(path, local_files_only=True, attn_implementation="eager")
            except (ValueError, TypeError):  # an architecture without the eager implementation
                model = transformers.AutoModel.from_pretrained(path, local_files_only=True)
    except Exception as exc:  # transformers, and the readers of its weight files (safetensors, pickle), raise many
        raise ImportSourceError(f"{path}: transformers cannot load it: {type(exc).__name__}: "
                                f"{' '.join(str(exc).split())}") from None
    finally:
        if bars:
            transformers.utils.logging.enable_progress_bar()
    return model.float().eval()


def accepts(model: nn.Module, name: str) -> bool:
    """Whether ``model.forward`` takes an argument called ``name``."""
    import inspect

    return name in inspect.signature(model.forward).parameters
