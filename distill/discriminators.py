"""Discriminators for stage two. Each sees a pair (z, z_in): a candidate edit z (the student's
output, or a real edit) and the input it should be the edit of, both latents (B, C, h, w), and
returns a list of logits tensors (one per scale or head; higher = "looks real").

    patchgan  LatentPatchGAN: a small multi-scale PatchGAN on the latents themselves.
    openclip  OpenCLIPDiscriminator (in core/discriminators.py, shared with the hypir teacher): a
              frozen OpenCLIP image tower on DECODED pixels with small
              trainable spectral-norm heads (as HYPIR and pix2pix-turbo do).
    unet      UNetEncoderDiscriminator: the flow teacher's own frozen UNet encoder on latents with
              small trainable heads (LADD / DMD2 style, no decoding).

Every module has `trainable_parameters()` (the heads only: give these to the optimiser) and
`real_label` (the BCE target for real samples that `losses.ns_d` should use). Frozen parts stay
in eval mode and have requires_grad False, but gradients still flow through them to z.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

from core.config import DiscriminatorConfig
from core.discriminators import Discriminator, OpenCLIPDiscriminator, conv_head, freeze

# --- patchgan -----------------------------------------------------------------------------

class _PatchNet(nn.Module):
    """Spectral-norm 3x3 convs with LeakyReLU; after each of the first num_layers + 1 convs the map
    is halved (2x2 average pool) only while its short side is >= 8, so 8x8 latents still give a
    map of patch logits instead of collapsing to nothing."""

    def __init__(self, in_channels: int, base: int, num_layers: int):
        super().__init__()
        widths = [base * min(2 ** i, 8) for i in range(num_layers + 1)]
        chans = [in_channels] + widths
        self.convs = nn.ModuleList(
            spectral_norm(nn.Conv2d(a, b, 3, padding=1)) for a, b in itertools.pairwise(chans))
        self.out = spectral_norm(nn.Conv2d(widths[-1], 1, 3, padding=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for conv in self.convs:
            x = F.leaky_relu(conv(x), 0.2)
            if min(x.shape[-2:]) >= 8:
                x = F.avg_pool2d(x, 2)
        return self.out(x)


class LatentPatchGAN(Discriminator):
    """Multi-scale PatchGAN on latents: scale s sees cat([z, z_in]) average-pooled by 2^s.

    (z, z_in) each (B, C, h, w), h, w >= 1 -> list of num_scales logits maps (B, 1, h_s, w_s).
    No batch/instance norm: spectral norm alone keeps D Lipschitz and behaves with R1 and with
    real and fake batches seen in separate calls.
    """

    def __init__(self, channels: int, base: int = 64, num_layers: int = 3, num_scales: int = 2):
        super().__init__()
        if num_scales < 1 or num_layers < 0:
            raise ValueError(f"LatentPatchGAN: num_scales={num_scales} must be >= 1 and "
                             f"num_layers={num_layers} >= 0 (distill.discriminator)")
        self.nets = nn.ModuleList(_PatchNet(2 * channels, base, num_layers) for _ in range(num_scales))

    def forward(self, z: torch.Tensor, z_in: torch.Tensor) -> list[torch.Tensor]:
        x = torch.cat([z, z_in], dim=1)
        logits = []
        for s, net in enumerate(self.nets):
            if s > 0 and min(x.shape[-2:]) >= 2:
                x = F.avg_pool2d(x, 2)
            logits.append(net(x))
        return logits


# --- unet ---------------------------------------------------------------------------------

class UNetEncoderDiscriminator(Discriminator):
    """The flow teacher's frozen diffusers UNet2DModel encoder (conv_in, down_blocks, mid_block) at
    a fixed timestep, with a trainable spectral-norm conv head on each down block's output and on
    the mid block's: (z, z_in) (B, C, h, w) -> list of (B, 1, h / 2^i, w / 2^i) logits.

    The UNet sees cat([z, z_in]) exactly as the teacher sees cat([z_t, z_in]), so in_channels
    must be 2C. timestep is in the network's units: t * t_scale, default 1000 = t 1.0 (the end of
    the flow, where z_t is a finished edit). The module is frozen IN PLACE (requires_grad False,
    eval mode): pass a copy if you still train it elsewhere.
    """

    def __init__(self, unet: nn.Module, channels: int, timestep: float = 1000.0, head_channels: int = 64):
        super().__init__()
        missing = [a for a in ("conv_in", "time_proj", "time_embedding", "down_blocks", "mid_block")
                   if not hasattr(unet, a)]
        if missing:
            raise TypeError(f"UNetEncoderDiscriminator needs a diffusers UNet2DModel (the flow "
                            f"teacher's .net); {type(unet).__name__} lacks {missing}")
        if unet.config.in_channels != 2 * channels:
            raise ValueError(f"UNetEncoderDiscriminator: the UNet takes {unet.config.in_channels} "
                             f"channels, but cat([z, z_in]) has 2 x {channels}; pass the flow "
                             f"teacher's network for the same codec")
        self.unet, self.timestep = freeze(unet), float(timestep)
        widths = list(unet.config.block_out_channels)
        if unet.mid_block is not None:
            widths.append(widths[-1])
        self.heads = nn.ModuleList(conv_head(w, head_channels) for w in widths)

    def _frozen(self) -> list[nn.Module]:
        return [self.unet]

    def forward(self, z: torch.Tensor, z_in: torch.Tensor) -> list[torch.Tensor]:
        unet = self.unet
        dtype = unet.conv_in.weight.dtype
        x = torch.cat([z, z_in], dim=1).to(dtype)
        if unet.config.center_input_sample:
            x = 2 * x - 1
        t = torch.full((x.shape[0],), self.timestep, device=x.device)
        emb = unet.time_embedding(unet.time_proj(t).to(dtype))
        h, skip, feats = unet.conv_in(x), x, []
        for block in unet.down_blocks:
            if hasattr(block, "skip_conv"):  # diffusers' SkipDownBlock2D variants carry a skip image
                h, _, skip = block(hidden_states=h, temb=emb, skip_sample=skip)
            else:
                h, _ = block(hidden_states=h, temb=emb)
            feats.append(h)
        if unet.mid_block is not None:
            feats.append(unet.mid_block(h, emb))
        return [head(f.float()) for head, f in zip(self.heads, feats)]


# --- factory ------------------------------------------------------------------------------

def build_discriminator(dcfg: DiscriminatorConfig, channels: int, *,
                        decode: Callable[[torch.Tensor], torch.Tensor] | None = None,
                        teacher_unet: nn.Module | None = None,
                        unet_timestep: float = 1000.0) -> Discriminator:
    """The discriminator `distill.discriminator.kind` names, for latents with `channels` channels.

    decode (openclip only): the codec's z -> (B, 3, H, W) in [0, 1]. teacher_unet (unet only): the
    flow teacher's UNet2DModel; unet_timestep = t * teacher t_scale (1000 = the end of the flow).
    dcfg.channels is the PatchGAN's base width and the heads' hidden width.
    """
    if dcfg.kind == "patchgan":
        return LatentPatchGAN(channels, dcfg.channels, dcfg.num_layers, dcfg.num_scales)
    if dcfg.kind == "openclip":
        if decode is None:
            raise ValueError("distill.discriminator.kind=openclip works on pixels: pass the codec's "
                             "decode to build_discriminator(..., decode=codec.decode)")
        return OpenCLIPDiscriminator(decode, dcfg.openclip_model, dcfg.openclip_pretrained,
                                     dcfg.openclip_image_size, head_channels=dcfg.channels)
    if dcfg.kind == "unet":
        if teacher_unet is None:
            raise ValueError("distill.discriminator.kind=unet needs the flow teacher's UNet "
                             "(teacher.kind=flow): build_discriminator(..., teacher_unet=teacher.net)")
        return UNetEncoderDiscriminator(teacher_unet, channels, unet_timestep, dcfg.channels)
    raise ValueError(f"distill.discriminator.kind={dcfg.kind!r} is not one of patchgan, openclip, unet")
