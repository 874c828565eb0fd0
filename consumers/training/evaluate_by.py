"""`fusionstream evaluate --by voice|digit`: the held-out figures broken down, so a weak voice or digit shows.

The overall figures mix every test voice and every digit: an audio encoder that fails one voice, or
confuses "two" with "too"-like sounds, hides inside a good average. Two breakdowns:

- **by voice**: the held-out streams rendered again once per voice, each speaking only that voice
  (``SyntheticConfig(voices="voice:NAME")``), with the same seconds and seed: the streams' plan
  (digits, times, corruption) depends on the seed only, so every voice says the same digits at the
  same times and the voices are compared on the same sentences. Each voice gets the whole table.
- **by digit**: accuracy per true label over clear windows, fused and with each modality alone,
  from the windows already embedded (the overall ones, and each voice's when both are asked for).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
from rich import box
from rich.console import Console
from rich.table import Table

from fusionstream.consumers.pipeline.runner import Runtime
from fusionstream.consumers.training.embed_cache import EmbeddedSet
from fusionstream.consumers.training.evaluate import evaluate, fuse_all
from fusionstream.stream.sources.speech import VOICE_PREFIX, voices_of

#: What ``--by`` can break the figures down by.
BREAKDOWNS = ("voice", "digit")


def parse_by(values: Iterable[str] | None) -> tuple[str, ...]:
    """``--by`` values, repeated or comma-separated (``--by voice --by digit``, ``--by voice,digit``), in
    :data:`BREAKDOWNS` order; a ValueError names an unknown one."""
    asked = {v.strip().lower() for value in values or () for v in value.split(",") if v.strip()}
    unknown = sorted(asked - set(BREAKDOWNS))
    if unknown:
        raise ValueError(f"cannot break down by {', '.join(unknown)}: choose {' or '.join(BREAKDOWNS)}")
    return tuple(b for b in BREAKDOWNS if b in asked)


def heldout_voices(names: Sequence[str] | None) -> tuple[str, ...]:
    """The voices to break down by: ``names`` (each checked against the speech bank: an unknown one raises
    :class:`~fusionstream.stream.sources.speech.UnknownVoice`), else the bank's test voices."""
    if not names:
        return voices_of("test")
    return tuple(dict.fromkeys(voice for name in names for voice in voices_of(f"{VOICE_PREFIX}{name}")))


def per_class(runtime: Runtime, windows: EmbeddedSet) -> dict[str, dict[str, Any]]:
    """Per true label, over its clear windows: how many, and top-class accuracy fused and with each
    modality alone (``None`` for a label with no clear window)."""
    over = windows.clear & (windows.label >= 0)
    predicted = {"fused": fuse_all(runtime, windows, windows.mask).argmax(axis=1)}
    for i, name in enumerate(windows.modalities):
        only = np.zeros_like(windows.mask)
        only[:, i] = windows.mask[:, i]
        predicted[name] = fuse_all(runtime, windows, only).argmax(axis=1)
    out: dict[str, dict[str, Any]] = {}
    for index, name in enumerate(windows.classes):
        rows = over & (windows.label == index)
        n = int(rows.sum())

        def score(pred: np.ndarray, rows: np.ndarray = rows, n: int = n, index: int = index) -> float | None:
            return round(float((pred[rows] == index).mean()), 4) if n else None

        out[name] = {"windows": n, "fused": score(predicted["fused"]),
                     "single": {m: score(predicted[m]) for m in windows.modalities}}
    return out


def voice_scores(runtime: Runtime, windows: EmbeddedSet, by_digit: bool) -> dict[str, Any]:
    """One voice's figures: the overall table's (without its timing and task fields), and per digit."""
    result = {k: v for k, v in evaluate(runtime, windows).items()
              if k not in ("task", "metric", "fusion_ms_per_window")}
    if by_digit:
        result["by_digit"] = per_class(runtime, windows)
    return result


def _figure(value: float | None) -> str:
    return "—" if value is None else f"{value:.4f}"


def _compact(title: str) -> Table:
    # No vertical rules, one space between columns and headers on two lines: a voice's row of ten
    # digits, or of eight figures, then fits an 80-column terminal (and a log) without rich cutting
    # figures to "0.8…".
    return Table(title=title, box=box.SIMPLE_HEAD, padding=0, show_edge=False)


def _figures(table: Table, *headers: str, width: int = 6) -> None:
    for header in headers:
        table.add_column(header, justify="right", no_wrap=True, min_width=width)


def voice_table(by_voice: dict[str, dict[str, Any]], title: str) -> Table:
    """A row per voice: clear windows, fused, each modality alone, each removed."""
    first = next(iter(by_voice.values()))
    table = _compact(title)
    table.add_column("voice", no_wrap=True)
    _figures(table, "windows", "fused", *(f"{name}\nalone" for name in first["single"]),
             *(f"without\n{name}" for name in first["without"]))
    for voice, r in by_voice.items():
        table.add_row(voice, str(r["windows"]), _figure(r["fused"]), *map(_figure, r["single"].values()),
                      *map(_figure, r["without"].values()))
    return table


def digit_table(by_digit: dict[str, dict[str, Any]], title: str) -> Table:
    """A row per digit (label): clear windows, fused, each modality alone."""
    first = next(iter(by_digit.values()))
    table = _compact(title)
    table.add_column("digit", no_wrap=True)
    _figures(table, "windows", "fused", *(f"{name}\nalone" for name in first["single"]))
    for label, r in by_digit.items():
        table.add_row(label, str(r["windows"]), _figure(r["fused"]), *map(_figure, r["single"].values()))
    return table


def voice_digit_table(by_voice: dict[str, dict[str, Any]], modality: str | None, title: str) -> Table:
    """Voices × digits, one figure per cell (``modality`` alone, or fused when None), two decimals so
    ten digits fit a terminal; the last column is the voice's figure over all digits."""
    first = next(iter(by_voice.values()))
    table = _compact(title)
    table.add_column("voice", no_wrap=True)
    _figures(table, *first["by_digit"], "all", width=4)
    for voice, r in by_voice.items():
        cells = [d["fused"] if modality is None else d["single"][modality] for d in r["by_digit"].values()]
        overall = r["fused"] if modality is None else r["single"][modality]
        table.add_row(voice, *("—" if c is None else f"{c:.2f}" for c in cells), f"{overall:.2f}")
    return table


def print_breakdowns(console: Console, result: dict[str, Any], what: str) -> None:
    """The per-voice, per-digit and voice × digit tables of ``result`` (whichever it has)."""
    by_voice = result.get("by_voice")
    if by_voice or result.get("by_digit"):
        console.print()  # apart from the overall table above
    if by_voice:
        console.print(voice_table(by_voice, f"{result['metric']} per voice (clear windows), {what}"))
    if result.get("by_digit"):
        measure = "accuracy" if result["metric"] == "accuracy" else "top-class accuracy"
        console.print(digit_table(result["by_digit"], f"{measure} per digit (clear windows), {what}"))
    if by_voice and "by_digit" in next(iter(by_voice.values())):
        # The voice-dependent modality is audio: its voice × digit table is the one that shows a weak pair.
        modality = "audio" if "audio" in next(iter(by_voice.values()))["single"] else None
        label = f"{modality} alone" if modality else "fused"
        console.print(voice_digit_table(by_voice, modality, f"{label}: accuracy per voice and digit, {what}"))


__all__ = ["BREAKDOWNS", "digit_table", "heldout_voices", "parse_by", "per_class", "print_breakdowns",
           "voice_digit_table", "voice_scores", "voice_table"]
