"""The one accelerate training loop, shared by stage one (teacher) and stage two (distill).

A stage describes its work as `Phase`s (one per optimiser: the teacher has one, distillation
has the discriminator and the student) and hands them to `train()`, which owns mixed
precision, gradient accumulation, clipping, the non-finite guard, EMA, warm-up + cosine LR,
`checkpoint-N` folders (`save_state` on every rank, written to a temporary name and renamed,
the oldest pruned only after the new one is complete), exact resume, validation, TensorBoard
/ W&B logging and the rich progress bar.

Data order is a pure function of the step: micro-batch number `step * accumulation + j` is
batch `j` of epoch `e`, taken from `shard_indices(n, e, seed, rank, world)`. A resumed run
therefore sees exactly the batches the uninterrupted run would have, with no loader state.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from torch import nn
from torch.utils.data import default_collate

from core.config import TrainConfig
from core.data import shard_indices


@dataclass
class Phase:
    """One optimiser's share of a step: `loss_fn(batch, step) -> (loss, logs)`."""

    name: str
    module: nn.Module  # prepared (possibly DDP-wrapped) module whose parameters this phase trains
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    loss_fn: Callable
    active: Callable[[int], bool] = field(default=lambda step: True)


class EMA:
    """Exponential moving average of a module's floating-point parameters."""

    def __init__(self, module: nn.Module, decay: float):
        self.decay = decay
        self.shadow = {k: p.detach().clone().float() for k, p in module.named_parameters() if p.requires_grad}
        self.backup: dict[str, torch.Tensor] = {}

    @torch.no_grad()
    def update(self, module: nn.Module) -> None:
        for k, p in module.named_parameters():
            if k in self.shadow:  # shadow = decay * shadow + (1 - decay) * param
                self.shadow[k].lerp_(p.detach().float(), 1 - self.decay)

    @torch.no_grad()
    def store_and_copy_to(self, module: nn.Module) -> None:
        params = dict(module.named_parameters())
        self.backup = {k: params[k].detach().clone() for k in self.shadow}
        for k, v in self.shadow.items():
            params[k].copy_(v)

    @torch.no_grad()
    def restore(self, module: nn.Module) -> None:
        params = dict(module.named_parameters())
        for k, v in self.backup.items():
            params[k].copy_(v)
        self.backup = {}

    def state_dict(self):
        return {"decay": self.decay, "shadow": self.shadow}

    def load_state_dict(self, state):
        self.decay = state["decay"]
        self.shadow = {k: v.clone() for k, v in state["shadow"].items()}


class TrainState:
    """Counters saved inside every checkpoint."""

    def __init__(self):
        self.step = 0
        self.nonfinite_in_a_row = 0
        self.skipped_total = 0
        self.train_seconds = 0.0

    def state_dict(self):
        return dict(vars(self))

    def load_state_dict(self, state):
        vars(self).update(state)


def lr_lambda(warmup_steps: int, total_steps: int, schedule: str) -> Callable[[int], float]:
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        if schedule == "constant":
            return 1.0
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return factor


def make_optimizer(params, lr: float, tc: TrainConfig, total_steps: int):
    from core.perf import adamw_class  # torch's AdamW, or bitsandbytes' 8-bit one (--use_8bit_adam)

    opt = adamw_class(tc)([p for p in params if p.requires_grad], lr=lr,
                          betas=(tc.adam_beta1, tc.adam_beta2), weight_decay=tc.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(tc.lr_warmup_steps, total_steps, tc.lr_schedule))
    return opt, sched


def make_accelerator(tc: TrainConfig, output_dir: Path, seed: int):
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState
    from accelerate.utils import ProjectConfiguration, set_seed

    AcceleratorState._reset_state()  # one process may run stages of different precisions (scripts/real_size.py)
    log_with = None if tc.report_to == "none" else tc.report_to
    if log_with == "wandb":
        try:
            import wandb  # noqa: F401
        except ImportError:
            print("report_to=wandb but wandb is not installed; logging to TensorBoard instead")
            log_with = "tensorboard"
    accelerator = Accelerator(
        # without cpu=True, accelerate does not treat torchrun's CPU processes as one gloo group
        cpu=not torch.cuda.is_available(), mixed_precision=tc.mixed_precision, log_with=log_with,
        project_config=ProjectConfiguration(project_dir=str(output_dir), logging_dir=str(output_dir / "logs")))
    set_seed(seed, device_specific=True)
    return accelerator


def list_checkpoints(output_dir: Path) -> list[Path]:
    found = [p for p in Path(output_dir).glob("checkpoint-*") if re.fullmatch(r"checkpoint-\d+", p.name)]
    return sorted(found, key=lambda p: int(p.name.split("-")[1]))


