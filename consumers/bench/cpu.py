"""CPU time per window: what ``fusionstream bench`` counts besides windows per second.

Wall-clock throughput on a shared 2-core machine mixes what a stage costs with what else runs
(the broker, other processes). CPU seconds of the stage's own process, divided by the windows it
made, is what the stage costs, whatever else the machine does; the issue's efficiency target is
set in it: engine CPU ms per window / Kafka service CPU ms per window.

Every stage runs in the bench process (the service included: its threads, ONNX Runtime's pool),
so ``time.process_time`` over the timed span is the right count. The broker is another process:
when the bootstrap address is on this machine, its process is found from the listening port
(``/proc/net/tcp*`` inode → the process holding that socket) and its ``utime + stime`` read from
``/proc/<pid>/stat`` before and after. A broker elsewhere (or behind ``docker-proxy``) is unknown:
reported as ``None`` with the reason, never guessed.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

#: Clock ticks per second of ``/proc/<pid>/stat``'s utime and stime (100 on Linux).
_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
#: ``/proc/net/tcp*`` state of a listening socket.
_LISTEN = "0A"
#: Processes that hold a broker's port without being the broker (Docker's port forwarding).
_FORWARDERS = frozenset({"docker-proxy", "rootlessport", "slirp4netns", "socat", "kubectl"})

PROC = Path("/proc")


def ms_per_window(cpu_s: float | None, windows: int) -> float | None:
    """CPU milliseconds per window (None when the CPU time is unknown or no window was made)."""
    if cpu_s is None or windows <= 0:
        return None
    return round(cpu_s * 1e3 / windows, 3)


def process_cpu_s(pid: int, proc: Path = PROC) -> float | None:
    """User + system CPU seconds of process ``pid`` (all its threads), or None when it cannot be read."""
    try:
        stat = (proc / str(pid) / "stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: the fields after it follow the last ')'.
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / _TICKS  # fields 14 and 15: utime, stime


@dataclass(frozen=True)
class Broker:
    """The broker's local processes, or why its CPU time cannot be counted here."""

    pids: tuple[int, ...] = ()
    names: tuple[str, ...] = ()
    unknown: str | None = None

    def cpu_s(self) -> float | None:
        """CPU seconds of the broker's processes so far (None when unknown or one has gone)."""
        if not self.pids:
            return None
        total = 0.0
        for pid in self.pids:
            seconds = process_cpu_s(pid)
            if seconds is None:
                return None
            total += seconds
        return total

    def describe(self) -> dict[str, object]:
        if self.unknown is not None:
            return {"local": False, "why_unknown": self.unknown}
        return {"local": True, "pids": list(self.pids), "process": ", ".join(sorted(set(self.names)))}


def find_broker(bootstrap: str, proc: Path = PROC) -> Broker:
    """The local processes listening on the bootstrap servers' ports; ``unknown`` says why not when any
    server is not on this machine (then the broker's CPU cannot be read here)."""
    pids: set[int] = set()
    for server in (s.strip() for s in bootstrap.split(",") if s.strip()):
        host, _, port_text = server.rpartition(":")
        host = host.strip("[]") or "localhost"
        try:
            port = int(port_text)
        except ValueError:
            return Broker(unknown=f"cannot read the port of {server!r}")
        if not _is_local(host):
            return Broker(unknown=f"{host} is not this machine")
        found = _pids_holding(_listening_inodes(port, proc), proc)
        if not found:
            return Broker(unknown=f"no process of this machine is seen listening on port {port}")
        pids |= found
    if not pids:
        return Broker(unknown="no bootstrap server")
    names = tuple(_name(pid, proc) for pid in sorted(pids))
    forwarded = sorted(set(names) & _FORWARDERS)
    if forwarded:
        return Broker(unknown=f"the port is forwarded by {', '.join(forwarded)} (the broker runs in a container)")
    return Broker(tuple(sorted(pids)), names)


def _is_local(host: str) -> bool:
    """Whether ``host`` names an address of this machine: loopback, or one a socket can bind to."""
    try:
        infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    except OSError:
        return False
    for family, _, _, _, address in infos:
        ip = ipaddress.ip_address(address[0].split("%", 1)[0])
        if ip.is_loopback:
            return True
        try:
            with socket.socket(family, socket.SOCK_DGRAM) as probe:
                probe.bind((address[0], 0))  # only an address of one of this machine's interfaces binds
            return True
        except OSError:
            continue
    return False


def _listening_inodes(port: int, proc: Path) -> set[int]:
    """Inodes of the TCP sockets listening on ``port`` (any address, IPv4 or IPv6)."""
    inodes: set[int] = set()
    for table in ("tcp", "tcp6"):
        try:
            lines = (proc / "net" / table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) > 9 and fields[3] == _LISTEN and int(fields[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(int(fields[9]))
    return inodes


def _pids_holding(inodes: Iterable[int], proc: Path) -> set[int]:
    """Processes with one of these sockets open (read from every process's ``fd`` links we may read)."""
    wanted = {f"socket:[{inode}]" for inode in inodes}
    if not wanted:
        return set()
    pids: set[int] = set()
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            for fd in (entry / "fd").iterdir():
                if os.readlink(fd) in wanted:
                    pids.add(int(entry.name))
                    break
        except OSError:  # gone meanwhile, or not ours to read
            continue
    return pids


def _name(pid: int, proc: Path) -> str:
    try:
        return (proc / str(pid) / "comm").read_text().strip()
    except OSError:
        return "?"


@dataclass
class CpuMeter:
    """CPU seconds of this process, and of the broker when it is local, between :meth:`start` and :meth:`stop`.

    ``stop`` may be called again: the span then ends at the latest call (the kafka stage stops it at
    every acknowledgement and keeps the span up to the last one it times).
    """

    broker: Broker = field(default_factory=Broker)
    _start: tuple[float, float | None] | None = None
    _stop: tuple[float, float | None] | None = None

    def start(self) -> None:
        self._start = (time.process_time(), self.broker.cpu_s())
        self._stop = None

    def stop(self) -> None:
        if self._start is not None:
            self._stop = (time.process_time(), self.broker.cpu_s())

    @property
    def started(self) -> bool:
        return self._start is not None

    @property
    def process_s(self) -> float | None:
        if self._start is None or self._stop is None:
            return None
        return self._stop[0] - self._start[0]

    @property
    def broker_s(self) -> float | None:
        if self._start is None or self._stop is None or self._start[1] is None or self._stop[1] is None:
            return None
        return self._stop[1] - self._start[1]


def efficiency(engine_ms: float | None, service_ms: float | None) -> float | None:
    """The engine stage's CPU ms per window over the service's: 1 when the service costs nothing beside
    the model (the issue's target is 0.75 or more)."""
    if not engine_ms or not service_ms:
        return None
    return round(engine_ms / service_ms, 3)
