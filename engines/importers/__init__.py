"""``fusionstream model import``: the encoders of a format-2 model directory, built from what users have.

Each source is *planned* first (checked without loading a model: a missing ``tokenizer.json``
or a factory that does not resolve is refused before any work), then run into a staging folder
inside the output directory; only when every source succeeded are the files moved into place
and ``model.json`` written, so a failed import leaves the directory as it was.

- :func:`text.plan`: a Hugging Face / sentence-transformers text encoder directory;
- :func:`audio.plan`: a Hugging Face raw-waveform audio encoder directory (wav2vec2 family);
- :func:`image.factory_plan`, :func:`image.onnx_plan`: an image model for the video modality;
- :func:`own.plan`: the encoders of a format-1 directory (fusionstream's own).

torch, transformers and onnxruntime are imported only when a job runs.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

from fusionstream.engines.importers import manifest_io
from fusionstream.engines.importers.common import DEFAULT_WINDOW, Imported, ImportSourceError, Job, Window
from fusionstream.engines.spec import SPEC_FILE


def resolve_window(existing: dict | None, jobs: Sequence[Job], length_ms: int | None, hop_ms: int | None) -> Window:
    """The options' window, else the directory's, else a source's, else 1000/500 ms; checked against the sources."""
    base = manifest_io.window_of(existing) or next((job.window for job in jobs if job.window), None) or DEFAULT_WINDOW
    length = length_ms or base.length_ms
    hop = hop_ms or min(base.hop_ms, length)
    if length < 1 or not 1 <= hop <= length:
        raise ImportSourceError(f"--hop-ms {hop}: expected 1 to the window length ({length} ms)")
    for job in jobs:
        if job.fixes_length and job.window is not None and job.window.length_ms != length:
            raise ImportSourceError(f"--window-ms {length}: the audio graph of {job.label.split(' from ')[-1]} "
                                    f"takes {job.window.length_ms} ms windows")
    return Window(length, hop)


def import_encoders(
    out: Path,
    jobs: Sequence[Job],
    *,
    window_ms: int | None = None,
    hop_ms: int | None = None,
    version: str | None = None,
    on_step: Callable[[Job, str], None] | None = None,
    on_done: Callable[[Job, list[Imported]], None] | None = None,
) -> tuple[Path, list[Imported]]:
    """Run ``jobs`` into the encoders directory ``out`` (created, or added to); return ``model.json``'s
    path and what was imported. ``on_step`` hears each job's steps, ``on_done`` each job's results."""
    out = Path(out)
    if not jobs:
        raise ImportSourceError("nothing to import: give --text, --audio, --video or --from-model")
    seen: dict[str, str] = {}
    for job in jobs:
        for modality in job.modalities:
            if modality in seen:
                raise ImportSourceError(f"{modality} is given twice: {seen[modality]} and {job.label}")
            seen[modality] = job.label
    if out.exists() and not out.is_dir():
        raise ImportSourceError(f"{out}: not a directory")
    existing = manifest_io.read_encoders(out)
    window = resolve_window(existing, jobs, window_ms, hop_ms)
    manifest_io.check_audio_window(existing, window, set(seen), out / SPEC_FILE)
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".import-", dir=out))
    try:
        results: list[Imported] = []
        for job in jobs:
            done = job.run(staging, window, lambda step, job=job: on_step and on_step(job, step))
            results += done
            if on_done is not None:
                on_done(job, done)
        name = version or (existing or {}).get("version") or out.resolve().name
        path = manifest_io.commit(out, staging, existing, manifest_io.merged(existing, name, window, results))
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        if created:  # a failed import leaves the directory as it was: here, not there
            shutil.rmtree(out, ignore_errors=True)
        raise
    shutil.rmtree(staging, ignore_errors=True)
    return path, results


__all__ = ["ImportSourceError", "Imported", "Job", "Window", "import_encoders", "resolve_window"]
