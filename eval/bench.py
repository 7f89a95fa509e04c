"""Speed benchmark of every eval row (identity, the teacher at each K, each student, the 3D LUT)
and the first student's fast paths (bf16, torch.compile, ONNX Runtime, CUDA graphs), in one run.

    python -m eval.bench --config configs/demo.yaml                    # CPU here, CUDA where present
    python -m eval.bench --config configs/demo.yaml --sizes 1024 6000x4000 --repeats 5

For each row and size it prints p50 latency, images/s at batch 1 and peak memory (CUDA: max
allocated for that row; CPU: the process's peak resident set so far, a running maximum). At a square
size (e.g. 1024) the model runs at that size (codec + network, no transfer). At a photo size
(e.g. 6000x4000, 24 MP) it is the whole submission path: the working copy at the model's working
resolution, the network, and the full-resolution transfer to every pixel. It ends with the
ratios: student over the K-step teacher, and the fastest student path over eager.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from core.config import load_config
from core.models import load_model
from eval.throughput import device_name, measure_pipe


def bench_rows(cfg, device, fast_paths: bool = True) -> list[dict]:
    """The eval's rows (identity, teacher at each K, students, LUT) plus the first student's fast paths."""
    from eval.rows import load_models, model_pipe

    rows, _ = load_models(cfg, device)
    students = [r for r in rows if r["kind"] == "student"]
    if fast_paths and students:
        from student import fast_variants

        name = students[0]["name"]
        student = load_model(cfg.run_dir(name), device)
        for label, fn in fast_variants(student.net, device):
            rows.append({"name": f"{name} ({label})", "kind": "student",
                         "make_pipe": model_pipe(student.with_latent_fn(fn))})
    return rows


def parse_size(text: str) -> tuple[int, int]:
    w, _, h = text.partition("x")
    return int(w), int(h or w)


def test_image(w: int, h: int) -> np.ndarray:
    """A smooth gradient with fine texture, deterministic (content does not change the cost)."""
    g = np.random.default_rng(0)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    base = np.stack([xx / w, yy / h, 0.5 + 0 * xx], -1) * 0.8
    return np.clip(base + 0.05 * g.standard_normal((h, w, 3), dtype=np.float32), 0, 1)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", default="configs/demo.yaml")
    p.add_argument("--sizes", nargs="+", default=["1024", "6000x4000"])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--max-seconds", type=float, default=60.0)
    p.add_argument("--no-fast-paths", action="store_true")
    p.add_argument("--json", default=None, help="also write the figures to this file")
    p.add_argument("overrides", nargs="*")
    args = p.parse_intermixed_args(argv)
    cfg = load_config(args.config, args.overrides)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    rows = bench_rows(cfg, device, fast_paths=not args.no_fast_paths)
    results: dict = {"device": device_name(device), "torch": torch.__version__, "threads": torch.get_num_threads(),
                     "rows": {}}
    print(f"device: {results['device']}")
    print(f"{'row':<34} {'size':>10} {'p50 ms':>10} {'img/s':>8} {'peak MiB':>9}")
    for size in args.sizes:
        w, h = parse_size(size)
        square = "x" not in size
        img = test_image(w, h)
        if not square:  # a photo: 8-bit, through the uint8 photo path as enhance runs it
            img = np.round(img * 255).astype(np.uint8)
        for row in rows:
            # square: the model runs at this size (no transfer needed); photo: the submission's whole path
            pipe = row["make_pipe"](max(w, h), "none") if square else row["make_pipe"](cfg.data.val_long_side)
            entry = measure_pipe(pipe, img, device, warmup=1, repeats=args.repeats, max_seconds=args.max_seconds)
            results["rows"].setdefault(row["name"], {})[size] = entry
            print(f"{row['name']:<34} {size:>10} {entry['p50_ms']:>10.1f} {entry['images_per_s']:>8.2f} "
                  f"{entry['peak_mem_mib']:>9.0f}", flush=True)
    ratios = {}
    names = list(results["rows"])
    kinds = {r["name"]: r["kind"] for r in rows}
    teacher = max((n for n in names if kinds[n] == "teacher"), key=lambda n: int(n.split("=")[1]))
    eager = next(n for n in names if kinds[n] == "student")
    for size in args.sizes:
        t_ms = results["rows"][teacher][size]["p50_ms"]
        e_ms = results["rows"][eager][size]["p50_ms"]
        fastest = min((n for n in names if n.startswith(eager)), key=lambda n: results["rows"][n][size]["p50_ms"])
        f_ms = results["rows"][fastest][size]["p50_ms"]
        ratios[size] = {"student_over_teacher": t_ms / e_ms, "fastest_student": fastest,
                        "fastest_over_teacher": t_ms / f_ms, "fastest_over_eager": e_ms / f_ms}
        print(f"{size}: {eager} (eager) is {t_ms / e_ms:.1f}x faster than {teacher}; fastest path "
              f"'{fastest}' is {e_ms / f_ms:.2f}x faster than eager and {t_ms / f_ms:.1f}x faster than the teacher")
    results["ratios"] = ratios
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
