"""Where the Kafka service's CPU goes, per window, at full rate (docs/performance.md, "What the Kafka path
costs, per window").

    .venv/bin/python scripts/profile_service.py [--bootstrap 127.0.0.1:9292] [--streams 8] [--seconds 20]
                                                [--rounds 2] [--max-batch 64] [--json]

Runs the bench's kafka stage (``kafka_max_rate``: the whole workload produced first to topics of its own,
``bench-max-<id>.*``, deleted after; then the real service consumes it, on a runtime opened as ``serve``
and the bench's kafka stage open theirs: ``service_options``, one engine thread per core but one)
``--rounds`` times as it is,
then once more with a CPU ledger, and says what the service's CPU time over the timed span went to,
in CPU milliseconds per window acknowledged within the span (the unit of ``fusionstream bench``'s
``cpu_ms_per_window``; the broker's, on this machine only, apart).

The ledger counts, it does not sample. On a busy 2-core machine a sampler misleads both ways: one in
another process (py-spy) counts a runnable thread that waits for a core or the GIL as busy, and one
inside the process can only look when the GIL is free, so it finds the event loop in ``select`` and
``send`` far more often than it is there. Instead, each thread's own CPU clock (``time.thread_time``)
is read around

- every callback and task step of the event loop (``asyncio.Handle._run``), charged to the task's
  coroutine or the callback (:data:`TASKS`);
- the synchronous functions in :data:`FUNCTIONS`, on any thread, each charged its own time (what the
  functions it calls that are listed too spent is theirs);

and what is left of a thread's CPU time (``/proc/self/task/<tid>/stat``) is its residue: the event
loop's own work (``select``, scheduling) on the loop's thread, hand-offs on the pool threads, and
ONNX Runtime's and OpenCV's own threads, which run no Python, are the engine's.

Before that, the same runtime runs the engine stage's work on the same windows alone (``run_engine``,
at ``--max-batch``), and each ONNX Runtime graph's rows per window and calling-thread CPU per row are
compared with the service's (``onnxruntime_by_graph``): whether the graphs cost more per row inside the
service, where the engine thread shares the cores and their caches with the intake. The ledger costs
about 2 µs per listed call (two clock reads and a wrapper), most of it charged to the parts called
per record (aligner, offsets): compare the process's CPU per window with the unprofiled rounds'.
"""

from __future__ import annotations

import argparse
import asyncio.events
import functools
import importlib
import json
import os
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

#: Synchronous functions (``module:Class.method``) timed on any thread, and the part each is charged to.
#: ``*`` marks a part that keeps the time of what it calls (speculative encoding: its ONNX Runtime
#: calls are counted in it, not in the closing windows' engine time).
FUNCTIONS: dict[str, str] = {
    "fusionstream.consumers.pipeline.core:decode_records": "wire decode + media check",
    "fusionstream.consumers.pipeline.core:decode_sampled_frames": "features: sampled-frame JPEG decode",
    "fusionstream.consumers.pipeline.runner:Runner.run": "engine: predictions from outputs (runner)",
    "fusionstream.consumers.pipeline.runner:Runner.prepare": "*engine: encoding ahead (speculate)",
    "fusionstream.consumers.pipeline.reuse:Embedder.__call__": "features: embedder (frame resize, feeds, caches)",
    "onnxruntime.capi.onnxruntime_inference_collection:Session.run": "engine: ONNX Runtime (calling thread)",
    "fusionstream.stream.aligner:Aligner.add": "aligner",
    "fusionstream.stream.aligner:Aligner.poll": "aligner",
    "fusionstream.stream.aligner:Aligner.provisional": "aligner",
    "fusionstream.stream.aligner:Aligner.ready": "aligner",
    "fusionstream.stream.aligner:Aligner.progress": "aligner",
    "fusionstream.stream.aligner:Aligner.is_open": "aligner",
    "fusionstream.consumers.service.intake:PartitionMerger.add": "merger",
    "fusionstream.consumers.service.intake:PartitionMerger.release": "merger",
    "fusionstream.consumers.service.intake:PartitionMerger.total": "merger",
    "fusionstream.consumers.service.intake:PartitionMerger.touch": "merger",
    "fusionstream.consumers.service.handover:Handover.fetched": "offsets: per record",
    "fusionstream.consumers.service.handover:Handover.admitted": "offsets: per record",
    "fusionstream.consumers.service.handover:Handover.prediction_acknowledged": "offsets: per prediction",
    "fusionstream.consumers.service.handover:Handover.to_commit": "offsets: commits (checkpoints)",
    "fusionstream.consumers.service.handover:Handover.committed": "offsets: commits (checkpoints)",
    "fusionstream.consumers.pipeline.core:Pipeline._maybe_warm": "pipeline: encoding-ahead glue",
    "fusionstream.consumers.service.feeder:Feeder._backpressure": "fetch: feeder bookkeeping",
    "fusionstream.consumers.service.feeder:Feeder._behind": "fetch: feeder bookkeeping",
    "fusionstream.consumers.service.feeder:Feeder._fetched_ms": "fetch: feeder bookkeeping",
    "aiokafka.consumer.fetcher:FetchResult.getall": "fetch: record parsing (aiokafka)",
    "fusionstream.consumers.pipeline.prediction:Prediction.to_json": "prediction JSON",
    # Where the service updates its metrics per window, per fetch and per commit. (Each single update is
    # too small to time on its own; the few elsewhere are their callers'.)
    "fusionstream.consumers.service.metrics:ServiceMetrics.observe_prediction": "metrics",
    "fusionstream.consumers.service.metrics:ServiceMetrics.records_fetched": "metrics",
    "fusionstream.consumers.service.health:Gauges.update": "metrics",
    "fusionstream.consumers.bench.cpu:CpuMeter.stop": "bench harness",
}

