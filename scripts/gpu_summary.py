"""The summary table of ``scripts/gpu_check.sh``: one row per backend that ran, from the JSON it wrote.

    python scripts/gpu_summary.py OUT NAME...      bench-NAME.json and eval-NAME.json under OUT
    python scripts/gpu_summary.py --realtime FILE  the real-time search's result
    python scripts/gpu_summary.py --workers FILE   live streams per count of pipeline processes on one GPU
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

#: The reference every accuracy is compared with: fp32 on the CPU.
REFERENCE = "onnxruntime-cpu"


def last_json(path: Path) -> dict[str, Any] | None:
    """The JSON object on the last line of a command's output, or None where it did not finish."""
    if not path.is_file():
        return None
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    try:
        return json.loads(lines[-1]) if lines else None
    except json.JSONDecodeError:
        return None


def accuracy_cell(evaluated: dict[str, Any] | None, reference: dict[str, Any] | None, name: str) -> str:
    if evaluated is None:
        return "-"
    cell = f"{evaluated['fused']:.4f}"
    if reference is not None and name != REFERENCE:
        cell += f" ({evaluated['fused'] - reference['fused']:+.4f})"
    return cell


def summary(out: Path, names: list[str]) -> list[str]:
    reference = last_json(out / f"eval-{REFERENCE}.json")
    lines = [f"{'backend':24s} {'engine w/s':>10s} {'intake w/s':>10s} {'pipeline w/s':>12s} {'naive w/s':>9s} "
             f"{'pipe/eng':>8s} {'pipe/naive':>10s} {'batch':>5s} {'accuracy':>17s}  engine w/s by batch size"]
    machine = None
    for name in names:
        report = last_json(out / f"bench-{name}.json")
        if report is None:
            continue
        machine = machine or report["machine"]
        rate, ratios, engine = report["windows_per_s"], report["ratios"], report["stages"]["engine"]
        accuracy = accuracy_cell(last_json(out / f"eval-{name}.json"), reference, name)
        sweep = ", ".join(f"{size}: {value:g}" for size, value in engine.get("by_batch_size", {}).items())
        lines.append(
            f"{name:24s} {rate['engine']:10.1f} {rate.get('intake', 0.0):10.1f} {rate['pipeline']:12.1f} "
            f"{rate['naive']:9.1f} {ratios['pipeline/engine']:8.3f} {ratios['pipeline/naive']:10.3f} "
            f"{engine.get('batch_size', '?'):>5} "
            f"{accuracy:>17s}  {sweep}"
        )
    if reference is not None:
        lines.append(f"accuracy: fused, on the clear held-out windows ({reference['windows']} of "
                     f"{reference['all_windows']}); in brackets the change against {REFERENCE} (fp32)")
    if machine is not None:
        lines.append(f"machine: {machine.get('gpu')}, {machine['cpu']}, {machine['cores']} cores, "
                     f"torch {machine.get('torch')}, onnxruntime {machine['onnxruntime']}")
    return lines


def realtime_line(path: Path) -> str:
    report = last_json(path)
    if report is None or report.get("max_realtime_streams") is None:
        return "real-time search: no result"
    bound = report.get("realtime", {}).get("bound_ms")
    return f"max real-time streams (embedded pipeline, p99 under {bound} ms): {report['max_realtime_streams']}"


def workers_lines(path: Path) -> list[str]:
    """One line per worker count: live streams sustained, and the GPU's and the CPUs' load at that count."""
    report = last_json(path)
    scaling = (report or {}).get("workers")
    if not scaling:
        return ["workers: no result"]
    bound = scaling.get("realtime", {}).get("bound_ms")
    lines = [f"live streams through W pipeline processes on one GPU ({scaling['cores']} cores), "
             f"p99 close -> prediction under {bound} ms:"]
    for workers, figures in scaling["by_workers"].items():
        load = figures.get("load_at_best") or {}
        lines.append(f"  W={workers:>2}: {figures['live_streams']:5d} streams   GPU {load.get('gpu_util_pct')} % busy "
                     f"(max {load.get('gpu_util_max_pct')}), {load.get('gpu_memory_mib')} MiB; processes "
                     f"{load.get('workers_cpu_cores')} cores, host CPUs {load.get('cpu_busy_pct')} % busy; "
                     f"ready in {figures['ready_s']} s"
                     + (f"; failed: {figures['error']}" if figures.get("error") else ""))
    if scaling.get("gpu_unavailable"):
        lines.append(f"no GPU figures: {scaling['gpu_unavailable']}")
    lines.append(f"best: W={scaling['best']}, {scaling['max_live_streams']} live streams")
    return lines


def main(argv: list[str]) -> int:
    if argv[:1] == ["--realtime"] and len(argv) == 2:
        print(realtime_line(Path(argv[1])))
        return 0
    if argv[:1] == ["--workers"] and len(argv) == 2:
        print("\n".join(workers_lines(Path(argv[1]))))
        return 0
    if not argv:
        print(__doc__, file=sys.stderr)
        return 2
    print("\n".join(summary(Path(argv[0]), argv[1:])))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
