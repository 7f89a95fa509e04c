"""Architecture-only model folders: the public hyperparameters of the real networks, no weights.

    configs/arch/sd21-base/          unet/, vae/, scheduler/ configs of stabilityai/stable-diffusion-2-1-base
    configs/arch/sdxl-vae-fp16-fix/  config.json of madebyollin/sdxl-vae-fp16-fix (the SDXL VAE)

With `teacher.hypir.random_init` / `codec.random_init` the real-size networks are built from them
with seeded random weights: the memory and time of a real step, offline. `python -m core.arch
tiny OUT` writes the same folders scaled down (widths in proportion, one layer per block, same
block types and depth), so that tests and `scripts/gpu_check.sh --dry` run the same code path in
seconds; it also writes a tiny OpenCLIP ConvNeXt config for the GAN term.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

ARCH = Path(__file__).resolve().parents[1] / "configs" / "arch"
TINY_OPENCLIP = {"embed_dim": 32, "vision_cfg": {"timm_model_name": "convnext_atto", "timm_model_pretrained": False,
                                                 "timm_pool": "", "timm_proj": "linear", "image_size": 32},
                 "text_cfg": {"context_length": 8, "vocab_size": 64, "width": 16, "heads": 2, "layers": 1}}


def _shrink(config: dict, first_width: int) -> dict:
    """The same architecture with the first block `first_width` wide (the others in proportion,
    multiples of 8), one layer per block, 8 norm groups."""
    c = dict(config)
    widths = c["block_out_channels"]
    c["block_out_channels"] = [max(8, round(w * first_width / widths[0] / 8) * 8) for w in widths]
    c["layers_per_block"] = 1
    c["norm_num_groups"] = 8
    if c.get("_class_name") == "UNet2DConditionModel":
        c["attention_head_dim"] = [4] * len(c["block_out_channels"])  # SD 2's name for the head count
        c["cross_attention_dim"] = 32
    return c


def write_tiny(out: str | Path, first_width: int = 16) -> Path:
    """Scaled-down copies of every folder under configs/arch, plus openclip-tiny.json, in `out`."""
    out = Path(out)
    for src in ARCH.rglob("*.json"):
        dst = out / src.relative_to(ARCH)
        dst.parent.mkdir(parents=True, exist_ok=True)
        config = json.loads(src.read_text())
        if "block_out_channels" in config:
            config = _shrink(config, first_width)
            dst.write_text(json.dumps(config, indent=1))
        else:
            shutil.copyfile(src, dst)  # the scheduler: no size
    (out / "openclip-tiny.json").write_text(json.dumps(TINY_OPENCLIP))
    return out


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description="Write scaled-down architecture folders for tests and dry runs.")
    p.add_argument("command", choices=["tiny"])
    p.add_argument("out")
    p.add_argument("--first-width", type=int, default=16, help="width of the first block (others in proportion)")
    args = p.parse_args(argv)
    print(write_tiny(args.out, args.first_width))


if __name__ == "__main__":
    main()
