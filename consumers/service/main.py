"""`fusionstream serve`: run the inference service until SIGTERM or SIGINT.

The service logs to stdout. stderr carries only what ends the process: a failure the
user has to fix (no broker within ``broker_wait_s``, refused authentication, topics it
may not create, window settings that disagree with the model, a bad model directory)
is one line there and exit status 1, never a traceback. A traceback is kept for what
is not the user's doing (a bug).
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable

from aiokafka.errors import (
    AuthenticationFailedError,
    ClusterAuthorizationFailedError,
    GroupAuthorizationFailedError,
    KafkaError,
    TopicAuthorizationFailedError,
    TransactionalIdAuthorizationFailed,
)

from fusionstream.consumers.cli_errors import describe, print_error
from fusionstream.consumers.engine import load_model, open_engine
from fusionstream.consumers.kafka.admin import TopicLayoutError
from fusionstream.consumers.kafka.errors import BrokerAuthError, MissingTopicsError
from fusionstream.consumers.service.service import InferenceService, ServiceOptions
from fusionstream.consumers.settings import ModelWindowMismatch, Settings
from fusionstream.engines.errors import BackendUnavailable, EngineError, ModelDirError
from fusionstream.stream.errors import FusionStreamError

log = logging.getLogger(__name__)


class AbortedStop(FusionStreamError):
    """A second SIGTERM/SIGINT cut the graceful stop short: exit status 1, so that an operator (or a supervisor,
    or ``restart: on-failure``) can tell it from a clean stop."""

#: Failures that are the setup's, not the code's: reported as one line, without a traceback.
USER_ERRORS: tuple[type[Exception], ...] = (FusionStreamError, EngineError, KafkaError)

#: The setup failures that no restart mends: a refused login or ACL, topics missing or laid out wrongly, a
#: window or model that cannot serve. A supervised worker exits with ``worker.REFUSED_STATUS`` on them, and a
#: supervisor whose workers have not served yet stops the host with the one line instead of restarting them.
#: (A broker that does not answer is not among them: it may be starting.)
REFUSALS: tuple[type[Exception], ...] = (
    BrokerAuthError, MissingTopicsError, TopicLayoutError, ModelWindowMismatch, ModelDirError, BackendUnavailable,
    AuthenticationFailedError, ClusterAuthorizationFailedError, GroupAuthorizationFailedError,
    TopicAuthorizationFailedError, TransactionalIdAuthorizationFailed,
)


def run_service(settings: Settings, *, instance_id: str | None = None) -> int:
    """Serve with the configured model; returns the process exit code (0 after a graceful stop).

    An explicit ``instance_id`` (``--instance-id``, ``FUSIONSTREAM_INSTANCE_ID``) also makes this instance a
    static member of the group, so a restart takes its partitions straight back; the default, the host name,
    does not (two plain instances on one host would share it and fence each other).
    """
    logs_to_stdout()

    def serve() -> None:
        # Before the engine loads (a TensorRT build takes minutes), and before waiting for a broker.
        settings.check_model_windows(load_model(settings.model_dir))
        with open_engine(settings) as (runner, spec):
            options = ServiceOptions(instance_id=instance_id, static_membership=instance_id is not None)
            service = InferenceService(settings, runner, spec, options=options)
            asyncio.run(serve_until_stopped(service))

    return exit_status("the service", serve)


#: What a process that ran out of memory says instead of a traceback through whichever allocation failed.
OUT_OF_MEMORY = (
    "out of memory (a limit on address space, such as `ulimit -v` or `prlimit --as`, counts the ~1 GB a worker "
    "reserves but does not use: limit resident memory with a cgroup instead; see docs/operations.md, "
    "'Small boxes')"
)


def out_of_memory(exc: BaseException) -> bool:
    """A failed allocation: Python's (numpy's too) MemoryError, or ONNX Runtime's C++ ``bad_alloc``, also as
    the cause of another error."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, MemoryError) or "bad_alloc" in str(current) \
                or "Failed to allocate memory" in str(current):
            return True
        current = current.__cause__ or current.__context__
    return False


