"""Stage two: adversarially distill the teacher into a one-step latent student.

    accelerate launch distill/run.py --config configs/demo.yaml --teacher runs/demo/teacher
    accelerate launch distill/run.py --config configs/demo.yaml --resume_from_checkpoint latest
    python distill/run.py --config configs/demo.yaml distill.lambda_adv=0      # no adversarial term

L_student = lambda_distill * L_distill(G(z_in), teacher_K(z_in))       teacher outputs, cached
          + lambda_gt      * || G(z_in) - z_target ||^2                 the professional edit (paired only)
          + lambda_adv     * L_gan_G(D(G(z_in), z_in))                  after adv_warmup_steps
L_disc    = L_gan_D(D(z_target, z_in), D(G(z_in), z_in)) + r1_gamma / 2 * R1(reals)

z_in is the latent of prior(x), the teacher's colour prior. With `distill.unpaired: DIR` the
student also learns the teacher's edit of unedited photos (L_distill and the adversarial term on
them); the discriminator's reals and the ground-truth term stay the professional edits.

Writes {output_root}/{name}/student/: checkpoint-N/ (student, discriminator, both optimisers),
logs/, val/, config.yaml and model/ (what eval/ and student.enhance load).
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import time
from pathlib import Path

import torch

from core.checkpoint import resolve_model_dir
from core.cli import load_stage_config, stage_parser
from core.gan import gan_d_loss, gan_g_loss, r1_penalty
from core.models import LoadedModel, load_model
from core.perf import apply_speed_options, math_attention
from core.stage import (
    latent_dataset,
    make_validator,
    open_sources,
    train_and_save,
    unpaired_source,
    write_run_config,
)
from core.trainer import Phase, make_accelerator, make_optimizer
from distill.discriminators import build_discriminator
from distill.losses import distill_loss
from student import Student


def teacher_cache_key(teacher_dir: Path, num_steps: int) -> str:
    """Identifies the teacher's weights and sampler, so retrained teachers never reuse stale targets."""
    h = hashlib.sha1()
    for f in sorted(teacher_dir.glob("*.safetensors")):
        h.update(f.read_bytes())
    return f"teacher-{h.hexdigest()[:12]}-k{num_steps}"


def add_teacher_targets(cfg, dataset, teacher, teacher_dir: Path, accelerator) -> None:
    """The teacher's K-step output for every training latent, as `z_teacher` in each batch: the
    teacher is deterministic, so the targets are computed once (main process first) and cached."""
    if not cfg.distill.cache_teacher:
        return  # computed per batch instead (teacher_target below)
    cache = Path(cfg.experiment.output_root) / "cache" / "teacher"
    key = teacher_cache_key(teacher_dir, teacher.net.num_steps)
    sample = lambda z: teacher.predict(z.to(accelerator.device))  # noqa: E731
    if accelerator.is_main_process:
        dataset.add_target("z_teacher", sample, cache, key)
    accelerator.wait_for_everyone()
    if not accelerator.is_main_process:
        dataset.add_target("z_teacher", sample, cache, key, show_progress=False)


def losses(d, accelerator, teacher, student_p, disc_p, real_label: float):
    """(disc_loss, student_loss), each `(batch, step) -> (loss, logs)`: the equations at the top."""
    adversarial = lambda step: d.lambda_adv > 0 and step >= d.adv_warmup_steps  # noqa: E731

    def teacher_target(batch):
        return batch["z_teacher"] if "z_teacher" in batch else teacher.predict(batch["z_in"])

    def disc_loss(batch, step):
        z_in, paired = batch["z_in"], batch["has_target"] > 0
        with torch.no_grad():
            fake = student_p(z_in)
        if not paired.any():  # unpaired photos only: no professional edit to show D, so no D step
            return disc_p(fake.detach(), z_in).sum() * 0.0, {}
        real = batch["z_target"][paired].detach().requires_grad_(d.r1_gamma > 0)
        with math_attention() if d.r1_gamma > 0 else contextlib.nullcontext():  # R1 needs 2nd derivatives
            real_logits = disc_p(real, z_in[paired])
        loss = gan_d_loss(d.gan_loss, real_logits, disc_p(fake.detach(), z_in), real_label=real_label)
        parts = {"loss_d": loss.detach()}
        if d.r1_gamma > 0:
            r1 = r1_penalty(real_logits, real)
            loss = loss + d.r1_gamma / 2 * r1  # gamma / 2 * E ||grad_x D(x)||^2 on the reals
            parts["r1"] = r1.detach()
        return loss, parts

    def student_loss(batch, step):
        z_in = batch["z_in"]
        z_out = student_p(z_in)
        l_distill = distill_loss(d.distill_loss, z_out, teacher_target(batch))
        loss = d.lambda_distill * l_distill
        parts = {"loss_distill": l_distill.detach()}
        if d.lambda_gt > 0:
            w = batch["has_target"].float().view(-1, 1, 1, 1)  # unpaired photos have no edit to match
            err = w * (z_out.float() - batch["z_target"].float()) ** 2  # || G(z_in) - z_target ||^2
            l_gt = err.sum() / (w.sum().clamp(min=1) * err[0].numel())
            loss = loss + d.lambda_gt * l_gt
            parts["loss_gt"] = l_gt.detach()
        if adversarial(step):
            # the unwrapped D: its parameters are frozen here, so DDP must not wait for their gradients
            d_raw = accelerator.unwrap_model(disc_p)
            d_raw.requires_grad_(False)
            l_adv = gan_g_loss(d.gan_loss, d_raw(z_out, z_in))
            for p in d_raw.trainable_parameters():
                p.requires_grad_(True)
            loss = loss + d.lambda_adv * l_adv
            parts["loss_adv"] = l_adv.detach()
        return loss, parts

    return adversarial, disc_loss, student_loss


