"""`fusionstream serve --workers N`: N service processes on one host, in one consumer group, kept running.

Why processes: one service process is bound by its Python half (intake, alignment, the Kafka protocol)
on one core; N processes use N, and the group spreads the partitions over them as over N hosts.

The supervisor

- starts N workers (:mod:`fusionstream.consumers.service.worker`), worker ``i`` named
  ``<instance>-<i>`` (``--instance-id``, default the host name): a stable name, so exactly-once
  transactional ids stay distinct between workers and each survives its worker's restarts, and the
  worker joins as a *static* member (``group.instance.id``) that takes its partitions straight back
  after a crash, without the group waiting out the dead member's session;
- splits the engine threads (``threads``; unset, the cores less one per worker) between them;
- keeps one more worker warm, imported and with its engine open (a *standby*): a worker that dies is
  replaced by the standby at once (and a new standby started), so a crash costs a rejoin and a re-read,
  not a process start; without a standby (``standby=False``) a fresh process is started;
- restarts a worker that dies: at once after a run of ``stable_s`` or more (unless it refused: an ACL found
  at its first publish), otherwise with exponential backoff (0.5 s doubling to 30 s), and, before any worker
  of the host has served, gives up (exit status 1) after ``max_failed_starts`` starts in a row (a bad setting
  or an unreachable broker, not a crash); once one has, it never gives up;
- kills a worker that is stuck (its /healthz unanswered, or stopping without exiting, for
  ``stuck_after_s``), which restarts it;
- forwards SIGTERM/SIGINT to every worker (the first: graceful stop, each leaves the group; a second:
  abort), waits for them (``stop_timeout_s`` at most, then kills the ones left), and exits 0 when every
  worker stopped cleanly;
- serves one ``/metrics`` and ``/healthz`` for the host on ``metrics_port``
  (:mod:`fusionstream.consumers.service.hostview`).

Workers run in their own session, so a terminal's Ctrl-C reaches only the supervisor, which forwards it
once; and a worker whose supervisor vanished (even by ``kill -9``) sees its stdin close and stops.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import signal
import socket
import sys
import time
from contextlib import suppress

from prometheus_client import CollectorRegistry, Counter, Gauge

from fusionstream.consumers.cli_errors import PROG
from fusionstream.consumers.service.hostview import (
    NOT_ANSWERING,
    HostMetrics,
    WorkerView,
    free_port,
    host_health,
    poll_health,
)
from fusionstream.consumers.service.metrics import MetricsServer
from fusionstream.consumers.service.worker import REFUSED_STATUS, settings_line
from fusionstream.consumers.settings import Settings

log = logging.getLogger(__name__)

WORKER_MODULE = "fusionstream.consumers.service.worker"
ERROR_PREFIX = f"{PROG}: error:"
_TAG = re.compile(r"^\[[^\]]*\] ")
MAX_BACKOFF_S = 30.0
STANDBY_RETRY_S = 2.0


def resolve_workers(settings: Settings, cores: int | None = None, partitions: int | None = None) -> int:
    """``settings.workers`` as a count: ``auto`` is one worker per 2 cores (each needs one for its Python
    half and some engine threads), at most one per partition (more would own nothing: ``partitions``, the
    input topics' count, else ``settings.partitions``), and at most 4 on a GPU (they share it: more contend
    for it without adding throughput; see docs/operations.md#workers)."""
    if settings.workers != "auto":
        return int(settings.workers)
    cores = cores or len(os.sched_getaffinity(0))
    count = max(1, cores // 2)
    if settings.device.startswith("cuda") or settings.backend == "tensorrt":
        count = min(count, 4)
    return max(1, min(count, partitions or settings.partitions))


def workers_for(settings: Settings, cores: int | None = None) -> int:
    """``serve``'s worker count (:func:`resolve_workers`), ``auto`` capped by the partitions the input topics
    have when they exist (asked of the broker, 5 s at most), and said in one line."""
    if settings.workers != "auto":
        return resolve_workers(settings)
    from fusionstream.consumers.kafka.admin import partition_count

    found = asyncio.run(partition_count(settings.bootstrap_servers, settings.video_topic, settings.kafka_security()))
    partitions = found or settings.partitions
    cores = cores or len(os.sched_getaffinity(0))
    count = resolve_workers(settings, cores, partitions)
    log.info("--workers auto: %d worker%s for %d core%s and %d partitions (%s)%s", count, "s" if count > 1 else "",
             cores, "s" if cores > 1 else "", partitions,
             f"{settings.video_topic} has them" if found
             else "FUSIONSTREAM_PARTITIONS: the broker did not say, no input topic yet or no answer within 5 s",
             "" if count > 1 else " (one process, no supervisor: a worker needs about two cores)")
    return count


def threads_per_worker(settings: Settings, workers: int, cores: int | None = None) -> int:
    """The engine threads of one worker: ``threads`` shared out, at least one each; unset (0), the cores less
    one per worker for its own Python thread, as one ``serve`` leaves one (``service_threads``)."""
    if settings.threads:
        return max(1, settings.threads // workers)
    return max(1, ((cores or len(os.sched_getaffinity(0))) - workers) // workers)


class _Worker:
    """One live worker process (or the standby) and its stdin pipe."""

    def __init__(self, proc: asyncio.subprocess.Process, ready: asyncio.StreamReader) -> None:
        self.proc = proc
        self.started = time.monotonic()
        self.warm = False  # its engine is open
        self.killed = False  # by the supervisor, as stuck
        self.stuck_since: float | None = None  # when its /healthz first said it is frozen or will not exit
        self.errors: list[str] = []  # its ``fusionstream: error:`` lines, held until its exit says what they mean
        self._ready = asyncio.create_task(self._await_ready(ready))
        self._relay = asyncio.create_task(self._relay_stderr())

    async def _await_ready(self, ready: asyncio.StreamReader) -> None:
        with suppress(OSError, ValueError):
            self.warm = (await ready.readline()) == b"ready\n"

    async def _relay_stderr(self) -> None:
        """Pass its stderr on as it comes, but hold its error lines: N workers refused for one reason are one line."""
        if self.proc.stderr is None:
            return  # its stderr is the supervisor's own
        while line := await self.proc.stderr.readline():
            text = line.decode("utf-8", "replace").rstrip("\n")
            if text.startswith(ERROR_PREFIX):
                self.errors.append(text)
            else:
                sys.stderr.write(text + "\n")
                sys.stderr.flush()

    async def exited(self) -> tuple[int, list[str]]:
        """Wait for it to exit; its status and its error lines."""
        code = await self.proc.wait()
        with suppress(Exception):
            await asyncio.wait_for(self._relay, timeout=5.0)  # a grandchild may hold the pipe open
        return code, self.errors

    def assign(self, view: WorkerView) -> None:
        """Give it its slot: it starts serving as soon as its engine is open (at once for a standby)."""
        assert self.proc.stdin is not None
        slot = {"instance_id": view.instance_id, "metrics_port": view.port}
        self.proc.stdin.write((json.dumps(slot) + "\n").encode())
        self.started = time.monotonic()

    def signal(self, signum: int) -> None:
        with suppress(ProcessLookupError):
            self.proc.send_signal(signum)

    def release(self) -> None:
        """Close its stdin: a standby exits, a serving worker stops gracefully."""
        if self.proc.stdin is not None and not self.proc.stdin.is_closing():
            self.proc.stdin.close()


class Supervisor:
    """Runs ``workers`` service processes until :meth:`stop`; ``await run()`` returns the exit status."""

    def __init__(
        self, settings: Settings, *, workers: int, instance_id: str | None = None, standby: bool = True,
        grace_s: float = 15.0, stable_s: float = 5.0, max_failed_starts: int = 5, poll_s: float = 0.5,
        stuck_after_s: float = 20.0, stop_timeout_s: float = 30.0, registry: CollectorRegistry | None = None,
    ) -> None:
        self.settings = settings
        self.count = workers
        self.instance_id = instance_id or socket.gethostname()
        self.standby = standby
        self.grace_s, self.stable_s, self.poll_s = grace_s, stable_s, poll_s
        self.stuck_after_s, self.stop_timeout_s = stuck_after_s, stop_timeout_s
        self.max_failed_starts = max_failed_starts
        self.threads = threads_per_worker(settings, workers)
        self.views = [WorkerView(i, f"{self.instance_id}-{i}", free_port()) for i in range(workers)]
        self.registry = registry = registry or CollectorRegistry()
        self.restarts = Counter("worker_restarts", "Worker processes restarted after they died.", ["worker"],
                                namespace="fusionstream", registry=registry)
        self.up = Gauge("worker_up", "1 while the worker's /healthz is healthy.", ["worker"],
                        namespace="fusionstream", registry=registry)
        for view in self.views:
            self.restarts.labels(str(view.index))
        registry.register(HostMetrics(lambda: self.views))
        self.metrics_port: int | None = None
        self._workers: dict[int, _Worker] = {}
        self._spare: _Worker | None = None
        self._failed_starts = [0] * workers
        self._stop = asyncio.Event()
        self._signals = 0
        self._fatal: str | None = None
        self._refusal: str | None = None  # a worker's refusal that stopped the host, without its [tag]
        self._standby_after = 0.0  # when (monotonic) a standby that died may be replaced
        self._standby_retry_s = STANDBY_RETRY_S

    # -- control --------------------------------------------------------------------------------

    def stop(self) -> None:
        """Stop every worker gracefully (what the first SIGTERM/SIGINT does)."""
        self._stop.set()

    def health(self) -> tuple[bool, dict[str, object]]:
        ok, detail = host_health(self.views, self.grace_s)
        if self._stop.is_set():  # its workers are leaving the group: a load balancer should look elsewhere now
            ok, detail = False, {**detail, "state": "stopping"}
        spare = self._spare
        standby = ("off" if not self.standby else "none" if spare is None or spare.proc.returncode is not None
                   else "warm" if spare.warm else "warming")
        return ok, {"instance": self.instance_id, **detail, "standby": standby}

    def on_signal(self, signum: int) -> None:
        self._signals += 1
        if self._signals == 1:
            log.info("%s: stopping %d workers (graceful; again to abort)", signal.Signals(signum).name, self.count)
            self.stop()
        else:
            log.warning("second signal: the workers abort without a final commit")
            for worker in self._live():
                worker.signal(signal.SIGTERM)  # their own second signal

    async def run(self) -> int:
        """Supervise until :meth:`stop` (or until workers keep failing); returns the exit status."""
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self.on_signal, signum)
        server = None
        if self.settings.metrics_port:
            server = MetricsServer(self.registry, self.health, self.settings.metrics_port, self.settings.metrics_host)
            server.start()
            self.metrics_port = server.port
        log.info("supervising %d workers (%s-0..%d, %d engine threads each%s)", self.count, self.instance_id,
                 self.count - 1, self.threads, ", one standby" if self.standby else "")
        try:
            for view in self.views:
                worker = await self._spawn()
                worker.assign(view)
                self._started(view, worker)
            watchers = {asyncio.create_task(self._watch(view)) for view in self.views}
            poller = asyncio.create_task(self._poll())
            await self._stop.wait()
            poller.cancel()
            return await self._shutdown(watchers)
        finally:
            if server is not None:
                server.stop()
            for signum in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(signum)

    # -- workers --------------------------------------------------------------------------------

    async def _spawn(self) -> _Worker:
        """A new worker process, given the settings; it loads the model and waits for its slot."""
        read_fd, write_fd = os.pipe()  # the worker says "ready" on it when its engine is open
        try:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", WORKER_MODULE, stdin=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
                pass_fds=(write_fd,),
                start_new_session=True,  # Ctrl-C in a terminal reaches the supervisor only; it forwards it once
            )
        finally:
            os.close(write_fd)
        ready = asyncio.StreamReader()
        await asyncio.get_running_loop().connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(ready), os.fdopen(read_fd, "rb"))
        assert proc.stdin is not None
        proc.stdin.write(settings_line(self.settings, workers=1, threads=self.threads, ready_fd=write_fd).encode())
        return _Worker(proc, ready)

    async def _replacement(self) -> _Worker:
        """The standby if it is alive (already warm), else a fresh process. The next standby is started by
        :meth:`_poll` once every worker serves again: on few cores its start would slow the recovery."""
        spare, self._spare = self._spare, None
        if spare is not None and spare.proc.returncode is not None:
            for line in (await spare.exited())[1]:
                _pass_on(line)  # why the standby died
            spare = None
        if spare is None:
            spare = await self._spawn()
        return spare

    def _started(self, view: WorkerView, worker: _Worker) -> None:
        self._workers[view.index] = worker
        view.pid, view.state, view.healthy = worker.proc.pid, "starting", False

    async def _watch(self, view: WorkerView) -> None:
        """Restart the slot's worker whenever it dies, until the supervisor stops."""
        while True:
            worker = self._workers[view.index]
            code, errors = await worker.exited()
            view.last_exit, view.healthy = code, False
            if self._refused(view, code, errors):
                return
            if self._stop.is_set():
                view.state = "stopped"
                return
            view.state = "down"
            ran_s = time.monotonic() - worker.started
            served = view.healthy_at is not None and view.healthy_at >= worker.started
            # A refusal after serving (an ACL that denies the predictions topic: found at the first publish) is
            # no crash a quick restart mends: backed off like a failed start (it restarted 27 times in 100 s).
            if served and ran_s >= self.stable_s and code != REFUSED_STATUS:
                self._failed_starts[view.index], delay = 0, 0.0
            else:
                self._failed_starts[view.index] += 1
                # Only a host that never served gives up (a bad setting, no broker). Once it has, the other
                # workers go on serving, and what fails this one's starts (a model directory being copied, a
                # topic or ACL changed) may be put back: a stopped host would stay stopped (37 s in one case).
                host_served = any(v.healthy_at is not None for v in self.views)
                if not host_served and self._failed_starts[view.index] >= self.max_failed_starts:
                    self._fatal = (f"worker {view.index} failed {self._failed_starts[view.index]} starts in a row "
                                   f"(last exit status {code}): see its log above")
                    log.error("%s; stopping", self._fatal)
                    self.stop()
                    view.state = "stopped"
                    return
                delay = min(0.5 * 2 ** (self._failed_starts[view.index] - 1), MAX_BACKOFF_S)
            log.warning("worker %d (%s, pid %s) exited with status %s after %.1f s; restarting%s", view.index,
                        view.instance_id, worker.proc.pid, _status(code), ran_s, f" in {delay:.1f} s" if delay else "")
            if delay:
                with suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), timeout=delay)
                if self._stop.is_set():
                    view.state = "stopped"
                    return
            replacement = await self._replacement()
            if self._stop.is_set():  # stopped while it started
                replacement.release()
                await replacement.proc.wait()
                view.state = "stopped"
                return
            replacement.assign(view)
            self._started(view, replacement)
            view.restarts += 1
            self.restarts.labels(str(view.index)).inc()

    def _refused(self, view: WorkerView, code: int, errors: list[str]) -> bool:
        """Pass the exited worker's error lines on; True if it refused a setup that no restart mends before the
        host ever served (``main.REFUSALS``: bad topics, a refused login), which stops the host with that one
        line, as ``serve`` without ``--workers`` would (the other workers' copies of it are dropped)."""
        if self._refusal is not None:
            errors = [line for line in errors if _untagged(line) != self._refusal]
        host_served = any(v.healthy_at is not None for v in self.views)
        if code == REFUSED_STATUS and not host_served and self._refusal is None and not self._stop.is_set():
            self._refusal = _untagged(errors[-1]) if errors else f"worker {view.index} refused to start"
            self._fatal = self._refusal
            log.error("worker %d refused to start (%s); stopping", view.index, self._refusal)
            for line in errors[:-1]:
                _pass_on(line)
            view.state = "stopped"
            self.stop()
            return True
        for line in errors:
            _pass_on(line)
        return False

    async def _poll(self) -> None:
        """Refresh each worker's health (for /healthz and ``worker_up``); start the standby once all serve."""
        while True:
            now = time.monotonic()
            await asyncio.gather(*(asyncio.to_thread(poll_health, view, now) for view in self.views))
            for view in self.views:
                self.up.labels(str(view.index)).set(1 if view.healthy else 0)
                self._kill_if_stuck(view, now)
            # The standby starts once every worker serves: on few cores it would slow their (re)start.
            await self._replace_dead_standby(now)
            if self._standby_due(now):
                self._spare = await self._spawn()
            await asyncio.sleep(self.poll_s)

    def _standby_due(self, now: float) -> bool:
        """Whether to start a standby now: none is there, every worker serves (on few cores its start would slow a
        recovery), and a standby that died was let go long enough ago."""
        return (self.standby and self._spare is None and now >= self._standby_after
                and all(v.healthy for v in self.views))

    async def _replace_dead_standby(self, now: float) -> None:
        """A standby that died (killed, out of memory) is said and let go; :meth:`_poll` starts another, after
        ``STANDBY_RETRY_S`` (doubling while they keep dying before they are warm), so a crash finds one ready."""
        spare = self._spare
        if spare is None or spare.proc.returncode is None:
            return
        self._spare = None
        code, errors = await spare.exited()
        for line in errors:
            _pass_on(line)
        self._standby_retry_s = STANDBY_RETRY_S if spare.warm else min(2 * self._standby_retry_s, MAX_BACKOFF_S)
        self._standby_after = now + self._standby_retry_s
        log.warning("the standby (pid %s) exited with status %s; starting another in %.0f s", spare.proc.pid,
                    _status(code), self._standby_retry_s)

    def _kill_if_stuck(self, view: WorkerView, now: float) -> None:
        """SIGKILL a worker that served and then stopped answering its /healthz (frozen: SIGSTOP, swapping), or
        says it is stopping or stopped but does not exit (a client waiting on a broker that lost its data), for
        ``stuck_after_s``; its watcher restarts it. A worker that answers and is unhealthy for another reason
        (no partitions yet, the broker away) is left alone: a restart would not help it. A frozen exactly-once
        worker's open transaction is aborted when its replacement, with the same transactional id, starts."""
        worker = self._workers.get(view.index)
        state = view.detail.get("state")
        if worker is None or worker.proc.returncode is not None:
            return
        if view.healthy or state not in (NOT_ANSWERING, "stopping", "stopped"):
            worker.stuck_since = None
            return
        # Timed from when it became stuck, not from its last healthy answer: one that was unhealthy for
        # another reason a while (a stalled engine) gets the whole time too, to exit by itself.
        if worker.stuck_since is None:
            worker.stuck_since = now
        since = worker.stuck_since
        served = view.healthy_at is not None and view.healthy_at >= worker.started
        if worker.killed or not served or now - since < self.stuck_after_s:
            return
        how = "not answering" if state == NOT_ANSWERING else f"{state} but not exiting"
        log.warning("worker %d (%s, pid %s) %s for %.0f s: killing it to restart it", view.index, view.instance_id,
                    worker.proc.pid, how, now - since)
        worker.killed = True
        worker.signal(signal.SIGKILL)

    def _live(self) -> list[_Worker]:
        workers = [*self._workers.values(), *([self._spare] if self._spare else [])]
        return [w for w in workers if w.proc.returncode is None]

    async def _shutdown(self, watchers: set[asyncio.Task[None]]) -> int:
        if self._spare is not None:
            self._spare.release()  # a standby just exits
        for view in self.views:
            if view.state in ("starting", "running"):
                view.state = "stopping"
            self.up.labels(str(view.index)).set(0)  # the poller that kept it is gone
        for worker in self._workers.values():
            worker.signal(signal.SIGTERM)
        everyone = [*self._workers.values(), *([self._spare] if self._spare else [])]
        try:
            codes = await asyncio.wait_for(asyncio.gather(*(w.proc.wait() for w in everyone)), self.stop_timeout_s)
        except TimeoutError:
            # A graceful stop takes a second or two; one that hangs (a client waiting on a broker that lost its
            # data) would keep the host from stopping at all.
            stuck = [w for w in everyone if w.proc.returncode is None]
            log.warning("%d workers still stopping after %g s: killing them (pids %s)", len(stuck),
                        self.stop_timeout_s, ", ".join(str(w.proc.pid) for w in stuck))
            for worker in stuck:
                worker.signal(signal.SIGKILL)
            codes = await asyncio.gather(*(w.proc.wait() for w in everyone))
        await asyncio.gather(*watchers, return_exceptions=True)
        failed = {view.index: view.last_exit for view in self.views if view.last_exit not in (0, None)}
        if self._fatal is not None:
            from fusionstream.consumers.cli_errors import print_error

            print_error(self._fatal)  # the reason the whole command failed, where a user looks for it
            return 1
        if failed:
            log.error("workers stopped with errors: %s", failed)
            return 1
        log.info("all %d workers stopped (exit statuses %s)", self.count, codes[: self.count])
        return 0


