"""``fusionstream bench``: its options and their checks; the stages are in :mod:`fusionstream.consumers.bench.run`
and the live trials in :mod:`fusionstream.consumers.bench.live`, imported when the command runs."""

from __future__ import annotations

import json
import logging
from typing import Annotated, Optional

import typer

from fusionstream.consumers.cli_errors import load_settings, one_line_errors
from fusionstream.consumers.cli_options import BackendOpt, ConfigOpt, JsonOpt, ModelOpt, engine_errors


def bench(
    streams: Annotated[int, typer.Option(min=1, help="Synthetic streams in the workload of the throughput stages.")] = 8,
    seconds: Annotated[float, typer.Option(min=5, help="Seconds of each workload stream.")] = 30.0,
    frame_size: Annotated[str, typer.Option("--frame-size", help="Width x height of the workload's JPEG frames, e.g. 1280x720 for what HD cameras send (rendering takes about 40 ms a frame at that size).")] = "96x96",
    batch_sizes: Annotated[str, typer.Option("--batch-sizes", help="Batch sizes the engine stage tries (comma-separated); the best is used everywhere.")] = "8,16,32,64",
    naive_streams: Annotated[int, typer.Option(min=1, help="Streams the (slow) naive baseline runs on.")] = 2,
    kafka: Annotated[bool, typer.Option("--kafka/--no-kafka", help="Run the service stages against the broker (skipped with a note when none answers).")] = True,
    realtime: Annotated[bool, typer.Option("--realtime/--no-realtime", help="Search the most live streams sustained (about three minutes through the broker).")] = True,
    trial_seconds: Annotated[float, typer.Option(min=6, help="Length of each real-time trial (the first 2 s and the last 3.2 s are not measured, so a 20 s trial measures 14.8 s: a p99 over about 40 windows per stream).")] = 20.0,
    trial_attempts: Annotated[int, typer.Option(min=1, help="Trials a stream count gets before it counts as not sustained (one stall of a shared machine can fail a trial; an unsustainable load fails every one).")] = 2,
    bound_ms: Annotated[float, typer.Option(min=1, help="p99 latency (and intake lag) a real-time trial must stay under.")] = 100.0,
    start_streams: Annotated[int, typer.Option(min=1, help="Live streams of the first real-time trial (doubled until one fails, then bisected).")] = 8,
    max_streams: Annotated[int, typer.Option(min=1, help="Most live streams the real-time search tries.")] = 512,
    int8: Annotated[bool, typer.Option("--int8/--no-int8", help="Also time the int8 encoders when the model has them (fusionstream quantize).")] = True,
    rounds: Annotated[int, typer.Option(min=1, help="Rounds the throughput stages take turns in; each stage reports its best round.")] = 3,
    delivery: Annotated[str, typer.Option("--delivery", help="How live trials deliver records: realistic (frames 0-80 ms after capture, audio chunks when they end, each transcript word --text-delay-ms after it ends, with our producers' progress records) or paced (every record at its start time, no progress).")] = "realistic",
    text_delay_ms: Annotated[str, typer.Option("--text-delay-ms", help="LO-HI: how long after a word ends its transcript record arrives in realistic delivery (ms).")] = "300-700",
    revisions: Annotated[Optional[bool], typer.Option("--revisions/--no-revisions", help="Early predictions with revisions in the live trials (default: the settings' revisions).")] = None,  # noqa: UP045
    live_streams: Annotated[Optional[int], typer.Option("--live-streams", min=1, help="Only live trials at exactly N streams through the broker, revisions off then on (no stages, no search): what users see at N streams.")] = None,  # noqa: UP045
    workers: Annotated[Optional[str], typer.Option("--workers", metavar="N|LIST|auto", help="Also run the kafka stage and the real-time search (or, with --live-streams, one live trial) through W `serve --workers` processes for W = 1..N, the listed counts (1,2,4) or auto (adding one while it helps, up to the cores): windows/s, CPU ms per window, live streams and kafka_wW/engine per W. Without a broker: the search through W pipeline processes (auto: 1, 2, 4, ...), with the CPU and GPU load.")] = None,  # noqa: UP045
    bootstrap: Annotated[Optional[str], typer.Option("--bootstrap", help="Kafka bootstrap servers, host:port[,host:port] (default: FUSIONSTREAM_BOOTSTRAP_SERVERS, else localhost:9092).")] = None,  # noqa: UP045
    as_json: JsonOpt = False,
    model: ModelOpt = None,
    backend: BackendOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Throughput and latency of every stage, side by side on one synthetic workload and one model.

    Stages: `engine` (encoders + fusion head alone on decoded, aligned windows, best batch size),
    `intake` (the pipeline's input work alone on one thread, no model: the most windows/s one
    process can feed an engine, and its CPU ms per window), `pipeline` (the embedded pipeline
    from wire bytes at maximum rate), `kafka` (the service
    consuming its own topics on the broker at maximum rate), `naive` (one window at a time,
    PyTorch eager, no batching or reuse). Then the most live streams (1 s windows, 0.5 s hop,
    15 fps, 16 kHz) the service sustains under --bound-ms p99 close → broker ack (the embedded
    pipeline's close → prediction without a broker), and its latency at half that load. Reports
    windows/s, latency percentiles and the ratios pipeline/engine, kafka/engine, pipeline/naive.
    Live trials also report window end → first and → final prediction. Takes four to six minutes
    with a broker; --live-streams N about a minute. --workers runs the kafka stage and the search (or
    the --live-streams trial) again through W `serve --workers` processes per count W (without a broker,
    the search through W pipeline processes: what one host, or one GPU, holds).
    """

    from fusionstream.consumers.bench.run import BenchOptions, run_bench

    settings = load_settings(config, model_dir=model, backend=backend, bootstrap_servers=bootstrap)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        sizes = tuple(sorted({int(size) for size in batch_sizes.split(",") if size.strip()}))
    except ValueError:
        raise typer.BadParameter(f"not a list of integers: {batch_sizes!r}", param_hint="--batch-sizes") from None
    if not sizes or min(sizes) < 1:
        raise typer.BadParameter("give at least one batch size >= 1", param_hint="--batch-sizes")
    try:
        width, height = (int(side) for side in frame_size.lower().split("x"))
    except ValueError:
        raise typer.BadParameter(f"not WIDTHxHEIGHT: {frame_size!r}", param_hint="--frame-size") from None
    if min(width, height) < 16 or width * height > 3840 * 2160:
        raise typer.BadParameter(f"{frame_size} is outside 16x16 .. 3840x2160", param_hint="--frame-size")
    from fusionstream.consumers.bench.delivery import PROFILES, parse_range_ms

    if delivery not in PROFILES:
        raise typer.BadParameter(f"one of {', '.join(PROFILES)}, not {delivery!r}", param_hint="--delivery")
    try:
        delay = parse_range_ms(text_delay_ms)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--text-delay-ms") from None
    # Paced delivery sends every record at its start: it has no delay to set.
    profile = PROFILES[delivery].with_text_delay(*delay) if delivery == "realistic" else PROFILES[delivery]
    from fusionstream.consumers.bench.workers import parse_workers

    try:
        counts = None if workers is None else parse_workers(workers)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--workers") from None
    if (realtime or live_streams) and trial_seconds > seconds:
        # The live streams replay the workload: a trial cannot outlast it.
        raise typer.BadParameter(f"a real-time trial replays the workload, so --trial-seconds ({trial_seconds:g}) "
                                 f"must not exceed --seconds ({seconds:g})", param_hint="--trial-seconds")
    options = BenchOptions(
        streams=streams, seconds=seconds, batch_sizes=sizes, naive_streams=min(naive_streams, streams), kafka=kafka,
        realtime=realtime, trial_seconds=trial_seconds, trial_attempts=trial_attempts, bound_ms=bound_ms, int8=int8,
        rounds=rounds, start_streams=start_streams, frame_size=(width, height), max_streams=max(max_streams, start_streams),
        delivery=profile, revisions=revisions, live_streams=live_streams, workers=counts,
    )
    from fusionstream.consumers.bench.live import NoBroker, run_live
    from fusionstream.consumers.bench.report import print_live, print_report, report_console

    console = report_console(stderr=as_json)

    with engine_errors(), one_line_errors(NoBroker):
        # With --workers, --live-streams is a trial per worker count inside the whole bench.
        only_live = live_streams is not None and counts is None
        report = run_live(settings, options, console) if only_live else run_bench(settings, options, console)
    if as_json:
        typer.echo(json.dumps(report, separators=(",", ":")))
    else:
        (print_live if only_live else print_report)(report, console)


__all__ = ["bench"]
