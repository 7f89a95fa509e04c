"""Throughput of `student.enhance` on a folder of 24 MP JPEGs, against a memory copy of the same bytes.

    python -m eval.bench_enhance                          # 4 photos of 6000x4000, identity, student, LUT
    python -m eval.bench_enhance --n 8 --model runs/demo/student --batch-size 1 --json bench.json

1. Makes (once, in --folder) N real-looking photos: the demo's package photos (core.demo) upscaled
   to --size with fine detail and sensor noise added, saved as JPEG quality 92 with EXIF.
2. For each row (identity; a freshly initialised student built from --config, with a colour prior
   when the config has one (prior.kind: curve), as a trained student has; a freshly
   initialised 3D LUT; each --model) runs enhance's own loop on the folder (decode and encode in
   --workers threads, overlapped with the compute) and prints photos/s and ms per part: decode,
   working copy, model (codec + network), transfer (fit + apply), encode.
3. Then, --batch-size photos at a time (as enhance edits them), it times the path without decode
   and encode (the uint8 photos on the device in, uint8 out: pipe.edit_batch on the list of photos,
   their working copies through the network together) and a reference: one copy of each photo's
   uint8 bytes into a preallocated tensor of the same size (`Tensor.copy_`), just before it; both
   per photo. Their ratio reads as the distance to the memory-bandwidth limit (p50 of --repeats
   rounds). Each round times every row in turn, so the rows and their ratios (the LUT's path over
   the student's too) come from the same stretch of the machine's time. The float path (what
   enhance ran before the uint8 path) is timed after them, photo by photo: the before/after.
No trained model is needed: a fresh student costs what a trained one of that architecture
costs. Other processes on the machine move the absolute figures; the ratios are from one run.
"""
from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from core.batch import PARTS, enhance_files, plan
from core.codecs import build_codec
from core.config import load_config
from core.demo import PHOTOS, photo_path
from core.images import find_photos, load_photo
from core.models import load_model
from core.pipeline import EditPipeline, photo_tensor
from core.prior import ColourPrior
from eval.throughput import device_name, synchronize


