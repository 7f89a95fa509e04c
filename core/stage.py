"""Set-up shared by the training stages: data, latent datasets, validation, run folders."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from core.config import Config, save_config
from core.data import PairSource
from core.images import psnr_db
from core.latents import LatentPairDataset, load_pair_tensors, load_val_set


def open_sources(cfg: Config, accelerator) -> tuple[PairSource, PairSource]:
    """Build the demo data if asked and missing (main process), then check and open both splits."""
    d = cfg.data
    if d.build_demo:
        if accelerator.is_main_process:
            from core.demo import build_demo_dataset

            build_demo_dataset(d.demo.out_dir, seed=cfg.experiment.seed, long_side=d.demo.long_side,
                               variants_per_photo=d.demo.variants_per_photo,
                               val_variants_per_photo=d.demo.val_variants_per_photo)
        accelerator.wait_for_everyone()
    common = dict(input_column=d.input_column, target_column=d.target_column, max_pixels=d.max_pixels)
    train = PairSource.open(d.train, split=d.train_split, **common)
    val = PairSource.open(d.val, split=d.val_split, **common)
    return train, val


def fit_prior(cfg: Config, train: PairSource, val: PairSource):
    """The colour prior (core.prior) fitted on the training pairs (and the validation ones with
    prior.fit_on: train+val) at the training size, or None (prior.kind: none). Closed form and
    deterministic: every process fits the same one."""
    if cfg.prior.kind == "none":
        return None
    from core.prior import ColourPrior

    sources = [train, val] if cfg.prior.fit_on == "train+val" else [train]
    pairs = (load_pair_tensors(src, i, cfg.data.train_long_side, cfg.data.size_multiple)
             for src in sources for i in range(len(src)))
    return ColourPrior.fit(pairs, ridge=cfg.prior.ridge, align=cfg.prior.align)


def unpaired_source(path: str | Path, max_pixels: int) -> PairSource:
    """A folder of unedited photos as a PairSource whose targets are the inputs themselves (for
    LatentPairDataset(paired=False): no loss sees those targets)."""
    from core.data import Pair
    from core.images import list_photos, read_size

    photos = list_photos(path, flag="distill.unpaired")
    if not photos:
        raise FileNotFoundError(f"distill.unpaired={path}: no photos (.jpg .png .tif .webp) in that folder")
    pairs = [Pair(p.stem, str(p), str(p), read_size(p), read_size(p)) for p in photos]
    return PairSource(str(path), pairs, max_pixels=max_pixels)


def latent_dataset(cfg: Config, source: PairSource, codec, accelerator, prior=None,
                   paired: bool = True) -> LatentPairDataset:
    """Cached latents (inputs through `prior` first); the main process encodes first so the others
    only read the cache. `paired=False`: unedited photos, no targets (core.latents)."""
    cache = Path(cfg.experiment.output_root) / "cache" / "latents" if cfg.data.cache_latents else None
    kw = dict(long_side=cfg.data.train_long_side, crop_size=cfg.data.crop_size, flip=cfg.data.flip,
              seed=cfg.experiment.seed, cache_dir=cache, multiple=cfg.data.size_multiple, prior=prior,
              variants=cfg.data.augment_variants, paired=paired)
    ds = None
    if accelerator.is_main_process:
        ds = LatentPairDataset(source, codec, show_progress=True, **kw)
    accelerator.wait_for_everyone()
    if ds is None:
        ds = LatentPairDataset(source, codec, show_progress=False, **kw)
    return ds


def save_grid(rows: list[list[torch.Tensor]], path: Path) -> None:
    """Rows of (3, H, W) images in [0, 1] -> one PNG (columns e.g. input | output | target)."""
    from PIL import Image

    h = max(im.shape[1] for row in rows for im in row)
    lines = []
    for row in rows:
        padded = [torch.nn.functional.pad(im, (0, 0, 0, h - im.shape[1])) for im in row]
        lines.append(torch.cat(padded, dim=2))
    w = max(x.shape[2] for x in lines)
    grid = torch.cat([torch.nn.functional.pad(x, (0, w - x.shape[2])) for x in lines], dim=1)
    arr = (grid.clamp(0, 1).permute(1, 2, 0).cpu().numpy() * 255 + 0.5).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)


def make_validator(cfg: Config, accelerator, val_source: PairSource, edit: Callable, out_dir: Path,
                   max_images: int = 8) -> Callable:
    """validate(step, ema) -> {"psnr", "identity_psnr"} on the validation split at its working size.

    `edit(x) -> y` runs the model being trained on a (1, 3, H, W) image in [0, 1] (a
    `core.models.LoadedModel` around it for latent models: codec inside). Runs on the main
    process only; writes an input | output | target grid.
    """
    val = load_val_set(val_source, cfg.data.val_long_side, cfg.data.size_multiple, limit=max_images)
    identity = float(np.mean([psnr_db(x, y) for _, x, y in val])) if val else float("nan")

    @torch.no_grad()
    def validate(step: int, ema: bool) -> dict:
        if not accelerator.is_main_process or not val:
            return {}
        scores, rows = [], []
        for _, x, y in val:
            out = edit(x[None].to(accelerator.device)).float().clamp(0, 1)[0].cpu()
            scores.append(psnr_db(out, y))
            if len(rows) < 4:
                rows.append([x, out, y])
        save_grid(rows, out_dir / "val" / f"step-{step:06d}.png")
        return {"psnr": float(np.mean(scores)), "identity_psnr": identity}

    return validate


def finish(accelerator, model, result: dict, validate: Callable):
    """After train(): the EMA weights (or, with train.keep_best, the best validated ones) copied
    into the model, validated. (unwrapped model, metrics)."""
    unwrapped = accelerator.unwrap_model(model)
    if result.get("best") is not None:
        load = getattr(unwrapped, "load_trainable_state_dict", unwrapped.load_state_dict)
        load({k: v.to(next(unwrapped.parameters()).device) for k, v in result["best"]["state"].items()})
    elif result["ema"] is not None:
        result["ema"].store_and_copy_to(unwrapped)
    metrics = validate(result["step"], True)
    if result.get("best") is not None and metrics:
        metrics["selected_step"] = result["best"]["step"]
    return unwrapped, metrics


def train_and_save(accelerator, cfg: Config, args, *, stage: str, phases: list, dataset, total_steps: int,
                   out_dir: Path, model, validate: Callable, description: str, codec: dict | None,
                   wall_start: float, label: str, manifest: dict | None = None,
                   tracker: str | None = None, prior=None) -> dict:
    """The end every training stage shares: trackers, `core.trainer.train` (EMA on `model`), then on
    the main process the EMA weights validated and saved to {out_dir}/model with a manifest
    ({"stage", serving_manifest(cfg, codec), step, times, metrics, final_loss, **manifest}) and a
    line saying what `label` reached; the trackers end.

    `tracker`: the TensorBoard / W&B project name (default: `stage`). Returns the validation metrics
    ({} on the other processes). `prior`: the colour prior the model learnt the residual over,
    saved in the model folder beside it."""
    from core.models import serving_manifest
    from core.trainer import train

    accelerator.init_trackers(tracker or stage, config=tracker_config(cfg))
    result = train(accelerator, cfg.train, phases=phases, dataset=dataset, total_steps=total_steps,
                   seed=cfg.experiment.seed, output_dir=out_dir, ema_module=model, validate=validate,
                   resume=args.resume_from_checkpoint, description=description)
    metrics = {}
    if accelerator.is_main_process:
        unwrapped, metrics = finish(accelerator, model, result, validate)
        unwrapped.save_pretrained(out_dir / "model", prior=prior, manifest={
            "stage": stage, **serving_manifest(cfg, codec), "step": result["step"],
            "train_seconds": result["train_seconds"], "wall_seconds": time.time() - wall_start,
            "metrics": metrics, "final_loss": result["last_logs"].get("loss"), "train_pairs": len(dataset),
            **(manifest or {})})
        psnr, ident = metrics.get("psnr", 0.0), metrics.get("identity_psnr", 0.0)
        print(f"{label} on validation: PSNR {psnr:.2f} dB vs identity {ident:.2f} dB (+{psnr - ident:.2f} dB) "
              f"after {result['train_seconds']:.0f} s of training; model saved to {out_dir / 'model'}")
    accelerator.end_training()
    return metrics


def write_run_config(cfg: Config, out_dir: Path, accelerator) -> None:
    if accelerator.is_main_process:
        out_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, out_dir / "config.yaml")


def tracker_config(cfg: Config) -> dict:
    """Flat scalar view of the config for TensorBoard's hparams."""
    flat = {}

    def walk(prefix, node):
        for k, v in node.items():
            key = f"{prefix}.{k}" if prefix else k
            if isinstance(v, dict):
                walk(key, v)
            elif isinstance(v, (int, float, str, bool)):
                flat[key] = v
    walk("", cfg.to_dict())
    return flat
