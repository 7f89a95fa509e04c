"""Apply any `.cube` 3D LUT to photos at full resolution: a file or a folder in, a folder out.

    python -m lut.apply look.cube --input photos/ --output graded/
    python -m lut.apply look.cube --input photos/house.jpg --output graded/ --overwrite

Trilinear, on every original pixel (no working copy, no tiles), so a LUT exported here
(`python -m lut.export`) or made in Lightroom, Photoshop, Capture One or Resolve gives the same
colours as in those tools. Outputs keep the input's file name, format, EXIF and ICC profile (as
`student.enhance` does); photos already done are skipped unless --overwrite; inputs are never
overwritten. Unreadable photos are listed at the end and the exit status is then 1.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

from core.images import ImageError, list_photos, load_image, save_image, to_numpy, to_tensor
from lut.cube import CubeError, CubeLUT, apply_cube, read_cube


@torch.no_grad()
def grade(cube: CubeLUT, rgb: np.ndarray, device: str | torch.device = "cpu") -> np.ndarray:
    """(H, W, 3) float in [0, 1] -> (H, W, 3) float32 in [0, 1], every pixel through the LUT."""
    x = to_tensor(rgb, view=True).to(device)[None]  # a view: the look-up reads the pixels in place
    return to_numpy(apply_cube(cube, x).clamp_(0, 1)[0])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="Apply a .cube 3D LUT to photos, at full resolution.")
    p.add_argument("cube", help="the .cube file (Adobe Cube LUT 1.0, 3D)")
    p.add_argument("--input", required=True, help="a photo or a folder of photos")
    p.add_argument("--output", required=True, help="output folder (created)")
    p.add_argument("--overwrite", action="store_true", help="redo photos whose output exists")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = p.parse_args(argv)
    try:
        cube = read_cube(args.cube)
    except CubeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    inputs, out_dir = list_photos(args.input), Path(args.output)
    out_dir.mkdir(parents=True, exist_ok=True)
    failed, done = [], 0
    for src in inputs:
        dst = out_dir / src.name
        if dst.resolve() == src.resolve():
            failed.append(f"{src}: the output would overwrite the input; choose another --output")
        elif args.overwrite or not dst.exists():
            try:
                rgb, meta = load_image(src)
                deep = meta.bit_depth > 8 and dst.suffix.lower() in (".png", ".tif", ".tiff")
                save_image(dst, grade(cube, rgb, args.device), meta, bit_depth=16 if deep else 8)
                done += 1
            except (ImageError, OSError) as exc:
                failed.append(f"{src}: {exc}")
    if failed:
        print(f"{len(failed)} photo(s) failed:", file=sys.stderr)
        for line in failed:
            print(f"  {line}", file=sys.stderr)
        return 1
    print(json.dumps({"done": done, "skipped": len(inputs) - done, "output": str(out_dir), "cube": args.cube}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
