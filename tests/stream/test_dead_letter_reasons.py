"""Every dead-letter reason the code can give is listed once (``DEAD_LETTER_REASONS``), documented in
docs/wire-format.md's table, and has its metric series from the start (at zero)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from prometheus_client import CollectorRegistry, generate_latest

from fusionstream.consumers.service.metrics import ServiceMetrics
from fusionstream.stream.errors import DEAD_LETTER_REASONS

ROOT = Path(__file__).resolve().parents[2]
#: The calls that make a dead letter, by name, and where their reason is.
MAKERS = {"BadRecord": 0, "DeadLetter": 0}


def _strings(node: ast.AST | None) -> set[str]:
    """The string constants an expression can give (a literal, or either arm of ``a if c else b``)."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return {node.value}
    if isinstance(node, ast.IfExp):
        return _strings(node.body) | _strings(node.orelse)
    return set()


def _reasons_in_code() -> set[str]:
    """Every reason passed to a maker: literally, through a local variable assigned literals, or through a
    helper's ``reason`` parameter (``_int_field(meta, "channels", 1, MAX_CHANNELS, "bad-channels")``)."""
    trees = [ast.parse(path.read_text()) for folder in ("stream", "consumers/pipeline", "consumers/service")
             for path in (ROOT / folder).rglob("*.py")]
    # Helpers that pass a parameter of theirs on as the reason: their calls give reasons too.
    makers = dict(MAKERS)
    for tree in trees:
        for func in ast.walk(tree):
            if not isinstance(func, ast.FunctionDef):
                continue
            params = [a.arg for a in func.args.args]
            for call in ast.walk(func):
                if isinstance(call, ast.Call) and isinstance(call.func, ast.Name) and call.func.id in MAKERS \
                        and call.args and isinstance(call.args[0], ast.Name) and call.args[0].id in params:
                    makers[func.name] = params.index(call.args[0].id)
    found: set[str] = set()
    for tree in trees:
        for func in ast.walk(tree):
            if not isinstance(func, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            assigned: dict[str, set[str]] = {}
            for node in ast.walk(func):
                if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
                    assigned.setdefault(node.targets[0].id, set()).update(_strings(node.value))
            for call in ast.walk(func):
                if not (isinstance(call, ast.Call) and isinstance(call.func, ast.Name) and call.func.id in makers):
                    continue
                position = makers[call.func.id]
                if position >= len(call.args):
                    continue
                argument = call.args[position]
                found |= _strings(argument)
                if isinstance(argument, ast.Name):
                    found |= assigned.get(argument.id, set())
    return found


def test_the_list_holds_every_reason_the_code_gives() -> None:
    in_code = _reasons_in_code()
    # The scan finds those given through a helper's parameter and through a variable too.
    assert {"bad-channels", "trailing-bytes", "truncated", "late", "key-mismatch"} <= in_code
    assert in_code == set(DEAD_LETTER_REASONS), in_code ^ set(DEAD_LETTER_REASONS)  # none missing, none stale
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
