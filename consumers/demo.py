"""`fusionstream demo`: the embedded pipeline on synthetic streams or a user's media file."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

from rich.console import Console

from fusionstream.consumers.embedded import run_embedded
from fusionstream.consumers.engine import open_engine
from fusionstream.consumers.pipeline.core import Pipeline
from fusionstream.consumers.pipeline.prediction import Prediction
from fusionstream.consumers.report import WindowCensus, summarize
from fusionstream.consumers.settings import Settings
from fusionstream.stream.sources import GroundTruth, SyntheticAV, SyntheticConfig

NS = 1_000_000_000


def run_demo(
    settings: Settings,
    *,
    streams: int,
    seconds: float,
    realtime: bool,
    seed: int,
    video: Path | None = None,
    captions: Path | None = None,
    quiet: bool = False,
) -> dict[str, Any]:
    """Run the demo to the end of its input and return the summary (printed unless ``quiet``)."""
    console = Console(highlight=False)
    truth: GroundTruth | None = None
    # Real time: the records carry the wall clock as capture time, like a live camera.
    start_ns = (time.time_ns() // NS + 1) * NS
    if video is not None:
        from fusionstream.stream.sources.files import media_file_records

        records = media_file_records(video, video.stem, start_ns=start_ns, captions=captions)
        label = f"{video.name}" + (f" + {captions.name}" if captions else "")
    else:
        source = SyntheticAV(
            SyntheticConfig(streams=streams, seconds=seconds, seed=seed, voices="test", start_ns=start_ns)
        )
        records, truth = source.records(), source.truth
        label = f"{streams} synthetic stream(s) x {seconds:g} s"

    with open_engine(settings) as (runner, spec):
        window_config = settings.window_config(frames_per_window=spec.frames_per_window,
                                               sample_rate=spec.sample_rate)
        census = WindowCensus(window_config)
        if not quiet:
            console.print(
                f"[bold]fusionstream demo[/] {label}, model {spec.fusion} v{spec.version} on {settings.backend}, "
                f"{'real time' if realtime else 'as fast as possible'}"
            )
            console.print("[dim]stream      window   pred  score  true  V A T   latency[/]")

        def show(p: Prediction) -> None:
            if quiet:
                return
            rel = (p.t_start_ns - start_ns) / NS
            true = truth.label(p.stream_id, p.t_start_ns, p.t_end_ns) if truth else None
            mark = ""
            if true is not None and true.digit is not None:
                ok = p.label == str(true.digit)
                mark = f"{true.digit:>4}{'' if true.clear else '~'} " + ("[green]✓[/]" if ok else "[red]✗[/]")
            else:
                mark = "   -  "
            mods = " ".join(c if present else "·" for c, present in zip("VAT", p.mask, strict=True))
            console.print(
                f"{p.stream_id:<10} {rel:7.1f}s  {p.label:>4}  {p.score:5.2f} {mark:<8} {mods}  {p.latency_ms:6.1f} ms"
            )

        async def go() -> Any:
            pipeline = Pipeline(
                runner,
                window_config,
                max_batch=settings.max_batch,
                max_delay_ms=settings.max_delay_ms,
                queue_windows=settings.queue_windows,
                decode_workers=settings.decode_workers,
                speculate=settings.speculate,
            )
            async with pipeline:
                return await run_embedded(pipeline, census.watch(records), realtime=realtime, on_prediction=show)

        result = asyncio.run(go())

    summary = summarize(result.predictions, seconds=result.seconds, truth=truth, expected=census.expected)
    summary["dead_letters"] = len(result.dead_letters)
    if not quiet:
        acc = summary["accuracy"]
        console.print(
            f"\n[bold]{summary['windows']} windows[/] in {result.seconds:.1f} s ({summary['windows_per_s']} windows/s)"
            + (f", accuracy {acc:.3f} over clear windows, {summary['accuracy_all']:.3f} over all" if acc is not None
               else "")
            + f"; latency close→prediction p50 {summary['latency_ms']['p50']:.1f} ms, "
            f"p95 {summary['latency_ms']['p95']:.1f} ms, p99 {summary['latency_ms']['p99']:.1f} ms; "
            f"missing windows {summary['missing_windows']}, dead letters {summary['dead_letters']}"
        )
    return summary
