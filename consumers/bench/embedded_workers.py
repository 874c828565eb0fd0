"""``fusionstream bench --workers`` without a broker: the real-time search through W pipeline processes.

How many live streams one host sustains when its streams are split over W processes, each with its own
Python intake and its own engine session, all sharing the host's cores and its GPU: the sizing figure
of a GPU server, where one process's intake keeps the GPU a quarter busy (docs/performance.md), measured
without a broker to run or to share the cores with. Through a broker, ``--workers`` runs ``serve
--workers`` instead (:mod:`fusionstream.consumers.bench.workers`).

The W processes start once per count (spawned: each opens the engine with the count's share of the
engine threads and warms it at every batch size the pipeline can use, CUDA graphs captured) and then
run every trial of that count's search together: a trial of S streams gives each process S / W of
them, delivered live, at the same wall-clock start. It is sustained when every process sustains its
share; its latency and intake-lag percentiles are the worst process's. Beside each trial: how busy
the host's CPUs and its GPU were (:class:`~fusionstream.consumers.bench.host_load.HostLoad`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import multiprocessing
import os
import time
from collections.abc import Sequence
from multiprocessing.connection import Connection
from typing import Any

from rich.console import Console

from fusionstream.consumers.bench.host_load import HostLoad, nvml_device, uses_gpu
from fusionstream.consumers.bench.realtime import Trial, end_margin_ns, search_max_streams, trial_line
from fusionstream.consumers.bench.workload import Workload
from fusionstream.consumers.settings import Settings
from fusionstream.stream.records import Modality
from fusionstream.stream.windows import WindowConfig
from fusionstream.units import NS

#: What a trial process answers once its engine is warm at every batch size.
READY = "ready"
#: Longest a process may take to open and warm its engine (W model loads and graph captures at once).
READY_TIMEOUT_S = 300.0
#: Time the W processes get between being told a trial's start and that start, to make their streams' records
#: (about 8 ms a stream here), so that every process's first record is due at the same instant.
START_LEAD_S = 1.0
CLONE_S_PER_STREAM = 0.012


def split_streams(streams: int, workers: int) -> list[int]:
    """``streams`` shared out over ``workers`` as evenly as they go (the first ones take the remainder)."""
    share, extra = divmod(streams, workers)
    return [share + (1 if i < extra else 0) for i in range(workers)]


def merge_trials(trials: Sequence[Trial]) -> Trial:
    """One trial of all the processes' streams: counts added, each percentile the worst process's."""
    def worst(figures: Sequence[dict[str, float] | None]) -> dict[str, float] | None:
        present = [f for f in figures if f]
        return {key: max(f[key] for f in present) for key in present[0]} if present else None

    counts: dict[str, int] = {}
    for trial in trials:
        for key, value in trial.counts.items():
            counts[key] = counts.get(key, 0) + value
    first = trials[0]
    return dataclasses.replace(
        first,
        streams=sum(t.streams for t in trials), expected=sum(t.expected for t in trials),
        predicted=sum(t.predicted for t in trials), dead_letters=sum(t.dead_letters for t in trials),
        latency_ms=worst([t.latency_ms for t in trials]) or first.latency_ms,
        intake_lag_ms=worst([t.intake_lag_ms for t in trials]) or first.intake_lag_ms,
        measured=sum(t.measured for t in trials) if all(t.measured for t in trials) else 0,
        end_to_first_ms=worst([t.end_to_first_ms for t in trials]),
        end_to_final_ms=worst([t.end_to_final_ms for t in trials]),
        counts=counts, floor_ms=None, first_split_ms=None,
    )


def _serve_trials(conn: Connection, settings: Settings, workload: Workload, config: WindowConfig, threads: int,
                  max_batch: int, options: dict[str, Any]) -> None:
    """One process: open and warm the engine, say ``ready``, then run each trial it is sent until ``None``."""
    from fusionstream.consumers.bench.realtime import realtime_trial
    from fusionstream.consumers.bench.stages import run_engine
    from fusionstream.consumers.engine import service_options
    from fusionstream.consumers.pipeline.runner import Runner
    from fusionstream.engines.backends import open_runtime

    try:
        served = settings.model_copy(update={"threads": threads})
        with open_runtime(settings.backend, settings.model_dir, **service_options(served)) as runtime:
            windows = workload.windows(config, runtime.frame_side)
            # Every batch size the engine runs (a CUDA graph each): the powers of two, and the largest.
            for size in sorted({1 << k for k in range(max_batch.bit_length()) if 1 << k <= max_batch} | {max_batch}):
                run_engine(runtime, windows[:size], size)
            conn.send(READY)
            while (job := conn.recv()) is not None:
                streams, start_at = job
                cpu = time.process_time()
                trial = realtime_trial(
                    lambda: Runner(runtime), workload, config, streams, seconds=options["seconds"],
                    warmup_s=options["warmup_s"], bound_ms=options["bound_ms"], max_batch=max_batch,
                    decode_workers=settings.decode_workers, speculate=settings.speculate,
                    delivery=options["delivery"], start_ns=int(start_at * 1e9),
                )
                conn.send((trial, time.process_time() - cpu))
    except Exception as exc:  # told to the parent as one line; the process ends
        conn.send(f"{type(exc).__name__}: {exc}")


class Processes:
    """W trial processes, started and warmed together; ``trial(S)`` runs S streams over all of them."""

    def __init__(self, workers: int, settings: Settings, workload: Workload, config: WindowConfig, max_batch: int,
                 options: Any) -> None:
        from fusionstream.consumers.service.supervisor import threads_per_worker

        self.gpu = uses_gpu(settings)
        # Resolved before anything starts: a device NVML cannot find costs the GPU figures, nothing else.
        self._nvml, self.gpu_unavailable = nvml_device(str(settings.device)) if self.gpu else (None, None)
        context = multiprocessing.get_context("spawn")  # a fresh interpreter each: no forked CUDA or threads
        self.workers = workers
        self.threads = threads_per_worker(settings, workers)
        trial_options = {"seconds": options.trial_seconds, "warmup_s": options.warmup_s,
                         "bound_ms": options.bound_ms, "delivery": options.delivery}
        self._conns: list[Connection] = []
        self._procs = []
        for _ in range(workers):
            parent, child = context.Pipe()
            proc = context.Process(target=_serve_trials, daemon=True,
                                   args=(child, settings, workload, config, self.threads, max_batch, trial_options))
            proc.start()
            child.close()
            self._conns.append(parent)
            self._procs.append(proc)
        try:
            for conn in self._conns:
                self._expect(conn, READY_TIMEOUT_S)
        except RuntimeError:
            self.close()
            raise
        self.ready_s = time.perf_counter()  # when the last one was warm
        self._trial_s = options.trial_seconds
        self._measured_s = (options.warmup_s, options.trial_seconds - end_margin_ns(config) / NS)
        self._trial_timeout_s = options.trial_seconds * 3 + 60

    def _expect(self, conn: Connection, timeout_s: float) -> Any:
        """A process's next answer (READY, or a trial's figures); its error, a one-line string, raised."""
        if not conn.poll(timeout_s):
            raise RuntimeError(f"a trial process did not answer in {timeout_s:.0f} s")
        try:
            answer = conn.recv()
        except EOFError:
            raise RuntimeError("a trial process ended without a word (killed? out of memory?)") from None
        if isinstance(answer, str) and answer != READY:  # the process's error, one line
            raise RuntimeError(f"a trial process failed: {answer}")
        return answer

    def trial(self, streams: int) -> tuple[Trial, dict[str, float | None]]:
        """``streams`` live streams over the processes (S < W: one each for the first S), and the host's load
        over the trial's measured part, with ``workers_cpu_cores``: the cores the processes kept busy."""
        shares = [n for n in split_streams(streams, self.workers) if n > 0]
        start_at = time.time() + START_LEAD_S + CLONE_S_PER_STREAM * max(shares)
        with HostLoad(self._nvml) as load:
            for conn, share in zip(self._conns, shares, strict=False):
                conn.send((share, start_at))
            answers = [self._expect(conn, self._trial_timeout_s) for conn in self._conns[:len(shares)]]
        figures = load.figures(start_at + self._measured_s[0], start_at + self._measured_s[1])
        figures["workers_cpu_cores"] = round(sum(cpu for _, cpu in answers) / self._trial_s, 2)
        return merge_trials([trial for trial, _ in answers]), figures

    def close(self) -> None:
        for conn in self._conns:
            with contextlib.suppress(OSError):
                conn.send(None)
        for proc in self._procs:
            proc.join(timeout=30)
            if proc.is_alive():
                proc.kill()


