"""Quality at OUTPUT resolution: every row's full-size edit of every pair against the professional edit.

One loop for `eval/run.py` (the report) and `eval/cv.py` (cross-validation), so both measure alike.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from core.images import save_image
from eval.metrics import LPIPSMetric, evaluate_pair, summarize


def row_slug(row: dict) -> str:
    """A row's name as a folder name: 'teacher K=1' -> 'teacher_K1'."""
    return row["name"].replace(" ", "_").replace("=", "")


def measure_quality(rows: list[dict], pairs: list[tuple[np.ndarray, np.ndarray]], names: list[str],
                    long_side: int, lpips_metric: LPIPSMetric | None = None,
                    images_dir: Path | None = None) -> None:
    """Fill each row's "quality" ({"per_image": [{"name", "psnr", "ssim", "ciede2000", "lpips"}], "mean"})
    and "slug".

    `pairs`: (input, target), each (H, W, 3) float in [0, 1] at the photo's own size; each input goes
    through `row["make_pipe"](long_side)` (working size `long_side`, then the model's transfer back to
    full size). With `images_dir`, the outputs are saved as images_dir/{slug}/{name}.png.
    """
    from rich.progress import track

    for row in rows:
        pipe = row["make_pipe"](long_side)
        row["slug"] = row_slug(row)
        per_image = []
        for (inp, tgt), name in track(list(zip(pairs, names)), description=f"quality: {row['name']}"):
            out = pipe(inp)
            per_image.append({"name": name, **evaluate_pair(out, tgt, lpips_metric)})
            if images_dir is not None:
                save_image(Path(images_dir) / row["slug"] / f"{name}.png", out)
        row["quality"] = {"per_image": per_image, "mean": summarize(per_image)}
