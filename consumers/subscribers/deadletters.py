"""`fusionstream tail --dead-letters`: print the dead-letter topic's records, one line each (or JSON lines).

A dead letter is the original record, byte for byte, with ``fs.*`` headers saying why and where it came
from (docs/predictions.md#the-dead-letter-record). Its value is a wire-format record, not a prediction,
so the prediction reader skips it; this reads the headers instead.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from fusionstream.consumers.settings import Settings
from fusionstream.consumers.subscribers.api import Subscription
from fusionstream.consumers.subscribers.tail import print_all, tail_console
from fusionstream.stream.printable import column, printable

if TYPE_CHECKING:
    from aiokafka import ConsumerRecord
    from rich.console import Console
    from rich.text import Text


@dataclass(frozen=True, slots=True)
class DeadLetterRecord:
    """One record of the dead-letter topic: why it was refused, where it was read, and its own headers."""

    reason: str
    detail: str
    topic: str | None
    partition: int | None
    offset: int | None
    timestamp_ms: int | None  # the original record's
    stream_id: str | None  # its key
    value_bytes: int
    dead_lettered_ms: int
    headers: dict[str, str]  # the original record's own headers

    @classmethod
    def of(cls, message: ConsumerRecord) -> DeadLetterRecord:
        fs: dict[str, str] = {}
        own: dict[str, str] = {}
        for name, value in message.headers or ():
            text = value.decode("utf-8", "replace") if value is not None else ""
            (fs if name.startswith("fs.") else own)[name] = text
        return cls(
            reason=fs.get("fs.reason", "(no fs.reason header)"), detail=fs.get("fs.detail", ""),
            topic=fs.get("fs.topic"), partition=_int(fs.get("fs.partition")), offset=_int(fs.get("fs.offset")),
            timestamp_ms=_int(fs.get("fs.timestamp")),
            stream_id=message.key.decode("utf-8", "replace") if message.key is not None else None,
            value_bytes=len(message.value or b""), dead_lettered_ms=message.timestamp, headers=own,
        )

    def to_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.__slots__}  # type: ignore[attr-defined]


def _int(text: str | None) -> int | None:
    try:
        return int(text) if text is not None else None
    except ValueError:
        return None


def format_dead_letter(letter: DeadLetterRecord) -> Text:
    """``time  reason  topic[partition]@offset  stream  detail``."""
    from rich.text import Text

    when = datetime.fromtimestamp(letter.dead_lettered_ms / 1000).astimezone()
    origin = f"{letter.topic}[{letter.partition}]@{letter.offset}" if letter.topic else "(origin unknown)"
    return Text.assemble(
        (f"{when:%H:%M:%S}.{when.microsecond // 1000:03d}  ", "dim"),
        (f"{letter.reason:<20} ", "bold red"),
        (f"{origin:<22} ", "dim"),
        (column(letter.stream_id or "-", 12) + " ", "cyan"),  # both a producer's text, escaped
        printable(letter.detail),
    )


class DeadLetterSubscription(Subscription):
    """A :class:`~.api.Subscription` of the dead-letter topic: each record read as a :class:`DeadLetterRecord`
    (its headers), not parsed as a prediction."""

    def _accept(self, message: ConsumerRecord) -> DeadLetterRecord:  # type: ignore[override]
        return DeadLetterRecord.of(message)


async def _read(settings: Settings, *, as_json: bool, from_beginning: bool, limit: int | None,
                read_committed: bool, until_end: bool, console: Console) -> int:
    subscription = DeadLetterSubscription(
        settings.bootstrap_servers, settings.deadletter_topic, from_beginning=from_beginning,
        read_committed=read_committed, until_end=until_end, client_id=f"{settings.client_id}-tail",
        **settings.kafka_security(),
    )
    return await print_all(subscription, format_dead_letter, as_json=as_json, limit=limit, console=console)


def run_dead_letters(settings: Settings, *, as_json: bool = False, from_beginning: bool = False,
                     limit: int | None = None, read_committed: bool = True, until_end: bool = False) -> int:
    """Print dead letters until ``limit`` (or the end, with ``until_end``); return how many were printed."""
    console = tail_console(settings.deadletter_topic, settings.bootstrap_servers,
                           "from the beginning" if from_beginning else "new dead letters", banner=not as_json)
    return asyncio.run(_read(settings, as_json=as_json, from_beginning=from_beginning, limit=limit,
                             read_committed=read_committed, until_end=until_end, console=console))


__all__ = ["DeadLetterRecord", "DeadLetterSubscription", "format_dead_letter", "run_dead_letters"]
