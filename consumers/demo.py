"""`fusionstream demo`: the embedded pipeline on synthetic streams or a user's media file."""

from __future__ import annotations

import asyncio
import csv
import dataclasses
import json
import time
from collections.abc import Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from rich.console import Console

from fusionstream.consumers.embedded import run_embedded
from fusionstream.consumers.engine import engine_title, model_classes, model_title, open_engine
from fusionstream.consumers.pipeline.core import Pipeline
from fusionstream.consumers.pipeline.prediction import Prediction
from fusionstream.consumers.report import TranscriptCensus, WindowCensus, percentiles, summarize
from fusionstream.consumers.settings import Settings
from fusionstream.consumers.training.clips import Span, check_one_label_at_a_time
from fusionstream.stream.errors import FusionStreamError
from fusionstream.stream.records import Modality
from fusionstream.stream.sources import GroundTruth, SyntheticAV, SyntheticConfig
from fusionstream.stream.sources.truth import Segment
from fusionstream.units import NS

if TYPE_CHECKING:
    from fusionstream.stream.sources.asr import AsrConfig

LABEL_COLUMNS = ("file", "start_s", "end_s", "label")


class LabelsError(FusionStreamError):
    """A ``--labels`` file that cannot score the video: bad rows, none for the video, unknown classes."""


