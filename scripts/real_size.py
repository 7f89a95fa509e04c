"""Real-size steps without weights: the true-size networks with random weights, a few steps each.

    python -m scripts.real_size --out runs/smoke_real                      # make smoke-real (CPU)
    python -m scripts.real_size --out runs/smoke_tiny --tiny               # the same, scaled down
    python -m scripts.real_size --out runs/gpu --parts hypir flow distill eval --steps 10   # on CUDA

Parts (each through the project's own entry points, in this one process):
    hypir    configs/hypir_sd21.yaml: SD 2.1-base UNet (865.9M) + LoRA r256 (259.5M trainable),
             bf16 base, gradient checkpointing, decoded MSE + 5 LPIPS(vgg) + 0.5 GAN at 512 px
    flow     configs/flow_sdxl_vae.yaml: the flow teacher on SDXL-VAE latents at 1024 px
    distill  each config's student from the teacher trained above
    eval     eval/run.py on one photo (the first teacher's config)
With no weights offline, LPIPS uses a RANDOM VGG backbone and the GAN a random OpenCLIP ConvNeXt
(convnext_base here, HYPIR's convnext_xxlarge on a GPU): their costs are real, their values are not.

Prints and writes `real_size.json` and `real_size.md` in --out: parameter counts, seconds per step
(the trainer's own clock over the steps, so model building and caching are not in it), peak memory
(CUDA: max allocated in that part; CPU: the process's peak RSS so far, a running maximum).
"""

from __future__ import annotations

import argparse
import json
import resource
import time
from pathlib import Path

import torch

from core.arch import ARCH, write_tiny

REPO = Path(__file__).resolve().parents[1]
FIVEK = REPO.parent / "shared" / "data" / "fivek-expert-c"


def peak_mib(device: str) -> float:
    if device == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def make_data(out: Path, pairs: int = 3) -> Path:
    """A few real FiveK pairs (the demo data where FiveK is absent), split train / 1 val, as links."""
    from core.data import split_folder

    source = out / "pairs"
    if FIVEK.is_dir():
        for side in ("input", "target"):
            (source / side).mkdir(parents=True, exist_ok=True)
            for f in sorted((FIVEK / side).iterdir())[:pairs]:
                if not (source / side / f.name).exists():
                    (source / side / f.name).symlink_to(f.resolve())
    else:
        from core.demo import build_demo_dataset

        build_demo_dataset(source, seed=0, long_side=256, variants_per_photo=1, val_variants_per_photo=1)
        source = source / "train"
    split_folder(source, out / "data", val=1)
    return out / "data"


def stage_args(config: str, data: Path, root: Path, size: int, steps: int, extra: list[str]) -> list[str]:
    return ["--config", str(REPO / "configs" / config), f"data.train={data / 'train'}", f"data.val={data / 'val'}",
            f"data.train_long_side={size}", f"data.crop_size={size}", f"data.val_long_side={size}",
            "data.flip=false", f"experiment.output_root={root}", "train.batch_size=1", "train.validation_steps=0",
            "train.checkpointing_steps=0", "train.report_to=none", "train.log_every=1", "train.lr_warmup_steps=1",
            f"teacher.train_steps={steps}", f"distill.train_steps={steps}", "distill.adv_warmup_steps=0",
            "distill.cache_teacher=false", *extra]


def timed(name: str, fn, device: str, steps: int, run_dir: Path | None, results: dict) -> None:
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    wall = time.perf_counter()
    fn()
    entry = {"wall_s": time.perf_counter() - wall, "peak_mem_mib": peak_mib(device)}
    manifest = run_dir / "model" / "manifest.json" if run_dir is not None else None
    if manifest is not None and manifest.is_file():
        m = json.loads(manifest.read_text())
        entry.update(steps=m["step"], s_per_step=m["train_seconds"] / max(1, m["step"]))
        if "trainable_parameters" in m:  # a teacher: the frozen base apart from what trains
            entry.update(base_params=m["parameters"] - m["trainable_parameters"],
                         trainable_params=m["trainable_parameters"])
    results["parts"][name] = entry
    shown = ", ".join(f"{k} {v:.1f}" if isinstance(v, float) else f"{k} {v}" for k, v in entry.items())
    print(f"[real_size] {name}: {shown}", flush=True)


