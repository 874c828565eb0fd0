"""Untrusted text made safe to print on an operator's terminal or in a log line.

Stream ids, transcripts and dead-letter details come from producers. Written raw, an ESC sequence in one clears
the screen or retitles the window, a newline forges a log line that blames another stream, and a bidi override
reverses what follows. Each such character is shown as its Python escape (``\\x1b``, ``\\n``, ``\\u202e``)
instead; everything else, emoji and every script included, is left as it is.
"""

from __future__ import annotations

import re

# C0 and C1 controls, DEL, and the bidi embeddings, overrides and isolates (with the marks that steer them).
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069]")
_SHORT = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escaped(match: re.Match[str]) -> str:
    char = match.group()
    code = ord(char)
    return _SHORT.get(char) or (f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}")


def printable(text: str) -> str:
    """``text`` with every control and bidi-steering character escaped; unchanged (the same object) if it has none."""
    return _UNSAFE.sub(_escaped, text) if _UNSAFE.search(text) else text


def column(text: str, cells: int) -> str:
    """``printable(text)`` padded to ``cells`` terminal cells: a CJK character or an emoji takes two, a combining mark
    none, so a column of stream ids stays in line whatever their script (``str.ljust`` counts characters)."""
    from rich.cells import cell_len

    shown = printable(text)
    return shown + " " * max(0, cells - cell_len(shown))


__all__ = ["column", "printable"]
