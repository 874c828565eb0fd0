"""How busy the host was during a trial: its CPUs (``/proc/stat``) and its NVIDIA GPU (NVML).

Said beside a real-time trial so that a count that stops scaling says why: every core busy (more
processes cannot help), or the GPU busy (a faster engine or another GPU would), or neither (the
processes wait on each other). NVML comes with the driver (``nvidia-ml-py`` binds it); without it,
or without a GPU, the GPU figures are None, as the CPU's are on a system without ``/proc/stat``.
"""

from __future__ import annotations

import threading
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
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return sum(fields) - idle, sum(fields)


def _nvml_handle(device_index: int) -> Any:
    try:
        import pynvml  # type: ignore[import-not-found]  # nvidia-ml-py, present where an NVIDIA driver is

        pynvml.nvmlInit()
        return pynvml.nvmlDeviceGetHandleByIndex(device_index)
    except Exception:  # no module, no driver, no such device: no GPU figures, nothing else changes
        return None


class HostLoad:
    """Samples the GPU's utilisation and memory every 0.2 s on a thread while in use; the CPU is read
    at the start and the end. ``figures()`` after the block: ``cpu_busy_pct`` (all cores, 100 = every
    core busy), ``gpu_util_pct`` (mean of the samples: the share of time a kernel ran), ``gpu_util_max_pct``
    and ``gpu_memory_mib`` (the most used)."""

    def __init__(self, gpu: bool, device_index: int = 0) -> None:
        self._handle = _nvml_handle(device_index) if gpu else None
        self._util: list[int] = []
        self._memory: list[int] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._cpu: tuple[tuple[int, int] | None, tuple[int, int] | None] = (None, None)

    def __enter__(self) -> HostLoad:
        self._cpu = (_cpu_times(), None)
        if self._handle is not None:
            self._thread = threading.Thread(target=self._sample, name="host-load", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self._cpu = (self._cpu[0], _cpu_times())

    def _sample(self) -> None:
        import pynvml

        while not self._stop.wait(SAMPLE_S):
            try:
                self._util.append(int(pynvml.nvmlDeviceGetUtilizationRates(self._handle).gpu))
                self._memory.append(int(pynvml.nvmlDeviceGetMemoryInfo(self._handle).used) >> 20)
            except Exception:  # a driver hiccup loses one sample, not the trial
                continue

    def figures(self) -> dict[str, float | None]:
        start, end = self._cpu
        cpu = None
        if start is not None and end is not None and end[1] > start[1]:
            cpu = round(100.0 * (end[0] - start[0]) / (end[1] - start[1]), 1)
        util = round(sum(self._util) / len(self._util), 1) if self._util else None
        return {"cpu_busy_pct": cpu, "gpu_util_pct": util,
                "gpu_util_max_pct": max(self._util) if self._util else None,
                "gpu_memory_mib": max(self._memory) if self._memory else None}


def uses_gpu(settings: Any) -> bool:
    """Whether the settings run the engine on an NVIDIA GPU (torch on cuda, or TensorRT)."""
    return str(settings.device).startswith("cuda") or settings.backend == "tensorrt"


__all__ = ["HostLoad", "uses_gpu"]
