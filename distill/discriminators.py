"""Discriminators for stage two. Each sees a pair (z, z_in): a candidate edit z (the student's
output, or a real edit) and the input it should be the edit of, both latents (B, C, h, w), and
returns a list of logits tensors (one per scale or head; higher = "looks real").

    patchgan  LatentPatchGAN: a small multi-scale PatchGAN on the latents themselves.
    openclip  OpenCLIPDiscriminator: a frozen OpenCLIP image tower on DECODED pixels with small
              trainable spectral-norm heads (as HYPIR and pix2pix-turbo do).
    unet      UNetEncoderDiscriminator: the flow teacher's own frozen UNet encoder on latents with
              small trainable heads (LADD / DMD2 style, no decoding).

Every module has `trainable_parameters()` (the heads only: give these to the optimiser) and
`real_label` (the BCE target for real samples that `losses.ns_d` should use). Frozen parts stay
in eval mode and have requires_grad False, but gradients still flow through them to z.
"""

from __future__ import annotations

import itertools
import warnings
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

from core.config import DiscriminatorConfig


class _Discriminator(nn.Module):
    real_label = 1.0

    def _frozen(self) -> list[nn.Module]:
        return []

    def trainable_parameters(self) -> list[nn.Parameter]:
        """The heads' parameters, whatever their requires_grad is at the moment (a training loop
        may switch D off while the generator steps)."""
        frozen = {id(p) for m in self._frozen() for p in m.parameters()}
        return [p for p in self.parameters() if id(p) not in frozen]

    def train(self, mode: bool = True):
        # a frozen feature network stays in eval mode (no dropout / drop-path) whatever D does
        super().train(mode)
        for m in self._frozen():
            m.eval()
        return self


def _freeze(module: nn.Module) -> nn.Module:
    module.requires_grad_(False)
    return module.eval()


def _conv_head(in_channels: int, hidden: int) -> nn.Sequential:
    """(B, in_channels, h, w) features -> (B, 1, h, w) logits."""
    return nn.Sequential(
        spectral_norm(nn.Conv2d(in_channels, hidden, 3, padding=1)), nn.LeakyReLU(0.2),
        spectral_norm(nn.Conv2d(hidden, 1, 1)))


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


class LatentPatchGAN(_Discriminator):
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


# --- openclip -----------------------------------------------------------------------------

def load_openclip_visual(model_name: str, pretrained: str = "", image_size: int = 224) -> nn.Module:
    """The image tower (`model.visual`) of an OpenCLIP model, in eval mode.

    pretrained: an OpenCLIP tag (e.g. "laion400m_s13b_b51k" for convnext_base; needs the hub or
    its cache), a local checkpoint file, or "" for random weights (tests only).
    """
    import open_clip

    try:
        model = open_clip.create_model(model_name, pretrained=pretrained or None,
                                       force_image_size=image_size, pretrained_text=False)
    except Exception as exc:  # open_clip raises RuntimeError for a missing config, tag or download
        known = [m for m in open_clip.list_models() if m == model_name.replace("/", "-")]
        if not known and not model_name.startswith(("hf-hub:", "local-dir:")):
            raise RuntimeError(
                f"distill.discriminator.openclip_model={model_name!r} is not an OpenCLIP model; "
                "use one of open_clip.list_models(), e.g. 'convnext_base'") from exc
        tags = open_clip.list_pretrained_tags_by_model(model_name)
        hub = (open_clip.get_pretrained_cfg(model_name, pretrained) or {}).get("hf_hub", "")
        repo, _, file = hub.rpartition("/")
        where = f" (file {file or 'open_clip_pytorch_model.bin'} of hub repo {repo})" if hub else ""
        raise RuntimeError(
            f"OpenCLIP discriminator: could not load {model_name!r} with "
            f"pretrained={pretrained!r}{where}: {exc}. Offline or no hub access? Put the "
            f"checkpoint file locally and set distill.discriminator.openclip_pretrained to its "
            f"path. Known tags for this model: {tags}.") from exc
    if not pretrained:
        warnings.warn(f"OpenCLIP discriminator {model_name!r} has RANDOM weights "
                      "(distill.discriminator.openclip_pretrained is empty): fine for tests only.", stacklevel=2)
    return model.visual.eval()