def run_demo(
    settings: Settings,
    *,
    streams: int,
    seconds: float,
    realtime: bool,
    seed: int,
    video: Path | None = None,
    captions: Path | None = None,
    labels: Path | None = None,
    out: Path | None = None,
    quiet: bool = False,
    asr: AsrConfig | None = None,
    silent: bool = False,
) -> dict[str, Any]:
    """Run the demo to the end of its input and return the summary: printed with a line per window,
    only the summary when ``quiet``, nothing when ``silent`` (``--json`` prints it as JSON instead).

    ``labels``: a CSV of labelled spans of ``video`` (docs/training.md's format), so that the
    summary has the video's accuracy. ``out``: every prediction is written there, one JSON
    object per line (docs/predictions.md). ``asr``: the transcript is what PocketSphinx hears in
    the audio, with its progress records, instead of the synthetic captions (or ``captions``);
    in real time its streams are limited to what one recogniser thread keeps up with.
    """
    from fusionstream.consumers.producers.asr import AsrStats, Recognisers, asr_realtime_refusal, asr_transcripts
    from fusionstream.stream.sources.asr import AsrError

    if asr is not None and captions is not None:
        raise AsrError("--asr and --captions both make the transcript: choose one")
    if asr is not None and video is None and realtime and (refusal := asr_realtime_refusal(streams, asr.grammar)):
        raise AsrError(refusal)
    # In real time, the recognisers load their models before the replay's clock starts.
    recognisers = Recognisers(asr, streams=1 if video else streams) if asr is not None and realtime else None
    console = Console(highlight=False)
    truth: GroundTruth | None = None
    # Read before the engine loads: a bad labels file fails at once, not after the model warmed up.
    spans = read_video_labels(labels, video) if labels is not None and video is not None else None
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
    asr_stats = AsrStats()
    if asr is not None:
        # As `produce --asr` streams it: recogniser processes beside the replay in real time; with
        # --fast inline, each word right after the audio that decided it (they would fall behind).
        spoken = (r for r in records if r.modality is not Modality.TEXT)
        records = (recognisers.transcripts(spoken) if recognisers is not None
                   else asr_transcripts(spoken, asr, inline=True, stats=asr_stats))
        label += f", transcript by PocketSphinx ({asr.grammar})"
    transcript = TranscriptCensus()
    records = transcript.watch(records)

    with ExitStack() as stack:
        if recognisers is not None:
            stack.callback(recognisers.close)  # should the run fail before its records are read
            asr_stats = recognisers.stats
        # Opened first, so that an unwritable path fails before the run rather than after it.
        sink: IO[str] | None = stack.enter_context(out.open("w", encoding="utf-8")) if out is not None else None
        runner, spec = stack.enter_context(open_engine(settings))
        if spans is not None and video is not None:
            truth = labels_truth(spans, video.stem, model_classes(spec), start_ns)
        elif truth is not None and (runner.task.kind != "single_label"
                                    or sorted(model_classes(spec)) != [str(d) for d in range(10)]):
            # The synthetic streams show digits: a model of other classes (or labels, or embeddings) has
            # nothing to be scored against there (`evaluate --data DIR` scores it on labelled clips).
            truth = None
            if not silent:
                console.print("[dim]accuracy is not scored: the synthetic streams show the digits 0-9, not this "
                              "model's classes (give --video FILE --labels FILE.csv, or evaluate MODEL --data DIR)[/]")
        window_config = settings.model_window_config(spec)
        if not realtime:  # a file replayed as fast as possible from now is ahead of the clock, rightly
            window_config = dataclasses.replace(window_config, max_future_ns=2**62)
        census = WindowCensus(window_config, runner.modalities)
        if not silent:
            console.print(
                f"[bold]fusionstream demo[/] {label}, model {model_title(spec)} on {engine_title(settings)}, "
                f"{'real time' if realtime else 'as fast as possible'}"
            )
        if not quiet and not silent:
            console.print("[dim]stream      window   pred  score  true  V A T   latency[/]")

        def show(p: Prediction) -> None:
            if sink is not None:
                # As the service would publish it; capture→publish only means something when the
                # records' event times are the wall clock as they are replayed (real time).
                latency = (time.time_ns() - p.t_end_ns) / 1e6 if realtime else None
                sink.write(json.dumps(p.to_dict(capture_to_publish_ms=latency), separators=(",", ":")) + "\n")
            if quiet or silent:
                return
            rel = (p.t_start_ns - start_ns) / NS
            true = truth.label(p.stream_id, p.t_start_ns, p.t_end_ns) if truth else None
            mark = ""
            if true is not None and true.digit is not None:
                # Labels from a file are class indices; the synthetic truth's digits are the labels.
                name = model_classes(spec)[true.digit] if spans is not None else str(true.digit)
                ok = p.label == name
                mark = f"{name:>4}{'' if true.clear else '~'} " + ("[green]✓[/]" if ok else "[red]✗[/]")
            else:
                mark = "   -  "
            mods = " ".join(c if present else "·" for c, present in zip("VAT", p.mask, strict=True))
            # An embedding model's prediction has no label or score: its vector's size, as `tail` shows it.
            pred = f"{f'emb[{len(p.embedding)}]':>11}" if p.embedding is not None else f"{p.label:>4}  {p.score:5.2f}"
            console.print(f"{p.stream_id:<10} {rel:7.1f}s  {pred} {mark:<8} {mods}  {p.latency_ms:6.1f} ms")

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
                run = await run_embedded(pipeline, census.watch(records), realtime=realtime, on_prediction=show)
                return run, pipeline.stats.records_ignored

        result, ignored = asyncio.run(go())

    scored = result.predictions
    if spans is not None:
        # summarize() compares a label with str(segment.digit), and a file's segments hold class indices.
        index = {name: str(i) for i, name in enumerate(model_classes(spec))}
        scored = [dataclasses.replace(p, label=index.get(p.label, p.label)) for p in scored]
    summary = summarize(scored, seconds=result.seconds, truth=truth, expected=census.expected)
    summary["dead_letters"] = len(result.dead_letters)
    # The event time the streams start at (the next whole second when the demo started; a --video file's 0:00):
    # a prediction of --out lies (t_start_ns - start_ns) / 1e9 s into the file.
    summary["start_ns"] = start_ns
    # Word scores against the synthetic truth only: a labels file's segments hold class indices.
    summary["transcript"] = {
        "source": (f"PocketSphinx ({asr.grammar})" if asr is not None else "synthetic captions" if video is None
                   else "caption file" if captions is not None else "none"),
        **transcript.summary(truth if video is None else None),
    }
    if asr is not None:
        summary["asr"] = {
            "grammar": asr.grammar,
            "real_time_factor": round(asr_stats.real_time_factor, 4),
            # How far recognition ran behind the audio: meaningful only when replayed in real time.
            **({"lag_ms": percentiles(asr_stats.lag_ms)} if realtime else {}),
        }
    if ignored:  # records of modalities the model does not use (a model may declare a subset)
        summary["records_ignored"] = ignored
    if not silent:
        acc = summary["accuracy"]
        console.print(
            f"\n[bold]{summary['windows']} windows[/] in {result.seconds:.1f} s ({summary['windows_per_s']} windows/s)"
            + (f", accuracy {acc:.3f} over clear windows, {summary['accuracy_all']:.3f} over all" if acc is not None
               else "")
            + f"; latency close→prediction p50 {summary['latency_ms']['p50']:.1f} ms, "
            f"p95 {summary['latency_ms']['p95']:.1f} ms, p99 {summary['latency_ms']['p99']:.1f} ms; "
            f"missing windows {summary['missing_windows']}, dead letters {summary['dead_letters']}"
        )
        console.print(_transcript_line(summary))
    return summary


