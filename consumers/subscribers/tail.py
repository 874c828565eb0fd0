"""`fusionstream tail`: print predictions as they are published, one line each (or raw JSON lines)."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Callable, Iterable
from datetime import datetime
from typing import TYPE_CHECKING, Any

from fusionstream.consumers.kafka.errors import BROKER_HINT
from fusionstream.consumers.settings import Settings
from fusionstream.consumers.subscribers.api import PredictionRecord, subscribe
from fusionstream.stream.printable import column

if TYPE_CHECKING:
    from rich.console import Console
    from rich.text import Text

_MODALITY_LETTERS = (("V", "magenta"), ("A", "yellow"), ("T", "blue"))


def format_line(p: PredictionRecord) -> Text:
    """``stream  window start  label score  V A T  capture→publish``: one prediction as a rich line.

    A multi-label prediction adds the labels at or above their thresholds (``labels: a 0.91, b 0.62``);
    an embedding model's, which has no label, shows the vector's size instead (``embedding[384]``). With
    revisions, a provisional prediction ends in ``provisional``, the final that follows it in
    ``final (revision 1)``, and an amended final in ``amended (revision N)``.
    """
    from rich.text import Text

    start = datetime.fromtimestamp(p.t_start_ns / 1e9).astimezone()  # the reader's local time
    # The date too when it is not today's: a stream on 1970 time or hours behind read as plausible times of day.
    day = "" if start.date() == datetime.now().astimezone().date() else f"{start:%Y-%m-%d} "
    line = Text.assemble(
        (column(p.stream_id, 12) + " ", "cyan"),  # a producer's text: no escape sequence reaches the terminal
        (f"{day}{start:%H:%M:%S}.{start.microsecond // 1000:03d}  ", "dim"),
    )
    if p.embedding is not None:
        line.append(f"{f'embedding[{len(p.embedding)}]':>18}  ", style="bold")
    else:
        line.append(f"{p.label:>6} ", style="bold")
        line.append(f"{p.score:5.2f}  ", style="green" if p.score >= 0.5 else "red")
    for (letter, style), present in zip(_MODALITY_LETTERS, p.present, strict=True):
        line.append(f"{letter} " if present else "· ", style=style if present else "dim")
    latency = p.capture_to_publish_ms
    line.append(" " + (f"{latency:8.1f} ms" if latency is not None else "       – ms"), style="dim")
    if p.labels is not None:
        shown = ", ".join(f"{name} {score:.2f}" for name, score in p.labels.items())
        line.append(f"  labels: {shown or '(none)'}", style="bold")
    if not p.final:
        line.append("  provisional", style="yellow")
    elif p.closed_by == "amended":  # a record that came after the window's final changed it
        line.append(f"  amended (revision {p.revision})", style="magenta")
    elif p.revision:
        line.append(f"  final (revision {p.revision})", style="dim")
    return line


def tail_console(topic: str, bootstrap: str, what: str, *, banner: bool) -> Console:
    """The console records are printed on, after a ``tailing TOPIC at BOOTSTRAP (what)`` line on stderr."""
    from rich.console import Console
    from rich.markup import escape

    if banner:
        # One line whatever the terminal's width (soft wrap): scripts read stderr line by line.
        Console(stderr=True, highlight=False, soft_wrap=True).print(
            f"[dim]tailing {escape(topic)} at {escape(bootstrap)} ({what}); Ctrl-C stops[/]")
    return Console(highlight=False)


async def print_all(subscription: Any, format_text: Callable[[Any], Text], *, as_json: bool, limit: int | None,
                    console: Console) -> int:
    """Print each record ``subscription`` yields until ``limit``: its ``to_dict()`` as a JSON line, or
    ``format_text(record)`` as one line whatever the terminal's width (scripts read it line by line).
    Returns how many were printed."""
    shown = 0
    if limit == 0:
        return 0
    # The commands read the address from the settings, not from a subscribe() call; a mistyped topic is an error.
    subscription.unreachable_hint = BROKER_HINT
    subscription.missing_topic_fails = True
    async with subscription as records:
        async for record in records:
            if as_json:
                sys.stdout.write(json.dumps(record.to_dict(), separators=(",", ":")) + "\n")
                sys.stdout.flush()
            else:
                console.print(format_text(record), soft_wrap=True)
            shown += 1
            if limit is not None and shown >= limit:
                break
    return shown


async def _tail(
    settings: Settings,
    *,
    as_json: bool,
    from_beginning: bool,
    stream_ids: Iterable[str] | None,
    limit: int | None,
    read_committed: bool,
    until_end: bool,
    console: Console,
    finals_only: bool = False,
) -> int:
    subscription = subscribe(
        settings.bootstrap_servers,
        settings.predictions_topic,
        from_beginning=from_beginning,
        read_committed=read_committed,
        stream_ids=stream_ids,
        until_end=until_end,
        finals_only=finals_only,
        client_id=f"{settings.client_id}-tail",
        **settings.kafka_security(),
    )
    return await print_all(subscription, format_line, as_json=as_json, limit=limit, console=console)


def run_tail(
    settings: Settings,
    *,
    as_json: bool = False,
    from_beginning: bool = False,
    stream_ids: Iterable[str] | None = None,
    limit: int | None = None,
    read_committed: bool = True,
    until_end: bool = False,
    finals_only: bool = False,
) -> int:
    """Print predictions until ``limit`` (or the end, with ``until_end``); return how many were printed."""
    console = tail_console(settings.predictions_topic, settings.bootstrap_servers,
                           "from the beginning" if from_beginning else "new predictions", banner=not as_json)
    return asyncio.run(
        _tail(
            settings,
            as_json=as_json,
            from_beginning=from_beginning,
            stream_ids=stream_ids,
            limit=limit,
            read_committed=read_committed,
            until_end=until_end,
            console=console,
            finals_only=finals_only,
        )
    )


__all__ = ["format_line", "print_all", "run_tail", "tail_console"]
