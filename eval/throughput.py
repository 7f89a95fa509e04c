"""Latency and throughput, measured honestly: warm-up, device synchronisation, percentiles.

    stats = time_calls(fn, warmup=1, repeats=5, max_seconds=20)
    # {"p50_ms", "p95_ms", "mean_ms", "min_ms", "runs"}
    entry = measure_pipe(pipe, photo, device)     # one pipeline on one image: latency, parts, memory
    per_res = measure_row(row, cfg, photo, device)   # an eval row at every `eval.resolutions` key

The one home of the timer, the device's name and the measurement of a pipeline: eval/run.py,
eval/bench.py and eval/bench_transfer.py all use these.
"""

from __future__ import annotations

import platform
import resource
import time
from typing import Callable

import numpy as np
import torch

from core.images import resize, to_tensor


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
            "mean_ms": float(arr.mean()), "min_ms": float(arr.min()), "runs": len(times)}


def peak_memory_mib(device: torch.device | str = "cpu") -> float:
    """CUDA: max allocated since the last reset; CPU: the process's peak resident set size."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def reset_peak_memory(device: torch.device | str = "cpu") -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


PIPE_PARTS = ("resize_ms", "encode_ms", "model_ms", "decode_ms", "transfer_ms")  # what a pipeline's timings hold


def measure_pipe(pipe, img: np.ndarray, device, warmup: int = 1, repeats: int = 3, max_seconds: float = 30.0) -> dict:
    """`pipe(img)` timed: time_calls' stats, images_per_s, peak_mem_mib and the median of each part
    of `pipe.timings` (resize, encode, model, decode, transfer) over the timed runs."""
    reset_peak_memory(device)
    parts = []

    def run():
        pipe(img)
        parts.append(dict(pipe.timings))
    stats = time_calls(run, warmup=warmup, repeats=repeats, max_seconds=max_seconds)
    timed = parts[warmup:] or parts
    entry = {**stats, "images_per_s": 1000.0 / stats["p50_ms"], "peak_mem_mib": peak_memory_mib(device)}
    for key in PIPE_PARTS:
        entry[key] = float(np.median([p[key] for p in timed]))
    return entry


def square_input(rgb: np.ndarray, w: int, h: int | None = None) -> np.ndarray:
    return resize(rgb, (w, h or w))


def measure_input(res: str, photo: np.ndarray, working_long_side: int) -> tuple[np.ndarray, int]:
    """(image, working long side) for a resolution key of `eval.resolutions`:
    "N": an NxN image with the model run AT N (the transfer still runs, as a guided filter);
    "native": the evaluation photo through the submission path (model at the working size + transfer);
    "photo-N" / "photo-WxH": an image of that size through the submission path (what a user's 1 MP or
    24 MP photo costs)."""
    if res == "native":
        return photo, working_long_side
    if res.startswith("photo-"):
        w, _, h = res[len("photo-"):].partition("x")
        return square_input(photo, int(w), int(h or w)), working_long_side
    return square_input(photo, int(res)), int(res)


def measure_row(row, cfg, photo: np.ndarray, device) -> dict:
    """Latency of the whole path (codec + model + transfer) per resolution, with its parts apart."""
    e = cfg.eval
    out = {}
    for res in e.resolutions:
        img, long_side = measure_input(res, photo, cfg.data.val_long_side)
        if res.startswith("photo-"):  # a user's 8-bit photo: the uint8 photo path (core/pipeline.py)
            img = np.round(np.clip(img, 0, 1) * 255).astype(np.uint8)
        pipe = row["make_pipe"](long_side)
        entry = {"size": f"{img.shape[1]}x{img.shape[0]}", "working_size": None,
                 **measure_pipe(pipe, img, device, e.warmup, e.repeats, e.max_seconds_per_measure)}
        lo = pipe.working_copy(img)
        entry["working_size"] = f"{lo.shape[1]}x{lo.shape[0]}"
        # best batch at the working size (model path only: the transfer is per photo)
        if row.get("has_model", True) and res.isdigit():
            best = None
            for b in e.batch_sizes:
                x = to_tensor(lo)[None].repeat(b, 1, 1, 1)
                s = time_calls(lambda x=x: pipe.edit_working(x), warmup=1 if b > 1 else 0, repeats=2,
                               max_seconds=e.max_seconds_per_measure)
                ips = b * 1000.0 / s["p50_ms"]
                if best is None or ips > best["images_per_s"]:
                    best = {"batch": b, "images_per_s": ips}
            entry["best_batch"] = best
        out[res] = entry
    return out
