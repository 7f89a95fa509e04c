"""Enhance new photos with a trained model: folder (or file) in, folder (and ZIP) out, fast.

    python -m student.enhance --model runs/demo/student --input photos/ --output edited/ [--zip edited.zip]
    python -m student.enhance --model ... --input shoot/ --output edited/ --recursive   # mirrors subfolders
    torchrun --nproc_per_node 4 -m student.enhance --model ... --input ... --output ...  # or accelerate launch

Any size: the model runs at its working resolution (`--long-side`, default the size it was
validated at) and the edit is carried to the original pixels by the full-resolution transfer,
so a 24 MP photo keeps its detail and needs no tiles. Outputs keep the input's file name,
format, EXIF, ICC profile and alpha channel. Photos already done are skipped, so an interrupted
run resumes. Unreadable photos are listed at the end and the exit status is then 1; files that
are not photos are listed as skipped. Inputs are never overwritten.

Throughput: 8-bit photos stay uint8 from decode to encode (core/pipeline.py, edit_batch);
`--workers` threads decode the next photos and encode the finished ones while the device
computes (the codecs release the GIL), photos of one size go through in batches of `--batch-size`
(4: their working copies through the network together, each photo's pixels never stacked), and
the run ends with photos/s and the time of each part. JPEGs are decoded by torchvision.io
(`--io auto`; on the CPU the same pixels as PIL's, sooner) and encoded on the GPU by it on CUDA,
by PIL on the CPU (4:4:4 chroma at quality 95).
The edited photos' memory is reused from batch to batch (no page faults of a fresh 72 MB
buffer). Under torchrun or accelerate launch every process takes its own share of the sorted
photo list (resuming on its own); rank 0 writes the summary (OUTPUT/.enhance_summary.json) and
the ZIP.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from core.batch import PARTS, enhance_files, format_summary, plan, shard
from core.checkpoint import atomic_write_zip
from core.images import find_photos
from core.models import load_model

SUMMARY = ".enhance_summary.json"  # hidden: the output folder holds only photos


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="Apply a trained edit to photos, at full resolution.")
    p.add_argument("--model", required=True, help="any model's run or model folder (student, teacher, LUT)")
    p.add_argument("--input", required=True, help="a photo or a folder of photos")
    p.add_argument("--output", required=True, help="output folder (created)")
    p.add_argument("--zip", default=None, help="also pack the outputs into this ZIP file")
    p.add_argument("--recursive", action="store_true", help="also the photos in subfolders, mirrored in --output")
    p.add_argument("--long-side", type=int, default=None, help="working resolution (default: the model's)")
    p.add_argument("--transfer", choices=["grid", "none"], default=None, help="default: the model's manifest")
    p.add_argument("--grid", type=int, default=None, help="transfer grid cells (default: the model's manifest)")
    p.add_argument("--overwrite", action="store_true", help="redo photos whose output exists")
    p.add_argument("--workers", type=int, default=2, help="decode/encode threads beside the compute")
    p.add_argument("--batch-size", type=int, default=4,
                   help="photos of one size whose working copies go through the network together (at 24 MP "
                        "on a 2-core CPU the demo student costs 7 ms a photo alone, 4 in fours; 1 = one at a time)")
    p.add_argument("--precision", choices=["fp32", "bf16", "fp16"], default="fp32",
                   help="autocast dtype of the codec and network (bf16/fp16: see docs/benchmarks.md for the error)")
    p.add_argument("--io", choices=["auto", "pil", "torchvision"], default="auto",
                   help="JPEG decoder/encoder. auto: torchvision decodes (on CUDA on the GPU; on the CPU the same "
                        "pixels as PIL's, sooner) and, on CUDA only, encodes on the GPU (4:2:0 chroma); PIL "
                        "encodes on the CPU (4:4:4 at quality >= 90). torchvision: both by torchvision")
    p.add_argument("--draft", action="store_true",
                   help="JPEG working copies from a DCT-domain reduced decode (faster; not bit-identical)")
    args = p.parse_args(argv)

    from accelerate import PartialState

    # one process per GPU under accelerate launch (or per CPU process under torchrun)
    state = PartialState(cpu=not torch.cuda.is_available())
    pipe = load_model(args.model, state.device).pipeline(args.long_side, args.transfer, args.grid)
    pipe.batch_size, pipe.precision = args.batch_size, args.precision  # the LUT's pipeline ignores precision

    root, out_dir = Path(args.input), Path(args.output)
    inputs, skipped = find_photos(root, recursive=args.recursive)
    # the share is decided before looking at outputs, so every rank sees the same split even while
    # others write; each rank then resumes its own share
    jobs, failed, already = [], [], 0
    for src, dst in shard(plan(inputs, root, out_dir), state.process_index, state.num_processes):
        if dst.resolve() == src.resolve():
            failed.append(f"{src}: output would overwrite the input; choose another --output")
        elif args.overwrite or not dst.exists():
            jobs.append((src, dst))
        else:
            already += 1  # done by an earlier run
    out_dir.mkdir(parents=True, exist_ok=True)
    draft_side = pipe.long_side if args.draft and hasattr(pipe, "working_size") else 0  # not for the LUT
    stats = enhance_files(pipe, jobs, args.workers, args.batch_size, args.io, draft_side, state.device)
    stats.update(failed=failed + stats["failed"], already_done=already, edited_by_rank=[stats["done"]])
    if state.num_processes > 1:
        from accelerate.utils import gather_object

        every = gather_object([stats])
        stats = {"done": sum(s["done"] for s in every), "failed": [f for s in every for f in s["failed"]],
                 "already_done": sum(s["already_done"] for s in every), "edited_by_rank": [s["done"] for s in every],
                 "seconds": max(s["seconds"] for s in every),
                 "parts_ms": {k: sum(s["parts_ms"][k] for s in every) for k in PARTS}}
        stats["photos_per_s"] = stats["done"] / max(stats["seconds"], 1e-9)
    state.wait_for_everyone()
    # every rank leaves the group before its interpreter exits: a rank that exits with a live gloo
    # group can abort at exit ("terminate called without an active exception")
    state.destroy_process_group()
    if not state.is_main_process:
        return 1 if stats["failed"] else 0
    if args.zip:
        atomic_write_zip(args.zip, [(dst, str(dst.relative_to(out_dir))) for _, dst in plan(inputs, root, out_dir)
                                    if dst.exists()])
    summary = {"photos": len(inputs), "edited_now": stats["done"], "already_done": stats["already_done"],
               "failed": stats["failed"], "skipped_not_photos": [str(f) for f in skipped],
               "processes": state.num_processes, "edited_by_rank": stats["edited_by_rank"],
               "seconds": round(stats["seconds"], 3), "photos_per_s": round(stats["photos_per_s"], 3),
               "ms_per_photo": {k: round(v / max(1, stats["done"]), 1) for k, v in stats["parts_ms"].items()},
               "output": str(out_dir), "zip": args.zip}
    (out_dir / SUMMARY).write_text(json.dumps(summary, indent=2))
    if skipped:
        print(f"{len(skipped)} file(s) skipped, not photos: " + ", ".join(str(s) for s in skipped), file=sys.stderr)
    print(format_summary(stats) + f"; summary in {out_dir / SUMMARY}")
    if stats["failed"]:
        print(f"{len(stats['failed'])} photo(s) failed:", file=sys.stderr)
        for line in stats["failed"]:
            print(f"  {line}", file=sys.stderr)
        return 1
    print(json.dumps({"done": len(inputs), "output": str(out_dir), "zip": args.zip}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
