"""Stage one: train the multi-step teacher on the photo pairs.

    accelerate launch teacher/train.py --config configs/demo.yaml
    accelerate launch teacher/train.py --config configs/demo.yaml --resume_from_checkpoint latest
    torchrun --nproc_per_node 2 teacher/train.py --config configs/demo.yaml   # two CPU processes
    python teacher/train.py --config configs/demo.yaml teacher.num_steps=4 train.batch_size=4

Writes {output_root}/{name}/teacher/: checkpoint-N/ (resumable), logs/ (TensorBoard), val/
(input | output | target grids), config.yaml and model/ (what distill/ and eval/ load).
"""

from __future__ import annotations

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
    args = stage_parser("Stage one: train the teacher.").parse_intermixed_args(argv)
    cfg = load_stage_config(args)
    out_dir = Path(args.output_dir) if args.output_dir else cfg.run_dir("teacher")
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


if __name__ == "__main__":
    main()