#: Event-loop work by task coroutine (or callback) qualified name, first match of a prefix; the rest
#: is named ``loop: <name>``. What the listed functions spent inside is theirs.
TASKS: list[tuple[str, str]] = [
    ("Feeder.consume", "fetch: getmany + pipeline.feed glue"),
    ("Feeder.tick", "pipeline: ticks (timeouts)"),
    ("Fetcher.", "fetch: requests, responses (aiokafka)"),
    ("AIOKafkaConnection.", "Kafka network I/O (aiokafka connections)"),
    ("_SelectorSocketTransport", "Kafka network I/O (aiokafka connections)"),
    ("Publisher.run", "produce: publisher + aiokafka send"),
    ("Publisher.", "produce: acknowledgements (publisher callbacks)"),
    ("Sender.", "produce: aiokafka sender"),
    ("SendProduceReqHandler", "produce: aiokafka sender"),
    ("MessageBatch", "produce: aiokafka sender"),
    ("InferenceService._commit_loop", "offsets: commits (aiokafka, gauges)"),
    ("Committer.", "offsets: commits (aiokafka, gauges)"),
    ("GroupCoordinator", "offsets: commits (aiokafka, gauges)"),
    ("CoordinatorGroupRebalance", "Kafka group membership (aiokafka)"),
    ("Pipeline._infer_loop", "pipeline: batcher, prediction queue"),
    ("Pipeline._warm", "pipeline: encoding-ahead glue"),
    ("_chain_future", "event loop: thread hand-offs"),
    ("BaseSelectorEventLoop._read_from_self", "event loop: thread hand-offs"),
    # asyncio's own callbacks: timers, futures and queues waking their waiters
    ("_set_result_unless_cancelled", "event loop: wake-ups"),
    ("_release_waiter", "event loop: wake-ups"),
    ("_wait.", "event loop: wake-ups"),
    ("gather.", "event loop: wake-ups"),
    ("shield.", "event loop: wake-ups"),
    ("Queue.", "event loop: wake-ups"),
    ("_serve_until", "bench harness"),
    ("_max_rate", "bench harness"),  # the stage's coroutine: waiting for the last acknowledgement
    ("_alive", "bench harness"),
]

