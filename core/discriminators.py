"""Discriminator parts shared by stage one (the hypir teacher's GAN term, after HYPIR) and stage two
(distillation): the base class, the spectral-norm conv head and the frozen OpenCLIP discriminator.

Each discriminator sees a pair (z, z_in): a candidate edit z (a model's output, or a real edit)
and the input it should be the edit of, both latents (B, C, h, w), and returns a list of logits
tensors (one per scale or head; higher = "looks real"). `trainable_parameters()` are the heads
only (give these to the optimiser); `real_label` is the BCE target for reals (core.gan.ns_d).
Frozen parts stay in eval mode and have requires_grad False, but gradients still flow through
them to z.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm


class Discriminator(nn.Module):
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


def freeze(module: nn.Module) -> nn.Module:
    module.requires_grad_(False)
    return module.eval()


def conv_head(in_channels: int, hidden: int) -> nn.Sequential:
    """(B, in_channels, h, w) features -> (B, 1, h, w) logits."""
    return nn.Sequential(
        spectral_norm(nn.Conv2d(in_channels, hidden, 3, padding=1)), nn.LeakyReLU(0.2),
        spectral_norm(nn.Conv2d(hidden, 1, 1)))


# --- openclip -----------------------------------------------------------------------------

def load_openclip_visual(model_name: str, pretrained: str = "", image_size: int = 224) -> nn.Module:
    """The image tower (`model.visual`) of an OpenCLIP model, in eval mode.

    model_name: an OpenCLIP model name, or the path of a model config .json (registered first).
    pretrained: an OpenCLIP tag (e.g. "laion400m_s13b_b51k" for convnext_base; needs the hub or
    its cache), a local checkpoint file, or "" for random weights (tests only).
    """
    import open_clip

    if model_name.endswith(".json"):  # a local model config (e.g. a tiny one for tests): register it
        if not Path(model_name).is_file():
            raise RuntimeError(f"OpenCLIP model config '{model_name}' not found. Fix: give the path of an "
                               "OpenCLIP model .json, or a name from open_clip.list_models()")
        open_clip.add_model_config(model_name)
        model_name = Path(model_name).stem
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
                      "(openclip_pretrained is empty): fine for tests only.", stacklevel=2)
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


class OpenCLIPDiscriminator(Discriminator):
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
        self.visual = freeze(visual if visual is not None
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
        self.heads = nn.ModuleList(conv_head(2 * f.shape[1], head_channels) for f in feats)
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
