"""The ``fusionstream`` command line (typer). Each command imports its heavy parts lazily,
so ``fusionstream --help`` answers at once."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Annotated, Literal, Optional

import typer

from fusionstream.consumers.cli_errors import fail, load_settings, note, one_line_errors, run_app, widen_for_files
from fusionstream.consumers.cli_options import BackendOpt, ConfigOpt, JsonOpt, ModelOpt, engine_errors
from fusionstream.consumers.settings import Settings, default_model_dir
from fusionstream.consumers.training.frozen_cli import check_fusion, frozen_options

app = typer.Typer(
    name="fusionstream",
    help=(
        "Streaming multimodal inference: video frames, audio and transcripts from Kafka, aligned by "
        "event time into windows per stream, one prediction per window.\n\n"
        "Start with `fusionstream demo` (no broker needed). Settings come from flags, "
        "FUSIONSTREAM_* environment variables and an optional --config TOML file (see docs/settings.md)."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
    # Docstring paragraphs are reflowed to the terminal's width (rich mode keeps every line break).
    rich_markup_mode="markdown",
)



def _setup_logging(settings: Settings) -> None:
    logging.basicConfig(level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


@app.command()
def demo(
    streams: Annotated[int, typer.Option(min=1, max=10_000, help="Synthetic streams to run side by side.")] = 2,
    seconds: Annotated[float, typer.Option(min=1, help="Length of each synthetic stream.")] = 30.0,
    fast: Annotated[bool, typer.Option("--fast", help="Replay as fast as possible instead of in real time.")] = False,
    seed: Annotated[int, typer.Option(help="Seed of the synthetic source (held-out voices are used).")] = 1234,
    video: Annotated[Optional[Path], typer.Option("--video", exists=True, dir_okay=False, help="Run on your own media file (video + its audio track) instead.")] = None,  # noqa: UP045
    captions: Annotated[Optional[Path], typer.Option("--captions", exists=True, dir_okay=False, help="SRT or WebVTT captions for --video.")] = None,  # noqa: UP045
    labels: Annotated[Optional[Path], typer.Option("--labels", exists=True, dir_okay=False, help="Labelled spans of --video: a CSV file with columns file,start_s,end_s,label (docs/training.md; rows of other files are ignored): the summary then has the video's accuracy.")] = None,  # noqa: UP045
    out: Annotated[Optional[Path], typer.Option("--out", dir_okay=False, help="Write every prediction to this file, one JSON object per line (docs/predictions.md), whatever --json does.")] = None,  # noqa: UP045
    asr: Annotated[bool, typer.Option("--asr", help="The transcript is what PocketSphinx recognises in the audio (with progress records), instead of the synthetic one or --captions; in real time at most 1 stream (general) or 8 (digits).")] = False,
    asr_grammar: Annotated[Literal["general", "digits"], typer.Option("--asr-grammar", help="general: the US-English language model; digits: only the digit words.")] = "general",
    asr_max_segment: Annotated[float, typer.Option("--asr-max-segment", min=0.9, max=30, help="Seconds of speech after which a transcript is published even without a pause.")] = 1.5,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Only the summary, no line per window.")] = False,
    as_json: JsonOpt = False,
    model: ModelOpt = None,
    backend: BackendOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Run the whole pipeline in-process on synthetic AV-digit streams (or your file) and print predictions.

    Embedded mode: the same aligner, micro-batcher and engine as `serve`, fed from local
    sources, no Kafka. Each line is one window: stream, window start, predicted digit and
    score, the true digit (for --video, the label from --labels), the modalities present (V A T),
    and close→prediction latency. --out keeps every prediction as the service would publish it.
    The summary scores the transcript too (words naming the digit shown), so --asr compares.
    """
    from fusionstream.consumers.demo import run_demo
    from fusionstream.engines.errors import EngineError
    from fusionstream.stream.errors import FusionStreamError
    from fusionstream.stream.sources.asr import AsrConfig

    for name, given in (("--captions", captions), ("--labels", labels)):
        if given is not None and video is None:
            raise typer.BadParameter("goes with --video FILE", param_hint=name)
    settings = load_settings(config, model_dir=model, backend=backend)
    _setup_logging(settings)
    # Media decoding reports an unreadable file as a ValueError naming it (AsrError is one too);
    # --out may be unwritable.
    with one_line_errors(FusionStreamError, EngineError, OSError, ValueError):
        recogniser = AsrConfig(grammar=asr_grammar, max_segment_s=asr_max_segment) if asr else None  # type: ignore[arg-type]
        summary = run_demo(
            settings,
            streams=streams,
            seconds=seconds,
            realtime=not fast,
            seed=seed,
            video=video,
            captions=captions,
            labels=labels,
            out=out,
            quiet=quiet,
            asr=recogniser,
            silent=as_json,
        )
    if as_json:
        typer.echo(json.dumps(summary, separators=(",", ":")))


