"""Codecs: the "latent" space the teacher and student work in. One interface:

    z = codec.encode(x)   # x (B, 3, H, W) float in [0, 1], H and W multiples of codec.factor
    x = codec.decode(z)   # z (B, codec.channels, H / factor, W / factor) -> (B, 3, H, W), not clamped

- `pixel`: lossless space-to-depth (pixel-unshuffle), centred to [-1, 1]. No weights, exact.
- `sd-vae`: diffusers `AutoencoderKL` (SD 2.1's VAE, sd-vae-ft-mse, SDXL fp16-fix) from a hub
  id or a local folder; latents are the posterior mode times the scaling factor.
- `taesd`: diffusers `AutoencoderTiny`, a fraction of the VAE's cost.
- `tae`: our own TAESD-family module (core/tae.py) on the published encoder/decoder state dicts
  (TAESD, TAESDXL, TAEF2, ...) from a local folder; images in [0, 1], latents as the encoder gives.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from core import kernels
from core.config import CodecConfig


class CodecError(ValueError):
    pass


class Codec(nn.Module):
    factor: int
    channels: int

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    @property
    def cache_key(self) -> str:
        """Identifies the codec and its weights, for latent caches."""
        raise NotImplementedError

    def check_size(self, x: torch.Tensor) -> None:
        h, w = x.shape[-2:]
        if h % self.factor or w % self.factor:
            raise CodecError(f"image size {w}x{h} is not a multiple of the codec factor "
                             f"{self.factor}; resize or crop it first (core.data.fit_long_side)")


def _c_shuffle(x: torch.Tensor) -> bool:
    """Can the pixel codec's C passes (core.kernels.pixel_unshuffle_cl / pixel_shuffle_cl) take x?"""
    return x.dtype == torch.float32 and x.dim() == 4 and kernels.cpu_inference(x)


