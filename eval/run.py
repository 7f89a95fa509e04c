"""Eval: score the teacher (at each K), the student and the baselines; pick the submission.

    accelerate launch eval/run.py --config configs/demo.yaml
    python eval/run.py --config configs/demo.yaml eval.max_images=4

Quality is measured against the professional edit at OUTPUT resolution (the photo's own size,
through the full-resolution transfer); throughput per model and resolution. Writes
{output_root}/{name}/eval/: report.json, report.html, plot.png, writeup.md, selection.json,
images/ and submission.zip (the chosen model's outputs for the evaluation inputs).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from any folder

import numpy as np  # noqa: E402
import torch  # noqa: E402

from core.checkpoint import atomic_write_json  # noqa: E402
from core.config import ConfigError, load_config  # noqa: E402
from core.data import PairSource  # noqa: E402
from core.images import save_image  # noqa: E402
from eval.metrics import LPIPSMetric, evaluate_pair, summarize  # noqa: E402
from eval.report import write_report  # noqa: E402
from eval.rows import load_models  # noqa: E402
from eval.score import score_rows  # noqa: E402
from eval.throughput import device_name, peak_memory_mib, reset_peak_memory, time_calls  # noqa: E402


def square_input(rgb: np.ndarray, w: int, h: int | None = None) -> np.ndarray:
    from core.images import resize

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
        pipe = row["make_pipe"](long_side)
        reset_peak_memory(device)
        parts = []

        def run():
            pipe(img)
            parts.append(dict(pipe.timings))
        stats = time_calls(run, warmup=e.warmup, repeats=e.repeats, max_seconds=e.max_seconds_per_measure)
        timed = parts[e.warmup:] or parts
        entry = {"size": f"{img.shape[1]}x{img.shape[0]}", "working_size": None, **stats,
                 "images_per_s": 1000.0 / stats["p50_ms"], "peak_mem_mib": peak_memory_mib(device)}
        for key in ("resize_ms", "encode_ms", "model_ms", "decode_ms", "transfer_ms"):
            entry[key] = float(np.median([p[key] for p in timed]))
        lo = pipe.working_copy(img)
        entry["working_size"] = f"{lo.shape[1]}x{lo.shape[0]}"
        # best batch at the working size (model path only: the transfer is per photo)
        if row.get("has_model", True) and res.isdigit():
            best = None
            for b in e.batch_sizes:
                x = torch.from_numpy(np.ascontiguousarray(lo)).permute(2, 0, 1)[None].repeat(b, 1, 1, 1).float()
                s = time_calls(lambda x=x: pipe.edit_working(x), warmup=1 if b > 1 else 0, repeats=2,
                               max_seconds=e.max_seconds_per_measure)
                ips = b * 1000.0 / s["p50_ms"]
                if best is None or ips > best["images_per_s"]:
                    best = {"batch": b, "images_per_s": ips}
            entry["best_batch"] = best
        out[res] = entry
    return out


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description="Eval: teacher vs student, the report and the submission.")
    p.add_argument("--config", default="configs/demo.yaml")
    p.add_argument("--output_dir", default=None)
    p.add_argument("overrides", nargs="*")
    args = p.parse_intermixed_args(argv)
    try:
        cfg = load_config(args.config, args.overrides)
    except ConfigError as exc:
        sys.exit(f"error: {exc}")
    out_dir = Path(args.output_dir) if args.output_dir else cfg.run_dir("eval")
    out_dir.mkdir(parents=True, exist_ok=True)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    t_start = time.time()

    rows, _ = load_models(cfg, device)
    d = cfg.data
    val = PairSource.open(d.val, split=d.val_split, input_column=d.input_column,
                          target_column=d.target_column, max_pixels=d.max_pixels)
    n = len(val) if not cfg.eval.max_images else min(cfg.eval.max_images, len(val))
    lpips_metric = LPIPSMetric()

    # quality at output resolution, every image, every row; outputs kept for the report
    from rich.progress import track

    pairs = [val.load(i) for i in range(n)]
    names = val.names[:n]
    images_dir = out_dir / "images"
    for row in rows:
        pipe = row["make_pipe"](d.val_long_side)
        per_image = []
        slug = row["name"].replace(" ", "_").replace("=", "")
        for i in track(range(n), description=f"quality: {row['name']}"):
            inp, tgt = pairs[i]
            out = pipe(inp)
            per_image.append({"name": names[i], **evaluate_pair(out, tgt, lpips_metric)})
            save_image(images_dir / slug / f"{names[i]}.png", out)
        row["quality"] = {"per_image": per_image, "mean": summarize(per_image)}
        row["slug"] = slug
    for i in range(n):
        save_image(images_dir / "input" / f"{names[i]}.png", pairs[i][0])
        save_image(images_dir / "target" / f"{names[i]}.png", pairs[i][1])

    # throughput
    for row in rows:
        print(f"throughput: {row['name']}")
        row["throughput"] = measure_row(row, cfg, pairs[0][0], device)

    selection = score_rows(rows, cfg.eval)
    report = {
        "config": cfg.to_dict(), "device": device_name(device), "num_images": n, "image_names": names,
        "lpips": {"available": lpips_metric.available, "reason": lpips_metric.reason},
        "rows": [{k: v for k, v in r.items() if k != "make_pipe"} for r in rows],
        "selection": selection, "eval_seconds": time.time() - t_start,
    }
    atomic_write_json(out_dir / "selection.json", selection)
    write_report(report, out_dir, val, cfg)
    atomic_write_json(out_dir / "report.json", report)
    print(f"chosen: {selection['chosen']} (score {selection['scores'][selection['chosen']]:.3f}); "
          f"report: {out_dir / 'report.html'}")
    return report


if __name__ == "__main__":
    main()
