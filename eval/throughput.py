"""Latency and throughput, measured honestly: warm-up, device synchronisation, percentiles.

    stats = time_calls(fn, warmup=1, repeats=5, max_seconds=20)
    # {"p50_ms", "p95_ms", "mean_ms", "runs"}
"""

from __future__ import annotations

import platform
import resource
import time
from typing import Callable

import numpy as np
import torch


def synchronize(device: torch.device | str | None = None) -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def device_name(device: torch.device | str = "cpu") -> str:
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    cpu = platform.processor() or platform.machine()
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"CPU: {cpu} ({torch.get_num_threads()} threads)"


def time_calls(fn: Callable[[], object], warmup: int = 1, repeats: int = 5, max_seconds: float = 30.0) -> dict:
    """Time `fn()`; stops early (after at least one timed run) once `max_seconds` is spent."""
    for _ in range(warmup):
        fn()
    synchronize()
    times, start = [], time.perf_counter()
    for _ in range(max(1, repeats)):
        t0 = time.perf_counter()
        fn()
        synchronize()
        times.append((time.perf_counter() - t0) * 1e3)
        if time.perf_counter() - start > max_seconds:
            break
    arr = np.array(times)
    return {"p50_ms": float(np.percentile(arr, 50)), "p95_ms": float(np.percentile(arr, 95)),
            "mean_ms": float(arr.mean()), "runs": len(times)}


def peak_memory_mib(device: torch.device | str = "cpu") -> float:
    """CUDA: max allocated since the last reset; CPU: the process's peak resident set size."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def reset_peak_memory(device: torch.device | str = "cpu") -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
