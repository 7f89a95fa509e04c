"""Command-line arguments shared by the stage entry points, with diffusers' flag names.

Flags map onto the config's `train` section; anything else is `section.key=value`.
"""

from __future__ import annotations

import argparse
import sys

from core.config import Config, ConfigError, load_config

TRAIN_FLAGS = ("mixed_precision", "gradient_accumulation_steps", "checkpointing_steps",
               "checkpoints_total_limit", "report_to", "batch_size", "validation_steps")
SWITCHES = ("gradient_checkpointing", "allow_tf32", "use_8bit_adam")  # diffusers' names, train.* = true


def stage_parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--config", default="configs/demo.yaml", help="experiment YAML (default: the demo)")
    p.add_argument("--output_dir", default=None, help="run folder (default: {output_root}/{name}/{stage})")
    p.add_argument("--resume_from_checkpoint", default=None, help="'latest' or a checkpoint-N folder")
    p.add_argument("--max_train_steps", type=int, default=None, help="overrides the stage's train_steps")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--mixed_precision", choices=["no", "fp16", "bf16"], default=None)
    p.add_argument("--gradient_accumulation_steps", type=int, default=None)
    p.add_argument("--checkpointing_steps", type=int, default=None)
    p.add_argument("--checkpoints_total_limit", type=int, default=None)
    p.add_argument("--validation_steps", type=int, default=None)
    p.add_argument("--batch_size", type=int, default=None)
    p.add_argument("--report_to", choices=["tensorboard", "wandb", "none", "all"], default=None)
    for name in SWITCHES:
        p.add_argument(f"--{name}", action="store_true", default=None, help=f"train.{name}=true")
    p.add_argument("overrides", nargs="*", help="section.key=value config overrides")
    return p


def load_stage_config(args: argparse.Namespace) -> Config:
    overrides = list(args.overrides)
    for name in TRAIN_FLAGS + SWITCHES:
        value = getattr(args, name, None)
        if value is not None:
            overrides.append(f"train.{name}={value}")
    if args.seed is not None:
        overrides.append(f"experiment.seed={args.seed}")
    try:
        return load_config(args.config, overrides)
    except ConfigError as exc:
        sys.exit(f"error: {exc}")
