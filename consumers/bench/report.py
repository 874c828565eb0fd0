"""The human-readable form of a ``fusionstream bench`` report (``--json`` prints the dict itself)."""

from __future__ import annotations

import os
import sys
from typing import Any

from rich.console import Console
from rich.table import Table

#: What each ratio is expected to reach on a CPU (issue targets; shown beside the measurement).
TARGETS = {"pipeline/engine": 0.85, "kafka/engine": 0.75, "pipeline/naive": 4.0, "efficiency": 0.75}


def report_console(*, stderr: bool) -> Console:
    """Where the report goes: redirected to a file, rich would wrap it at 80 columns, mid-field; a terminal (or
    an explicit COLUMNS) keeps its width."""
    stream = sys.stderr if stderr else sys.stdout
    width = None if stream.isatty() or os.environ.get("COLUMNS") else 160
    return Console(stderr=stderr, highlight=False, width=width)


def print_report(report: dict[str, Any], console: Console) -> None:
    table = Table(title="stages (same workload, same model, one process)")
    for column in ("stage", "windows/s", "CPU ms/window", "p50 ms", "p95 ms", "p99 ms", "notes"):
        table.add_column(column, justify="left" if column in {"stage", "notes"} else "right")
    for name, stage in report["stages"].items():
        latency = stage.get("latency_ms") or {}
        notes = ", ".join(
            f"{key} {value}" for key, value in stage.items()
            if key not in {"windows", "seconds", "windows_per_s", "latency_ms", "by_batch_size", "rounds_windows_per_s",
                           "graph_share", "cpu_ms_per_window", "rounds_cpu_ms_per_window", "broker_cpu_ms_per_window"}
        )
        percentiles = (f"{latency[p]:.1f}" if latency else "-" for p in ("p50", "p95", "p99"))
        cpu = stage.get("cpu_ms_per_window")
        table.add_row(name, f"{stage['windows_per_s']:.1f}", "-" if cpu is None else f"{cpu:.2f}", *percentiles, notes)
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
        if value is None:  # efficiency without CPU figures
            ratios.add_row(name, "-", "-" if target is None else f">= {target:g}")
            continue
        mark = "" if target is None else (" [green]ok[/]" if value >= target else " [red]below[/]")
        label = "efficiency (engine / kafka CPU ms per window)" if name == "efficiency" else name
        ratios.add_row(label, f"{value:.3f}{mark}", "-" if target is None else f">= {target:g}")
    console.print(ratios)
    if "broker_cpu_ms_per_window" in report:
        broker, where = report["broker_cpu_ms_per_window"], report.get("broker", {})
        console.print("broker CPU ms per window (apart from the service's): "
                      + (f"{broker:.2f} ({where.get('process')}, pid {where.get('pids')})" if broker is not None
                         else f"unknown: {where.get('why_unknown', 'not measured')}"))
    if report.get("max_realtime_streams") is not None:
        bound = report["realtime"]["bound_ms"]
        console.print(f"max real-time streams (p99 < {bound:g} ms): [bold]{report['max_realtime_streams']}[/]")
        print_trials(report["realtime"]["trials"], console,
                     f"real-time trials ({report['realtime'].get('delivery', {}).get('name', 'paced')} delivery)")
    if "half_load" in report:
        half = report["half_load"]
        if "trial" in half:
            for line in trial_lines(f"service at half that load ({half['streams']} streams)", half["trial"]):
                console.print(line)
        else:
            p99 = (half.get("close_to_ack_ms") or {}).get("p99")
            console.print(f"service at half that load ({half['streams']} streams): close -> broker ack p99 {p99} ms")
    if report.get("workers", {}).get("through") == "embedded":
        from fusionstream.consumers.bench.embedded_workers import print_embedded

        print_embedded(report["workers"], console, print_trials)
    elif "workers" in report:
        from fusionstream.consumers.bench.workers import print_workers

        print_workers(report["workers"], console, print_trials)
    machine = report["machine"]
    gpu = f", {machine['gpu']}" if machine.get("gpu") else ""
    console.print(f"[dim]{machine['cpu']}, {machine['cores']} cores{gpu}, Python {machine['python']}, "
                  f"ONNX Runtime {machine['onnxruntime']}[/]")


