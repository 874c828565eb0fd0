"""Caption sources: SRT and WebVTT files, and live transcript lines (stdin), as ``utf8`` text records.

A caption file's cue times are offsets into the media it belongs to, so a cue's event
time is the file source's start time plus the cue time (docs/wire-format.md). A live line has no
times at all: it is stamped when it arrives, and its start is estimated from its length.

Parsing is strict where a mistake would silently shift or lose text (a malformed timing
line, an end before a start, a block without a timing line) and lenient where real files
differ harmlessly (SRT or WebVTT decimal separator, missing hours, cue settings, styling
tags, a byte-order mark, CRLF line ends). Errors are ``ValueError`` naming the file and line.
"""

from __future__ import annotations

import html
import os
import re
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from fusionstream.stream.media import progress_record, text_record
from fusionstream.stream.records import Modality, Record
from fusionstream.stream.wire import MAX_DURATION_NS
from fusionstream.units import NS

#: Speaking-rate estimate for a live line with no times: seconds per word, and the cap.
SECONDS_PER_WORD = 0.4
MAX_LINE_SECONDS = 5.0
#: The longest cue a text record can carry (the wire's longest record, docs/wire-format.md).
MAX_CUE_SECONDS = MAX_DURATION_NS / NS

# Hours are optional (WebVTT) and may exceed two digits; "," is SRT's separator, "." WebVTT's.
_TIMESTAMP = r"(?:(\d+):)?(\d{1,2}):(\d{1,2})(?:[,.](\d{1,3}))?"
_TIMING = re.compile(rf"^\s*{_TIMESTAMP}\s*-->\s*{_TIMESTAMP}(?:\s+.*)?$")
# WebVTT blocks that carry no cue; they may only appear where a cue block could.
_NON_CUE_BLOCKS = ("NOTE", "STYLE", "REGION")
# <i>, <b>, <c.yellow>, <v Speaker>, <00:00:01.000>, <font color=...>: styling, not words.
_TAG = re.compile(r"<[^>]*>")
# SSA/ASS override codes that many SRT files carry, e.g. {\an8} or {\i1}.
_SSA_OVERRIDE = re.compile(r"\{\\[^}]*\}")
_SPACE = re.compile(r"\s+")


@dataclass(frozen=True, slots=True)
class Cue:
    """One caption cue: seconds from the start of its media, and its plain text (tags stripped)."""

    start_s: float
    end_s: float
    text: str
    #: 1-based line of the cue's timing line in its file (0: not from a file), for error messages.
    line: int = field(default=0, compare=False)

    @property
    def duration_s(self) -> float:
        return self.end_s - self.start_s


def clean_text(text: str) -> str:
    """Caption markup to plain words: tags and SSA overrides removed, entities decoded, whitespace collapsed.

    Line breaks inside a cue are display layout, not content, so they become spaces.
    """
    text = _SSA_OVERRIDE.sub("", _TAG.sub("", text))
    # Unescape after stripping, so "&lt;b&gt;" stays visible text rather than being taken for a tag.
    text = html.unescape(text).replace("\u200e", "").replace("\u200f", "")  # &lrm; / &rlm; marks
    return _SPACE.sub(" ", text).strip()


def parse_captions(text: str, source: str = "<captions>", *, max_cue_s: float | None = None) -> list[Cue]:
    """Parse SRT or WebVTT text (WebVTT if it starts with ``WEBVTT``) into cues sorted by start time.

    Cues whose text is empty once markup is stripped are dropped: there is nothing to say.
    ``source`` names the input in error messages. A cue longer than ``max_cue_s`` is refused
    (naming its line): the whole file is refused before anything is sent, never mid-stream.
    """
    lines = text.lstrip("\ufeff").replace("\r\n", "\n").replace("\r", "\n").split("\n")
    webvtt = lines[0].startswith("WEBVTT")
    if webvtt and lines[0][6:7] not in ("", " ", "\t"):
        raise ValueError(f"{source}:1: WebVTT signature must be 'WEBVTT' alone or followed by a space")
    if webvtt:
        # The header runs to the first blank line; a cue inside it would be swallowed silently.
        for number, line in enumerate(lines, 1):
            if not line.strip():
                break
            if "-->" in line:
                raise ValueError(f"{source}:{number}: cue timing inside the WebVTT header (missing blank line?)")
    cues: list[Cue] = []
    for first, block in _blocks(lines, skip_header=webvtt):
        cue = _parse_block(block, first, source, webvtt)
        if cue is not None and cue.text:
            # In whole nanoseconds, as the record will be: 4.004 -> 64.004 is 60 s exactly, not 60.000000001.
            if max_cue_s is not None and round(cue.end_s * NS) - round(cue.start_s * NS) > round(max_cue_s * NS):
                raise ValueError(
                    f"{source}:{cue.line}: cue lasts {cue.duration_s:.3f} s; a text record spans at most "
                    f"{max_cue_s:g} s (split the cue in two)"
                )
            cues.append(cue)
    # Files are usually in order, but records must be: a merge downstream assumes sorted inputs.
    cues.sort(key=lambda c: c.start_s)
    return cues