def _status(code: int | None) -> str:
    """An exit status as operators read it: ``-9`` (asyncio's killed-by-signal) as ``-9 (SIGKILL)``."""
    with suppress(ValueError, TypeError):
        return f"{code} ({signal.Signals(-code).name})" if code is not None and code < 0 else str(code)
    return str(code)


def _untagged(line: str) -> str:
    """A worker's error line without ``fusionstream: error: [<instance>] ``: the same for every worker."""
    return _TAG.sub("", line.removeprefix(ERROR_PREFIX).lstrip(), count=1)


def _pass_on(line: str) -> None:
    sys.stderr.write(line + "\n")
    sys.stderr.flush()


def run_supervisor(settings: Settings, *, workers: int, instance_id: str | None = None) -> int:
    """`serve --workers N` as a process: the model checked first (one line and status 1 if it is unusable),
    then the workers supervised until SIGTERM/SIGINT."""
    from fusionstream.consumers.cli_errors import print_error
    from fusionstream.consumers.engine import load_model
    from fusionstream.consumers.service.main import USER_ERRORS, logs_to_stdout

    logs_to_stdout()
    try:
        # Refused once here, not N times by crash-looping workers.
        settings.check_model_windows(load_model(settings.model_dir))
        return asyncio.run(Supervisor(settings, workers=workers, instance_id=instance_id).run())
    except USER_ERRORS as exc:  # also: the host's own /metrics port, taken
        print_error(str(exc) or repr(exc))
        return 1


__all__ = ["Supervisor", "resolve_workers", "run_supervisor", "threads_per_worker", "workers_for"]