def markdown(results: dict) -> str:
    lines = [f"Device: {results['device']}; torch {results['torch']}, {results['threads']} threads; "
             f"{'tiny (scaled-down) architectures' if results['tiny'] else 'true-size architectures'}, "
             f"working size {results['size']} px (flow: {results['flow_size']} px), batch 1, LoRA rank "
             f"{results['lora_rank']}, GAN tower {Path(results['openclip']).name} (random weights).", "",
             "| part | frozen params | trained params | steps | s/step | wall s | peak memory MiB |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for name, e in results["parts"].items():
        s = f"{e['s_per_step']:.2f}" if "s_per_step" in e else ""
        base = f"{e['base_params'] / 1e6:.1f}M" if "base_params" in e else ""
        train = f"{e['trainable_params'] / 1e6:.1f}M" if "trainable_params" in e else ""
        lines.append(f"| {name} | {base} | {train} | {e.get('steps', '')} | {s} | {e['wall_s']:.1f} | "
                     f"{e['peak_mem_mib']:.0f} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default="runs/smoke_real")
    p.add_argument("--tiny", action="store_true", help="scaled-down architectures (tests, --dry)")
    p.add_argument("--parts", nargs="+", default=["hypir", "distill", "eval"],
                   choices=["hypir", "flow", "distill", "eval"])
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--size", type=int, default=0, help="hypir working size (default 512; tiny 128)")
    p.add_argument("--flow-size", type=int, default=0, help="flow working size (default 1024; tiny 128)")
    p.add_argument("--lora-rank", type=int, default=0, help="default 256 (tiny 4)")
    p.add_argument("--openclip", default="", help="GAN tower (default convnext_base on CPU, convnext_xxlarge on CUDA)")
    args = p.parse_args(argv)
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    arch = write_tiny(out / "arch") if args.tiny else ARCH
    size = args.size or (128 if args.tiny else 512)
    flow_size = args.flow_size or (128 if args.tiny else 1024)
    rank = args.lora_rank or (4 if args.tiny else 256)
    tower = args.openclip or (str(arch / "openclip-tiny.json") if args.tiny
                              else "convnext_xxlarge" if device == "cuda" else "convnext_base")
    data = make_data(out)
    results = {"device": torch.cuda.get_device_name() if device == "cuda" else "cpu", "torch": torch.__version__,
               "threads": torch.get_num_threads(), "tiny": args.tiny, "size": size, "flow_size": flow_size,
               "lora_rank": rank, "openclip": tower, "parts": {}}
    hypir_extra = [f"teacher.hypir.pretrained={arch / 'sd21-base'}", "teacher.hypir.random_init=true",
                   f"teacher.hypir.lora_rank={rank}", f"teacher.hypir.lora_alpha={rank}",
                   f"codec.pretrained={arch / 'sd21-base'}", "codec.random_init=true",
                   "teacher.lpips_random_backbone=true", f"teacher.gan.openclip_model={tower}",
                   "teacher.gan.openclip_pretrained=", "eval.max_images=1", "eval.teacher_steps=[1]",
                   "eval.resolutions=[native]", "eval.score_resolution=native", "eval.batch_sizes=[1]",
                   "eval.repeats=1", "eval.warmup=0", "eval.transfer_grid=8"]
    if args.tiny:
        hypir_extra += ["teacher.gan.openclip_image_size=32", "student.block_out_channels=[16,32,32]",
                        "student.norm_num_groups=8"]
    hypir = stage_args("hypir_sd21.yaml", data, out, size, args.steps, hypir_extra)
    flow_extra = [f"codec.pretrained={arch / 'sdxl-vae-fp16-fix'}", "codec.random_init=true",
                  "experiment.name=flow_sdxl_vae"]
    if args.tiny:
        flow_extra += ["teacher.flow.block_out_channels=[16,32,32,32]", "teacher.flow.norm_num_groups=8",
                       "teacher.flow.layers_per_block=1", "student.block_out_channels=[16,32,32]",
                       "student.norm_num_groups=8"]
    flow = stage_args("flow_sdxl_vae.yaml", data, out, flow_size, args.steps, flow_extra)

    from distill.run import main as distill
    from eval.run import main as evaluate
    from teacher.train import main as train_teacher

    parts = args.parts
    if "hypir" in parts:
        timed("hypir teacher", lambda: train_teacher(hypir), device, args.steps, out / "hypir_sd21" / "teacher",
              results)
    if "flow" in parts:
        timed("flow teacher (SDXL VAE)", lambda: train_teacher(flow), device, args.steps,
              out / "flow_sdxl_vae" / "teacher", results)
    runs = [(n, a) for n, a in (("hypir", hypir), ("flow", flow)) if n in parts] or [("hypir", hypir)]
    if "distill" in parts:  # a student for every teacher trained here
        for name, stage in runs:
            run = out / ("hypir_sd21" if name == "hypir" else "flow_sdxl_vae") / "student"
            timed(f"distill ({name} teacher)", lambda stage=stage: distill(stage), device, args.steps, run, results)
    chosen = runs[0][1]
    if "eval" in parts:
        timed("eval (one photo)", lambda: evaluate(chosen), device, 0, None, results)
    (out / "real_size.json").write_text(json.dumps(results, indent=2))
    (out / "real_size.md").write_text(markdown(results))
    print(markdown(results))
    return results


if __name__ == "__main__":
    main()
