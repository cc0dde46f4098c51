"""Wall-clock timing and a description of the machine, for benchmarks/ and the speed examples.

Numbers measured with these helpers go into docs/ with the machine they came from; nothing
in the tests depends on them.
"""
from __future__ import annotations

import datetime
import os
import platform
import time

import torch

__all__ = ["synchronize", "call_times", "machine"]


def synchronize(device=None) -> None:
    """Wait for queued GPU work (a no-op on the CPU), so that a timer sees finished calls."""
    device = torch.device(device) if device is not None else None
    if device is not None and device.type == "cuda":
        torch.cuda.synchronize(device)


def call_times(fn, repeats: int = 3, device=None, budget: float | None = None, min_seconds: float = 0.0,
               max_calls: int = 20, warmup: bool = True) -> list[float]:
    """Seconds of each of several calls of ``fn()``.

    Args:
        fn: the call to time.
        repeats: timed calls at least (fewer only when ``budget`` runs out).
        device: synchronised after each call (CUDA work is asynchronous).
        budget: stop after the call that brings the total above this many seconds (large, slow
            cases stay affordable).
        min_seconds, max_calls: keep calling past ``repeats`` until the total reaches
            ``min_seconds`` or ``max_calls`` calls are made (fast cases get a stable minimum).
        warmup: make one untimed call first (caches, lazily built tables, CUDA kernels).

    Returns:
        One duration per timed call; take the minimum on a shared machine (the least disturbed
        call) or the median.
    """
    if warmup:
        fn()
        synchronize(device)
    times = []
    while len(times) < repeats or (sum(times) < min_seconds and len(times) < max_calls):
        start = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - start)
        if budget is not None and sum(times) > budget:
            break
    return times


def machine(device=None) -> dict:
    """Where a measurement ran: processor (or GPU), cores, torch threads, load average, versions, date."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    info = {"cpu": cpu, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "load_average": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
            "torch": torch.__version__, "python": platform.python_version(),
            "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}
    device = torch.device(device) if device is not None else None
    if device is not None and device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info
