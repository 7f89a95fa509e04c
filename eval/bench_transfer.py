"""Speed of the full-resolution transfer (core/transfer.py) on this machine.

    python -m eval.bench_transfer [--size 6000x4000] [--working 1024] [--repeats 3] [--device cpu]

Fits the affine grid between a working-size input and an edited copy (long side --working),
then applies it to the full-size image; prints fit and apply time and MP/s of the full image.
"""
from __future__ import annotations

import argparse
import platform
import time

import torch
import torch.nn.functional as F

from core.transfer import DEFAULT_EPS, DEFAULT_GRID, apply_affine_grid, fit_affine_grid


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _timed(fn, device: torch.device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    result = fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return result, time.perf_counter() - start


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--size", default="6000x4000", help="full image WIDTHxHEIGHT")
    p.add_argument("--working", type=int, default=1024, help="working long side in pixels")
    p.add_argument("--grid", type=int, default=DEFAULT_GRID)
    p.add_argument("--eps", type=float, default=DEFAULT_EPS)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    args = p.parse_args(argv)
    try:
        width, height = (int(v) for v in args.size.lower().split("x"))
    except ValueError:
        p.error(f"--size {args.size!r} must be WIDTHxHEIGHT, e.g. 6000x4000")
    device = torch.device(args.device)

    gen = torch.Generator().manual_seed(0)
    full_in = torch.rand(1, 3, height, width, generator=gen).to(device)
    scale = args.working / max(width, height)
    work = (max(1, round(height * scale)), max(1, round(width * scale)))
    lo_in = F.interpolate(full_in, size=work, mode="bilinear", antialias=True, align_corners=False)
    white_balance = torch.tensor([1.05, 1.0, 0.92], device=device)[:, None, None]
    lo_out = (lo_in ** 0.8 * white_balance).clamp(0, 1)

    fit_s, apply_s = [], []
    for _ in range(args.repeats + 1):  # the first round is warm-up
        coeffs, t_fit = _timed(lambda: fit_affine_grid(lo_in, lo_out, args.grid, args.eps), device)
        _, t_apply = _timed(lambda c=coeffs: apply_affine_grid(full_in, c), device)
        fit_s.append(t_fit)
        apply_s.append(t_apply)
    fit_ms = 1000 * min(fit_s[1:])
    apply_ms = 1000 * min(apply_s[1:])
    mpix = width * height / 1e6
    result = {"size": f"{width}x{height}", "working": f"{work[1]}x{work[0]}", "grid": args.grid,
              "fit_ms": fit_ms, "apply_ms": apply_ms,
              "mp_per_s": mpix / ((fit_ms + apply_ms) / 1000),
              "threads": torch.get_num_threads(), "device": device_name(device)}
    print(f"transfer {result['size']} ({mpix:.1f} MP), working {result['working']}, "
          f"grid {args.grid}, best of {args.repeats} on {result['device']} "
          f"({result['threads']} torch threads)")
    print(f"  fit   {fit_ms:8.1f} ms\n  apply {apply_ms:8.1f} ms\n"
          f"  total {fit_ms + apply_ms:8.1f} ms = {result['mp_per_s']:.1f} MP/s")
    return result


if __name__ == "__main__":
    main()
