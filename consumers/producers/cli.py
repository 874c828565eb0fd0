"""`fusionstream produce ...`: publish a source's records to the input topics, with a live status line.

Imports only typer and the settings at module level: ``fusionstream --help`` must not pay
for OpenCV, PyAV or aiokafka. Every command opens its source after the topics are ready,
so that a replay's event times start when publishing does.
"""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal, Optional

import typer

from fusionstream.consumers.cli_errors import EXIT_INTERRUPTED, describe, fail, load_settings, usage_error
from fusionstream.consumers.settings import Settings

#: How long a stopped producer may spend telling the service its streams ended.
ENDED_TIMEOUT_S = 5.0

if TYPE_CHECKING:
    from rich.console import Console
    from rich.live import Live
    from rich.text import Text

    from fusionstream.consumers.producers.publish import Published
    from fusionstream.stream.records import Record

    #: What --asr does to a source's record iterator.
    Transcribe = Callable[[Iterator[Record]], Iterator[Record]]

produce_app = typer.Typer(
    name="produce",
    help=(
        "Publish video frames, audio chunks and transcript text to the input topics (key = stream id, "
        "timestamp = event time). Files and the synthetic source are replayed in real time by default."
    ),
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)

ConfigOpt = Annotated[Optional[Path], typer.Option("--config", help="TOML settings file (lowest precedence after defaults).")]  # noqa: E501, UP045
BootstrapOpt = Annotated[Optional[str], typer.Option("--bootstrap", help="Kafka bootstrap servers, host:port[,host:port] (default: FUSIONSTREAM_BOOTSTRAP_SERVERS, else localhost:9092).")]  # noqa: E501, UP045
PartitionsOpt = Annotated[Optional[int], typer.Option("--partitions", min=1, help="Partitions of each input topic when creating them (default: settings).")]  # noqa: E501, UP045
StreamOpt = Annotated[Optional[str], typer.Option("--stream-id", help="Stream id (the Kafka key).")]  # noqa: UP045
NoPacingOpt = Annotated[bool, typer.Option("--no-pacing", help="Send as fast as possible instead of in real time.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print the final counts as one JSON object on stdout: media records per modality ('records'), progress records apart ('progress').")]  # noqa: E501
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No status line and no summary at the end (--json still prints its counts).")]  # noqa: E501
SizeOpt = Annotated[Optional[int], typer.Option("--size", min=8, help="Fit frames inside SIZE x SIZE pixels (aspect kept).")]  # noqa: E501, UP045
NoProgressOpt = Annotated[bool, typer.Option("--no-progress", help="Send no progress records (for a service older than them; docs/wire-format.md#progress). Records keep their complete flag.")]  # noqa: E501
AsrOpt = Annotated[bool, typer.Option("--asr", help="Also publish the words PocketSphinx recognises in the audio (US English, on the CPU), one transcript record per word, with progress records.")]  # noqa: E501
AsrGrammarOpt = Annotated[Literal["general", "digits"], typer.Option("--asr-grammar", help="general: the US-English language model; digits: only the digit words.")]  # noqa: E501
AsrMaxOpt = Annotated[float, typer.Option("--asr-max-segment", min=0.9, max=30, help="Seconds of speech after which a transcript is published even without a pause.")]  # noqa: E501
FpsOpt = Annotated[Optional[float], typer.Option("--fps", min=0.1, help="Highest frame rate to publish (frames are dropped to hold it).")]  # noqa: E501, UP045


def _settings(config: Path | None, bootstrap: str | None, partitions: int | None) -> Settings:
    return load_settings(config, bootstrap_servers=bootstrap, partitions=partitions)


def _live_stream_id() -> str:
    """Camera, microphone and live captions of one machine default to one stream: its host name."""
    return socket.gethostname() or "live"