def resolve_resume(output_dir: Path, resume: str | None) -> Path | None:
    if not resume:
        return None
    if resume == "latest":
        ckpts = list_checkpoints(output_dir)
        return ckpts[-1] if ckpts else None
    path = Path(resume)
    if not path.is_dir():
        raise FileNotFoundError(f"--resume_from_checkpoint {resume}: no such folder (use 'latest' or a "
                                f"checkpoint-N folder under {output_dir})")
    return path


def save_checkpoint(accelerator, output_dir: Path, step: int, total_limit: int) -> Path:
    final = Path(output_dir) / f"checkpoint-{step}"
    tmp = Path(output_dir) / f".checkpoint-{step}.tmp"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))  # every rank: under DeepSpeed the main process alone hangs
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        ckpts = list_checkpoints(output_dir)
        for old in ckpts[: max(0, len(ckpts) - total_limit)] if total_limit > 0 else []:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def _trim_to_trainable(models, weights, output_dir):
    """save_state hook: keep only trained tensors (a frozen base, e.g. SD's UNet, is not copied)."""
    from accelerate.utils import extract_model_from_parallel

    for model, state in zip(models, weights):
        params = dict(extract_model_from_parallel(model).named_parameters())
        for key in list(state):
            if key in params and not params[key].requires_grad:
                del state[key]


def _progress(enabled: bool):
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TextColumn("eta"),
                    TimeRemainingColumn(), disable=not enabled)


