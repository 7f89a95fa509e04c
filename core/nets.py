"""Network building blocks shared by the teacher and the student."""

from __future__ import annotations

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
