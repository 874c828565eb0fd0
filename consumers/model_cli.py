"""`fusionstream model ...`: build model directories from pretrained encoders (docs/model-format.md).

Like the main CLI this module imports only typer; a command imports the engines (and they torch,
transformers) when it runs, so `fusionstream --help` stays fast.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer

from fusionstream.consumers.cli_errors import one_line_errors

if TYPE_CHECKING:
    from fusionstream.engines.importers import Imported, Job

model_app = typer.Typer(
    name="model",
    help=(
        "Build and inspect model directories (docs/model-format.md).\n\n"
        "`fusionstream model import OUT --text HF_DIR --audio HF_DIR --video module:function|FILE.onnx` (or "
        "`--from-model DIR`) writes the encoders of a format-2 model directory from models you have on disk; "
        "nothing is downloaded."
    ),
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
    rich_markup_mode="markdown",
)

OptPath = Optional[Path]  # noqa: UP045 - typer reads the annotation at run time
OptStr = Optional[str]  # noqa: UP045
OptInt = Optional[int]  # noqa: UP045
VIDEO = "Video (--video)"


@model_app.command("import")
def import_(
    out: Annotated[Path, typer.Argument(help="Encoders directory to create, or to add modalities to (replacing those given).")],  # noqa: E501
    text: Annotated[OptPath, typer.Option("--text", metavar="HF_DIR", help="Hugging Face or sentence-transformers text encoder directory (config.json, weights, tokenizer.json).")] = None,  # noqa: E501
    text_max_tokens: Annotated[OptInt, typer.Option("--text-max-tokens", min=3, help="Truncation length (default: sentence_bert_config.json's max_seq_length, else 128).")] = None,  # noqa: E501
    audio: Annotated[OptPath, typer.Option("--audio", metavar="HF_DIR", help="Hugging Face audio encoder directory (wav2vec2, HuBERT, WavLM...).")] = None,  # noqa: E501
    video: Annotated[OptStr, typer.Option("--video", metavar="module:function|FILE.onnx", help="A function returning a torch module [N,3,H,W] → [N,D] (module:function or path/file.py:function), or an ONNX image encoder.", rich_help_panel=VIDEO)] = None,  # noqa: E501
    video_features: Annotated[bool, typer.Option("--video-features", help="Replace the factory's classifier (fc, classifier, head, heads) with the identity.", rich_help_panel=VIDEO)] = False,  # noqa: E501
    video_size: Annotated[OptInt, typer.Option("--video-size", min=1, help="Frame height and width (default: the ONNX graph's, else 224).", rich_help_panel=VIDEO)] = None,  # noqa: E501
    video_frames: Annotated[OptInt, typer.Option("--video-frames", min=1, help="Frames sampled per window (default: the graph's, else 4).", rich_help_panel=VIDEO)] = None,  # noqa: E501
    video_resize: Annotated[str, typer.Option("--video-resize", help="stretch, center_crop or letterbox.", rich_help_panel=VIDEO)] = "stretch",  # noqa: E501
    video_colour: Annotated[str, typer.Option("--video-colour", help="Channel order the encoder expects: rgb or bgr.", rich_help_panel=VIDEO)] = "rgb",  # noqa: E501
    video_scale: Annotated[str, typer.Option("--video-scale", help="Multiplied into 0-255 pixels first (1/255, 1, ...).", rich_help_panel=VIDEO)] = "1/255",  # noqa: E501
    video_mean: Annotated[str, typer.Option("--video-mean", help="Per channel after scaling: 3 numbers, one, imagenet or clip.", rich_help_panel=VIDEO)] = "0",  # noqa: E501
    video_std: Annotated[str, typer.Option("--video-std", help="Per channel: 3 numbers, one, imagenet or clip.", rich_help_panel=VIDEO)] = "1",  # noqa: E501
    video_layout: Annotated[OptStr, typer.Option("--video-layout", help="nchw or nhwc (default: read from the ONNX graph, else nchw).", rich_help_panel=VIDEO)] = None,  # noqa: E501
    video_input: Annotated[OptStr, typer.Option("--video-input", help="The ONNX graph's frame input, when it has several.", rich_help_panel=VIDEO)] = None,  # noqa: E501
    video_output: Annotated[OptStr, typer.Option("--video-output", help="The ONNX graph's embedding output, when it has several.", rich_help_panel=VIDEO)] = None,  # noqa: E501
    from_model: Annotated[OptPath, typer.Option("--from-model", metavar="DIR", help="Copy the encoders of a format-1 model directory (such as the shipped one).")] = None,  # noqa: E501
    modalities: Annotated[str, typer.Option("--modalities", help="With --from-model: which of its encoders, comma-separated.")] = "video,audio,text",  # noqa: E501
    window_ms: Annotated[OptInt, typer.Option("--window-ms", min=1, help="Window length (default: the directory's, --from-model's, else 1000).")] = None,  # noqa: E501
    hop_ms: Annotated[OptInt, typer.Option("--hop-ms", min=1, help="Window hop (default: the directory's, --from-model's, else 500).")] = None,  # noqa: E501
    version: Annotated[OptStr, typer.Option("--version", help="The model's version (default: the directory's, else its name).")] = None,  # noqa: E501
) -> None:
    """Write the encoders of a format-2 model directory from pretrained models on disk; nothing is downloaded.

    Each encoder is exported to ONNX (dynamic batch axis) and checked against torch; OUT/model.json gets its
    inputs, output, embedding size and preprocessing. An encoders directory has no fusion head yet; importing
    into it again adds or replaces modalities. See docs/model-format.md.
    """
    from fusionstream.engines.errors import EngineError
    from fusionstream.engines.importers import audio as audio_source
    from fusionstream.engines.importers import image, import_encoders, own
    from fusionstream.engines.importers import text as text_source

    if video is None:  # a --video-* option without --video would be silently ignored
        given = {"--video-features": (video_features, False), "--video-size": (video_size, None),
                 "--video-frames": (video_frames, None), "--video-resize": (video_resize, "stretch"),
                 "--video-colour": (video_colour, "rgb"), "--video-scale": (video_scale, "1/255"),
                 "--video-mean": (video_mean, "0"), "--video-std": (video_std, "1"),
                 "--video-layout": (video_layout, None), "--video-input": (video_input, None),
                 "--video-output": (video_output, None)}  # fmt: skip
        for option, (value, default) in given.items():
            if value != default:
                raise typer.BadParameter("goes with --video", param_hint=option)
    if text_max_tokens is not None and text is None:
        raise typer.BadParameter("goes with --text HF_DIR", param_hint="--text-max-tokens")
    if modalities != "video,audio,text" and from_model is None:
        raise typer.BadParameter("goes with --from-model DIR", param_hint="--modalities")
    with one_line_errors(EngineError):
        jobs: list[Job] = []
        if video is not None:
            prep = image.VideoPreprocess(
                frames=video_frames, size=video_size, resize=video_resize, colour=video_colour, layout=video_layout,
                scale=image.parse_scale(video_scale), mean=image.parse_channels(video_mean, "--video-mean"),
                std=image.parse_channels(video_std, "--video-std"),
            )  # fmt: skip
            if video.endswith(".onnx"):
                if video_features:
                    raise typer.BadParameter("is for a torch factory, not an ONNX file", param_hint="--video-features")
                jobs.append(image.onnx_plan(Path(video), prep, video_input, video_output))
            else:
                if video_input or video_output:
                    raise typer.BadParameter("is for an ONNX file", param_hint="--video-input/--video-output")
                jobs.append(image.factory_plan(video, prep, video_features))
        if audio is not None:
            jobs.append(audio_source.plan(audio))
        if text is not None:
            jobs.append(text_source.plan(text, text_max_tokens))
        if from_model is not None:
            jobs.append(own.plan(from_model, [m.strip() for m in modalities.split(",") if m.strip()]))
        path, results = _run(out, jobs, window_ms=window_ms, hop_ms=hop_ms, version=version, run=import_encoders)
    _summary(path, results)


def _run(out: Path, jobs: list[Job], *, run: object, **options: object) -> tuple[Path, list[Imported]]:
    """``run`` (``import_encoders``) with a status line per job and a ✓ line per imported modality."""
    from rich.console import Console
    from rich.markup import escape

    console = Console(highlight=False)
    with console.status("importing") as status:
        def step(job: Job, what: str) -> None:
            status.update(f"[bold]{escape(job.label)}[/]: {escape(what)}…")

        def done(job: Job, results: list[Imported]) -> None:
            for item in results:
                line = f"{item.modality} from {item.source}: {item.files[0]}, {item.size}-d, parity {_parity(item)}"
                console.print(f"[green]✓[/] {escape(line)}" + escape(f" ({item.note})" if item.note else ""),
                              soft_wrap=True)

        return run(out, jobs, on_step=step, on_done=done, **options)  # type: ignore[operator]


def _parity(item: Imported) -> str:
    return "—" if item.parity is None else f"{item.parity:.1e}"


def _summary(path: Path, results: list[Imported]) -> None:
    import json

    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    table = Table(title=escape(str(path)), title_justify="left")
    for column in ("modality", "source", "graph", "inputs", "embedding", "parity error"):
        table.add_column(column, overflow="fold")
    for item in results:
        cells = (item.modality, item.source, item.files[0], item.inputs, str(item.size), _parity(item))
        table.add_row(*(escape(cell) for cell in cells))
    console = Console(highlight=False)
    console.print(table)
    have = ", ".join(json.loads(path.read_text(encoding="utf-8"))["modalities"])
    done = f"{path.parent} now has the encoders of {have}, and no fusion head yet (docs/model-format.md)."
    console.print(escape(done), soft_wrap=True)


@model_app.command("check")
def check(
    model_dir: Annotated[Path, typer.Argument(exists=True, file_okay=False, help="Model directory (format 1 or 2) or encoders directory.")],  # noqa: E501
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as one JSON object.")] = False,
) -> None:
    """Validate a model directory: the manifest, then every graph against it.

    Checks each graph's inputs and outputs (names, dtypes, shapes against the declared
    preprocessing), runs one dummy window through every encoder and the fusion head, and
    prints per graph its inputs, its output size and its CPU milliseconds. Every error names
    the file and the field. `serve` refuses a directory that fails this, at load.
    """
    import json

    from fusionstream.engines.errors import EngineError
    from fusionstream.engines.manifest_check import check_model_dir

    with one_line_errors(EngineError):
        manifest, reports = check_model_dir(model_dir, log_warnings=False)
    task = manifest.task
    summary = {
        "directory": str(manifest.directory), "format": manifest.source_format, "version": manifest.version,
        "modalities": list(manifest.modalities), "window_ms": manifest.window_ns // 1_000_000,
        "hop_ms": manifest.hop_ns // 1_000_000, "task": task.kind if task else None,
        "outputs": task.outputs if task else None, "servable": manifest.servable,
        "graphs": [{"graph": r.graph, "file": r.file, "inputs": list(r.inputs), "output": r.output,
                    "output_size": r.output_size, "cpu_ms": round(r.cpu_ms, 2),
                    "warnings": list(r.warnings)} for r in reports],
    }
    if as_json:
        typer.echo(json.dumps(summary, separators=(",", ":")))
        return
    from rich.console import Console
    from rich.table import Table

    console = Console(highlight=False)
    what = f"{task.kind}, {task.outputs} {'dims' if task.kind == 'embedding' else 'classes'}" if task else \
        "encoders only: train a head with `fusionstream train OUT --encoders DIR`"
    console.print(f"[bold]{manifest.directory}[/]: format {manifest.source_format}, version {manifest.version}, "
                  f"{' + '.join(manifest.modalities)}, window {summary['window_ms']} ms / hop {summary['hop_ms']} ms, "
                  f"{what}", soft_wrap=True)
    table = Table()
    for column in ("graph", "file", "inputs", "output", "size", "CPU ms"):
        table.add_column(column, justify="right" if column in {"size", "CPU ms"} else "left")
    for r in reports:
        table.add_row(r.graph, r.file, "\n".join(r.inputs), r.output, str(r.output_size), f"{r.cpu_ms:.2f}")
    console.print(table)
    for warning in (w for r in reports for w in r.warnings):
        console.print(f"[yellow]warning:[/] {warning}", soft_wrap=True)
    console.print("[green]ok[/]: every graph loads and runs as the manifest declares")