@app.command()
@frozen_options  # --encoders DIR and its options: a head on frozen pretrained encoders (training/frozen_cli.py)
def train(
    out: Annotated[Path, typer.Argument(file_okay=False, help="Model directory to write (ONNX files + model.json).")],
    fusion: Annotated[str, typer.Option(callback=check_fusion, help="Fusion head: concat, weighted, gmu, attention, decision, graph, vae, or 'best' (train all, keep the best on validation).")] = "best",
    data: Annotated[Optional[Path], typer.Option("--data", exists=True, file_okay=False, help="Your labelled clips (see docs/training.md) instead of the synthetic source.")] = None,  # noqa: UP045
    train_seconds: Annotated[float, typer.Option(min=1, help="Seconds of synthetic streams to train on.")] = 4800.0,
    epochs: Annotated[int, typer.Option(min=1, help="Epochs of encoder training.")] = 8,
    seed: Annotated[int, typer.Option(help="Seed of data generation and initialisation.")] = 0,
    workers: Annotated[int, typer.Option(min=1, help="Processes generating synthetic data.")] = 2,
    compare: Annotated[Optional[Path], typer.Option("--compare", help="Also write the comparison of all heads on the synthetic held-out streams (markdown) to this file; not with --data.")] = None,  # noqa: UP045
    cache: Annotated[Optional[Path], typer.Option("--cache", help="Keep rendered windows here and reuse them when the inputs are identical.")] = None,  # noqa: UP045
    init: Annotated[Optional[Path], typer.Option("--init", exists=True, file_okay=False, help="Fine-tune: start from this model directory's encoders.")] = None,  # noqa: UP045
    augment: Annotated[bool, typer.Option("--augment/--no-augment", help="Perturb the synthetic training streams' words (pitch, tempo, room, gain) and scenes (affine, colour, blur, cheap JPEG, occlusion, elastic, stroke width, low resolution, TrueType typefaces), and mask the audio's log-mel (SpecAugment); docs/training.md#augmentation.")] = True,
    version: Annotated[Optional[str], typer.Option("--version", help="The model's version, copied into every prediction (default: today's date, YYYY.MM.DD, and YYYY.MM.DD.N when it replaces a model trained today in OUT; name two models trained the same day into different directories yourself).")] = None,  # noqa: UP045
) -> None:
    """Train encoders and a fusion head on windows made by the serving aligner; write a model directory.

    Encoders are trained end to end with modality
    dropout; then every fusion head is fitted on the frozen embeddings and compared on
    held-out validation data, and the chosen one is exported with a parity check.
    """
    from fusionstream.consumers.cli_errors import TRAINING_INTERRUPTED
    from fusionstream.consumers.training.train import TrainOptions, train_command
    from fusionstream.engines.errors import EngineError
    from fusionstream.stream.errors import FusionStreamError

    with one_line_errors(FusionStreamError, EngineError, interrupted=TRAINING_INTERRUPTED.format(out=out)):
        train_command(
            TrainOptions(out=out, fusion=fusion, data=data, train_seconds=train_seconds, epochs=epochs, seed=seed,
                         workers=workers, compare=compare, cache=cache, init=init, augment=augment,
                         version=version)
        )


