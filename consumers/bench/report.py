"""The human-readable form of a ``fusionstream bench`` report (``--json`` prints the dict itself)."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table

#: What each ratio is expected to reach on a CPU (issue targets; shown beside the measurement).
TARGETS = {"pipeline/engine": 0.85, "kafka/engine": 0.75, "pipeline/naive": 4.0}


def print_report(report: dict[str, Any], console: Console) -> None:
    table = Table(title="stages (same workload, same model, one process)")
    for column in ("stage", "windows/s", "p50 ms", "p95 ms", "p99 ms", "notes"):
        table.add_column(column, justify="left" if column in {"stage", "notes"} else "right")
    for name, stage in report["stages"].items():
        latency = stage.get("latency_ms") or {}
        notes = ", ".join(
            f"{key} {value}" for key, value in stage.items()
            if key not in {"windows", "seconds", "windows_per_s", "latency_ms", "by_batch_size", "rounds_windows_per_s",
                           "graph_share"}
        )
        percentiles = (f"{latency[p]:.1f}" if latency else "-" for p in ("p50", "p95", "p99"))
        table.add_row(name, f"{stage['windows_per_s']:.1f}", *percentiles, notes)
    console.print(table)
    for name, reason in report.get("skipped", {}).items():
        console.print(f"[yellow]{name} left out[/]: {reason}")
    share = report["stages"].get("engine", {}).get("graph_share")
    if share:
        parts = ", ".join(f"{graph} {100 * part:.0f}%" for graph, part in share.items())
        console.print(f"engine time by graph: {parts}")
    ratios = Table(title="ratios")
    ratios.add_column("ratio")
    ratios.add_column("measured", justify="right")
    ratios.add_column("target", justify="right")
    for name, value in report["ratios"].items():
        target = TARGETS.get(name)
        mark = "" if target is None else (" [green]ok[/]" if value >= target else " [red]below[/]")
        ratios.add_row(name, f"{value:.3f}{mark}", "-" if target is None else f">= {target:g}")
    console.print(ratios)
    if report.get("max_realtime_streams") is not None:
        bound = report["realtime"]["bound_ms"]
        console.print(f"max real-time streams (p99 < {bound:g} ms): [bold]{report['max_realtime_streams']}[/]")
    if "half_load" in report:
        half = report["half_load"]
        p99 = (half.get("close_to_ack_ms") or {}).get("p99")
        console.print(f"service at half that load ({half['streams']} streams): close -> broker ack p99 {p99} ms")
    machine = report["machine"]
    gpu = f", {machine['gpu']}" if machine.get("gpu") else ""
    console.print(f"[dim]{machine['cpu']}, {machine['cores']} cores{gpu}, Python {machine['python']}, "
                  f"ONNX Runtime {machine['onnxruntime']}[/]")
