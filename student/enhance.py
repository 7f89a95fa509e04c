"""Enhance new photos with a trained model: folder (or file) in, folder (and ZIP) out.

    python -m student.enhance --model runs/demo/student --input photos/ --output edited/ [--zip edited.zip]
    accelerate launch -m student.enhance --model ... --input ... --output ...   # several GPUs

Any size: the model runs at its working resolution (`--long-side`, default the size it was
validated at, as its manifest records it) and the edit is carried to the original pixels by
the full-resolution transfer, so a 24 MP photo keeps its detail and needs no tiles. Any model
folder works (student, teacher, the LUT). Outputs keep the input's file name, format, EXIF and
ICC profile. Photos already done are skipped, so an interrupted run resumes. Unreadable photos
are listed at the end and the exit status is then 1. Inputs are never overwritten.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from core.checkpoint import atomic_write_zip
from core.images import ImageError, list_photos, load_image, save_image
from core.models import load_model


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="Apply a trained edit to photos, at full resolution.")
    p.add_argument("--model", required=True, help="any model's run or model folder (student, teacher, LUT)")
    p.add_argument("--input", required=True, help="a photo or a folder of photos")
    p.add_argument("--output", required=True, help="output folder (created)")
    p.add_argument("--zip", default=None, help="also pack the outputs into this ZIP file")
    p.add_argument("--long-side", type=int, default=None, help="working resolution (default: the model's)")
    p.add_argument("--transfer", choices=["grid", "none"], default=None, help="default: the model's manifest")
    p.add_argument("--grid", type=int, default=None, help="transfer grid cells (default: the model's manifest)")
    p.add_argument("--overwrite", action="store_true", help="redo photos whose output exists")
    args = p.parse_args(argv)

    from accelerate import PartialState

    # one process per GPU under accelerate launch (or per CPU process under torchrun); photos split between them
    state = PartialState(cpu=not torch.cuda.is_available())
    pipe = load_model(args.model, state.device).pipeline(args.long_side, args.transfer, args.grid)

    inputs = list_photos(args.input)
    out_dir = Path(args.output)
    out_dir.mkdir(parents=True, exist_ok=True)
    failed: list[str] = []
    from rich.progress import track

    with state.split_between_processes(inputs) as mine:
        for src in track(mine, description="enhancing", disable=not state.is_main_process):
            dst = out_dir / src.name
            if dst.resolve() == src.resolve():
                failed.append(f"{src}: output would overwrite the input; choose another --output")
                continue
            if dst.exists() and not args.overwrite:
                continue  # done by an earlier run
            try:
                rgb, meta = load_image(src)
                save_image(dst, pipe(rgb), meta, bit_depth=16 if meta.bit_depth > 8 and dst.suffix.lower()
                           in (".png", ".tif", ".tiff") else 8)
            except (ImageError, OSError) as exc:
                failed.append(f"{src}: {exc}")
    state.wait_for_everyone()
    if args.zip and state.is_main_process:
        atomic_write_zip(args.zip, [(out_dir / src.name, src.name) for src in inputs if (out_dir / src.name).exists()])
    if failed:
        print(f"{len(failed)} photo(s) failed:", file=sys.stderr)
        for line in failed:
            print(f"  {line}", file=sys.stderr)
        return 1
    print(json.dumps({"done": len(inputs), "output": str(out_dir), "zip": args.zip}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