@app.command()
def evaluate(
    model_dir: Annotated[Optional[Path], typer.Argument(exists=True, file_okay=False, help="Model directory to evaluate (default: settings' model_dir, the model shipped in the package).")] = None,  # noqa: UP045
    seconds: Annotated[Optional[float], typer.Option(min=1, help="Seconds of held-out synthetic streams [default: 1200].")] = None,  # noqa: UP045
    seed: Annotated[Optional[int], typer.Option(help="Seed of the held-out data (other seeds and voices than training) [default: 10000].")] = None,  # noqa: UP045
    data: Annotated[Optional[Path], typer.Option("--data", exists=True, file_okay=False, help="Evaluate on your labelled clips instead.")] = None,  # noqa: UP045
    backend: BackendOpt = None,
    as_json: JsonOpt = False,
    cache: Annotated[Optional[Path], typer.Option("--cache", help="Keep rendered windows here and reuse them.")] = None,  # noqa: UP045
    int8: Annotated[bool, typer.Option("--int8", help="Also evaluate the int8 encoders (fusionstream quantize) on the same windows: accuracy change and speed.")] = False,
    by: Annotated[Optional[list[str]], typer.Option("--by", metavar="voice|digit", help="Also break the figures down by voice (the held-out streams again, once per voice, each speaking only that voice) and/or digit (accuracy per true label); repeat it or separate with commas: --by voice --by digit.")] = None,  # noqa: UP045
    voice: Annotated[Optional[list[str]], typer.Option("--voice", metavar="NAME", help="A speech bank voice for --by voice (repeatable; default: the held-out test voices; implies --by voice).")] = None,  # noqa: UP045
    clean: Annotated[bool, typer.Option("--clean", help="Render the held-out streams with no corruption (every modality clean in every segment, no ASR errors).")] = False,
    renderer: Annotated[str, typer.Option("--renderer", metavar="opencv|pillow", help="Who draws the held-out streams' frames: opencv (the training renderer) or pillow, a second held-out set training never sees: Pillow's font engine and typefaces, other backgrounds and clutter, other camera noise; same digits, times, audio and text.")] = "opencv",
) -> None:
    """Accuracy over clear windows: fused, each modality alone, and with each modality removed.

    The backend's device and precision come from the settings as for `serve`
    (FUSIONSTREAM_DEVICE=cuda FUSIONSTREAM_PRECISION=fp16 with --backend torch measures a GPU's fp16).
    """
    from fusionstream.consumers.engine import backend_options
    from fusionstream.consumers.training.evaluate_by import parse_by
    from fusionstream.consumers.training.evaluate_cli import evaluate_command
    from fusionstream.engines.errors import EngineError
    from fusionstream.stream.errors import FusionStreamError
    from fusionstream.stream.sources.renderers import check_renderer

    try:
        breakdowns = parse_by([*(by or ()), *(["voice"] if voice else [])])
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="'--by'") from None
    try:
        check_renderer(renderer)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="'--renderer'") from None
    settings = load_settings(model_dir=model_dir, backend=backend)
    if model_dir is None:
        where = "the model shipped in the package" if settings.model_dir == default_model_dir() else "settings' model_dir"
        note(f"no MODEL_DIR given: evaluating {where}, {settings.model_dir}")
        if not settings.model_dir.is_dir():
            fail(f"model directory {settings.model_dir} does not exist")
    with one_line_errors(EngineError, FusionStreamError):  # the setup, or --data's clips
        result = evaluate_command(settings.model_dir, seconds=seconds, seed=seed, data=data, backend=settings.backend,
                                  options=backend_options(settings), quiet=as_json, cache=cache, int8=int8,
                                  by=breakdowns, voices=tuple(voice or ()), clean=clean, renderer=renderer)
    if as_json:
        typer.echo(json.dumps(result, separators=(",", ":")))


@app.command()
def export(
    model_dir: Annotated[Path, typer.Argument(exists=True, file_okay=False, help="Model directory holding model.pt and model.json.")],
    out: Annotated[Optional[Path], typer.Option("--out", file_okay=False, help="Write the ONNX files here instead of in place.")] = None,  # noqa: UP045
) -> None:
    """Re-export a model directory's torch weights to ONNX and check parity against torch on random inputs.

    For a directory `fusionstream train` wrote from the synthetic source (format 1). A directory with
    imported encoders (format 2, `train --encoders`) is written as ONNX already and has no weights to export.
    """
    from fusionstream.consumers.training.train import export_command
    from fusionstream.engines.errors import EngineError

    with one_line_errors(EngineError, OSError):
        export_command(model_dir, out or model_dir)


