"""How busy the host was during a trial: its CPUs (``/proc/stat``) and its NVIDIA GPU (NVML).

Said beside a real-time trial so that a count that stops scaling says why: every core busy (more
processes cannot help), or the GPU busy (a faster engine or another GPU would), or neither (the
processes wait on each other). NVML comes with the driver (``nvidia-ml-py`` binds it); without it,
or without a GPU, the GPU figures are None and ``gpu_unavailable`` says why, as the CPU's are None
on a system without ``/proc/stat``.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass
from types import TracebackType
from typing import Any

SAMPLE_S = 0.2


def _cpu_times() -> tuple[int, int] | None:
    """(busy, total) jiffies of all CPUs together, or None without ``/proc/stat``."""
    try:
        with open("/proc/stat") as stat:
            fields = [int(x) for x in stat.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    # user nice system idle iowait irq softirq steal [guest guest_nice]: guest time is inside user already.
    fields = fields[:8]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return sum(fields) - idle, sum(fields)


def nvml_device(device: str) -> tuple[Any, str | None]:
    """The NVML handle of a CUDA device name (``cuda``, ``cuda:1``), or (None, why not).

    CUDA numbers the devices ``CUDA_VISIBLE_DEVICES`` shows; NVML numbers every device on the host: an
    index is mapped through that variable (entries are indices or ``GPU-…`` UUIDs)."""
    index = 0
    if ":" in device:
        try:
            index = int(device.split(":", 1)[1])
        except ValueError:
            return None, f"device {device!r} has no index NVML can use"
    try:
        import pynvml  # type: ignore[import-not-found]  # nvidia-ml-py, present where an NVIDIA driver is
    except ImportError:
        return None, "nvidia-ml-py (pynvml) is not installed"
    try:
        pynvml.nvmlInit()
        visible = [v.strip() for v in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if v.strip()]
        if index < len(visible):
            entry = visible[index]
            if entry.startswith(("GPU-", "MIG-")):
                return pynvml.nvmlDeviceGetHandleByUUID(entry), None
            return pynvml.nvmlDeviceGetHandleByIndex(int(entry)), None
        return pynvml.nvmlDeviceGetHandleByIndex(index), None
    except Exception as exc:  # no driver, no such device: no GPU figures, nothing else changes
        return None, f"NVML: {exc}"


@dataclass(frozen=True)
class _Sample:
    at: float  # wall clock, s
    cpu: tuple[int, int] | None
    gpu_util: int | None
    gpu_memory_mib: int | None


class HostLoad:
    """Samples the host's CPU jiffies and (given an NVML ``handle``) the GPU's utilisation and memory every
    0.2 s on a thread while in use. :meth:`figures` gives them over a span of wall-clock time: the
    measured part of a trial, not its start or its drain."""

    def __init__(self, handle: Any = None) -> None:
        self._handle = handle
        self._samples: list[_Sample] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> HostLoad:
        self._sample()
        self._thread = threading.Thread(target=self._run, name="host-load", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self._sample()

    def _run(self) -> None:
        while not self._stop.wait(SAMPLE_S):
            self._sample()

    def _sample(self) -> None:
        util = memory = None
        if self._handle is not None:
            try:
                import pynvml

                util = int(pynvml.nvmlDeviceGetUtilizationRates(self._handle).gpu)
                memory = int(pynvml.nvmlDeviceGetMemoryInfo(self._handle).used) >> 20
            except Exception:  # a driver hiccup loses one sample, not the trial
                pass
        self._samples.append(_Sample(time.time(), _cpu_times(), util, memory))

    def figures(self, since: float = 0.0, until: float = float("inf")) -> dict[str, float | None]:
        """Over the samples in [since, until] (wall clock; all of them by default): ``cpu_busy_pct`` (every
        core of the host, 100 = all busy), ``gpu_util_pct`` (the mean share of time a kernel ran),
        ``gpu_util_max_pct`` and ``gpu_memory_mib`` (the most used on the whole device)."""
        inside = [s for s in self._samples if since <= s.at <= until] or self._samples[-1:]
        cpus = [s.cpu for s in inside if s.cpu is not None]
        cpu = None
        if len(cpus) >= 2 and cpus[-1][1] > cpus[0][1]:
            cpu = round(100.0 * (cpus[-1][0] - cpus[0][0]) / (cpus[-1][1] - cpus[0][1]), 1)
        util = [s.gpu_util for s in inside if s.gpu_util is not None]
        memory = [s.gpu_memory_mib for s in inside if s.gpu_memory_mib is not None]
        return {"cpu_busy_pct": cpu, "gpu_util_pct": round(sum(util) / len(util), 1) if util else None,
                "gpu_util_max_pct": max(util) if util else None, "gpu_memory_mib": max(memory) if memory else None}


def uses_gpu(settings: Any) -> bool:
    """Whether the settings run the engine on an NVIDIA GPU (torch on cuda, or TensorRT)."""
    return str(settings.device).startswith("cuda") or settings.backend == "tensorrt"


__all__ = ["HostLoad", "nvml_device", "uses_gpu"]