def embedded_scaling(settings: Settings, workload: Workload, config: WindowConfig, counts: Any, options: Any,
                     max_batch: int, console: Console) -> dict[str, Any]:
    """The most live streams for each worker count (``auto``: 1, 2, 4, … while the last count helped, up to
    the cores), with the host's load at each count's best trial. Revisions as ``options.revisions`` says
    (None: the settings')."""
    revisions = settings.revisions if options.revisions is None else options.revisions
    # As Settings.window_config has it: with revisions, a window is predicted before its text is complete.
    config = dataclasses.replace(config, provisional_without=frozenset({Modality.TEXT}) if revisions else frozenset())
    cores = len(os.sched_getaffinity(0))
    by_count: dict[int, dict[str, Any]] = {}
    plan = list(counts) if counts != "auto" else [w for w in (1, 2, 4, 8, 16, 32, 64) if w <= cores]
    best_so_far = 0
    gpu_unavailable = None
    for workers in plan:
        started = time.perf_counter()
        processes: Processes | None = None
        try:
            with console.status(f"starting {workers} pipeline process{'es' if workers > 1 else ''} (engine warm-up)"):
                processes = Processes(workers, settings, workload, config, max_batch, options)
            gpu_unavailable = processes.gpu_unavailable
            figures = _search(processes, options, console, best_so_far)
        except RuntimeError as exc:  # a process failed (out of GPU memory, say): the counts before it stand
            console.print(f"  [red]w{workers}: {exc}[/]")
            by_count[workers] = {"live_streams": 0, "error": str(exc), "live_trials": [], "load_at_best": None,
                                 "threads_per_worker": None, "ready_s": None}
            break
        finally:
            if processes is not None:
                processes.close()
        by_count[workers] = figures | {"ready_s": round(processes.ready_s - started, 1)}
        # One line per count as it ends: a run cut short (a time limit) still leaves each finished count's answer.
        at_best = _load_text(figures["load_at_best"] or {})
        console.print(f"  w{workers}: {figures['live_streams']} live streams{at_best}")
        if counts == "auto" and best_so_far and figures["live_streams"] <= best_so_far:
            break
        best_so_far = max(best_so_far, figures["live_streams"])
    best = max(by_count, key=lambda w: (by_count[w]["live_streams"], -w))
    return {"through": "embedded", "counts": list(by_count), "cores": cores, "gpu": uses_gpu(settings),
            "gpu_unavailable": gpu_unavailable, "by_workers": {str(w): f for w, f in by_count.items()},
            "best": best, "best_by": "live streams", "max_live_streams": by_count[best]["live_streams"],
            "realtime": {"bound_ms": options.bound_ms, "trial_seconds": options.trial_seconds,
                         "trial_attempts": options.trial_attempts, "delivery": options.delivery.describe(),
                         "revisions": revisions}}