@app.command()
def quantize(
    model_dir: Annotated[Path, typer.Argument(exists=True, file_okay=False, help="Model directory to add int8 encoders to.")],
    seconds: Annotated[float, typer.Option(min=10, help="Seconds of synthetic streams (training voices) to calibrate on.")] = 120.0,
    seed: Annotated[int, typer.Option(help="Seed of the calibration streams.")] = 77,
    data: Annotated[Optional[Path], typer.Option("--data", exists=True, file_okay=False, help="Calibrate on your labelled clips (train --data's DIR) instead of synthetic streams: for a model trained on them.")] = None,  # noqa: UP045
) -> None:
    """Add int8 versions of a model directory's encoders (CPU speed), either format.

    Format 1: static quantization in ONNX Runtime, calibrated on rendered windows (or --data's); the CNN
    bodies become int8, the audio front end, the text encoder and the fusion head stay float32.
    Format 2: dynamic quantization of each encoder's MatMul and Gemm weights (no calibration;
    --seconds and --seed are not used), named in model.json as the encoder's int8_file.
    `fusionstream evaluate MODEL --int8` shows the accuracy change, `fusionstream bench`
    the speed; serve with them by setting FUSIONSTREAM_PRECISION=int8.
    """
    from fusionstream.consumers.training.quantize_cli import quantize_command

    quantize_command(model_dir, seconds=seconds, seed=seed, data=data)


@app.command("build-engine")
def build_engine(
    model_dir: Annotated[Path, typer.Argument(exists=True, file_okay=False, help="Model directory (either format) whose ONNX graphs to build.")],
    fp16: Annotated[bool, typer.Option("--fp16/--fp32", help="Let TensorRT use fp16 kernels (inputs and outputs stay float32).")] = True,
    max_batch: Annotated[int, typer.Option(min=1, help="Largest batch of the optimisation profile.")] = 64,
    opt_batch: Annotated[int, typer.Option(min=1, help="Batch size TensorRT tunes its kernels for.")] = 32,
    cache_dir: Annotated[Optional[Path], typer.Option("--cache-dir", help="Where plans are kept (default: $FUSIONSTREAM_ENGINE_CACHE or ~/.cache/fusionstream/tensorrt).")] = None,  # noqa: UP045
    device: Annotated[int, typer.Option(min=0, help="CUDA device index.")] = 0,
) -> None:
    """Build the TensorRT engines of a model directory ahead of time (needs an NVIDIA GPU and the `gpu` extra).

    One engine per graph the manifest declares (each encoder, the fusion head), cached under a
    key of the ONNX file's hash, the GPU model, the TensorRT version, the precision and the
    input profile (batch, and a tokenizer's longest input): the tensorrt backend finds them
    there at start instead of building for minutes, and rebuilds by itself whenever any of
    those change. Run it on the machine (the GPU model) that will serve.
    """
    from rich.console import Console

    from fusionstream.engines.backends.tensorrt import build_engines

    console = Console(highlight=False)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    options = {"fp16": fp16, "max_batch": max_batch, "opt_batch": opt_batch, "cache_dir": cache_dir, "device": device}
    with engine_errors():
        plans = build_engines(model_dir, **options)
    for graph, (path, built) in plans.items():
        console.print(f"{graph:<8} {'built ' if built else 'cached'} {path} ({path.stat().st_size / 1e6:.1f} MB)")


# Sub-apps: like this module they import only typer and the settings; their commands import the rest.
from fusionstream.consumers.bench.cli import bench  # noqa: E402
from fusionstream.consumers.model_cli import model_app  # noqa: E402
from fusionstream.consumers.producers.cli import produce_app  # noqa: E402
from fusionstream.consumers.topics_cli import topics_app  # noqa: E402

app.command()(bench)
app.add_typer(produce_app, name="produce")
app.add_typer(model_app, name="model")
app.add_typer(topics_app, name="topics")


