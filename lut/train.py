"""The fast baseline: train the image-adaptive 3D LUT (lut/model.py) on the same pairs.

    accelerate launch lut/train.py --config configs/demo.yaml
    accelerate launch lut/train.py --config configs/demo.yaml --resume_from_checkpoint latest
    torchrun --nproc_per_node 2 lut/train.py --config configs/demo.yaml   # two CPU processes
    python lut/train.py --config configs/demo.yaml lut.train_steps=500 lut.num_basis=5

Pixel space, no codec: random crops (data.crop_size) of the pairs resized to data.train_long_side,
loss = MSE(LUT(x), y) + lut.lambda_tv * R_s + lut.lambda_mono * R_m. Writes
{output_root}/{name}/lut/: checkpoint-N/ (resumable), logs/ (TensorBoard), val/ (input | output |
target grids), config.yaml and model/ (what eval/ opens with core.models.load_model).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from any folder

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from core.cli import load_stage_config, stage_parser  # noqa: E402
from core.data import PairedDataset  # noqa: E402
from core.models import serving_manifest  # noqa: E402
from core.stage import finish, make_validator, open_sources, tracker_config, write_run_config  # noqa: E402
from core.trainer import Phase, make_accelerator, make_optimizer, train  # noqa: E402
from lut.model import AdaptiveLUT, monotonicity_loss, tv_loss  # noqa: E402


def main(argv=None) -> dict:
    args = stage_parser("Train the image-adaptive 3D LUT baseline.").parse_intermixed_args(argv)
    cfg = load_stage_config(args)
    c = cfg.lut
    out_dir = Path(args.output_dir) if args.output_dir else cfg.run_dir("lut")
    total_steps = args.max_train_steps or c.train_steps
    accelerator = make_accelerator(cfg.train, out_dir, cfg.experiment.seed)
    write_run_config(cfg, out_dir, accelerator)
    wall_start = time.time()

    # data: pixel crops, the same crop and flip for both images of a pair
    train_src, val_src = open_sources(cfg, accelerator)
    dataset = PairedDataset(train_src, crop_size=cfg.data.crop_size, long_side=cfg.data.train_long_side,
                            factor=1, flip=cfg.data.flip, seed=cfg.experiment.seed, train=True)

    # model, optimiser
    torch.manual_seed(cfg.experiment.seed)  # same initial weights on every process
    net = AdaptiveLUT(c.num_basis, c.size, c.cnn_size)
    optimizer, scheduler = make_optimizer(net.parameters(), c.learning_rate, cfg.train, total_steps)
    model, optimizer = accelerator.prepare(net, optimizer)

    def loss_fn(batch, step):
        out, lut = model(batch["input"], return_lut=True)
        mse = F.mse_loss(out.float(), batch["target"])  # || LUT_x(x) - y ||^2
        tv, mono = tv_loss(lut.float()), monotonicity_loss(lut.float())
        loss = mse + c.lambda_tv * tv + c.lambda_mono * mono
        return loss, {"loss": loss.detach(), "loss_mse": mse.detach(), "loss_tv": tv.detach(),
                      "loss_mono": mono.detach()}

    validate = make_validator(cfg, accelerator, val_src, accelerator.unwrap_model(model), out_dir)
    accelerator.init_trackers("lut", config=tracker_config(cfg))
    result = train(accelerator, cfg.train, phases=[Phase("lut", model, optimizer, scheduler, loss_fn)],
                   dataset=dataset, total_steps=total_steps, seed=cfg.experiment.seed, output_dir=out_dir,
                   ema_module=model, validate=validate, resume=args.resume_from_checkpoint,
                   description=f"3D LUT ({c.num_basis} x {c.size}^3)")

    # final model: the EMA weights, with the validation figures in the manifest
    metrics = {}
    if accelerator.is_main_process:
        unwrapped, metrics = finish(accelerator, model, result, validate)
        unwrapped.save_pretrained(out_dir / "model", manifest={
            "stage": "lut", **serving_manifest(cfg, codec=None), "step": result["step"],
            "train_seconds": result["train_seconds"], "wall_seconds": time.time() - wall_start,
            "metrics": metrics, "train_pairs": len(dataset), "final_loss": result["last_logs"].get("loss")})
        psnr, ident = metrics.get("psnr", 0.0), metrics.get("identity_psnr", 0.0)
        print(f"3D LUT on validation: PSNR {psnr:.2f} dB vs identity {ident:.2f} dB (+{psnr - ident:.2f} dB) "
              f"after {result['train_seconds']:.0f} s of training; model saved to {out_dir / 'model'}")
    accelerator.end_training()
    return metrics


if __name__ == "__main__":
    main()