def train(accelerator, tc: TrainConfig, *, phases: list[Phase], dataset, total_steps: int, seed: int,
          output_dir: Path, ema_module: nn.Module | None = None, validate: Callable | None = None,
          resume: str | None = None, description: str = "train") -> dict:
    """Run the loop to `total_steps` optimiser steps; returns {"step", "train_seconds", "ema"}.

    `dataset[i]` returns a dict of tensors; it may define `set_epoch(e)` for seeded augmentation.
    `validate(step, ema)` returns a dict of scalars (and may write images); it runs with the EMA
    weights swapped in.
    """
    output_dir = Path(output_dir)
    state = TrainState()
    accelerator.register_for_checkpointing(state)
    for ph in phases:
        accelerator.register_for_checkpointing(ph.scheduler)
    ema = None
    if ema_module is not None and tc.ema_decay > 0:
        ema = EMA(accelerator.unwrap_model(ema_module), tc.ema_decay)
        accelerator.register_for_checkpointing(ema)
    accelerator.register_save_state_pre_hook(_trim_to_trainable)

    ckpt = resolve_resume(output_dir, resume)
    if ckpt is not None:
        accelerator.print(f"resuming from {ckpt}")
        accelerator.load_state(str(ckpt), strict=False)
    elif resume and resume != "latest":
        raise FileNotFoundError(resume)

    rank, world = accelerator.process_index, accelerator.num_processes
    accum = tc.gradient_accumulation_steps
    n = len(dataset)
    per_rank = math.ceil(n / world)
    batches_per_epoch = max(1, per_rank // tc.batch_size)
    if per_rank < tc.batch_size:
        raise ValueError(f"{n} training pairs over {world} processes is fewer than batch_size="
                         f"{tc.batch_size}; lower train.batch_size")

    def micro_batch(index: int) -> dict:
        epoch, j = divmod(index, batches_per_epoch)
        if hasattr(dataset, "set_epoch"):
            dataset.set_epoch(epoch)
        ids = shard_indices(n, epoch, seed, rank, world)[j * tc.batch_size:(j + 1) * tc.batch_size]
        batch = default_collate([dataset[i] for i in ids])
        return {k: v.to(accelerator.device) if torch.is_tensor(v) else v for k, v in batch.items()}

    best_path = output_dir / "best"  # tc.keep_best: the best validated weights so far, kept across resumes
    best = _read_best(best_path) if tc.keep_best else None

    def log_validation():
        nonlocal best
        if validate is None:
            return
        unwrapped = accelerator.unwrap_model(ema_module) if ema_module is not None else None
        if ema is not None:
            ema.store_and_copy_to(unwrapped)
        try:
            with torch.random.fork_rng(devices=[]):  # validation must not shift the training RNG
                metrics = validate(state.step, ema is not None)
            better = bool(metrics) and (best is None or metrics["psnr"] > best["psnr"] + tc.keep_best_min_delta)
            if tc.keep_best and better and unwrapped is not None:
                best = {"step": state.step, "psnr": metrics["psnr"],
                        "state": {k: v.detach().cpu().clone() for k, v in _trained(unwrapped).items()}}
                _write_best(best_path, best)
        finally:
            if ema is not None:
                ema.restore(unwrapped)
        if metrics:
            accelerator.log({f"val/{k}": v for k, v in metrics.items()}, step=state.step)
            accelerator.print(f"step {state.step}: " + ", ".join(f"{k} {v:.4g}" for k, v in metrics.items()))

    if tc.keep_best and state.step == 0:
        log_validation()  # step 0 is a candidate: a model that starts at the prior is never kept below it

    progress = _progress(accelerator.is_main_process)
    task = progress.add_task(description, total=total_steps, completed=state.step, info="")
    t_start = time.perf_counter() - state.train_seconds
    logs: dict[str, float] = {}
    with progress:
        while state.step < total_steps:
            active = [ph for ph in phases if ph.active(state.step)]
            for ph in active:
                ph.optimizer.zero_grad(set_to_none=True)
            logs = {}
            for j in range(accum):
                batch = micro_batch(state.step * accum + j)
                sync = j == accum - 1
                for ph in active:
                    ctx = contextlib.nullcontext() if sync else accelerator.no_sync(ph.module)
                    with ctx, accelerator.autocast():
                        loss, parts = ph.loss_fn(batch, state.step)
                    with ctx:
                        accelerator.backward(loss / accum)
                    for k, v in parts.items():
                        logs[k] = logs.get(k, 0.0) + float(v) / accum
            skipped = False
            for ph in active:
                params = [p for p in ph.module.parameters() if p.requires_grad]
                norm = accelerator.clip_grad_norm_(params, tc.max_grad_norm if tc.max_grad_norm > 0 else float("inf"))
                bad = torch.tensor([0.0 if torch.isfinite(torch.as_tensor(norm)).all() else 1.0],
                                   device=accelerator.device)
                bad = accelerator.reduce(bad, reduction="sum")  # every process takes the same decision
                if bad.item() > 0 and tc.mixed_precision != "fp16":  # fp16: the grad scaler skips it
                    skipped = True
                    continue
                ph.optimizer.step()
                ph.scheduler.step()
                logs[f"grad_norm_{ph.name}"] = float(norm)
            if skipped:
                state.nonfinite_in_a_row += 1
                state.skipped_total += 1
                accelerator.print(f"warning: non-finite loss or gradient at step {state.step}; step skipped "
                                  f"({state.nonfinite_in_a_row} in a row)")
                if state.nonfinite_in_a_row >= tc.max_nonfinite_steps:
                    raise FloatingPointError(
                        f"{state.nonfinite_in_a_row} steps in a row had non-finite losses or gradients "
                        f"(step {state.step}). Lower the learning rate, use bf16 instead of fp16, or check "
                        f"the data; resume with --resume_from_checkpoint latest.")
            else:
                state.nonfinite_in_a_row = 0
            if ema is not None:
                ema.update(accelerator.unwrap_model(ema_module))
            state.step += 1
            state.train_seconds = time.perf_counter() - t_start
            for ph in phases:
                logs[f"lr_{ph.name}"] = ph.scheduler.get_last_lr()[0]
            if state.step % tc.log_every == 0 or state.step == total_steps:
                accelerator.log(logs, step=state.step)
            main_loss = next((v for k, v in logs.items() if k.startswith("loss")), float("nan"))
            progress.update(task, completed=state.step, info=f"loss {main_loss:.4g}")
            if tc.checkpointing_steps > 0 and (state.step % tc.checkpointing_steps == 0 or state.step == total_steps):
                save_checkpoint(accelerator, output_dir, state.step, tc.checkpoints_total_limit)
            if tc.validation_steps > 0 and state.step % tc.validation_steps == 0 and state.step < total_steps:
                log_validation()
    log_validation()
    accelerator.wait_for_everyone()
    return {"step": state.step, "train_seconds": state.train_seconds, "ema": ema, "last_logs": logs, "best": best}


def _trained(module: nn.Module) -> dict[str, torch.Tensor]:
    """What a model trains (a hypir teacher: its LoRA adapters only), the part worth keeping."""
    return module.trainable_state_dict() if hasattr(module, "trainable_state_dict") else module.state_dict()


def _write_best(folder: Path, best: dict) -> None:
    from core.checkpoint import atomic_write_json, save_safetensors

    save_safetensors(best["state"], folder / "weights.safetensors")
    atomic_write_json(folder / "best.json", {"step": best["step"], "psnr": best["psnr"]})


def _read_best(folder: Path) -> dict | None:
    from core.checkpoint import load_safetensors, read_json

    if not (folder / "best.json").is_file():
        return None
    return {**read_json(folder / "best.json"), "state": load_safetensors(folder / "weights.safetensors")}