def _transcript_line(summary: dict[str, Any]) -> str:
    text, asr = summary["transcript"], summary.get("asr")
    line = f"transcript ({text['source']}): {text['words']} words"
    if text.get("words_naming_true_digit") is not None:
        line += (f", {text['words_naming_true_digit']:.0%} name the digit shown, "
                 f"{text['segments_named']:.0%} of segments named")
    line += f", {text['progress_records']} progress records"
    if asr:
        line += f"; recognition {asr['real_time_factor']:.2f} CPU s per audio s"
        if "lag_ms" in asr:
            line += f", {asr['lag_ms']['p95'] / 1000:.2f} s behind the audio (p95)"
    return line


def read_video_labels(path: Path, video: Path) -> list[Span]:
    """The spans of ``video`` in a labels CSV (``file,start_s,end_s,label``, as `train --data` reads):
    the rows whose ``file`` names the video (its file name; a directory part is ignored)."""
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            if reader.fieldnames is None or not set(LABEL_COLUMNS) <= set(reader.fieldnames):
                raise LabelsError(f"{path}: the header must be {','.join(LABEL_COLUMNS)}, got {reader.fieldnames}")
            spans, files = [], set()
            for line, row in enumerate(reader, start=2):
                files.add(row["file"])
                if Path(row["file"] or "").name != video.name:
                    continue
                try:
                    start, end = float(row["start_s"]), float(row["end_s"])
                except (TypeError, ValueError):
                    raise LabelsError(f"{path}:{line}: start_s and end_s must be numbers") from None
                name = (row["label"] or "").strip()
                if not name or not 0 <= start < end:
                    raise LabelsError(f"{path}:{line}: need a label and 0 <= start_s < end_s")
                spans.append(Span(start, end, name))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise LabelsError(f"cannot read {path}: {exc}") from None
    if not spans:
        named = ", ".join(sorted(files)[:5]) or "nothing"
        raise LabelsError(f"{path} has no rows for {video.name} (its file column names {named})")
    return spans


def labels_truth(spans: Sequence[Span], stream_id: str, classes: Sequence[str], start_ns: int) -> GroundTruth:
    """The ground truth of one replayed file whose 0:00 is ``start_ns``; segments hold class indices."""
    if not classes:
        raise LabelsError("an embedding model has no classes to score --labels against: give --labels with a "
                          "classifier, or read the vectors from --out")
    unknown = sorted({s.label for s in spans} - set(classes))
    if unknown:
        raise LabelsError(f"labels {unknown} are not classes of the model ({', '.join(classes)})")
    try:
        check_one_label_at_a_time(stream_id, spans)
    except ValueError as exc:
        raise LabelsError(f"{exc}; the demo scores one label per window (evaluate --data DIR scores others)") from None
    segments = [
        Segment(start_ns + round(s.start_s * NS), start_ns + round(s.end_s * NS), list(classes).index(s.label))
        for s in sorted(spans, key=lambda s: s.start_s)
    ]
    return GroundTruth({stream_id: segments})