def read_captions(
    path: str | os.PathLike[str], *, encoding: str = "utf-8-sig", max_cue_s: float | None = None
) -> list[Cue]:
    """Read and parse an SRT or WebVTT file (see :func:`parse_captions`)."""
    raw = Path(path).read_bytes()
    try:
        text = raw.decode(encoding)
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise ValueError(
            f"{path}:{line}: not valid {encoding} ({exc.reason}); convert it to UTF-8 "
            f"(e.g. iconv -f cp1252 -t utf-8), or in Python pass read_captions(encoding='cp1252')"
        ) from None
    return parse_captions(text, str(path), max_cue_s=max_cue_s)


def load_cues(path_or_text: str | os.PathLike[str], *, max_cue_s: float | None = None) -> list[Cue]:
    """Cues from a path, or from caption text itself when given a ``str`` with a line break in it.

    A cue needs at least a timing line and a text line, so one-line strings are always paths.
    """
    if isinstance(path_or_text, str) and "\n" in path_or_text:
        return parse_captions(path_or_text, max_cue_s=max_cue_s)
    return read_captions(path_or_text, max_cue_s=max_cue_s)


def caption_records(
    path_or_text: str | os.PathLike[str],
    stream_id: str,
    start_ns: int,
    *,
    language: str = "en",
    first_seq: int = 0,
    max_cue_s: float | None = MAX_CUE_SECONDS,
    progress_every_ns: int | None = None,
    clip_overlaps: bool = False,
) -> Iterator[Record]:
    """Final ``utf8`` text records, one per cue, at ``start_ns`` + cue times, in start order, with the
    complete flag where it holds, and text progress records between cues every ``progress_every_ns``
    of event time (none by default: a source merged with frames has them said by its frames' times).
    ``clip_overlaps``: cues as :func:`clip_overlapping` makes them (a transcript on its own).

    The file is parsed here, so a broken file (or a cue longer than ``max_cue_s``, by default the
    longest record the wire carries; None for records that never go over it) raises now rather
    than at the first ``next()``.
    """
    cues = load_cues(path_or_text, max_cue_s=max_cue_s)
    if clip_overlaps:
        cues = clip_overlapping(cues)
    return _cue_records(cues, stream_id, start_ns, language, first_seq, progress_every_ns)


def clip_overlapping(cues: list[Cue]) -> list[Cue]:
    """Cues (in start order) that never overlap: one that a later cue starts inside ends where that one
    starts, as a roll-up caption gives way to the next line, and cues that start together are one.

    A transcript on its own moves its stream's event time by the ends it delivers: a cue sent after a
    longer one it sits inside (a second speaker, a sound-effect line), or one of rolling captions that
    stay on screen until the next-but-one, came seconds behind that end and was dead-lettered ``late``."""
    out: list[Cue] = []
    for cue in cues:
        last = out[-1] if out else None
        if last is not None and cue.start_s <= last.start_s:
            out[-1] = Cue(last.start_s, max(last.end_s, cue.end_s), f"{last.text} {cue.text}", last.line)
        elif last is not None and cue.start_s < last.end_s:
            out[-1] = Cue(last.start_s, cue.start_s, last.text, last.line)
            out.append(cue)
        else:
            out.append(cue)
    return out


def stdin_caption_records(
    lines: Iterable[str],
    stream_id: str,
    clock: Callable[[], int] = time.time_ns,
    *,
    language: str = "en",
    seconds_per_word: float = SECONDS_PER_WORD,
    max_seconds: float = MAX_LINE_SECONDS,
) -> Iterator[Record]:
    """One final segment per non-blank line, stamped when the line arrives.

    A live ASR or captioner emits a line once its speech has ended, so ``t_end`` is the
    arrival time and ``t_start`` goes back by an estimate of how long the words took
    (``seconds_per_word`` each, at most ``max_seconds``). Segments never overlap or go back
    in time: a line's speech started after the previous line's ended, and a wall clock that
    steps backwards must not produce records older than ones already sent.
    """
    if seconds_per_word < 0 or max_seconds < 0:
        raise ValueError("seconds_per_word and max_seconds must be >= 0")
    seq = 0
    last_end: int | None = None
    for line in lines:
        text = clean_text(line)
        if not text:
            continue
        t_end = clock()
        estimate = round(min(max_seconds, seconds_per_word * len(text.split())) * NS)
        t_start = t_end - estimate
        if last_end is not None:
            t_end = max(t_end, last_end)
            t_start = min(max(t_start, last_end), t_end)
        # Complete: the next line's speech starts after this one's end (above).
        yield text_record(stream_id, seq, t_start, t_end, text, language=language, is_final=True, complete=True)
        seq += 1
        last_end = t_end