@produce_app.command()
def synthetic(
    streams: Annotated[int, typer.Option(min=1, help="Synthetic streams side by side.")] = 2,
    seconds: Annotated[float, typer.Option(min=0.1, help="Length of each stream.")] = 30.0,
    seed: Annotated[int, typer.Option(min=0, help="Seed: the same seed gives the same records.")] = 0,
    fast: Annotated[bool, typer.Option("--fast", help="As fast as possible, with the source's own reproducible event times (from 2026-01-01).")] = False,  # noqa: E501
    truth: Annotated[Optional[Path], typer.Option("--truth", dir_okay=False, help="Write the ground truth (JSON) here, for scoring the predictions later.")] = None,  # noqa: E501, UP045
    prefix: Annotated[str, typer.Option(help="Stream ids are PREFIX-00, PREFIX-01, ...")] = "cam",
    asr: Annotated[bool, typer.Option("--asr", help="Replace the synthetic transcript by the words PocketSphinx recognises in each stream's audio, with progress records (docs/asr.md).")] = False,  # noqa: E501
    asr_grammar: AsrGrammarOpt = "general",
    asr_max_segment: AsrMaxOpt = 1.5,
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
    bootstrap: BootstrapOpt = None,
    partitions: PartitionsOpt = None,
    config: ConfigOpt = None,
) -> None:
    """The synthetic AV-digit streams (video, speech, transcript) with ground truth."""
    settings = _settings(config, bootstrap, partitions)
    # Unpaced, each word follows the audio that decided it (inline): recognisers beside it would fall behind.
    recognise = _asr(asr, asr_grammar, asr_max_segment, inline=fast, streams=streams)
    if asr and not fast:
        from fusionstream.consumers.producers.asr import asr_realtime_refusal

        if (refusal := asr_realtime_refusal(streams, asr_grammar)) is not None:
            fail(refusal)

    def records() -> Iterator[Record]:
        from fusionstream.consumers.producers.sources import synthetic_source
        from fusionstream.stream.records import Modality
        from fusionstream.stream.sources import SyntheticConfig

        transcribe = recognise()  # before the source: its clock starts when it is made
        source, ground_truth = synthetic_source(
            SyntheticConfig(streams=streams, seconds=seconds, seed=seed, stream_prefix=prefix), realtime=not fast
        )
        if truth is not None:
            truth.write_text(json.dumps(ground_truth.to_dict()) + "\n")
        if asr:  # the recogniser's words instead of the synthetic captions
            source = (r for r in source if r.modality is not Modality.TEXT)
        return transcribe(source)

    _produce(settings, records, as_json=as_json, quiet=quiet)


@produce_app.command()
def video(
    file: Annotated[Path, typer.Argument(exists=True, dir_okay=False, help="A media file: its video and audio tracks (a file with one publishes that one alone).")],  # noqa: E501
    captions: Annotated[Optional[Path], typer.Option("--captions", exists=True, dir_okay=False, help="SRT or WebVTT captions of the file.")] = None,  # noqa: E501, UP045
    stream_id: StreamOpt = None,
    loop: Annotated[bool, typer.Option("--loop", help="Replay forever, each pass continuing the last one's timeline.")] = False,  # noqa: E501
    no_pacing: NoPacingOpt = False,
    fps: FpsOpt = None,
    size: SizeOpt = None,
    language: Annotated[str, typer.Option(help="Language of the captions.")] = "en",
    asr: AsrOpt = False,
    asr_grammar: AsrGrammarOpt = "general",
    asr_max_segment: AsrMaxOpt = 1.5,
    no_progress: NoProgressOpt = False,
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
    bootstrap: BootstrapOpt = None,
    partitions: PartitionsOpt = None,
    config: ConfigOpt = None,
) -> None:
    """A media file's frames (JPEG), its audio track (PCM) and optional captions, as one stream (default id: FILE's stem)."""  # noqa: E501
    settings = _settings(config, bootstrap, partitions)
    if asr and captions is not None:
        usage_error("--asr and --captions both make the transcript: choose one")
    recognise = _asr(asr, asr_grammar, asr_max_segment, inline=no_pacing, media=file)

    def records() -> Iterator[Record]:
        from fusionstream.consumers.producers.sources import media_source

        transcribe = recognise()
        return transcribe(media_source(
            file, stream_id or file.stem, captions=captions, loop=loop, realtime=not no_pacing, max_fps=fps,
            size=size, language=language,
        ))

    _produce(settings, records, as_json=as_json, quiet=quiet, announce=not no_progress,
             follow_text=captions is not None)


