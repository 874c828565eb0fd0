"""`fusionstream view`: the Kafka feed and the HTTP server in one event loop, until Ctrl-C or SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import time
from collections.abc import Callable, Iterable
from typing import Any

from fusionstream.consumers.settings import Settings
from fusionstream.consumers.viewer.feed import KafkaFeed
from fusionstream.consumers.viewer.state import ViewerState

log = logging.getLogger(__name__)

DEFAULT_PORT = 8090
DEFAULT_FPS = 5.0
DEFAULT_LOOKBACK_S = 30.0


async def serve_viewer(
    settings: Settings,
    *,
    host: str = "127.0.0.1",
    port: int = DEFAULT_PORT,
    fps: float = DEFAULT_FPS,
    lookback_s: float = DEFAULT_LOOKBACK_S,
    stream_ids: Iterable[str] | None = None,
    sync: bool = True,
    on_ready: Callable[[str], None] | None = None,
    stop: asyncio.Event | None = None,
) -> None:
    """Serve the viewer until ``stop`` is set (or SIGINT/SIGTERM); ``on_ready`` gets the page's URL.

    Raises :class:`~fusionstream.consumers.producers.errors.BrokerUnavailable` when no broker answers,
    and ``OSError`` when the address cannot be bound.
    """
    from aiohttp import web

    from fusionstream.consumers.kafka.readiness import when_ready
    from fusionstream.consumers.viewer.server import make_app

    state = ViewerState(stream_ids=stream_ids, sync=sync)
    feed = KafkaFeed(settings, state, lookback_s=lookback_s)
    # First, so an unreachable broker fails before a page promises anything; waited for as serve waits for it
    # (a viewer started beside its broker, as compose starts them, exited while the service waited).
    await when_ready(feed.start, bootstrap=settings.bootstrap_servers, security=settings.kafka_security(),
                     wait_s=settings.broker_wait_s)
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    installed = []
    for signum in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):  # not the main thread, or not Unix
            loop.add_signal_handler(signum, stop.set)
            installed.append(signum)

    def health() -> dict[str, Any]:
        return {"streams": len(state.streams), "assigned": feed.assignment(), "broker": feed.broker(time.monotonic()),
                "counts": state.counts, "ignored": state.ignored}

    config = {
        "bootstrap": settings.bootstrap_servers,
        "topics": {"video": settings.video_topic, "audio": settings.audio_topic, "text": settings.text_topic,
                   "predictions": settings.predictions_topic},
        "lookback_s": lookback_s,
        "sync": sync,
    }
    runner = web.AppRunner(make_app(state, fps=fps, health=health, config=config), access_log=None)
    feeding: asyncio.Task[None] | None = None
    try:
        await runner.setup()
        try:
            await web.TCPSite(runner, host, port).start()
        except socket.gaierror as exc:  # a host name or address that does not resolve: the host is wrong
            raise OSError(f"cannot serve the viewer on {host}:{port}: {exc.strerror or exc} (--host takes an "
                          "address of this machine, e.g. 127.0.0.1 or 0.0.0.0)") from exc
        except OSError as exc:
            reason = os.strerror(exc.errno).lower() if exc.errno else str(exc)
            raise OSError(f"cannot serve the viewer on {host}:{port}: {reason} (choose another with --port, or "
                          "--port 0 for any free one)") from exc
        bound = runner.addresses[0]
        url = f"http://{_url_host(host)}:{bound[1]}/"
        log.info("viewer on %s", url)
        if on_ready is not None:
            on_ready(url)
        feeding = asyncio.create_task(feed.run(), name="fs-view-feed")
        stopping = asyncio.create_task(stop.wait())
        await asyncio.wait({feeding, stopping}, return_when=asyncio.FIRST_COMPLETED)
        stopping.cancel()
        if feeding.done():
            feeding.result()  # the feed failed: raise its error
    finally:
        feed.stop()
        if feeding is not None and not feeding.done():
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(asyncio.shield(feeding), timeout=2.0)
            feeding.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await feeding
        await runner.cleanup()
        await feed.close()
        for signum in installed:
            loop.remove_signal_handler(signum)


def _url_host(host: str) -> str:
    if host in ("", "0.0.0.0", "::"):
        # Listening everywhere: its host name is what other machines use ("localhost" is no URL for them).
        return socket.gethostname() or "localhost"
    return f"[{host}]" if ":" in host else host


def run_viewer(settings: Settings, **options: Any) -> None:
    """Blocking :func:`serve_viewer` (see there for the options)."""
    asyncio.run(serve_viewer(settings, **options))


__all__ = ["DEFAULT_FPS", "DEFAULT_LOOKBACK_S", "DEFAULT_PORT", "run_viewer", "serve_viewer"]