def print_trials(trials: list[dict[str, Any]], console: Console, title: str) -> None:
    """The search's live trials, one row each: p99 close → ack beside p99 window end → first and → final."""
    table = Table(title=title)
    for column in ("streams", "close→ack", "intake lag", "end→first", "end→final", "windows", "sustained"):
        table.add_column(column, justify="right")
    for trial in trials:
        first, final = trial.get("end_to_first_ms") or {}, trial.get("end_to_final_ms") or {}
        table.add_row(str(trial["streams"]), f"{trial['latency_ms']['p99']:.1f}",
                      f"{trial['intake_lag_ms']['p99']:.1f}", f"{first['p99']:.0f}" if first else "-",
                      f"{final['p99']:.0f}" if final else "-", f"{trial['windows']}/{trial['expected']}",
                      "[green]yes[/]" if trial["sustained"] else "[red]no[/]")
    console.print(table)
    console.print("[dim]p99, ms. close→ack: window closed → prediction acknowledged; end→first, end→final: window end "
                  "(wall clock) → its first (provisional, or final) and its final prediction acknowledged[/]")


def trial_lines(name: str, trial: dict[str, Any]) -> list[str]:
    """One live trial in full: close → ack, window end → first and → final (p50/p95/p99), counts, floor."""

    def figures(label: str, values: dict[str, float] | None, floor: str | None = None) -> str:
        if not values:
            return f"  {label:<12} -"
        line = f"  {label:<12} p50 {values['p50']:6.1f}  p95 {values['p95']:6.1f}  p99 {values['p99']:6.1f} ms"
        floor_figures = (trial.get("floor_ms") or {}).get(floor or "")
        return line + (f"  (floor p99 {floor_figures['p99']:.0f})" if floor_figures else "")

    counts = trial.get("counts", {})
    verdict = "[green]sustained[/]" if trial["sustained"] else "[red]not sustained[/]"
    return [
        f"{name}: {trial['windows']}/{trial['expected']} windows, {trial['dead_letters']} dead letters, "
        f"intake lag p99 {trial['intake_lag_ms']['p99']:.1f} ms: {verdict}",
        figures("close → ack", trial.get("latency_ms")),
        figures("end → first", trial.get("end_to_first_ms"), "end_to_first_ms"),
        figures("end → final", trial.get("end_to_final_ms"), "end_to_final_ms"),
        *_split_line(trial.get("first_split_ms")),
        f"  predictions {counts.get('provisional', 0)} provisional, {counts.get('final', trial['windows'])} final, "
        f"{counts.get('amended', 0)} amended; late {counts.get('late', counts.get('late_total', '-'))}, partly late "
        f"{counts.get('partly_late', counts.get('partly_late_total', '-'))}",
    ]


def _split_line(split: dict[str, dict[str, float]] | None) -> list[str]:
    """Where end → first went, p50/p99 of each part (each part's own p99: they do not add up)."""
    if not split:
        return []
    names = {"end_to_close": "end → close", "queue": "queue", "engine": "engine", "close_to_seen": "close → ack"}
    parts = ", ".join(f"{names.get(part, part)} {v['p50']:.0f}/{v['p99']:.0f}" for part, v in split.items())
    return [f"  first, split  {parts} ms (p50/p99)"]


def print_live(report: dict[str, Any], console: Console) -> None:
    """The report of ``fusionstream bench --live-streams N``."""
    live = report["live"]
    console.print(f"[bold]{live['streams']} live streams[/], {live['delivery']['name']} delivery, text_wait_ms "
                  f"{live['text_wait_ms']}, {live['trial_seconds']:g} s trials")
    for name, trial in live["trials"].items():
        for line in trial_lines(name.replace("_", " "), trial):
            console.print(line)
    console.print("[dim]close → ack: window closed → prediction acknowledged by the broker; end → first, end → "
                  "final: window end (wall clock) → its first (provisional, or final) and its final prediction "
                  "acknowledged; floor: the same deliveries through an aligner alone (no broker, no engine); "
                  "first, split: the first predictions' window end → close (feed, aligner), wait for the engine, "
                  "engine call (the whole batch) and close → ack[/]")
    machine = report["machine"]
    console.print(f"[dim]{machine['cpu']}, {machine['cores']} cores, Python {machine['python']}[/]")
