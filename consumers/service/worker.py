"""One supervised worker of `fusionstream serve --workers N`: ``python -m fusionstream.consumers.service.worker``.

The supervisor (:mod:`fusionstream.consumers.service.supervisor`) talks to it over its stdin, two JSON lines:

1. ``{"settings": {...}, "ready_fd": n}``: the worker imports the service, loads the model and opens
   the engine (seconds: most of what a restart would pay), then writes ``ready`` to the pipe ``n``;
2. ``{"instance_id": "...", "metrics_port": N}``: it starts serving under that name, a static member of
   the group, with /metrics and /healthz on 127.0.0.1:N for the supervisor to read.

Between the two it waits warm: the supervisor keeps one such standby, and hands it the slot of a worker
that died, so a crash costs a group rejoin rather than a process start. When stdin closes (the supervisor
is gone, however it went), a serving worker stops gracefully; a standby just exits. SIGTERM/SIGINT stop it
as they stop `fusionstream serve`. Exit status as ``serve``'s: 0 after a graceful stop, 1 on an error; 3 on a
setup failure no restart mends (``main.REFUSALS``: a refused login, missing topics, a window the model refuses).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
import threading
from contextlib import suppress
from typing import Any

from fusionstream.consumers.settings import Settings

log = logging.getLogger(__name__)

#: The exit status of a setup failure that no restart mends (``main.REFUSALS``).
REFUSED_STATUS = 3

#: The log format of ``serve``, with the worker's instance id, so the host's interleaved logs stay readable.
LOG_FORMAT = "%(asctime)s %(levelname)s [{name}] %(name)s: %(message)s"


def settings_line(settings: Settings, *, ready_fd: int | None = None, **overrides: Any) -> str:
    """The first stdin line: every setting given (with ``overrides``), secrets included (a pipe, not argv or
    the environment, so ``ps`` and ``/proc/<pid>/environ`` never show them), and the readiness pipe. Only
    those set, so that the worker's defaults stay defaults: an unset window is the model's."""
    values = settings.model_dump(mode="json", exclude_unset=True)
    if settings.sasl_password is not None:
        values["sasl_password"] = settings.sasl_password.get_secret_value()
    return json.dumps({"settings": values | overrides, "ready_fd": ready_fd}) + "\n"


def main() -> int:
    first = sys.stdin.readline()
    if not first:
        return 0  # the supervisor went before sending anything
    setup = json.loads(first)
    settings = Settings(**setup["settings"])
    logging.basicConfig(level=settings.log_level, format=LOG_FORMAT.format(name="standby"), stream=sys.stdout)

    # The imports and the engine are what a cold start spends its seconds on: paid here, before a slot.
    from fusionstream.consumers.engine import load_model, open_engine
    from fusionstream.consumers.service.main import exit_status, serve_until_stopped
    from fusionstream.consumers.service.options import ServiceOptions
    from fusionstream.consumers.service.service import InferenceService

    #: How the worker's lines are tagged: ``standby`` until a slot gives it an instance id.
    name = ["standby"]

    def serve() -> None:
        settings.check_model_windows(load_model(settings.model_dir))
        with open_engine(settings) as (runner, spec):
            _say_ready(setup.get("ready_fd"))
            line = sys.stdin.readline()
            if not line:
                return  # a standby no longer needed
            slot = json.loads(line)
            instance_id = name[0] = str(slot["instance_id"])
            for handler in logging.getLogger().handlers:
                handler.setFormatter(logging.Formatter(LOG_FORMAT.format(name=instance_id)))
            options = ServiceOptions(instance_id=instance_id, static_membership=True, metrics_host="127.0.0.1")
            service = InferenceService(settings.model_copy(update={"metrics_port": int(slot["metrics_port"])}),
                                       runner, spec, options=options)
            asyncio.run(serve_until_stopped(service, on_start=_stop_when_stdin_closes, tag=lambda: name[0]))

    return exit_status("the worker", serve, tag=lambda: name[0], refused_status=REFUSED_STATUS)


def _say_ready(fd: int | None) -> None:
    """Tell the supervisor the engine is open (its /healthz shows whether the standby is warm yet)."""
    if fd is not None:
        with suppress(OSError):
            os.write(fd, b"ready\n")
        with suppress(OSError):
            os.close(fd)


def _stop_when_stdin_closes(service: Any) -> None:
    """A worker outlives no supervisor: when the pipe closes (even after ``kill -9`` of the supervisor),
    stop gracefully, as on SIGTERM."""
    loop = asyncio.get_running_loop()

    def watch() -> None:
        while sys.stdin.readline():
            pass
        with suppress(RuntimeError):  # the loop already closed: the service stopped on its own
            loop.call_soon_threadsafe(service.stop)

    threading.Thread(target=watch, name="fs-supervisor-pipe", daemon=True).start()


if __name__ == "__main__":
    sys.exit(main())