@app.command()
def tail(
    as_json: Annotated[bool, typer.Option("--json", help="Print each prediction as one JSON line: its value, with revision and final filled in where a service older than revisions left them out.")] = False,
    from_beginning: Annotated[bool, typer.Option("--from-beginning", help="Start at the oldest retained prediction instead of new ones.")] = False,
    stream: Annotated[Optional[list[str]], typer.Option("--stream", help="Only this stream id (repeat for several).")] = None,  # noqa: UP045
    limit: Annotated[Optional[int], typer.Option("--limit", min=0, help="Stop after N predictions.")] = None,  # noqa: UP045
    read_committed: Annotated[bool, typer.Option("--read-committed/--read-uncommitted", help="Hide predictions of transactions an exactly-once service aborted (the default), or show them too, a little sooner.")] = True,
    until_end: Annotated[bool, typer.Option("--until-end", help="Stop at the end of the topic instead of waiting for more.")] = False,
    finals_only: Annotated[bool, typer.Option("--finals-only", help="Skip provisional predictions (a service with revisions on sends one before each final).")] = False,
    bootstrap: Annotated[Optional[str], typer.Option("--bootstrap", help="Kafka bootstrap servers, host:port[,host:port] (default: FUSIONSTREAM_BOOTSTRAP_SERVERS, else localhost:9092).")] = None,  # noqa: UP045
    topic: Annotated[Optional[str], typer.Option("--topic", help="Predictions topic (default: settings; with --dead-letters the dead-letter topic).")] = None,  # noqa: UP045
    dead_letters: Annotated[bool, typer.Option("--dead-letters", help="Print the dead-letter topic instead: when, reason, where the record was read (topic[partition]@offset), stream, detail.")] = False,
    config: ConfigOpt = None,
) -> None:
    """Print predictions as they are published, one line each (or raw JSON lines with --json).

    Each line: stream, window start (local time), label and score, the modalities the window
    had (V A T), and the capture→publish latency the service measured. With --dead-letters, the
    records the service refused instead (--json: reason, detail, origin, stream, headers).
    """
    from aiokafka.errors import KafkaError

    from fusionstream.consumers.subscribers.tail import run_tail
    from fusionstream.stream.errors import FusionStreamError

    # On stderr, beside the records on stdout: a broker that goes away is said (aiokafka's WARNINGs, held
    # to one per kind per 10 s), not waited out in silence.
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if dead_letters:
        from fusionstream.consumers.subscribers.deadletters import run_dead_letters

        if stream or finals_only:
            raise typer.BadParameter("--stream and --finals-only select predictions, not dead letters",
                                     param_hint="--dead-letters")
        settings = load_settings(config, bootstrap_servers=bootstrap, deadletter_topic=topic)
        with one_line_errors(FusionStreamError, KafkaError):
            run_dead_letters(settings, as_json=as_json, from_beginning=from_beginning, limit=limit,
                             read_committed=read_committed, until_end=until_end)
        return
    settings = load_settings(config, bootstrap_servers=bootstrap, predictions_topic=topic)
    with one_line_errors(FusionStreamError, KafkaError):
        run_tail(settings, as_json=as_json, from_beginning=from_beginning, stream_ids=stream, limit=limit,
                 read_committed=read_committed, until_end=until_end, finals_only=finals_only)