def make_photos(folder: Path, n: int, w: int, h: int, seed: int = 0) -> list[Path]:
    """N JPEGs of w x h in `folder` (kept: a second run reuses them): package photos upscaled,
    with 1-2 px detail and noise so the encoder and decoder work as on a real photo."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        path = folder / f"photo_{i:03d}.jpg"
        paths.append(path)
        if path.exists():
            continue
        src = Image.open(photo_path(PHOTOS[i % len(PHOTOS)])).convert("RGB")
        big = np.asarray(src.resize((w, h), Image.BICUBIC), dtype=np.int16)
        detail = rng.normal(0, 6, (h // 2, w // 2, 1)).astype(np.int16).repeat(2, 0).repeat(2, 1)
        noise = rng.normal(0, 2.5, (h, w, 3)).astype(np.int16)
        photo = Image.fromarray(np.clip(big + detail + noise, 0, 255).astype(np.uint8))
        exif = Image.Exif()
        exif[0x010F] = "bench_enhance"  # Make: every output should carry it back
        photo.save(path, quality=92, exif=exif)
    return paths


def demo_rows(cfg, device) -> list[tuple[str, object]]:
    """(name, pipeline) for identity, a fresh student and a fresh LUT, as the demo config builds them."""
    from dataclasses import asdict

    from core.models import LoadedModel, serving_manifest
    from lut import AdaptiveLUT
    from student import Student

    codec = build_codec(cfg.codec).to(device)
    student = Student.from_config(cfg.student, codec.channels).eval()
    with torch.no_grad():  # not the identity: a trained student's cost, a visible edit
        student.net.conv_out.weight.normal_(0, 1e-3)
    manifest = {"kind": "student", **serving_manifest(cfg, asdict(cfg.codec))}
    prior = None
    if cfg.prior.kind == "curve":  # as trained: its tone curves on every full-size pixel, the rest through the grid
        x = torch.rand(3, 64, 64, generator=torch.Generator().manual_seed(0))
        prior = ColourPrior.fit([(x, x ** 0.8)], cfg.prior.ridge).to(device)
    model = LoadedModel(net=student.to(device), manifest=manifest, codec=codec, device=torch.device(device),
                        prior=prior)
    identity = EditPipeline(None, model.working_long_side, model.transfer, model.transfer_grid, device,
                            model.size_multiple)
    lut = cfg.lut
    return [("identity", identity), ("student (fresh, demo config)", model.pipeline()),
            ("3D LUT (fresh, demo config)", AdaptiveLUT(lut.num_basis, lut.size, lut.cnn_size).eval()
             .to(device).full_resolution_pipeline(device))]


def model_row(path: str, device) -> tuple[str, object]:
    return path, load_model(path, device).pipeline()


def time_rows(pipes: dict, photos: list[Path], device, repeats: int, batch_size: int = 1) -> dict:
    """For each named pipeline: p50 ms per photo of pipe.edit_batch (uint8 on the device in and out) on
    `batch_size` photos of one size at a time (a list of the decoded photos, as enhance passes them),
    and of one uint8 copy of each of those photos, timed just before it; every round times every row
    in turn, so all rows and their copies see the same machine (its other load moves them together).
    Then the float path that enhance ran before the uint8 one (the photo as float32, the float
    pipeline, back to uint8: `before_ms`) and how far the uint8 path's photo is from it (largest
    difference in levels, and the share of values more than one level apart)."""
    keys = ("path", "copy", "before", "parts", "levels", "over_one")
    got = {name: {k: [] for k in keys} for name in pipes}
    for s in range(0, len(photos), batch_size):
        group = [load_photo(src)[0] for src in photos[s:s + batch_size]]
        if len({g.shape for g in group}) != 1:
            raise SystemExit("eval/bench_enhance.py: the timed photos must share one size")
        x = [photo_tensor(px)[0].to(device) for px in group]
        out, dst = [torch.empty_like(t) for t in x], [torch.empty_like(t) for t in x]
        for pipe in pipes.values():
            pipe.edit_batch(x, out=out)  # warm-up (and the C kernels' first build)
        for d, t in zip(dst, x):  # the copies' buffers paged in too: no page faults in the timed rounds
            d.copy_(t)
        for _ in range(repeats):
            for name, pipe in pipes.items():
                synchronize(device)
                t0 = time.perf_counter()
                for d, t in zip(dst, x):
                    d.copy_(t)
                synchronize(device)
                t1 = time.perf_counter()
                pipe.edit_batch(x, out=out)
                synchronize(device)
                t2 = time.perf_counter()
                g = got[name]
                g["copy"].append((t1 - t0) * 1e3 / len(x))
                g["path"].append((t2 - t1) * 1e3 / len(x))
                g["parts"].append({k: v / len(x) for k, v in pipe.timings.items()})
        for name, pipe in pipes.items():
            pipe.edit_batch(x, out=out)  # `out` is shared by the rows: this row's photos back in it
            g = got[name]
            for px, o in zip(group, out):
                t0 = time.perf_counter()
                ref = np.round(pipe(px.astype(np.float32) / 255) * 255).astype(np.uint8)
                g["before"].append((time.perf_counter() - t0) * 1e3)
                diff = np.abs(o.permute(1, 2, 0).cpu().numpy().astype(np.int16) - ref)
                g["levels"].append(int(diff.max()))
                g["over_one"].append(float((diff > 1).mean()))
    return {name: _summary(g) for name, g in got.items()}


def _summary(g: dict) -> dict:
    path, copy, before, parts = g["path"], g["copy"], g["before"], g["parts"]
    best = int(np.argmin(path))  # the least disturbed round: on a shared machine p50 carries the others' load
    return {"path_ms": float(np.median(path)), "copy_ms": float(np.median(copy)),
            "ratio": float(np.median(path) / np.median(copy)), "before_ms": float(np.median(before)),
            "path_best_ms": min(path), "copy_best_ms": min(copy), "ratio_best": min(path) / min(copy),
            "before_best_ms": min(before), "max_levels_from_float": max(g["levels"]),
            "share_over_one_level": float(np.mean(g["over_one"])),
            "parts_ms": {k: float(np.median([p[k] for p in parts])) for k in parts[0]},
            "parts_best_ms": parts[best]}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", default="configs/demo.yaml", help="the architecture of the fresh student and LUT")
    p.add_argument("--model", action="append", default=[], help="also a trained student/teacher folder (repeatable)")
    p.add_argument("--n", type=int, default=4, help="photos in the folder")
    p.add_argument("--size", default="6000x4000")
    p.add_argument("--folder", default=None, help="where the photos are made (kept); default a temporary folder")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=4, help="photos edited together, as enhance's --batch-size")
    p.add_argument("--repeats", type=int, default=3, help="rounds of the path-vs-copy timing per photo")
    p.add_argument("--copy-photos", type=int, default=4,
                   help="photos used for the path-vs-copy timing (at least one batch)")
    p.add_argument("--no-demo-rows", action="store_true", help="only the --model rows")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    w, h = (int(v) for v in args.size.lower().split("x"))
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    cfg = load_config(args.config)

    tmp = Path(tempfile.mkdtemp(prefix="bench_enhance_"))
    folder = Path(args.folder) if args.folder else tmp / "photos"
    try:
        t0 = time.perf_counter()
        photos = make_photos(folder, args.n, w, h)
        print(f"{args.n} photos of {w}x{h} in {folder} ({time.perf_counter() - t0:.0f} s to make)")
        rows = ([] if args.no_demo_rows else demo_rows(cfg, device)) + [model_row(m, device) for m in args.model]
        results = {"device": device_name(device), "torch": torch.__version__, "size": args.size, "n": args.n,
                   "workers": args.workers, "batch_size": args.batch_size, "rows": {}}
        print(f"device: {results['device']}")
        head = " ".join(f"{k:>8}" for k in ("photos/s", *PARTS, "path", "copy", "ratio", "before"))
        print(f"{'row':<30} {head}")
        print(f"{'':<30} (ms per photo; path = working copy + model + transfer, timed alone; before = the "
              "float path of the same pipeline)")
        runs = {}
        for name, pipe in rows:  # enhance's own loop, row by row
            inputs, _ = find_photos(folder)
            out_dir = tmp / "out"
            shutil.rmtree(out_dir, ignore_errors=True)
            runs[name] = enhance_files(pipe, plan(inputs, folder, out_dir), args.workers, args.batch_size,
                                       device=device)
            if runs[name]["failed"]:
                raise SystemExit(f"eval/bench_enhance.py: enhance failed on {runs[name]['failed'][:3]}")
        timed = time_rows(dict(rows), photos[:max(args.copy_photos, args.batch_size)], device, args.repeats,
                          args.batch_size)  # then the path alone, all rows in the same rounds
        for name, run in runs.items():
            alone = timed[name]
            per = {k: v / max(1, run["done"]) for k, v in run["parts_ms"].items()}
            results["rows"][name] = {"photos_per_s": run["photos_per_s"], "enhance_ms_per_photo": per, **alone}
            cells = [f"{run['photos_per_s']:>8.2f}", *(f"{per[k]:>8.0f}" for k in PARTS),
                     f"{alone['path_ms']:>8.1f}", f"{alone['copy_ms']:>8.1f}", f"{alone['ratio']:>7.1f}x",
                     f"{alone['before_ms']:>8.0f}"]
            print(f"{name:<30} {' '.join(cells)}", flush=True)
            print(f"{'':<30}   alone, p50: " + ", ".join(f"{k} {v:.1f}" for k, v in alone["parts_ms"].items()))
            print(f"{'':<30}   uint8 path vs float path: at most {alone['max_levels_from_float']} levels, "
                  f"{100 * alone['share_over_one_level']:.3f}% of values more than 1 level apart")
            print(f"{'':<30}   best round: path {alone['path_best_ms']:.1f} ms, copy {alone['copy_best_ms']:.1f} ms, "
                  f"ratio {alone['ratio_best']:.1f}x, before {alone['before_best_ms']:.0f} ms; "
                  + ", ".join(f"{k} {v:.1f}" for k, v in alone["parts_best_ms"].items()))
        names = list(results["rows"])
        lut = next((n for n in names if "LUT" in n), None)
        student = next((n for n in names if "student" in n), None)
        if lut and student:
            r = results["rows"][lut]["path_ms"] / results["rows"][student]["path_ms"]
            results["lut_over_student"] = r
            print(f"the LUT's path is {r:.2f}x the student's")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