def main(argv=None) -> dict:
    parser = stage_parser("Stage two: distill the teacher into a one-step student.")
    parser.add_argument("--teacher", default=None, help="teacher run or model folder (default: the config's)")
    args = parser.parse_intermixed_args(argv)
    cfg = load_stage_config(args)
    d = cfg.distill
    if d.keep_best_min_delta >= 0:
        cfg.train.keep_best_min_delta = d.keep_best_min_delta
    out_dir = Path(args.output_dir) if args.output_dir else cfg.run_dir(d.output_name)
    total_steps = args.max_train_steps or d.train_steps
    accelerator = make_accelerator(cfg.train, out_dir, cfg.experiment.seed)
    write_run_config(cfg, out_dir, accelerator)
    wall_start = time.time()

    # teacher and its codec (the student works in the teacher's latent space)
    teacher_dir = resolve_model_dir(args.teacher or cfg.run_dir("teacher"))
    teacher = load_model(teacher_dir, accelerator.device)
    teacher.net.requires_grad_(False)
    codec = teacher.codec

    # data: cached latents (through the teacher's prior), unpaired photos, the teacher's outputs for all
    train_src, val_src = open_sources(cfg, accelerator)
    dataset = latent_dataset(cfg, train_src, codec, accelerator, prior=teacher.prior)
    if d.unpaired:
        photos = unpaired_source(d.unpaired, cfg.data.max_pixels)
        dataset.extend(latent_dataset(cfg, photos, codec, accelerator, prior=teacher.prior, paired=False))
    add_teacher_targets(cfg, dataset, teacher, teacher_dir, accelerator)

    # student, discriminator, optimisers
    torch.manual_seed(cfg.experiment.seed)
    student = Student.from_config(cfg.student, codec.channels, teacher=teacher.net)
    # only the UNet discriminator trains a copy of the flow teacher's encoder; the others need none
    unet_disc = d.discriminator.kind == "unet" and teacher.kind == "flow"
    disc = build_discriminator(d.discriminator, codec.channels, decode=codec.decode,
                               teacher_unet=copy.deepcopy(teacher.net.net) if unet_disc else None,
                               unet_timestep=getattr(teacher.net, "t_scale", 1000.0)).to(accelerator.device)
    apply_speed_options(cfg.train, student, codec)  # gradient checkpointing, attention kernel, TF32
    opt_g, sched_g = make_optimizer(student.parameters(), d.learning_rate, cfg.train, total_steps)
    opt_d, sched_d = make_optimizer(disc.trainable_parameters(), d.disc_learning_rate, cfg.train, total_steps)
    student_p, disc_p, opt_g, opt_d = accelerator.prepare(student, disc, opt_g, opt_d)
    # real label 0.8 for the OpenCLIP heads (label smoothing), else 1
    adversarial, disc_loss, student_loss = losses(d, accelerator, teacher, student_p, disc_p, disc.real_label)

    phases = [Phase("disc", disc_p, opt_d, sched_d, disc_loss, active=adversarial),
              Phase("student", student_p, opt_g, sched_g, student_loss)]
    validate = make_validator(cfg, accelerator, val_src,
                              LoadedModel(student, {}, codec, accelerator.device, prior=teacher.prior), out_dir)
    teacher_psnr = teacher.manifest.get("metrics", {}).get("psnr", float("nan"))
    return train_and_save(
        accelerator, cfg, args, stage="student", phases=phases, dataset=dataset, total_steps=total_steps,
        out_dir=out_dir, model=student_p, validate=validate, description="distill", tracker="distill",
        codec=teacher.manifest["codec"], wall_start=wall_start, prior=teacher.prior,
        label=f"student (1 step; teacher K={teacher.net.num_steps}: {teacher_psnr:.2f} dB)", manifest={
            "teacher": str(teacher_dir), "teacher_metrics": teacher.manifest.get("metrics", {}),
            "function_evals": 1, "lambda_adv": d.lambda_adv, "discriminator": d.discriminator.kind,
            "unpaired": d.unpaired or None})


if __name__ == "__main__":
    main()
