"""Network building blocks shared by the teacher and the student."""

from __future__ import annotations

import torch
from diffusers import UNet2DModel


def make_unet(in_channels: int, out_channels: int, block_out_channels, layers_per_block: int,
              norm_num_groups: int, mid_attention: bool = True) -> UNet2DModel:
    """A convolutional diffusers UNet; attention only in the middle block, for global context
    (the edit is mostly a per-image tone and colour transform, so the net must see the whole image)."""
    n = len(block_out_channels)
    return UNet2DModel(
        in_channels=in_channels, out_channels=out_channels, block_out_channels=tuple(block_out_channels),
        layers_per_block=layers_per_block, down_block_types=("DownBlock2D",) * n,
        up_block_types=("UpBlock2D",) * n, norm_num_groups=norm_num_groups,
        add_attention=mid_attention, attention_head_dim=8)


def to_channels_last(module: torch.nn.Module) -> torch.nn.Module:
    """NHWC weights: oneDNN's convolutions (forward and backward) run many times faster on CPU."""
    return module.to(memory_format=torch.channels_last)


def run_unet(net: UNet2DModel, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """net(x, t).sample, feeding x in the memory format of the net's weights."""
    if net.conv_in.weight.is_contiguous(memory_format=torch.channels_last) and x.dim() == 4:
        x = x.contiguous(memory_format=torch.channels_last)
    return net(x, t).sample


class FastGroupNorm(torch.nn.GroupNorm):
    """A GroupNorm that, for inference on the CPU, normalises channels_last float32 maps in one C call
    (core.kernels.group_norm_nhwc: ~40 us where PyTorch's channels_last path takes ~200 us at the
    student's working size); anything else (autograd, other layouts, dtypes or devices) goes to
    nn.GroupNorm. Same parameters and state dict: fast_group_norms swaps the class in place."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from core import kernels

        if (self.affine and x.dtype == torch.float32 and x.dim() == 4
                and x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
                and kernels.cpu_inference(x, self.weight, self.bias)):
            return kernels.group_norm_nhwc(x, self.num_groups, self.weight, self.bias, self.eps)
        return super().forward(x)


def fast_group_norms(module: torch.nn.Module) -> torch.nn.Module:
    """Every nn.GroupNorm in `module` becomes a FastGroupNorm (in place; the same numbers within float
    rounding, tests/test_speed_path.py). For models loaded to edit photos (core.models.LoadedModel)."""
    for m in module.modules():
        if type(m) is torch.nn.GroupNorm:
            m.__class__ = FastGroupNorm
    return module