def _search(processes: Processes, options: Any, console: Console, best_so_far: int) -> dict[str, Any]:
    """One count's search (or its one trial at ``--live-streams``), with the host's load at each trial."""
    workers = processes.workers
    loads: list[dict[str, float | None]] = []  # each trial's, in the order they ran

    def trial(streams: int) -> Trial:
        with console.status(f"real time: {streams} live streams for {options.trial_seconds:g} s over "
                            f"{workers} pipeline processes"):
            result, load = processes.trial(streams)
        loads.append(load)
        return result

    def show(t: Trial) -> None:
        console.print(f"  w{workers} {t.streams:4d} live streams: {trial_line(t)}{_load_text(loads[-1])}")

    if options.live_streams:
        done = trial(int(options.live_streams))
        show(done)
        most, trials = (done.streams if done.sustained else 0), [done]
    else:
        # More processes hold at least about what fewer held: start below that (a start that fails is only
        # halved, never bisected back up), not at --start-streams again.
        start = max(options.start_streams, best_so_far * 3 // 4)
        most, trials = search_max_streams(trial, start=start, limit=max(options.max_streams, start),
                                          progress=show, attempts=options.trial_attempts)
    best = next((load for t, load in zip(trials, loads, strict=True) if t.streams == most and t.sustained), None)
    return {"live_streams": most, "threads_per_worker": processes.threads, "load_at_best": best,
            "live_trials": [t.summary() | {"load": load} for t, load in zip(trials, loads, strict=True)]}


def _load_text(load: dict[str, float | None]) -> str:
    parts = []
    if load.get("workers_cpu_cores") is not None:
        parts.append(f"processes {load['workers_cpu_cores']:.1f} cores")
    if load.get("cpu_busy_pct") is not None:
        parts.append(f"host CPU {load['cpu_busy_pct']:.0f} % busy")
    if load.get("gpu_util_pct") is not None:
        parts.append(f"GPU {load['gpu_util_pct']:.0f} % (max {load['gpu_util_max_pct']}), "
                     f"{load['gpu_memory_mib']} MiB")
    return f" [dim]({'; '.join(parts)})[/]" if parts else ""


def print_embedded(scaling: dict[str, Any], console: Console, print_trials: Any) -> None:
    """The scaling table of a ``--workers`` report without a broker (called by ``print_report``)."""
    from rich.table import Table

    table = Table(title=f"pipeline processes (no broker; {scaling['cores']} cores"
                        f"{', one GPU shared' if scaling['gpu'] else ''})")
    for column in ("workers", "live streams", "engine threads each", "cores used", "host CPU busy", "GPU busy",
                   "GPU MiB"):
        table.add_column(column, justify="right")
    for workers, f in scaling["by_workers"].items():
        load = f.get("load_at_best") or {}

        def cell(key: str, unit: str = "", digits: int = 0, load: dict[str, Any] = load) -> str:
            return "-" if load.get(key) is None else f"{load[key]:.{digits}f}{unit}"

        table.add_row(workers, str(f["live_streams"]), str(f["threads_per_worker"]), cell("workers_cpu_cores", "", 1),
                      cell("cpu_busy_pct", " %"), cell("gpu_util_pct", " %"), cell("gpu_memory_mib"))
    console.print(table)
    if scaling.get("gpu_unavailable"):
        console.print(f"[yellow]no GPU figures: {scaling['gpu_unavailable']}[/]")
    console.print(f"best worker count: [bold]{scaling['best']}[/] ({scaling['max_live_streams']} live streams)")
    for workers, f in scaling["by_workers"].items():
        print_trials(f["live_trials"], console, f"real-time trials over {workers} pipeline processes "
                                                "(close→ack here: close → prediction, worst process)")


__all__ = ["Processes", "embedded_scaling", "merge_trials", "print_embedded", "split_streams"]