#: How the parts add up to the rows of docs/performance.md (each part's first word(s) before ':').
GROUPS: dict[str, str] = {
    "fetch": "fetch + Kafka record parsing",
    "Kafka network I/O (aiokafka connections)": "fetch + Kafka record parsing",
    "Kafka group membership (aiokafka)": "fetch + Kafka record parsing",
    "wire decode + media check": "wire decode + media check",
    "merger": "merger",
    "aligner": "aligner",
    "features": "features (decode sampled frames, resize, feeds, caches)",
    "engine": "engine (ONNX Runtime, calling and pool threads; runner)",
    "offsets": "offsets, checkpoints, commits",
    "prediction JSON": "prediction JSON",
    "produce": "produce",
    "metrics": "metrics",
    "pipeline": "pipeline glue (ticks, batcher, queues)",
    "event loop": "event loop (select, scheduling) + thread hand-offs",
    "bench harness": "bench harness",
}
NATIVE = "engine: ONNX Runtime / OpenCV threads"


class Ledger:
    """CPU seconds per part, each call charged its own time (less the listed calls it made)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self.active = False
        self._local = threading.local()
        self._lock = threading.Lock()  # parts are charged from several threads
        self._undo: list[Callable[[], None]] = []
        #: Windows per engine call while active: closing (Runner.run) and encoding ahead (Runner.prepare).
        self.batches: dict[str, list[int]] = {"closing": [], "ahead": []}

    def _stack(self) -> list[list[Any]]:
        stack = getattr(self._local, "stack", None)
        if stack is None:
            stack = self._local.stack = []
        return stack

    def timed(self, part: str | Callable[[tuple[Any, ...]], str], call: Callable[..., Any]) -> Callable[..., Any]:
        ledger = self

        @functools.wraps(call)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            stack = ledger._stack()
            if not ledger.active or (stack and stack[-1][2]):  # off, or inside a part that keeps it all
                return call(*args, **kwargs)
            name = part if isinstance(part, str) else part(args)
            if name.startswith(("engine: predictions", "*engine: encoding ahead")):
                ledger.batches["closing" if name.startswith("engine") else "ahead"].append(len(args[1]))
            keeps = name.startswith("*")
            frame = [name.lstrip("*"), 0.0, keeps]
            stack.append(frame)
            started = time.thread_time()
            try:
                return call(*args, **kwargs)
            finally:
                spent = time.thread_time() - started
                stack.pop()
                with ledger._lock:
                    ledger.seconds[frame[0]] += spent - frame[1]
                if stack:
                    stack[-1][1] += spent

        return wrapper

    def patch(self, owner: Any, attribute: str, part: str | Callable[[tuple[Any, ...]], str]) -> None:
        original = owner.__dict__[attribute]
        setattr(owner, attribute, self.timed(part, original))
        self._undo.append(lambda: setattr(owner, attribute, original))

    def install(self) -> None:
        for target, part in FUNCTIONS.items():
            module_name, _, path = target.partition(":")
            owner: Any = importlib.import_module(module_name)
            *classes, attribute = path.split(".")
            for name in classes:
                owner = getattr(owner, name)
            if attribute in vars(owner):  # a function an older tree lacks is left out (to compare trees)
                self.patch(owner, attribute, part)
        self.patch(asyncio.events.Handle, "_run", lambda args: _task_part(args[0]))

    def uninstall(self) -> None:
        for undo in reversed(self._undo):
            undo()


class GraphMeter:
    """Rows and calling-thread CPU seconds of each ONNX Runtime graph (by file name) while active, to
    compare a graph's cost per row inside the service with the engine stage's (docs/performance.md)."""

    def __init__(self) -> None:
        self.active = False
        self.graphs: dict[str, list[float]] = defaultdict(lambda: [0, 0.0])  # graph: [rows, seconds]
        self._lock = threading.Lock()
        self._original: Callable[..., Any] | None = None

    def install(self) -> None:
        from onnxruntime.capi.onnxruntime_inference_collection import Session

        original = self._original = Session.run
        meter = self

        @functools.wraps(original)
        def run(session: Any, output_names: Any, input_feed: dict[str, Any], *args: Any, **kwargs: Any) -> Any:
            if not meter.active:
                return original(session, output_names, input_feed, *args, **kwargs)
            started = time.thread_time()
            try:
                return original(session, output_names, input_feed, *args, **kwargs)
            finally:
                spent = time.thread_time() - started
                graph = Path(str(getattr(session, "_model_path", "") or "?")).name
                with meter._lock:
                    entry = meter.graphs[graph]
                    entry[0] += len(next(iter(input_feed.values()))) if input_feed else 0
                    entry[1] += spent

        Session.run = run  # type: ignore[method-assign]

    def uninstall(self) -> None:
        if self._original is not None:
            from onnxruntime.capi.onnxruntime_inference_collection import Session

            Session.run = self._original  # type: ignore[method-assign]

    def take(self, windows: int) -> dict[str, dict[str, float]]:
        """Per graph: rows per window and CPU microseconds per row since the last take; then reset."""
        out = {graph: {"rows_per_window": round(rows / windows, 3), "us_per_row": round(seconds / rows * 1e6, 1)}
               for graph, (rows, seconds) in sorted(self.graphs.items()) if rows}
        self.graphs.clear()
        return out


def _task_part(handle: asyncio.events.Handle) -> str:
    callback = handle._callback  # type: ignore[attr-defined]
    owner = getattr(callback, "__self__", None)
    if isinstance(owner, asyncio.Task):
        coro = owner.get_coro()
        name = getattr(coro, "__qualname__", type(coro).__name__)
    else:
        name = getattr(callback, "__qualname__", type(callback).__name__)
    for prefix, part in TASKS:
        if name.startswith(prefix):
            return part
    return f"loop: {name}"


def thread_cpu_s() -> dict[int, float]:
    """CPU seconds of each thread of this process, by native thread id (10 ms resolution)."""
    ticks = os.sysconf("SC_CLK_TCK")
    out: dict[int, float] = {}
    for task in Path("/proc/self/task").iterdir():
        try:
            stat = (task / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        out[int(task.name)] = (int(fields[11]) + int(fields[12])) / ticks
    return out


class Span:
    """``kafka_max_rate``'s ``on_span``: the ledger on between "start" and "end", and each thread's CPU then."""

    def __init__(self, ledger: Ledger, meter: GraphMeter | None = None) -> None:
        self.ledger = ledger
        self.meter = meter
        self.start: dict[int, float] = {}
        self.end: dict[int, float] = {}
        self.charged: dict[str, float] = {}
        self.python: dict[int, str] = {}
        self.batches: dict[str, Any] = {}

    def __call__(self, event: str) -> None:
        if event == "start":
            self.start = thread_cpu_s()
            self.ledger.active = True
            if self.meter is not None:
                self.meter.active = True
        elif event == "end" and self.ledger.active:
            self.ledger.active = False
            if self.meter is not None:
                self.meter.active = False
            self.end = thread_cpu_s()
            self.charged = dict(self.ledger.seconds)
            self.batches = {kind: {"calls": len(sizes), "windows": sum(sizes),
                                   "mean": round(sum(sizes) / len(sizes), 1) if sizes else None}
                            for kind, sizes in self.ledger.batches.items()}
            self.python = {t.native_id: t.name for t in threading.enumerate() if t.native_id is not None}


def attribute(span: Span, windows: int) -> dict[str, Any]:
    """CPU ms per window by part, by row of the docs' table, and by thread."""
    per_window = 1e3 / windows
    parts = defaultdict(float, span.charged)
    threads: dict[str, float] = {}
    python_s = 0.0
    for tid, end in span.end.items():
        seconds = max(0.0, end - span.start.get(tid, 0.0))
        name = span.python.get(tid)
        if seconds:
            threads[f"{name or 'native'} ({tid})"] = round(seconds * per_window, 3)
        if name is None:
            parts[NATIVE] += seconds
        else:
            python_s += seconds
    # What the listed calls did not take of the Python threads' time: the event loop's own work, the pools'.
    parts["event loop: select, scheduling, pool workers (residue)"] += python_s - sum(span.charged.values())
    groups: dict[str, float] = defaultdict(float)
    for part, seconds in parts.items():
        key = part if part in GROUPS else part.split(":", 1)[0]
        groups[GROUPS.get(key, "other")] += seconds

    def table(d: dict[str, float]) -> dict[str, float]:
        return {k: round(v * per_window, 3) for k, v in sorted(d.items(), key=lambda kv: -kv[1])}

    return {"engine_calls": span.batches, "groups_ms_per_window": table(groups), "parts_ms_per_window": table(parts),
            "threads_ms_per_window": threads, "total_ms_per_window": round(sum(parts.values()) * per_window, 3)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bootstrap", default="127.0.0.1:9292")
    parser.add_argument("--streams", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--rounds", type=int, default=2, help="rounds without the ledger, before the one with it")
    parser.add_argument("--max-batch", type=int, default=64, help="the bench's best batch on this machine")
    parser.add_argument("--json", action="store_true", help="print the result as one JSON object on the last line")
    args = parser.parse_args()

    from fusionstream.consumers.bench.kafka_stage import kafka_max_rate
    from fusionstream.consumers.bench.stages import run_engine
    from fusionstream.consumers.bench.workload import Workload
    from fusionstream.consumers.engine import service_options
    from fusionstream.consumers.pipeline.runner import Runner
    from fusionstream.consumers.settings import Settings
    from fusionstream.engines.backends import open_runtime

    settings = Settings(bootstrap_servers=args.bootstrap, max_batch=args.max_batch)
    ledger = Ledger()
    ledger.install()  # inactive until the span starts: outside it each listed call costs one attribute read
    meter = GraphMeter()
    meter.install()
    with open_runtime(settings.backend, settings.model_dir, **service_options(settings)) as runtime:
        workload = Workload.synthetic(args.streams, args.seconds, 0).declared(runtime.modalities)
        # The same runtime on the same windows alone first (the engine stage's work, at the service's
        # batch size), for each graph's cost per row without the service beside it.
        windows_alone = workload.windows(settings.model_window_config(runtime.manifest), runtime.frame_side)
        run_engine(runtime, windows_alone, args.max_batch)
        meter.active = True
        run_engine(runtime, windows_alone, args.max_batch)
        meter.active = False
        alone = meter.take(len(windows_alone))

        def make_runner() -> Runner:
            return Runner(runtime)

        rounds = []
        for turn in range(args.rounds):
            result = kafka_max_rate(make_runner, runtime.manifest, settings, workload)
            rounds.append({"windows_per_s": round(result.windows_per_s, 1), "cpu_ms_per_window":
                           result.cpu_ms_per_window, "broker_cpu_ms_per_window":
                           result.extra["broker_cpu_ms_per_window"]})
            print(f"round {turn + 1}: {rounds[-1]}", file=sys.stderr)
        span = Span(ledger, meter)
        result = kafka_max_rate(make_runner, runtime.manifest, settings, workload, on_span=span)
    meter.uninstall()  # the meter wraps the ledger's wrapper: off in the reverse order
    ledger.uninstall()
    windows = result.cpu_windows or result.windows
    graphs = {"engine_alone": alone, "in_service": meter.take(windows)}
    report = {
        "workload": {"streams": args.streams, "seconds": args.seconds, "max_batch": args.max_batch},
        "rounds": rounds,
        "profiled": {"windows_per_s": round(result.windows_per_s, 1), "windows": windows,
                     "cpu_ms_per_window": result.cpu_ms_per_window,
                     "broker_cpu_ms_per_window": result.extra["broker_cpu_ms_per_window"]},
        **attribute(span, windows),
        "onnxruntime_by_graph": graphs,
    }
    for title, key in (("by row", "groups_ms_per_window"), ("by part", "parts_ms_per_window")):
        width = max(len(p) for p in report[key])
        print(f"CPU ms per window {title} ({windows} windows, {report['profiled']['windows_per_s']} windows/s):",
              file=sys.stderr)
        for part, ms in report[key].items():
            print(f"  {part:<{width}} {ms:7.3f}", file=sys.stderr)
    print("ONNX Runtime by graph (calling thread), rows per window and CPU us per row, alone -> in the service:",
          file=sys.stderr)
    for graph, there in graphs["in_service"].items():
        here = graphs["engine_alone"].get(graph, {"rows_per_window": 0.0, "us_per_row": 0.0})
        print(f"  {graph:<16} rows {here['rows_per_window']:.2f} -> {there['rows_per_window']:.2f}, "
              f"us/row {here['us_per_row']:.0f} -> {there['us_per_row']:.0f}", file=sys.stderr)
    print(f"total {report['total_ms_per_window']} (process {result.cpu_ms_per_window}); broker "
          f"{report['profiled']['broker_cpu_ms_per_window']}; engine calls {report['engine_calls']}", file=sys.stderr)
    if args.json:
        print(json.dumps(report, separators=(",", ":")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
