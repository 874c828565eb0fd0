"""Every dead-letter reason the code can give is listed once (``DEAD_LETTER_REASONS``), documented in
docs/wire-format.md's table, and has its metric series from the start (at zero)."""

from __future__ import annotations

import re
from pathlib import Path

from prometheus_client import CollectorRegistry, generate_latest

from fusionstream.consumers.service.metrics import ServiceMetrics
from fusionstream.stream.errors import DEAD_LETTER_REASONS

ROOT = Path(__file__).resolve().parents[2]
#: A reason given as a literal: ``BadRecord("bad-jpeg", …)``, ``DeadLetter("late", …)``, or a reason argument
#: of a field check (``_int_field(meta, "channels", 1, MAX_CHANNELS, "bad-channels")``), or chosen inline.
LITERAL = re.compile(r'(?:BadRecord|DeadLetter)\(\s*"([a-z0-9_-]+)"|"((?:bad|unknown|sample|trailing)-[a-z0-9-]+)"')


def _reasons_in_code() -> set[str]:
    found: set[str] = set()
    for folder in ("stream", "consumers/pipeline", "consumers/service"):  # where records are refused
        for path in (ROOT / folder).rglob("*.py"):
            for match in LITERAL.finditer(path.read_text()):
                found.add(match.group(1) or match.group(2))
    return found


def test_the_list_holds_every_reason_the_code_gives() -> None:
    in_code = _reasons_in_code()
    assert "bad-channels" in in_code and "trailing-bytes" in in_code  # the scan finds the inline ones too
    assert in_code <= set(DEAD_LETTER_REASONS), in_code - set(DEAD_LETTER_REASONS)
    assert len(set(DEAD_LETTER_REASONS)) == len(DEAD_LETTER_REASONS)


def test_every_reason_is_in_the_wire_format_table() -> None:
    errors = (ROOT / "docs" / "wire-format.md").read_text().split("## Errors", 1)[1]
    table = {code for row in errors.splitlines() if row.startswith("| `") for code in re.findall(r"`([^`]+)`",
                                                                                                 row.split("|")[1])}
    assert set(DEAD_LETTER_REASONS) == table, set(DEAD_LETTER_REASONS) ^ table


def test_every_reason_has_a_series_at_zero_from_the_start() -> None:
    registry = CollectorRegistry()
    ServiceMetrics(registry=registry)
    text = generate_latest(registry).decode()
    for reason in DEAD_LETTER_REASONS:
        assert f'fusionstream_dead_letters_total{{reason="{reason}"}} 0.0' in text, reason
