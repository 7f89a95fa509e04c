"""Stage one: train the multi-step teacher on the photo pairs.

    accelerate launch teacher/train.py --config configs/demo.yaml
    accelerate launch teacher/train.py --config configs/demo.yaml --resume_from_checkpoint latest
    torchrun --nproc_per_node 2 teacher/train.py --config configs/demo.yaml   # two CPU processes
    python teacher/train.py --config configs/demo.yaml teacher.num_steps=4 train.batch_size=4

Writes {output_root}/{name}/teacher/: checkpoint-N/ (resumable), logs/ (TensorBoard), val/
(input | output | target grids), config.yaml and model/ (what distill/ and eval/ load).
With teacher.ensemble = M > 1 (flow): member-0/ .. member-{M-1}/, each such a run (seed
experiment.seed + m, resumable, its checkpoint chosen on its own), then model/: the ensemble.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

from core.cli import load_stage_config, stage_parser
from core.codecs import build_codec
from core.models import LoadedModel
from core.perf import apply_speed_options
from core.stage import fit_prior, latent_dataset, make_validator, open_sources, train_and_save, write_run_config
from core.trainer import Phase, make_accelerator, make_optimizer
from teacher.losses import TeacherLoss
from teacher.models import build_teacher


def main(argv=None) -> dict:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = stage_parser("Stage one: train the teacher.").parse_intermixed_args(argv)
    cfg = load_stage_config(args)
    out_dir = Path(args.output_dir) if args.output_dir else cfg.run_dir("teacher")
    if cfg.teacher.ensemble > 1:
        return train_ensemble(argv, cfg, out_dir)
    total_steps = args.max_train_steps or cfg.teacher.train_steps
    accelerator = make_accelerator(cfg.train, out_dir, cfg.experiment.seed)
    write_run_config(cfg, out_dir, accelerator)
    wall_start = time.time()

    # data, the colour prior the teacher learns the residual over, codec
    train_src, val_src = open_sources(cfg, accelerator)
    prior = fit_prior(cfg, train_src, val_src)
    codec = build_codec(cfg.codec).to(accelerator.device)
    dataset = latent_dataset(cfg, train_src, codec, accelerator, prior=prior)

    # model, optimiser
    torch.manual_seed(cfg.experiment.seed)  # same initial weights on every process
    teacher = build_teacher(cfg, codec.channels)
    optimizer, scheduler = make_optimizer(teacher.trainable_parameters(), cfg.teacher.learning_rate,
                                          cfg.train, total_steps)
    apply_speed_options(cfg.train, teacher, codec)  # gradient checkpointing, attention kernel, TF32
    model, optimizer = accelerator.prepare(teacher, optimizer)
    losses = TeacherLoss(cfg, model, teacher.kind, codec, accelerator, total_steps)  # latent, pixel, LPIPS, GAN

    validate = make_validator(cfg, accelerator, val_src,
                              LoadedModel(teacher, {}, codec, accelerator.device, prior=prior), out_dir)
    return train_and_save(
        accelerator, cfg, args, stage="teacher",
        phases=losses.phases(Phase("teacher", model, optimizer, scheduler, losses.loss_fn)),
        dataset=dataset, total_steps=total_steps, out_dir=out_dir, model=model, validate=validate,
        description=f"teacher ({teacher.kind})", codec=vars(cfg.codec).copy(), wall_start=wall_start,
        label=f"teacher ({teacher.kind}, K={teacher.num_steps})", prior=prior,
        manifest={"num_steps": teacher.num_steps, "function_evals": teacher.function_evals(),
                  "parameters": sum(p.numel() for p in teacher.parameters()),
                  "trainable_parameters": sum(p.numel() for p in teacher.trainable_parameters())})


def train_ensemble(argv: list[str], cfg, out_dir: Path) -> dict:
    """teacher.ensemble = M: each member trained by this stage as a one-network teacher in
    out_dir/member-m (seed experiment.seed + m; a finished member is kept), then the ensemble
    (teacher.flow.FlowTeacher.ensemble: the mean velocity) validated and saved to out_dir/model."""
    from core.checkpoint import MANIFEST_NAME
    from core.models import load_model
    from teacher.flow import FlowTeacher

    members = []
    for m in range(cfg.teacher.ensemble):
        folder = out_dir / f"member-{m}"
        if not (folder / "model" / MANIFEST_NAME).is_file():
            print(f"teacher ensemble: member {m + 1} of {cfg.teacher.ensemble} -> {folder}")
            main([*argv, "--output_dir", str(folder), "--seed", str(cfg.experiment.seed + m), "teacher.ensemble=1"])
        members.append(load_model(folder, "cpu"))
    accelerator = make_accelerator(cfg.train, out_dir, cfg.experiment.seed)
    write_run_config(cfg, out_dir, accelerator)
    metrics = {}
    if accelerator.is_main_process:
        first = members[0]
        ensemble = FlowTeacher.ensemble([m.net for m in members]).to(accelerator.device)
        _, val_src = open_sources(cfg, accelerator)
        validate = make_validator(cfg, accelerator, val_src,
                                  LoadedModel(ensemble, {}, first.codec.to(accelerator.device), accelerator.device,
                                              prior=first.prior), out_dir)
        metrics = validate(0, False)
        figures = [m.manifest for m in members]
        ensemble.save_pretrained(out_dir / "model", prior=first.prior, manifest={
            **{k: first.manifest[k] for k in ("stage", "codec", "working_long_side", "size_multiple", "transfer",
                                              "num_steps", "train_pairs")},
            "members": [{"folder": str(out_dir / f"member-{m}"), "step": f.get("step"),
                         "selected_step": f.get("metrics", {}).get("selected_step"),
                         "psnr": f.get("metrics", {}).get("psnr")} for m, f in enumerate(figures)],
            "step": max(f.get("step", 0) for f in figures), "metrics": metrics,
            "train_seconds": sum(f.get("train_seconds") or 0.0 for f in figures),
            "wall_seconds": sum(f.get("wall_seconds") or 0.0 for f in figures),
            "function_evals": ensemble.function_evals(), "parameters": sum(p.numel() for p in ensemble.parameters()),
            "trainable_parameters": sum(p.numel() for p in ensemble.trainable_parameters())})
        print(f"teacher (flow ensemble of {ensemble.members}, K={ensemble.num_steps}) on validation: PSNR "
              f"{metrics.get('psnr', 0.0):.2f} dB vs identity {metrics.get('identity_psnr', 0.0):.2f} dB (members: "
              + ", ".join(f"{f.get('metrics', {}).get('psnr', 0.0):.2f}" for f in figures)
              + f"); model saved to {out_dir / 'model'}")
    accelerator.wait_for_everyone()
    return metrics


if __name__ == "__main__":
    main()
