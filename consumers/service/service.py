"""The Kafka inference service: input topics in, one prediction per window out (docs/architecture.md).

    fs.video ┐                                        ┌ publisher ─> fs.predictions
    fs.audio ┼ getmany ─> Pipeline.feed (decode, align, batch, infer) ┤
    fs.text  ┘    │ bad / late                                        └ acks ─> Handover ─> commit
                  └─> fs.deadletter

A :class:`Feeder` task fetches with ``getmany`` and feeds the shared :class:`Pipeline`
(decoding and inference run in threads, so the event loop, which carries the Kafka
heartbeats, never blocks), a partition's three topics merged in event-time order, with
timeouts on a clock that stands still while the service is behind
(:mod:`fusionstream.consumers.service.feeder`): reading a backlog or waiting for the
engine never makes records late. A publisher task sends predictions and reports
their acknowledgements to the :class:`Handover`, which owns everything a rebalance must
keep consistent (partitions, their streams, held offsets, checkpoints); a commit task
commits, every ``commit_interval_s``, what the handover says is safe.

Rebalances (see :class:`_Listener`): on revocation the closed windows are published
and committed, and the open windows are *handed over*, not force-closed: their
records are still uncommitted, so the next owner re-reads and completes them, and the
checkpoint keeps the windows published before from being emitted twice. A graceful
stop does the same.

At start the service waits up to ``broker_wait_s`` for the broker
(:mod:`fusionstream.consumers.kafka.readiness`) and refuses window settings that disagree
with the model (``Settings.model_window_config``).

Exactly-once mode: predictions, dead letters and offsets go in one Kafka transaction
per commit interval (:mod:`fusionstream.consumers.service.publisher`).
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import Iterable
from contextlib import AsyncExitStack, suppress
from typing import Any

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import CommitFailedError, IllegalStateError, KafkaError
from prometheus_client import CollectorRegistry

from fusionstream.consumers.engine import engine_title, model_title
from fusionstream.consumers.kafka import (
    CommitTimedOut,
    check_copartitioned,
    ensure_topics,
    leave_group,
    make_admin,
    make_consumer,
    make_producer,
)
from fusionstream.consumers.kafka.client_logs import lower_routine_client_errors
from fusionstream.consumers.kafka.readiness import when_ready
from fusionstream.consumers.pipeline.core import Pipeline
from fusionstream.consumers.pipeline.runner import Runner
from fusionstream.consumers.service.commits import Committer
from fusionstream.consumers.service.feeder import Feeder
from fusionstream.consumers.service.freezes import FreezeWatch, freeze_threshold_s
from fusionstream.consumers.service.handover import Handover, Offsets
from fusionstream.consumers.service.health import Gauges, Health
from fusionstream.consumers.service.metrics import MetricsServer, ServiceMetrics
from fusionstream.consumers.service.options import ServiceOptions
from fusionstream.consumers.service.other_groups import warn_of_other_services, watch_other_services
from fusionstream.consumers.service.outputs import watch_outputs
from fusionstream.consumers.service.publisher import Publisher
from fusionstream.consumers.service.topic_settings import dead_letter_max_bytes, topic_settings, warn_of_compaction
from fusionstream.consumers.settings import Settings
from fusionstream.engines.errors import first_line
from fusionstream.engines.manifest import Manifest
from fusionstream.stream.records import Modality

log = logging.getLogger(__name__)


class InferenceService:
    """One instance of the inference service; ``await service.run()`` until :meth:`stop` is called."""

    def __init__(
        self,
        settings: Settings,
        runner: Runner,
        spec: Manifest,
        *,
        options: ServiceOptions | None = None,
        registry: CollectorRegistry | None = None,
    ) -> None:
        self.settings = settings
        self.options = options = options or ServiceOptions()
        self.spec = spec
        self._runner = runner
        self.instance_id = options.instance_id or socket.gethostname()
        # Refused here, before anything connects: windows the model was not trained on predict worse, silently.
        self.window_config = settings.model_window_config(spec)
        self.metrics = ServiceMetrics(registry)
        self.handover = Handover(self.window_config.hop_ns, staggered=self.window_config.stagger,
                                 output=settings.predictions_topic)
        self._health = Health(self.instance_id, stall_after_s=options.stall_after_s)
        self._gauges = Gauges(self.metrics)
        self.input_topics = (settings.video_topic, settings.audio_topic, settings.text_topic)
        self._stop = asyncio.Event()
        self._lock = asyncio.Lock()  # intake, ticks and rebalances change the aligner one at a time
        modalities_of_topic: dict[str, frozenset[Modality]] = {}
        for topic, modality in zip(self.input_topics, (Modality.VIDEO, Modality.AUDIO, Modality.TEXT), strict=True):
            modalities_of_topic[topic] = modalities_of_topic.get(topic, frozenset()) | {modality}
        self._feeder = Feeder(self.handover, self.metrics, options, lock=self._lock,
                              max_backlog=options.max_backlog_windows or settings.queue_windows,
                              modalities_of_topic=modalities_of_topic)
        self._joined = False
        self._state = "starting"
        self._fatal: BaseException | None = None
        #: The error the service is stopping on, and when (monotonic): a process whose cleanup then hangs can
        #: exit anyway (:func:`fusionstream.consumers.service.main.serve_until_stopped`).
        self.failure: BaseException | None = None
        self.failed_at: float | None = None
        # Exactly-once only: at least once, a frozen instance's late commit duplicates what it allows anyway.
        self._freezes = (FreezeWatch(freeze_threshold_s(options.session_timeout_ms, options.heartbeat_interval_ms))
                         if settings.exactly_once else None)
        self._consumer: AIOKafkaConsumer | None = None
        self._admin: AIOKafkaAdminClient | None = None
        self._pipeline: Pipeline | None = None
        self._publisher: Publisher | None = None
        self._committer: Committer | None = None
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self.metrics_port: int | None = None

    # -- lifecycle ------------------------------------------------------------------------------

    def stop(self) -> None:
        """Ask the service to stop gracefully (what SIGTERM and SIGINT do)."""
        self._stop.set()

    def health(self) -> tuple[bool, dict[str, Any]]:
        """(healthy, details) as /healthz reports it; safe to call from any thread."""
        return self._health()

    async def run(self) -> None:
        """Serve until :meth:`stop`; raises if the service had to stop on an error."""
        # /metrics and /healthz from the start: 503 "starting" while the broker is waited for (a liveness
        # probe found no port at all then, for up to broker_wait_s, and failed the instance).
        server = None
        if self.settings.metrics_port:
            server = MetricsServer(self.metrics.registry, self.health, self.settings.metrics_port,
                                   self.options.metrics_host or self.settings.metrics_host)
            server.start()
            self.metrics_port = server.port
        try:
            await self._serve()
        finally:
            if server is not None:
                server.stop()

    async def _serve(self) -> None:
        s = self.settings
        security = s.kafka_security()
        lower_routine_client_errors()
        # One call: each call that creates topics waits for their leaders to serve them.
        outputs = [t for t in (s.predictions_topic, s.deadletter_topic) if t not in self.input_topics]
        ready = asyncio.ensure_future(when_ready(
            lambda: ensure_topics(s.bootstrap_servers, [*self.input_topics, *outputs], s.partitions,
                                  security=security, any_partitions=outputs,  # outputs: any partition count
                                  create=s.create_topics, adopt=True),
            bootstrap=s.bootstrap_servers, security=security, wait_s=s.broker_wait_s,
        ))
        # SIGTERM while waiting for a broker stops now, not after broker_wait_s (an orchestrator's grace
        # period is shorter: it would SIGKILL the process).
        stopped = asyncio.ensure_future(self._stop.wait())
        await asyncio.wait([ready, stopped], return_when=asyncio.FIRST_COMPLETED)
        stopped.cancel()
        if not ready.done():
            ready.cancel()
            await asyncio.gather(ready, return_exceptions=True)
            log.info("stopped while waiting for the broker")
            return
        partitions = ready.result()
        if partitions != s.partitions:
            log.info("the input topics have %d partitions each (the partitions setting, %d, is for topics created "
                     "here): serving them as they are", partitions, s.partitions)

        client_id = f"{s.client_id}-{self.instance_id}"
        transactional_id = f"{s.group_id}.{self.instance_id}" if s.exactly_once else None
        async with AsyncExitStack() as stack:
            # Exactly-once: starting the transactional producer fences this instance's previous
            # incarnation and completes its open transaction, so committed offsets read below are stable.
            producer = make_producer(s.bootstrap_servers, client_id=client_id, transactional_id=transactional_id,
                                     **security)
            await producer.start()
            stack.push_async_callback(producer.stop)
            admin = make_admin(s.bootstrap_servers, security, client_id=client_id)
            await admin.start()
            stack.push_async_callback(admin.close)
            self._admin = admin

            pipeline = Pipeline(
                self._runner,
                self.window_config,
                max_batch=s.max_batch,
                max_delay_ms=s.max_delay_ms,
                queue_windows=s.queue_windows,
                decode_workers=s.decode_workers,
                speculate=s.speculate,
                clock=self._feeder.clock,
                on_admit=self.handover.admitted,
                on_unpredicted=self.handover.unpredicted,
            )
            self._pipeline = await stack.enter_async_context(pipeline)
            self.handover.bind(self._pipeline.aligner)
            self._gauges.reset()
            self._publisher = Publisher(
                producer, self.handover, self.metrics,
                predictions_topic=s.predictions_topic, deadletter_topic=s.deadletter_topic,
                transactional=s.exactly_once, group_id=s.group_id, on_acknowledged=self.options.on_acknowledged,
                freezes=self._freezes,
            )
            configs = await topic_settings(admin, [*self.input_topics, s.deadletter_topic])
            warn_of_compaction(configs, self.input_topics)
            others = await warn_of_other_services(admin, self.input_topics, s.group_id, s.predictions_topic)
            self._publisher.dead_letter_max_bytes = dead_letter_max_bytes(
                configs, s.deadletter_topic, self._publisher.dead_letter_max_bytes)

            consumer = make_consumer(
                bootstrap=s.bootstrap_servers,
                group_id=s.group_id,
                client_id=client_id,
                session_timeout_ms=self.options.session_timeout_ms,
                heartbeat_interval_ms=self.options.heartbeat_interval_ms,
                isolation_level="read_committed" if s.exactly_once else "read_uncommitted",
                fetch_min_bytes=self.options.fetch_min_bytes,
                fetch_max_wait_ms=self.options.fetch_max_wait_ms,
                group_instance_id=self.instance_id if self.options.static_membership else None,
                **security,
            )
            consumer.subscribe(topics=list(self.input_topics), listener=_Listener(self))
            self._consumer = consumer
            self._committer = Committer(
                self.handover, self._publisher, consumer, admin, self.metrics, group_id=s.group_id,
                exactly_once=s.exactly_once, visibility_timeout_s=self.options.visibility_timeout_s,
            )
            self._feeder.attach(consumer, self._pipeline, self._publisher)
            await consumer.start()
            stack.push_async_callback(self._stop_consumer)

            log.info(
                "serving %s -> %s on %s (group %s, instance %s, %s), model %s on %s",
                ", ".join(self.input_topics), s.predictions_topic, s.bootstrap_servers, s.group_id, self.instance_id,
                "exactly-once" if s.exactly_once else "at-least-once", model_title(self.spec), engine_title(s),
            )
            self._state = "running"
            self._tasks = {
                "consume": asyncio.create_task(self._feeder.consume(), name="fs-consume"),
                "publish": asyncio.create_task(self._publisher.run(self._pipeline), name="fs-publish"),
                "tick": asyncio.create_task(self._feeder.tick(), name="fs-tick"),
                "commit": asyncio.create_task(self._commit_loop(), name="fs-commit"),
                "gauges": asyncio.create_task(self._gauge_loop(), name="fs-gauges"),
                **({"freezes": asyncio.create_task(self._freezes.run(on_freeze=self._publisher.fence),
                                                   name="fs-freezes")} if self._freezes else {}),
                "others": asyncio.create_task(watch_other_services(admin, self.input_topics, s.group_id,
                                                                   s.predictions_topic, others), name="fs-others"),
                "outputs": asyncio.create_task(watch_outputs(admin, [s.predictions_topic, s.deadletter_topic],
                                                             self._publisher.stalled_for, self._publisher.fail,
                                                             create_topics=s.create_topics), name="fs-outputs"),
            }
            stop = asyncio.create_task(self._stop.wait(), name="fs-stop")
            failed = asyncio.create_task(self._publisher.failed.wait(), name="fs-failed")
            try:
                done, _ = await asyncio.wait(
                    {stop, failed, *self._tasks.values()}, return_when=asyncio.FIRST_COMPLETED
                )
                error = (self._fatal or self._publisher.failure or _task_error(self._tasks.values())
                         or self._pipeline.engine_failure())
                if error is None and stop not in done:
                    error = RuntimeError(f"task {[t.get_name() for t in done]} ended unexpectedly")
                if error is None:
                    try:
                        await self._shutdown()
                    except Exception as exc:  # e.g. the final commit refused or timed out: the watchdog's case too
                        self.failure, self.failed_at = exc, time.monotonic()
                        raise
                else:
                    self.failure, self.failed_at = error, time.monotonic()
                    log.error("stopping on an error: %r", error)
                    await self._abort()
                    raise error
            finally:
                stop.cancel()
                failed.cancel()
                await self._cancel_tasks()
                self._state = "stopped"
                self._update_health()

    async def _shutdown(self) -> None:
        """Graceful stop: stop fetching, publish every closed window, commit, leave the group."""
        assert self._pipeline is not None and self._publisher is not None
        self._state = "stopping"
        self._update_health()
        self._feeder.stopping = True
        # Neither task is interrupted mid-step (a cancelled enqueue would lose count of a window);
        # the consumer task may be cancelled only while it waits for records.
        consume = self._tasks["consume"]
        while not consume.done():
            if self._feeder.fetching:
                consume.cancel()
            await asyncio.wait({consume}, timeout=0.05)
        await asyncio.gather(self._tasks["tick"], self._tasks["commit"], self._tasks["gauges"])
        async with self._lock:
            await self._publish_closed_windows()
            try:
                await self._commit()
            except (CommitFailedError, IllegalStateError) as exc:
                # The group is rebalancing: the revocation already committed these partitions.
                log.warning("final commit skipped: %s", exc)
            except CommitTimedOut as exc:  # at least once: the next owner publishes those windows again
                log.warning("final commit failed: %s; the windows since the last commit are published again "
                            "after a restart", exc)
            await self._await_visible(self.handover.owned)
        await self._stop_consumer()
        await self._leave_group()
        await self._pipeline.close_output()
        await self._tasks["publish"]
        stats, replayed = self._pipeline.stats, self._feeder.replayed
        log.info(
            "stopped: %d records, %d predictions, %d dead letters%s%s",
            stats.records, stats.predictions, stats.dead_letters - replayed,
            f", {ignored} records ignored (unused modalities, interim transcript results, resent copies)"
            if (ignored := stats.records_ignored) else "",
            f", {replayed} re-read records an earlier run had handled" if replayed else "",
        )

    async def _abort(self) -> None:
        """After an error: commit what is safely published (at-least-once only), then stop."""
        self._feeder.stopping = True
        if self._publisher is None:
            return
        with suppress(Exception):
            if self.settings.exactly_once:
                await asyncio.wait_for(self._publisher.abort_transaction(), timeout=5)
            elif self._publisher.failure is None:
                await asyncio.wait_for(self._commit(), timeout=5)

    async def _stop_consumer(self) -> None:
        if self._consumer is not None:
            consumer, self._consumer = self._consumer, None
            await consumer.stop()

    async def _leave_group(self) -> None:
        """A static member stopping for good leaves explicitly (aiokafka does not, for static members): the
        others take its partitions now, not after the session timeout. A crash or an error exit skips this,
        so a restart under the same instance id takes its partitions straight back."""
        if not self.options.static_membership or self._admin is None:
            return
        try:
            await asyncio.wait_for(leave_group(self._admin, self.settings.group_id, self.instance_id), timeout=5)
            log.info("left group %s (static member %s)", self.settings.group_id, self.instance_id)
        except (KafkaError, TimeoutError) as exc:
            log.warning("could not leave group %s: %r; its partitions move after the session timeout",
                        self.settings.group_id, exc)

    async def _cancel_tasks(self) -> None:
        for task in self._tasks.values():
            task.cancel()
        await asyncio.gather(*self._tasks.values(), return_exceptions=True)

    # -- rebalances -----------------------------------------------------------------------------

    async def _on_revoked(self, revoked: set[TopicPartition]) -> None:
        self._feeder.revoking()
        if not revoked:
            return
        assert self._pipeline is not None
        async with self._lock:
            await self._publish_closed_windows()
            try:
                await self._commit()
            except (CommitFailedError, IllegalStateError) as exc:
                # This member was already dropped from the group: the next owner starts from the last
                # commit that went through and publishes the windows since then again (at-least-once).
                # aiokafka's CommitFailedError advises on poll intervals and batch sizes: beside the point here.
                why = "the group moved on without this instance (it stood still past its session?)" \
                    if isinstance(exc, CommitFailedError) else first_line(exc)
                log.warning("commit on revocation failed: %s; the next owner publishes the windows since the last "
                            "commit again", why)
            await self._await_visible(revoked)
            streams = self.handover.revoke(revoked)
            self._feeder.forget(revoked)
            self._gauges.forget(revoked)
        log.info("revoked %d partitions (%d streams handed over)", len(revoked), len(streams))

    async def _on_assigned(self, assigned: set[TopicPartition]) -> None:
        assert self._pipeline is not None and self._committer is not None
        self.metrics.rebalances.inc()
        self._check_copartitioned()
        async with self._lock:
            committed = await self._committer.read(assigned)
            resumed = self.handover.assign({tp: committed.get(tp) for tp in assigned})
            self._joined = True
            self._feeder.assigned()
        self._update_health()
        log.info(
            "assigned partitions %s of %s (%d streams resumed from checkpoints)",
            sorted({tp.partition for tp in assigned}), ", ".join(self.input_topics), resumed,
        )

    def _check_copartitioned(self) -> None:
        """Refuse input topics whose partition counts came to differ while serving (partitions added to one):
        a stream's video and its audio then hash to other partitions, other instances' maybe, and each published
        its own copy of the stream's windows (an outside operator's run: 633 windows twice). Checked at start too."""
        if self._consumer is not None:
            check_copartitioned(self._consumer._client.cluster, self.input_topics)

    # -- publishing and committing --------------------------------------------------------------

    async def _publish_closed_windows(self) -> None:
        """Wait until every closed window is predicted and every send acknowledged."""
        assert self._pipeline is not None and self._publisher is not None
        await self._pipeline.drain()
        await self._publisher.wait_done(self._pipeline.stats.predictions)
        await self._publisher.settle()

    async def _commit_loop(self) -> None:
        while True:
            await asyncio.sleep(self.options.commit_interval_s)
            if self._feeder.stopping:
                return  # the final commit is the shutdown's
            try:
                await self._commit()
            except (CommitFailedError, IllegalStateError) as exc:
                # A rebalance is under way; the revocation commits what this missed.
                log.debug("commit skipped: %s", exc)
            except KafkaError as exc:
                if self.settings.exactly_once:
                    raise
                log.warning("commit failed, retrying at the next interval: %s", exc)

    async def _gauge_loop(self) -> None:
        """The gauges and /healthz, refreshed on their own: after each commit they stood still for as long as
        a commit was stuck (10 s steps through a broker outage, an outside SRE found)."""
        while True:
            await asyncio.sleep(self.options.commit_interval_s)
            if self._feeder.stopping:
                return
            if self._consumer is not None and self._pipeline is not None:
                self._gauges.update(self._consumer, self._pipeline, self.handover, self._feeder.broker_silent_s())
            self._update_health()

    async def _commit(self) -> Offsets:
        assert self._committer is not None
        return await self._committer.commit()

    async def _await_visible(self, tps: Iterable[TopicPartition]) -> None:
        if self._committer is not None:
            await self._committer.await_visible(tps)

    # -- observability --------------------------------------------------------------------------

    def _update_health(self) -> None:
        publish, publisher = self._tasks.get("publish"), self._publisher
        engine_alive = publish is not None and not publish.done() and publisher is not None and not publisher.failure
        self._health.update(state=self._state, joined=self._joined, partitions={tp[1] for tp in self.handover.owned},
                            engine_alive=engine_alive, pipeline=self._pipeline,
                            broker_silent_s=self._feeder.broker_silent_s())

    def _fail(self, error: BaseException) -> None:
        log.error("fatal error in a rebalance callback: %r", error)
        self._fatal = self._fatal or error
        self._stop.set()


class _Listener(ConsumerRebalanceListener):
    """Hands partitions over cleanly: aiokafka awaits these before the group moves on."""

    def __init__(self, service: InferenceService) -> None:
        self._service = service

    async def on_partitions_revoked(self, revoked: Iterable[TopicPartition]) -> None:
        try:
            await self._service._on_revoked(set(revoked))
        except Exception as exc:  # aiokafka would only log it; the service must not go on
            self._service._fail(exc)

    async def on_partitions_assigned(self, assigned: Iterable[TopicPartition]) -> None:
        try:
            await self._service._on_assigned(set(assigned))
        except Exception as exc:
            self._service._fail(exc)


def _task_error(tasks: Iterable[asyncio.Task[None]]) -> BaseException | None:
    for task in tasks:
        if task.done() and not task.cancelled() and task.exception() is not None:
            return task.exception()
    return None


__all__ = ["InferenceService", "ServiceOptions"]