@app.command()
def view(
    host: Annotated[str, typer.Option("--host", help="Address to listen on; 0.0.0.0 serves other machines too.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", min=0, max=65535, help="HTTP port of the page (0 = any free port).")] = 8090,
    fps: Annotated[float, typer.Option("--fps", min=0.2, max=30, help="Most updates (and frames) per second and stream sent to a browser.")] = 5.0,
    lookback: Annotated[float, typer.Option("--lookback", min=0, help="Seconds of past predictions to show at start (by window end time); 0 = only new ones.")] = 30.0,
    stream: Annotated[Optional[list[str]], typer.Option("--stream", help="Only this stream id (repeat for several).")] = None,  # noqa: UP045
    sync: Annotated[bool, typer.Option("--sync/--no-sync", help="Delay the video by the prediction latency so each label is drawn on a frame of its own window; --no-sync shows the newest frame with the newest prediction.")] = True,
    bootstrap: Annotated[Optional[str], typer.Option("--bootstrap", help="Kafka bootstrap servers, host:port[,host:port] (default: FUSIONSTREAM_BOOTSTRAP_SERVERS, else localhost:9092).")] = None,  # noqa: UP045
    config: ConfigOpt = None,
) -> None:
    """Serve a live web page: per stream, the latest frame with the prediction drawn on it, audio level, transcript, modality mask and a timeline.

    Reads the input and prediction topics (names from settings) without a consumer group, from their end (predictions: --lookback seconds back), and pushes updates to the browser with Server-Sent Events.

    Open the printed URL; Ctrl-C stops. See docs/viewer.md.
    """
    from aiokafka.errors import KafkaError
    from rich.console import Console

    from fusionstream.consumers.viewer import run_viewer
    from fusionstream.stream.errors import FusionStreamError

    settings = load_settings(config, bootstrap_servers=bootstrap)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    def ready(url: str) -> None:
        Console(stderr=True, highlight=False, soft_wrap=True).print(
            f"viewing {settings.bootstrap_servers} at [bold]{url}[/] ; Ctrl-C stops")

    with one_line_errors(FusionStreamError, KafkaError, OSError):  # OSError: the port cannot be bound
        run_viewer(settings, host=host, port=port, fps=fps, lookback_s=lookback, stream_ids=stream, sync=sync,
                   on_ready=ready)


@app.command()
def serve(
    exactly_once: Annotated[Optional[bool], typer.Option("--exactly-once/--at-least-once", help="Publish predictions and commit offsets in one Kafka transaction (default: settings, at-least-once).")] = None,  # noqa: UP045
    instance_id: Annotated[Optional[str], typer.Option("--instance-id", envvar="FUSIONSTREAM_INSTANCE_ID", help="Stable name of this instance (default: host name). Exactly-once derives its transactional id from it, and an explicit one makes the instance a static group member that takes its partitions straight back after a crash: keep it across restarts, make it differ between instances.")] = None,  # noqa: UP045
    bootstrap: Annotated[Optional[str], typer.Option("--bootstrap", help="Kafka bootstrap servers, host:port[,host:port] (default: FUSIONSTREAM_BOOTSTRAP_SERVERS, else localhost:9092).")] = None,  # noqa: UP045
    group: Annotated[Optional[str], typer.Option("--group", help="Consumer group (default: settings).")] = None,  # noqa: UP045
    metrics_port: Annotated[Optional[int], typer.Option("--metrics-port", min=0, max=65535, help="Port of /metrics and /healthz; 0 turns them off (default: settings).")] = None,  # noqa: UP045
    workers: Annotated[Optional[str], typer.Option("--workers", help="Service processes on this host: a number, or auto (one per 2 cores, at most one per partition). Above 1 a supervisor restarts any that dies and serves one /metrics and /healthz for all (default: settings, 1).")] = None,  # noqa: UP045
    model: ModelOpt = None,
    backend: BackendOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Run the Kafka inference service: consume the input topics, publish one prediction per window.

    Joins the consumer group (range assignment; run several instances to scale out), creates
    missing topics, sends undecodable and late records to the dead-letter topic, serves
    Prometheus /metrics and /healthz, and stops gracefully on SIGTERM/SIGINT (closed windows
    published, offsets committed; open windows are completed by the next owner).

    With --workers N (N > 1) it supervises N such processes in one group, named
    `<instance-id>-<i>`, and restarts one that dies; see docs/operations.md#workers.
    """
    from fusionstream.consumers.service import run_service
    from fusionstream.consumers.service.main import logs_to_stdout
    from fusionstream.consumers.service.supervisor import run_supervisor, workers_for

    settings = load_settings(config, model_dir=model, backend=backend, exactly_once=exactly_once,
                             bootstrap_servers=bootstrap, group_id=group, metrics_port=metrics_port, workers=workers)
    _setup_logging(settings)
    logs_to_stdout()  # stderr is for the one line that ends the process; `--workers auto` says its count as a log
    count = workers_for(settings)
    if count > 1:
        raise typer.Exit(run_supervisor(settings, workers=count, instance_id=instance_id))
    raise typer.Exit(run_service(settings, instance_id=instance_id))


def main() -> None:
    """The console script (and ``python -m fusionstream``): errors as one line, see cli_errors."""
    widen_for_files()
    sys.exit(run_app(app))


if __name__ == "__main__":
    main()
