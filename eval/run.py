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

import torch

from core.checkpoint import atomic_write_json
from core.config import ConfigError, load_config
from core.data import PairSource
from core.images import save_image
from eval.metrics import LPIPSMetric
from eval.quality import measure_quality
from eval.report import write_report
from eval.rows import load_models
from eval.score import score_rows
from eval.throughput import device_name, measure_row


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
    pairs = [val.load(i) for i in range(n)]
    names = val.names[:n]
    images_dir = out_dir / "images"
    measure_quality(rows, pairs, names, d.val_long_side, lpips_metric, images_dir)
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
