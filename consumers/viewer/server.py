"""The viewer's HTTP side (aiohttp): the page, a Server-Sent Events stream of per-stream updates, the frames.

``/events`` sends each client at most ``fps`` updates per stream per second, each the
stream's *latest* state, so a slow browser skips updates instead of queueing them; it
fetches a frame (``/frame?stream=ID``) only when the update says a newer one exists.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Awaitable, Callable
from importlib import resources
from typing import Any

from aiohttp import web

from fusionstream.consumers.viewer.state import ViewerState, to_jpeg
from fusionstream.stream.records import Encoding

log = logging.getLogger(__name__)

STATIC = ("page.html", "page.js", "page.css")
_CONTENT_TYPES = {".html": "text/html", ".js": "text/javascript", ".css": "text/css"}
#: A comment line this often keeps proxies from closing an idle stream, and finds closed clients.
HEARTBEAT_S = 10.0

STATE_KEY = web.AppKey("state", ViewerState)
CLOSING_KEY = web.AppKey("closing", asyncio.Event)
HEALTH_KEY = web.AppKey("health", Callable[[], dict[str, Any]])
CONFIG_KEY = web.AppKey("config", dict)


def make_app(state: ViewerState, *, fps: float, health: Callable[[], dict[str, Any]],
             config: dict[str, Any]) -> web.Application:
    """The viewer's application; ``config`` (topics, fps, ...) is sent to each page when it connects."""
    app = web.Application()
    app[STATE_KEY] = state
    app[CLOSING_KEY] = asyncio.Event()
    app[HEALTH_KEY] = health
    app[CONFIG_KEY] = {**config, "fps": fps}
    files = resources.files("fusionstream.consumers.viewer") / "static"
    pages = {name: (files / name).read_bytes() for name in STATIC}

    def static(name: str) -> Callable[[web.Request], Awaitable[web.Response]]:
        async def handler(request: web.Request) -> web.Response:
            return web.Response(body=pages[name], content_type=_CONTENT_TYPES[name[name.rfind("."):]],
                                headers={"Cache-Control": "no-cache"})

        return handler

    app.router.add_get("/", static("page.html"))
    for name in STATIC[1:]:
        app.router.add_get(f"/{name}", static(name))
    app.router.add_get("/events", events)
    app.router.add_get("/frame", frame)
    app.router.add_get("/api/state", api_state)
    app.router.add_get("/healthz", healthz)
    app.on_shutdown.append(_close_streams)
    return app


async def _close_streams(app: web.Application) -> None:
    # Open event streams never end by themselves; without this, shutdown waits for its timeout.
    app[CLOSING_KEY].set()


async def events(request: web.Request) -> web.StreamResponse:
    """Server-Sent Events: ``hello`` (config), then ``stream`` updates (throttled) and ``gone`` removals."""
    app = request.app
    state, closing = app[STATE_KEY], app[CLOSING_KEY]
    period = 1.0 / app[CONFIG_KEY]["fps"]
    response = web.StreamResponse(headers={
        "Content-Type": "text/event-stream", "Cache-Control": "no-cache", "X-Accel-Buffering": "no",
    })  # fmt: skip
    await response.prepare(request)
    sent: dict[str, tuple[int, int]] = {}  # stream -> (version, timeline n) this client has
    seen_version = -1
    beat_at = time.monotonic()
    try:
        await _send(response, "hello", app[CONFIG_KEY])
        while not closing.is_set():
            if state.version != seen_version:
                seen_version = state.version
                now = time.monotonic()
                for stream_id in sorted(state.streams):
                    view = state.streams[stream_id]
                    have = sent.get(stream_id)
                    if have is not None and have[0] == view.version:
                        continue
                    update = state.snapshot(stream_id, now, since=have[1] if have else 0)
                    if update is not None:
                        sent[stream_id] = (view.version, view.predictions_seen)
                        await _send(response, "stream", update)
                for stream_id in [s for s in sent if s not in state.streams]:
                    del sent[stream_id]
                    await _send(response, "gone", {"stream": stream_id})
                beat_at = time.monotonic()
            elif time.monotonic() - beat_at >= HEARTBEAT_S:
                await response.write(b": ping\n\n")
                beat_at = time.monotonic()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(closing.wait(), timeout=period)
    except ConnectionError:
        pass  # the page was closed or reloaded
    return response


async def _send(response: web.StreamResponse, event: str, data: Any) -> None:
    payload = json.dumps(data, separators=(",", ":"))
    await response.write(f"event: {event}\ndata: {payload}\n\n".encode())


async def frame(request: web.Request) -> web.Response:
    """Frame ``?seq=N`` of ``?stream=ID`` as a JPEG (the one to show now if N is gone); 404 if none.

    Its number is in ``X-Frame-Seq``.
    """
    state = request.app[STATE_KEY]
    stream_id = request.query.get("stream", "")
    try:
        number = int(request.query["seq"]) if "seq" in request.query else None
    except ValueError:
        raise web.HTTPBadRequest(text="seq must be an integer\n") from None
    found = state.frame(stream_id, number)
    if found is None:
        raise web.HTTPNotFound(text=f"no frame of stream {stream_id!r} yet\n")
    seq, record = found
    # Raw frames are JPEG-encoded in a thread: milliseconds the event loop must not spend.
    jpeg = record.payload if record.encoding is Encoding.JPEG else await asyncio.to_thread(to_jpeg, record)
    return web.Response(body=jpeg, content_type="image/jpeg",
                        headers={"Cache-Control": "no-store", "X-Frame-Seq": str(seq)})


async def api_state(request: web.Request) -> web.Response:
    """Every stream's current state, timeline included, as JSON (what the page would draw)."""
    state = request.app[STATE_KEY]
    now = time.monotonic()
    streams = [state.snapshot(sid, now) for sid in sorted(state.streams)]
    return web.json_response({"streams": streams, "counts": state.counts, "ignored": state.ignored})


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok", **request.app[HEALTH_KEY]()})


__all__ = ["make_app"]
