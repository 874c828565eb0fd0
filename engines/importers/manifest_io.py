"""The encoders part of a format-2 ``model.json`` (docs/model-format.md): read, merge, write.

An *encoders directory* is a format-2 model directory without ``task`` and ``fusion``: the
encoders of some modalities, their preprocessing and the window, waiting for a fusion head.
``model import`` creates one or adds/replaces modalities in one; it refuses a format-1
directory and a complete model (replacing an encoder would not match the head). Only the
structure this module relies on is checked here; ``fusionstream model check`` validates the rest.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from fusionstream.engines.importers.common import Imported, ImportSourceError, Window
from fusionstream.engines.spec import MODALITIES, SPEC_FILE

FORMAT = 2


def read_encoders(out: Path) -> dict[str, Any] | None:
    """``out/model.json`` when it is an encoders directory; ``None`` when there is none yet."""
    path = Path(out) / SPEC_FILE
    if not path.exists():
        return None
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ImportSourceError(f"{path}: cannot read it: {exc}") from None
    if not isinstance(doc, dict):
        raise ImportSourceError(f"{path}: expected a JSON object")
    if doc.get("format") != FORMAT:
        raise ImportSourceError(f"{path}: format: {doc.get('format')!r}: model import adds encoders to a format-2 "
                                "encoders directory only; choose a new directory")
    for field in ("task", "fusion"):
        if field in doc:
            raise ImportSourceError(f"{path}: {field}: this is a complete model; import encoders into a new directory "
                                    "(an encoders directory has no task and no fusion head)")
    modalities = doc.get("modalities")
    if not isinstance(modalities, dict) or not set(modalities) <= set(MODALITIES):
        raise ImportSourceError(f"{path}: modalities: expected an object with some of {', '.join(MODALITIES)}")
    window_of(doc, path)
    return doc


def window_of(doc: dict[str, Any] | None, path: Path | None = None) -> Window | None:
    """The manifest's window, if it has one."""
    if doc is None:
        return None
    window = doc.get("window")
    if not isinstance(window, dict) or not all(
        isinstance(window.get(key), int) and window[key] > 0 for key in ("length_ms", "hop_ms")
    ):
        raise ImportSourceError(f"{path or SPEC_FILE}: window: expected {{\"length_ms\": ..., \"hop_ms\": ...}}")
    return Window(window["length_ms"], window["hop_ms"])


def check_audio_window(doc: dict[str, Any] | None, window: Window, replaced: set[str], path: Path) -> None:
    """Refuse a new window length the audio encoder already there (and kept) does not take."""
    audio = (doc or {}).get("modalities", {}).get("audio")
    if audio is None or "audio" in replaced:
        return
    preprocess = audio.get("preprocess", {})
    rate, samples = preprocess.get("sample_rate"), preprocess.get("samples")
    if isinstance(rate, int) and isinstance(samples, int) and window.length_ms * rate != samples * 1000:
        raise ImportSourceError(
            f"{path}: modalities.audio.preprocess.samples: {samples} at {rate} Hz, not a {window.length_ms} ms window: "
            "import the audio encoder again with the new window, or keep the directory's"
        )


def referenced(doc: dict[str, Any] | None) -> set[str]:
    """The files a manifest's modalities name (graphs, tokenizers)."""
    names = set()
    for entry in ((doc or {}).get("modalities") or {}).values():
        if isinstance(entry, dict):
            names.add((entry.get("encoder") or {}).get("file"))
            names.add((entry.get("preprocess") or {}).get("tokenizer"))
    return {name for name in names if isinstance(name, str) and name and Path(name).name == name}


def merged(doc: dict[str, Any] | None, version: str, window: Window, imported: list[Imported]) -> dict[str, Any]:
    """The manifest with ``imported`` added or replacing modalities; the directory's other fields are kept."""
    modalities = dict((doc or {}).get("modalities") or {})
    for item in imported:
        modalities[item.modality] = item.entry
    extra = {k: v for k, v in (doc or {}).items() if k not in ("format", "version", "window", "modalities")}
    return {
        "format": FORMAT,
        "version": version,
        "window": window.to_dict(),
        "modalities": {name: modalities[name] for name in MODALITIES if name in modalities},
        **extra,
    }


def write(out: Path, doc: dict[str, Any]) -> Path:
    """Write ``out/model.json`` through a temporary file, so a reader never sees half of one."""
    path = Path(out) / SPEC_FILE
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
    tmp.replace(path)
    return path


def commit(out: Path, staging: Path, before: dict[str, Any] | None, after: dict[str, Any]) -> Path:
    """Move the staged files into ``out``, write the manifest, and delete files only ``before`` named."""
    out = Path(out)
    for file in sorted(staging.iterdir()):
        os.replace(file, out / file.name)
    path = write(out, after)
    for name in referenced(before) - referenced(after):
        (out / name).unlink(missing_ok=True)
    return path