def exit_status(what: str, body: Callable[[], None], tag: Callable[[], str] | None = None,
                refused_status: int = 1) -> int:
    """Run ``body``; 0 when it returns, 1 when it raises: a setup failure (:data:`USER_ERRORS`) as one line
    on stderr (``[tag()]`` first, a worker's instance id), anything else (a bug) logged with its traceback.
    One of the :data:`REFUSALS` exits with ``refused_status`` (a supervised worker's ``REFUSED_STATUS``)."""
    try:
        body()
    except USER_ERRORS as exc:
        print_error((f"[{tag()}] " if tag is not None else "") + describe(exc))
        return refused_status if isinstance(exc, REFUSALS) else 1
    except Exception as exc:
        if out_of_memory(exc):
            print_error((f"[{tag()}] " if tag is not None else "") + OUT_OF_MEMORY)
            return 1
        log.exception("%s stopped on an error", what)
        return 1
    return 0


def logs_to_stdout() -> None:
    """Move the root logger's stderr handler (``logging.basicConfig``'s) to stdout."""
    for handler in logging.getLogger().handlers:
        if type(handler) is logging.StreamHandler and handler.stream is sys.stderr:
            handler.setStream(sys.stdout)


async def serve_until_stopped(service: InferenceService,
                              on_start: Callable[[InferenceService], None] | None = None,
                              tag: Callable[[], str] | None = None) -> None:
    """Run ``service`` until SIGTERM/SIGINT (graceful; a second one aborts); ``on_start`` runs first, on the loop."""
    loop = asyncio.get_running_loop()
    main = asyncio.current_task()
    signals = 0

    def on_signal(signum: int) -> None:
        nonlocal signals
        signals += 1
        if signals == 1:
            log.info("%s: stopping (publishing closed windows and committing; again to abort)",
                     signal.Signals(signum).name)
            service.stop()
        elif main is not None:
            log.warning("second signal: aborting without a final commit")
            main.cancel()

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal, signum)
    exit_if_cleanup_hangs(service, tag=tag)
    if on_start is not None:
        on_start(service)
    try:
        await service.run()
    except asyncio.CancelledError:
        log.warning("aborted")
        if service.failure is not None:
            # Cancelled while stopping on an error: the error is why it stopped (status 1, its one line on
            # stderr), or a supervisor or `restart: on-failure` would take it for a clean exit.
            raise service.failure from None
        if signals > 1:
            raise AbortedStop("aborted by a second signal: closed windows not published and offsets not committed "
                              "since the last commit; the next start re-reads from it") from None
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)


#: After a fatal error, how long the cleanup (aborting, closing the clients) may take before the process
#: exits anyway: a client that waits on a broker that lost its data never returns, and a process that
#: neither serves nor exits is restarted by nobody.
ERROR_EXIT_S = 15.0


def exit_if_cleanup_hangs(service: InferenceService, after_s: float = ERROR_EXIT_S,
                          tag: Callable[[], str] | None = None) -> None:
    """Watch, from a thread, for ``service`` stopping on an error and still running ``after_s`` later: then
    print the error as one line (as a clean exit would, ``[tag()]`` first) and end the process with status 1."""

    def watch() -> None:
        while True:
            time.sleep(0.5)
            failed_at = service.failed_at
            if failed_at is not None and time.monotonic() - failed_at > after_s:
                log.error("still stopping %g s after the error; exiting without finishing the cleanup", after_s)
                reason = str(service.failure) or repr(service.failure)
                print_error((f"[{tag()}] " if tag is not None else "") + reason)
                for handler in logging.getLogger().handlers:
                    handler.flush()
                os._exit(1)

    threading.Thread(target=watch, name="fs-exit-watch", daemon=True).start()
