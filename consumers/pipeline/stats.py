"""What a pipeline counts (the service's metrics and ``/healthz`` read them)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)
class PipelineStats:
    """Counters of one pipeline, from zero when it starts."""

    records: int = 0
    dead_letters: int = 0
    windows_closed: int = 0
    predictions: int = 0
    batches: int = 0
    #: Sampled JPEG frames that passed the intake check but failed to decode (shown black).
    frames_undecodable: int = 0
    #: Sampled frames whose compressed data was damaged: decoded with the missing part grey, and used.
    frames_damaged: int = 0
    #: Open windows encoded ahead of their close.
    windows_warmed: int = 0
    #: Frames of open windows embedded ahead of their close (``fusionstream.stream.frames_ahead``).
    frames_warmed: int = 0
    #: Records not aligned, their offsets released at once: of a modality the model does not use, interim
    #: transcript results (``is_final`` false: their final replaces them), copies of items already buffered.
    records_ignored: int = 0
    #: Progress records taken (docs/wire-format.md#progress): they move the watermark, join no window.
    progress_records: int = 0
    #: Records that missed some of their windows (closed already) but joined others.
    records_partly_late: int = 0
    #: Windows predicted without a modality whose encoder failed on their data (``Runner.run_isolating``).
    windows_degraded: int = 0
    #: Windows not predicted: their data failed the engine with every modality left out in turn (a
    #: single-modality window's), while a harmless window ran (``Runner.run_isolating``).
    windows_failed: int = 0