def _cue_records(cues: list[Cue], stream_id: str, start_ns: int, language: str, first_seq: int,
                 progress_every_ns: int | None = None) -> Iterator[Record]:
    """The cues in start order, each with the complete flag where no later cue starts before its end (two
    speakers' cues overlap, a sound-effect line sits inside a longer cue: a flag on the outer cue made the
    inner one late). With ``progress_every_ns``, progress records step through each gap up to the next
    cue's start (paced, each leaves at its own time), so windows between cues need not wait for the next."""
    times = [(start_ns + round(cue.start_s * NS), start_ns + round(cue.end_s * NS)) for cue in cues]
    seq = first_seq
    for i, (cue, (t_start, t_end)) in enumerate(zip(cues, times, strict=True)):
        next_start = times[i + 1][0] if i + 1 < len(times) else None
        complete = next_start is None or next_start >= t_end
        yield text_record(stream_id, seq, t_start, t_end, cue.text, language=language, is_final=True,
                          complete=complete)
        seq += 1
        if progress_every_ns is None or next_start is None:
            continue
        t = (t_end if complete else t_start) + progress_every_ns
        while t < next_start:
            yield progress_record(stream_id, Modality.TEXT, seq, t)
            seq += 1
            t += progress_every_ns


def _blocks(lines: list[str], *, skip_header: bool) -> Iterator[tuple[int, list[str]]]:
    """Blank-line separated blocks as ``(1-based line number of the block's first line, lines)``."""
    block: list[str] = []
    first = 0
    header = skip_header  # WebVTT: the signature and header lines run to the first blank line
    for number, line in enumerate(lines, 1):
        if line.strip():
            if not block:
                first = number
            block.append(line)
            continue
        if block and not header:
            yield first, block
        block, header = [], False
    if block and not header:
        yield first, block


def _parse_block(block: list[str], first: int, source: str, webvtt: bool) -> Cue | None:
    if webvtt and block[0].split(maxsplit=1)[0] in _NON_CUE_BLOCKS and "-->" not in block[0]:
        return None
    timing_at = next((i for i, line in enumerate(block[:2]) if "-->" in line), None)
    if timing_at is None:
        what = "an identifier" if webvtt else "a cue number"
        raise ValueError(f"{source}:{first}: expected a cue timing line ('start --> end'), optionally after {what}")
    if not webvtt and timing_at == 1 and not block[0].strip().isdigit():
        raise ValueError(f"{source}:{first}: SRT cue number must be an integer, got {block[0].strip()!r}")
    number = first + timing_at
    match = _TIMING.match(block[timing_at])
    if match is None:
        raise ValueError(f"{source}:{number}: malformed cue timing {block[timing_at].strip()!r}")
    groups = match.groups()
    start = _seconds(groups[:4], source, number)
    end = _seconds(groups[4:], source, number)
    if end < start:
        raise ValueError(f"{source}:{number}: cue ends ({end:.3f} s) before it starts ({start:.3f} s)")
    text_lines = block[timing_at + 1 :]
    for offset, line in enumerate(text_lines, number + 1):
        if "-->" in line:  # two timing lines in one block: a missing blank line would merge cues
            raise ValueError(f"{source}:{offset}: timing line inside a cue's text (missing blank line?)")
    return Cue(start, end, clean_text("\n".join(text_lines)), number)


def _seconds(parts: tuple[str | None, ...], source: str, line: int) -> float:
    hours, minutes, seconds, fraction = parts
    if int(minutes or 0) >= 60 or int(seconds or 0) >= 60:
        raise ValueError(f"{source}:{line}: minutes and seconds must be below 60")
    # ",5" means half a second, so the fraction is read as decimals, not as a count of milliseconds.
    millis = int((fraction or "0").ljust(3, "0"))
    total_ms = ((int(hours or 0) * 60 + int(minutes or 0)) * 60 + int(seconds or 0)) * 1000 + millis
    return total_ms / 1000


__all__ = [
    "MAX_CUE_SECONDS",
    "MAX_LINE_SECONDS",
    "SECONDS_PER_WORD",
    "Cue",
    "caption_records",
    "clean_text",
    "clip_overlapping",
    "load_cues",
    "parse_captions",
    "read_captions",
    "stdin_caption_records",
]