@produce_app.command()
def camera(
    index_or_url: Annotated[str, typer.Argument(metavar="INDEX_OR_URL", help="Camera index (0, 1, ...), device path or stream URL (rtsp://...).")],  # noqa: E501
    stream_id: Annotated[Optional[str], typer.Option("--stream-id", help="Stream id (default: this host's name, shared with `mic`).")] = None,  # noqa: E501, UP045
    fps: FpsOpt = None,
    size: SizeOpt = None,
    quality: Annotated[int, typer.Option(min=1, max=100, help="JPEG quality.")] = 85,
    no_progress: NoProgressOpt = False,
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
    bootstrap: BootstrapOpt = None,
    partitions: PartitionsOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Live frames from a camera or a video stream, stamped with the wall clock when grabbed. Ctrl-C stops."""
    if Path(index_or_url).is_file():
        # OpenCV reads a file as fast as it can: every frame would carry the same wall-clock stamp.
        fail(f"{index_or_url} is a file, not a camera: `fusionstream produce video {index_or_url}` replays it at its "
             "own frame rate with its own timestamps")
    settings = _settings(config, bootstrap, partitions)

    def records() -> Iterator[Record]:
        from fusionstream.consumers.producers.sources import camera_source

        return camera_source(index_or_url, stream_id or _live_stream_id(), fps=fps, size=size, quality=quality)

    _produce(settings, records, as_json=as_json, quiet=quiet, announce=not no_progress)


@produce_app.command()
def audio(
    file: Annotated[Path, typer.Argument(exists=True, dir_okay=False, help="An audio or video file.")],
    stream_id: StreamOpt = None,
    no_pacing: NoPacingOpt = False,
    sample_rate: Annotated[Optional[int], typer.Option(min=1000, help="Resample to this rate (default: the track's).")] = None,  # noqa: E501, UP045
    asr: AsrOpt = False,
    asr_grammar: AsrGrammarOpt = "general",
    asr_max_segment: AsrMaxOpt = 1.5,
    no_progress: NoProgressOpt = False,
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
    bootstrap: BootstrapOpt = None,
    partitions: PartitionsOpt = None,
    config: ConfigOpt = None,
) -> None:
    """The first audio track of a file, as mono 16-bit PCM chunks (default id: FILE's stem)."""
    settings = _settings(config, bootstrap, partitions)
    recognise = _asr(asr, asr_grammar, asr_max_segment, inline=no_pacing, sample_rate=sample_rate, media=file)

    def records() -> Iterator[Record]:
        from fusionstream.consumers.producers.sources import audio_source

        transcribe = recognise()
        return transcribe(audio_source(file, stream_id or file.stem, realtime=not no_pacing, sample_rate=sample_rate))

    _produce(settings, records, as_json=as_json, quiet=quiet, announce=not no_progress)


@produce_app.command()
def mic(
    device: Annotated[Optional[str], typer.Option("--device", help="Input device index or name (default: the system's default input).")] = None,  # noqa: E501, UP045
    stream_id: Annotated[Optional[str], typer.Option("--stream-id", help="Stream id (default: this host's name, shared with `camera`).")] = None,  # noqa: E501, UP045
    sample_rate: Annotated[int, typer.Option(min=1000, help="Capture rate.")] = 16_000,
    chunk_ms: Annotated[float, typer.Option(min=1, help="Milliseconds of audio per record.")] = 40,
    asr: AsrOpt = False,
    asr_grammar: AsrGrammarOpt = "general",
    asr_max_segment: AsrMaxOpt = 1.5,
    no_progress: NoProgressOpt = False,
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
    bootstrap: BootstrapOpt = None,
    partitions: PartitionsOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Live audio from a microphone (PortAudio), timed from the audio callback. Ctrl-C stops."""
    settings = _settings(config, bootstrap, partitions)
    recognise = _asr(asr, asr_grammar, asr_max_segment, sample_rate=sample_rate)

    def records() -> Iterator[Record]:
        from fusionstream.consumers.producers.sources import microphone_source

        transcribe = recognise()
        return transcribe(microphone_source(stream_id or _live_stream_id(), device=device, sample_rate=sample_rate,
                                           chunk_ms=chunk_ms))

    _produce(settings, records, as_json=as_json, quiet=quiet, announce=not no_progress)


@produce_app.command()
def captions(
    file: Annotated[str, typer.Argument(metavar="FILE|-", help="An SRT or WebVTT file, or - for live lines on stdin.")],
    stream_id: Annotated[Optional[str], typer.Option("--stream-id", help="Stream id (default: FILE's stem; for stdin this host's name).")] = None,  # noqa: E501, UP045
    no_pacing: NoPacingOpt = False,
    language: Annotated[str, typer.Option(help="Language tag of the text.")] = "en",
    no_progress: NoProgressOpt = False,
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
    bootstrap: BootstrapOpt = None,
    partitions: PartitionsOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Transcript segments: a caption file's cues from now on, or one segment per stdin line as it arrives.

    Cues that overlap are sent one after another: a cue that a later one starts inside ends where that one
    starts, and cues that start together go as one (docs/wire-format.md#progress says why)."""
    settings = _settings(config, bootstrap, partitions)
    if file != "-" and not Path(file).is_file():
        usage_error(f"{file} is a directory, not a caption file" if Path(file).is_dir()
                    else f"no such caption file: {file}")
    sid = stream_id or (_live_stream_id() if file == "-" else Path(file).stem)
    from fusionstream.consumers.producers.sources import captions_source

    try:  # read now (the clock starts at the first record): a broken or empty file is said before the broker
        source = captions_source(file, sid, realtime=not no_pacing, language=language)
    except ValueError as exc:
        fail(str(exc))
    _produce(settings, lambda: source, as_json=as_json, quiet=quiet, announce=not no_progress)


def _asr(
    enabled: bool, grammar: str, max_segment_s: float, *, inline: bool = False, streams: int = 1,
    sample_rate: int | None = None, media: Path | None = None,
) -> Callable[[], Transcribe]:
    """What ``--asr`` does to a source's records: nothing, or add the recognised words (settings checked now).

    Call the result before opening the source: live recognisers load their models then, before the
    source's clock starts. ``inline`` (unpaced sources): decode in the publishing thread, each word
    right after its audio (docs/asr.md). ``sample_rate`` (asked for) and ``media`` (a file) are
    refused now when there is no speech to recognise in them, rather than publishing no words."""
    if not enabled:
        return lambda: lambda records: records
    from fusionstream.consumers.producers.asr import Recognisers, asr_transcripts
    from fusionstream.stream.sources import has_audio
    from fusionstream.stream.sources.asr import ASR_MIN_SAMPLE_RATE, AsrConfig, AsrError

    if sample_rate is not None and sample_rate < ASR_MIN_SAMPLE_RATE:
        usage_error(f"--asr needs audio at {ASR_MIN_SAMPLE_RATE} Hz or more (speech reaches 4 kHz), not --sample-rate "
             f"{sample_rate}")
    try:
        if media is not None and not has_audio(media):
            fail(f"{media} has no audio track: --asr would have nothing to recognise")
    except ValueError as exc:
        fail(str(exc))

    try:
        config = AsrConfig(grammar=grammar, max_segment_s=max_segment_s)  # type: ignore[arg-type]
    except AsrError as exc:
        fail(str(exc))
    if inline:
        return lambda: lambda records: asr_transcripts(records, config, inline=True)
    return lambda: Recognisers(config, streams=streams).transcripts


# -- running ---------------------------------------------------------------------------------------


def _produce(
    settings: Settings, records: Callable[[], Iterator[Record]], *, as_json: bool, quiet: bool,
    announce: bool | None = None, follow_text: bool = False,
) -> None:
    """Prepare the topics, open the source, publish with a status line; map failures to one clear line.

    ``announce`` (an in-order source): the complete flag on every record, and progress records
    (text between cues, ``ended`` at the end) unless False (``--no-progress``); None (the synthetic source,
    which models arbitrary delivery) leaves the records as they are."""
    from aiokafka.errors import KafkaError
    from rich.console import Console

    from fusionstream.consumers.producers.progress import ProgressAnnouncer, without_progress_records
    from fusionstream.consumers.producers.publish import Published, prepare_topics, publish
    from fusionstream.stream.errors import FusionStreamError

    console = Console(stderr=True)
    status = _Status(console, settings, quiet=quiet)
    latest = Published()

    def progress(published: Published) -> None:
        nonlocal latest
        latest = published
        status.update(published)

    announcer = ProgressAnnouncer(follow_text=follow_text)

    async def main() -> Published:
        # SIGTERM (a supervisor, `kill`) stops as Ctrl-C does: the summary, and the recognisers and sources closed.
        # The main task is cancelled, as asyncio.run's Ctrl-C handler cancels it, so its producer is stopped before
        # the loop closes. (Raising SIGINT instead did nothing where SIGINT is ignored: a script's background job.)
        main_task = asyncio.current_task()
        assert main_task is not None
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, main_task.cancel)
        await prepare_topics(settings)
        source = records()
        if announce is not None:
            source = announcer(source)
            if not announce:
                source = without_progress_records(source)
        status.start()
        return await publish(source, settings, create_topics=False, progress=progress)

    interrupted = False
    try:
        latest = asyncio.run(main())
    except (KeyboardInterrupt, asyncio.CancelledError):
        interrupted = True
        if announce:
            status.stop()
            _say_ended(settings, announcer.ended())
    except (FusionStreamError, KafkaError, OSError, ValueError) as exc:
        status.stop()
        fail(describe(exc))
    finally:
        status.stop()
    _summary(console, latest, interrupted=interrupted, quiet=quiet)
    if as_json:
        typer.echo(json.dumps(latest.to_dict(), separators=(",", ":")))
    if interrupted:
        raise typer.Exit(EXIT_INTERRUPTED)


def _say_ended(settings: Settings, ended: list[Record]) -> None:
    """Tell the service that the streams stopped, so that it closes their windows now instead of
    waiting out the allowed lateness; best effort, a few seconds at most (a second Ctrl-C skips it)."""
    from fusionstream.consumers.producers.publish import producer_for, publish

    if not ended:
        return

    async def send() -> None:
        # Its own producer with a short request timeout: aiokafka holds a batch (and a flush at stop waits
        # for it) as long as that, which for the stream's producer is produce_hold_s.
        producer = producer_for(settings, request_timeout_ms=int(ENDED_TIMEOUT_S * 1000))
        try:
            await producer.start()
            await publish(ended, settings, producer=producer, create_topics=False)
        finally:
            await producer.stop()

    try:
        asyncio.run(asyncio.wait_for(send(), 2 * ENDED_TIMEOUT_S))
    except KeyboardInterrupt:
        pass
    except Exception as exc:  # stopping anyway: say so and go on
        typer.echo(f"fusionstream: warning: could not tell the service the streams ended: {describe(exc)}", err=True)


#: Seconds between two status lines when stderr is no terminal (a file, a pipe, a container's log).
PLAIN_EVERY_S = 10.0


class _Status:
    """One live line on stderr: records acknowledged per modality, rate and throughput."""

    def __init__(self, console: Console, settings: Settings, *, quiet: bool) -> None:
        self._console = console
        self._quiet = quiet
        self._where = f"{settings.bootstrap_servers}"
        self._live: Live | None = None
        self._since = time.monotonic()
        self._plain_at: float | None = None  # when the last plain line was printed (output that is no terminal)

    def start(self) -> None:
        from rich.live import Live

        if self._quiet or self._live is not None:
            return
        if not self._console.is_terminal:
            # A live line is redrawn, which a log file or a pipe cannot show: a plain line now and then instead.
            self._plain_at = time.monotonic()
            self._console.print(self._line(None), soft_wrap=True)
            return
        live = Live(self._line(None), console=self._console, refresh_per_second=4, transient=True)
        live.start()
        self._live = live

    def update(self, published: Published) -> None:
        if self._live is not None:
            self._live.update(self._line(published))
        elif self._plain_at is not None and time.monotonic() - self._plain_at >= PLAIN_EVERY_S:
            self._plain_at = time.monotonic()
            self._console.print(self._line(published), soft_wrap=True)

    def stop(self) -> None:
        if self._live is not None:
            self._live.stop()
            self._live = None

    def _line(self, published: Published | None) -> Text:
        from rich.text import Text

        line = Text.assemble(("▶ ", "green"), ("producing to ", "dim"), (self._where, "cyan"), "  ")
        if published is None:
            return line + Text("waiting for the first record…", style="dim")
        for label, style in (("video", "magenta"), ("audio", "yellow"), ("text", "blue")):
            line.append(f"{label} ", style=style)
            line.append(f"{published.records[label]:,}  ")
        mb_s = published.bytes / published.elapsed_s / 1e6 if published.elapsed_s > 0 else 0.0
        streams = len(published.streams)
        line.append(f"│ {published.rate:,.0f} rec/s  {mb_s:.2f} MB/s  │ {streams} stream{'' if streams == 1 else 's'}  "
                    f"│ {published.elapsed_s:.1f} s", style="dim")
        return line


def _summary(console: Console, published: Published, *, interrupted: bool, quiet: bool) -> None:
    if quiet:
        return
    counts = ", ".join(f"{label} {n:,}" for label, n in published.records.items())
    if published.progress:
        counts += f", and {published.progress:,} progress"
    how = "stopped after" if interrupted else "published"
    console.print(
        f"[green]{how}[/] {published.total:,} record{'' if published.total == 1 else 's'} "
        f"({counts}; {published.bytes / 1e6:.1f} MB) "
        f"from {len(published.streams)} stream{'' if len(published.streams) == 1 else 's'} "
        f"in {published.elapsed_s:.1f} s",
        highlight=False,
        soft_wrap=True,
    )


__all__ = ["produce_app"]