def _default_feature_indices(visual: nn.Module) -> list[int]:
    trunk = getattr(visual, "trunk", None)
    if trunk is not None and hasattr(trunk, "stages"):  # timm ConvNeXt: the last three stages
        n = len(trunk.stages)
        return list(range(max(n - 3, 0), n))
    transformer = getattr(visual, "transformer", None)
    if transformer is not None and hasattr(transformer, "resblocks"):  # ViT: 1/3, 2/3, last block
        n = len(transformer.resblocks)
        return sorted({max(n * k // 3 - 1, 0) for k in (1, 2, 3)})
    raise ValueError(f"OpenCLIP discriminator: unsupported image tower {type(visual).__name__}; "
                     "use a ConvNeXt (timm trunk) or ViT OpenCLIP model")


class OpenCLIPDiscriminator(_Discriminator):
    """Frozen OpenCLIP image tower + trainable heads, on decoded pixels.

    decode: z (B, C, h, w) -> image (B, 3, H, W) float in [0, 1]; the image is resized to
    image_size x image_size and normalised with the model's mean/std. Heads: a spectral-norm conv
    head on each of three feature maps (ConvNeXt: the last three stages; ViT: blocks at 1/3, 2/3
    and the end of the tower) and a linear head on the pooled embedding.

    Conditioning on z_in: the input is decoded and passed through the same frozen tower (without
    grad). Each conv head sees the channel concatenation [features(z), features(z_in)] at its
    stage; the pooled head is a projection discriminator (Miyato & Koyama 2018):
    logit = w . e(z) + e(z) . (V e(z_in)). Cost: two tower passes per call.
    real_label = 0.8: the BCE target HYPIR and pix2pix-turbo use with these heads.
    """

    real_label = 0.8

    def __init__(self, decode: Callable[[torch.Tensor], torch.Tensor], model_name: str = "convnext_base",
                 pretrained: str = "", image_size: int = 224, head_channels: int = 64,
                 feature_indices: list[int] | None = None, visual: nn.Module | None = None):
        super().__init__()
        self.decode, self.image_size = decode, image_size
        self.visual = _freeze(visual if visual is not None
                              else load_openclip_visual(model_name, pretrained, image_size))
        cfg = getattr(self.visual, "preprocess_cfg", {})
        mean = cfg.get("mean", (0.48145466, 0.4578275, 0.40821073))  # OpenAI CLIP's, if unset
        std = cfg.get("std", (0.26862954, 0.26130258, 0.27577711))
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)
        self.indices = feature_indices or _default_feature_indices(self.visual)
        with torch.no_grad():  # one dummy pass to learn the feature widths
            device = next(self.visual.parameters()).device
            feats, emb = self._features(torch.zeros(1, 3, image_size, image_size, device=device))
        self.heads = nn.ModuleList(_conv_head(2 * f.shape[1], head_channels) for f in feats)
        self.pooled_head = spectral_norm(nn.Linear(emb.shape[1], 1))
        self.pooled_proj = spectral_norm(nn.Linear(emb.shape[1], emb.shape[1], bias=False))

    def _frozen(self) -> list[nn.Module]:
        return [self.visual]

    def _pixels(self, z: torch.Tensor) -> torch.Tensor:
        """latents -> (B, 3, image_size, image_size), CLIP-normalised; differentiable."""
        x = self.decode(z).float()  # no clamp: it would cut the gradient outside [0, 1]
        if x.shape[-2:] != (self.image_size, self.image_size):
            x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bilinear",
                              align_corners=False, antialias=True)
        return (x - self.mean.to(x.device)) / self.std.to(x.device)

    def _features(self, x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        out = self.visual.forward_intermediates(x, indices=self.indices)
        return out["image_intermediates"], out["image_features"]

    def forward(self, z: torch.Tensor, z_in: torch.Tensor) -> list[torch.Tensor]:
        with torch.no_grad():
            feats_in, emb_in = self._features(self._pixels(z_in))
        feats, emb = self._features(self._pixels(z))
        logits = [head(torch.cat([f, f_in], dim=1))
                  for head, f, f_in in zip(self.heads, feats, feats_in)]
        logits.append(self.pooled_head(emb) + (emb * self.pooled_proj(emb_in)).sum(1, keepdim=True))
        return logits


# --- unet ---------------------------------------------------------------------------------

class UNetEncoderDiscriminator(_Discriminator):
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
        self.unet, self.timestep = _freeze(unet), float(timestep)
        widths = list(unet.config.block_out_channels)
        if unet.mid_block is not None:
            widths.append(widths[-1])
        self.heads = nn.ModuleList(_conv_head(w, head_channels) for w in widths)

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
                        unet_timestep: float = 1000.0) -> _Discriminator:
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
