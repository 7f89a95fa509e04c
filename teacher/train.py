"""Stage one: train the multi-step teacher on the photo pairs.

    accelerate launch teacher/train.py --config configs/demo.yaml
    accelerate launch teacher/train.py --config configs/demo.yaml --resume_from_checkpoint latest
    torchrun --nproc_per_node 2 teacher/train.py --config configs/demo.yaml   # two CPU processes
    python teacher/train.py --config configs/demo.yaml teacher.num_steps=4 train.batch_size=4

Writes {output_root}/{name}/teacher/: checkpoint-N/ (resumable), logs/ (TensorBoard), val/
(input | output | target grids), config.yaml and model/ (what distill/ and eval/ load).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from any folder

import torch  # noqa: E402

from core.cli import load_stage_config, stage_parser  # noqa: E402
from core.codecs import build_codec  # noqa: E402
from core.models import LoadedModel, serving_manifest  # noqa: E402
from core.perceptual import load_lpips  # noqa: E402
from core.stage import (  # noqa: E402
    finish,
    latent_dataset,
    make_validator,
    open_sources,
    tracker_config,
    write_run_config,
)
from core.trainer import Phase, make_accelerator, make_optimizer, train  # noqa: E402
from teacher.models import build_teacher  # noqa: E402


def main(argv=None) -> dict:
    args = stage_parser("Stage one: train the teacher.").parse_intermixed_args(argv)
    cfg = load_stage_config(args)
    out_dir = Path(args.output_dir) if args.output_dir else cfg.run_dir("teacher")
    total_steps = args.max_train_steps or cfg.teacher.train_steps
    accelerator = make_accelerator(cfg.train, out_dir, cfg.experiment.seed)
    write_run_config(cfg, out_dir, accelerator)
    wall_start = time.time()

    # data and codec
    train_src, val_src = open_sources(cfg, accelerator)
    codec = build_codec(cfg.codec).to(accelerator.device)
    dataset = latent_dataset(cfg, train_src, codec, accelerator)

    # model, optimiser
    torch.manual_seed(cfg.experiment.seed)  # same initial weights on every process
    teacher = build_teacher(cfg, codec.channels)
    optimizer, scheduler = make_optimizer(teacher.trainable_parameters(), cfg.teacher.learning_rate,
                                          cfg.train, total_steps)
    model, optimizer = accelerator.prepare(teacher, optimizer)
    lpips = load_lpips(accelerator.device) if cfg.teacher.lpips_weight > 0 else None

    def loss_fn(batch, step):
        loss, z_hat = model(batch["z_in"], batch["z_target"])
        parts = {"loss_flow" if teacher.kind == "flow" else "loss_mse": loss.detach()}
        if cfg.teacher.l1_weight > 0 or lpips is not None:
            x_hat, x_tgt = codec.decode(z_hat), codec.decode(batch["z_target"])
            if cfg.teacher.l1_weight > 0:
                l1 = (x_hat - x_tgt).abs().mean()  # || D(z_hat) - D(z_target) ||_1
                loss = loss + cfg.teacher.l1_weight * l1
                parts["loss_l1"] = l1.detach()
            if lpips is not None:
                lp = lpips(x_hat.clamp(0, 1) * 2 - 1, x_tgt.clamp(0, 1) * 2 - 1).mean()
                loss = loss + cfg.teacher.lpips_weight * lp
                parts["loss_lpips"] = lp.detach()
        return loss, parts

    validate = make_validator(cfg, accelerator, val_src, LoadedModel(teacher, {}, codec, accelerator.device),
                              out_dir)
    accelerator.init_trackers("teacher", config=tracker_config(cfg))
    result = train(accelerator, cfg.train, phases=[Phase("teacher", model, optimizer, scheduler, loss_fn)],
                   dataset=dataset, total_steps=total_steps, seed=cfg.experiment.seed, output_dir=out_dir,
                   ema_module=model, validate=validate, resume=args.resume_from_checkpoint,
                   description=f"teacher ({teacher.kind})")

    # final model: the EMA weights, with the validation figures in the manifest
    metrics = {}
    if accelerator.is_main_process:
        unwrapped, metrics = finish(accelerator, model, result, validate)
        unwrapped.save_pretrained(out_dir / "model", manifest={
            "stage": "teacher", **serving_manifest(cfg, codec=vars(cfg.codec).copy()),
            "step": result["step"], "train_seconds": result["train_seconds"],
            "wall_seconds": time.time() - wall_start, "metrics": metrics, "num_steps": teacher.num_steps,
            "function_evals": teacher.function_evals(), "train_pairs": len(dataset)})
        print(f"teacher ({teacher.kind}, K={teacher.num_steps}) on validation: PSNR {metrics.get('psnr', 0):.2f} dB"
              f" vs identity {metrics.get('identity_psnr', 0):.2f} dB"
              f" (+{metrics.get('psnr', 0) - metrics.get('identity_psnr', 0):.2f} dB);"
              f" model saved to {out_dir / 'model'}")
    accelerator.end_training()
    return metrics


if __name__ == "__main__":
    main()
