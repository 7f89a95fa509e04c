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

import time
from pathlib import Path

import torch
import torch.nn.functional as F

from core.cli import load_stage_config, stage_parser
from core.data import PairedDataset
from core.stage import make_validator, open_sources, train_and_save, write_run_config
from core.trainer import Phase, make_accelerator, make_optimizer
from lut.model import AdaptiveLUT, monotonicity_loss, tv_loss


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
    return train_and_save(
        accelerator, cfg, args, stage="lut", phases=[Phase("lut", model, optimizer, scheduler, loss_fn)],
        dataset=dataset, total_steps=total_steps, out_dir=out_dir, model=model, validate=validate,
        description=f"3D LUT ({c.num_basis} x {c.size}^3)", codec=None, wall_start=wall_start, label="3D LUT")


if __name__ == "__main__":
    main()
