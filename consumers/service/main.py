"""`fusionstream serve`: run the inference service until SIGTERM or SIGINT."""

from __future__ import annotations

import asyncio
import logging
import signal

from fusionstream.consumers.engine import open_engine
from fusionstream.consumers.service.service import InferenceService, ServiceOptions
from fusionstream.consumers.settings import Settings

log = logging.getLogger(__name__)


def run_service(settings: Settings, *, instance_id: str | None = None) -> int:
    """Serve with the configured model; returns the process exit code (0 after a graceful stop)."""
    with open_engine(settings) as (runner, spec):
        service = InferenceService(settings, runner, spec, options=ServiceOptions(instance_id=instance_id))
        try:
            asyncio.run(_serve(service))
        except Exception:
            log.exception("the service stopped on an error")
            return 1
    return 0


async def _serve(service: InferenceService) -> None:
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
    try:
        await service.run()
    except asyncio.CancelledError:
        log.warning("aborted")
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)