class PixelCodec(Codec):
    def __init__(self, factor: int = 4):
        super().__init__()
        self.factor = factor
        self.channels = 3 * factor * factor

    def encode(self, x):
        self.check_size(x)
        if torch.is_grad_enabled() and x.requires_grad:
            return F.pixel_unshuffle(x * 2 - 1, self.factor)
        # inference: one pass straight into channels_last, the layout the networks take (pixel_unshuffle,
        # then the networks' channels_last copy: 1.3 ms for 4 working copies of 256x160, this 0.5, the C
        # pass 0.1); same values
        b, c, h, w = x.shape
        f = self.factor
        if _c_shuffle(x):
            return kernels.pixel_unshuffle_cl(x.contiguous(), f, 2.0, -1.0)
        z = torch.empty(b, h // f, w // f, c * f * f, dtype=x.dtype, device=x.device)
        torch.mul(x.reshape(b, c, h // f, f, w // f, f).permute(0, 2, 4, 1, 3, 5), 2,
                  out=z.view(b, h // f, w // f, c, f, f))
        return z.sub_(1).permute(0, 3, 1, 2)

    def decode(self, z):
        if torch.is_grad_enabled() and z.requires_grad:
            return (F.pixel_shuffle(z, self.factor) + 1) / 2
        # inference: one strided pass from the networks' channels_last latents into a plain image (the
        # shuffle, + 1 and / 2 were three passes and three allocations); same values
        b, cf, h, w = z.shape
        f = self.factor
        if _c_shuffle(z):
            return kernels.pixel_shuffle_cl(z.contiguous(memory_format=torch.channels_last), f, 0.5, 0.5)
        c = cf // (f * f)
        out = torch.empty(b, c, h * f, w * f, dtype=z.dtype, device=z.device)
        torch.mul(z.permute(0, 2, 3, 1).reshape(b, h, w, c, f, f).permute(0, 3, 1, 4, 2, 5), 0.5,
                  out=out.view(b, c, h, f, w, f))
        return out.add_(0.5)

    @property
    def cache_key(self):
        return f"pixel-f{self.factor}"


def _weights_digest(module: nn.Module) -> str:
    """A short digest of a module's config and first/last weights (cheap, content based)."""
    h = hashlib.sha1(json.dumps(dict(getattr(module, "config", {})), sort_keys=True, default=str).encode())
    params = list(module.state_dict().values())
    for t in params[:2] + params[-2:]:
        h.update(t.detach().float().cpu().numpy().tobytes()[:4096])
    return h.hexdigest()[:12]


def _load_diffusers(cls, cfg: CodecConfig):
    kwargs = {"subfolder": cfg.subfolder} if cfg.subfolder else {}
    try:
        if cfg.random_init:  # the architecture alone (e.g. configs/arch/...), seeded random weights
            import warnings

            warnings.warn(f"codec.random_init: {cls.__name__} from '{cfg.pretrained}' has RANDOM weights: "
                          "for memory and speed checks only", stacklevel=3)
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(0)
                return cls.from_config(cls.load_config(cfg.pretrained, **kwargs))
        return cls.from_pretrained(cfg.pretrained, **kwargs)
    except (OSError, ValueError) as exc:
        local = Path(cfg.pretrained).exists()
        fix = ("check the folder holds config.json and diffusion_pytorch_model.safetensors"
               if local else "download it once with network (or set HF_HUB_OFFLINE=0), or point "
               "codec.pretrained at a local folder")
        raise CodecError(f"cannot load {cls.__name__} from '{cfg.pretrained}'"
                         f"{' subfolder ' + cfg.subfolder if cfg.subfolder else ''}: {exc}\nFix: {fix}") from exc


class SDVAECodec(Codec):
    def __init__(self, vae, scaling_factor: float = 0.0, tiling: bool = True):
        super().__init__()
        self.vae = vae.eval().requires_grad_(False)
        self.factor = 2 ** (len(vae.config.block_out_channels) - 1)
        self.channels = vae.config.latent_channels
        self.scaling_factor = scaling_factor or vae.config.scaling_factor
        self.shift_factor = getattr(vae.config, "shift_factor", None) or 0.0
        if tiling:
            vae.enable_tiling()  # only kicks in above the VAE's tile size

    @classmethod
    def from_config(cls, cfg: CodecConfig):
        from diffusers import AutoencoderKL

        return cls(_load_diffusers(AutoencoderKL, cfg), cfg.scaling_factor, cfg.tiling)

    def encode(self, x):
        self.check_size(x)
        dist = self.vae.encode(x.to(self.vae.dtype) * 2 - 1).latent_dist
        return (dist.mode() - self.shift_factor) * self.scaling_factor

    def decode(self, z):
        x = self.vae.decode(z.to(self.vae.dtype) / self.scaling_factor + self.shift_factor).sample
        return (x.float() + 1) / 2

    @property
    def cache_key(self):
        return f"sd-vae-{_weights_digest(self.vae)}-s{self.scaling_factor:g}"


class TAESDCodec(Codec):
    def __init__(self, taesd):
        super().__init__()
        self.taesd = taesd.eval().requires_grad_(False)
        # every encoder block after the first halves the size
        self.factor = int(taesd.config.upsampling_scaling_factor) ** (
            len(taesd.config.encoder_block_out_channels) - 1)
        self.channels = taesd.config.latent_channels

    @classmethod
    def from_config(cls, cfg: CodecConfig):
        from diffusers import AutoencoderTiny

        return cls(_load_diffusers(AutoencoderTiny, cfg))

    def encode(self, x):
        self.check_size(x)
        # AutoencoderTiny takes [-1, 1] and returns latents already scaled for the UNet
        return self.taesd.encode(x.to(self.taesd.dtype) * 2 - 1).latents

    def decode(self, z):
        return (self.taesd.decode(z.to(self.taesd.dtype)).sample.float() + 1) / 2

    @property
    def cache_key(self):
        return f"taesd-{_weights_digest(self.taesd)}"


class TAECodec(Codec):
    def __init__(self, encoder: nn.Module, decoder: nn.Module):
        super().__init__()
        self.encoder = encoder.eval().requires_grad_(False)
        self.decoder = decoder.eval().requires_grad_(False)
        strided = [m for m in encoder.modules() if isinstance(m, nn.Conv2d) and m.stride == (2, 2)]
        self.factor = 2 ** len(strided)
        self.channels = encoder[-1].out_channels

    @classmethod
    def from_config(cls, cfg: CodecConfig):
        from core.tae import load_tae

        return cls(*load_tae(cfg.pretrained))

    def encode(self, x):
        self.check_size(x)
        return self.encoder(x.float())  # the TAESD family takes [0, 1] as it is

    def decode(self, z):
        return self.decoder(z.float())

    @property
    def cache_key(self):
        return f"tae-{_weights_digest(self.encoder)}-{_weights_digest(self.decoder)}"


def build_codec(cfg: CodecConfig) -> Codec:
    if cfg.kind == "pixel":
        return PixelCodec(cfg.factor)
    if cfg.kind == "sd-vae":
        return SDVAECodec.from_config(cfg)
    if cfg.kind == "taesd":
        return TAESDCodec.from_config(cfg)
    if cfg.kind == "tae":
        return TAECodec.from_config(cfg)
    raise CodecError(f"codec.kind={cfg.kind!r}: use pixel, sd-vae, taesd or tae")
