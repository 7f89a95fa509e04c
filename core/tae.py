"""The TAESD family of tiny autoencoders (TAESD, TAESDXL, TAESD3, TAEF1, TAEF2), our own module.

    enc, dec = load_tae("../shared/weights/taef2")     # a folder with *encoder* and *decoder* files
    z = enc(x)                                         # x (B, 3, H, W) in [0, 1] -> (B, C, H/8, W/8)
    x = dec(z)                                         # -> (B, 3, H, W), about [0, 1], not clamped

The layout is the published one (github.com/madebyollin/taesd, MIT), numbered as
`nn.Sequential` children so that the released state dicts load as they are:

    encoder: conv(3,64) B | conv/2 B B B | conv/2 B B B | conv/2 B B B | conv(64, C)
    decoder: clamp conv(C,64) relu B B B | up conv B B B | up conv B B B | up conv B | conv(64,3)
    B(x) = relu(conv-relu-conv-relu-conv(x) + x),   clamp(z) = 3 tanh(z / 3)

The FLUX.2 variant (TAEF2) adds a residual branch x + 1x1 conv -> GroupNorm(4) -> ReLU -> 1x1
conv (width 256) in front of some blocks (the encoder's last three, the decoder's first three).
Which blocks have it, and the latent channels C, are read from the weights, never assumed.
diffusers' AutoencoderTiny has no such branch, which is why this module exists.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

WIDTH = 64


class TAEError(ValueError):
    """A TAESD-family weights file or folder that cannot be used, with the path and the fix."""


def _conv(n_in: int, n_out: int, **kwargs) -> nn.Conv2d:
    return nn.Conv2d(n_in, n_out, 3, padding=1, **kwargs)


class Clamp(nn.Module):
    def forward(self, x):
        return torch.tanh(x / 3) * 3  # soft clamp of the latents to (-3, 3)


class Block(nn.Module):
    """relu(conv-relu-conv-relu-conv(x) + x), optionally after x = x + pool(x) (the FLUX.2 branch)."""

    def __init__(self, width: int = WIDTH, pool_width: int = 0):
        super().__init__()
        self.conv = nn.Sequential(_conv(width, width), nn.ReLU(), _conv(width, width), nn.ReLU(),
                                  _conv(width, width))
        self.pool = nn.Sequential(
            nn.Conv2d(width, pool_width, 1, bias=False), nn.GroupNorm(4, pool_width), nn.ReLU(),
            nn.Conv2d(pool_width, width, 1, bias=False)) if pool_width else None
        self.fuse = nn.ReLU()

    def forward(self, x):
        if self.pool is not None:
            x = x + self.pool(x)
        return self.fuse(self.conv(x) + x)


def _pool_width(state: dict, index: int) -> int:
    w = state.get(f"{index}.pool.0.weight")
    return int(w.shape[0]) if w is not None else 0


def build_encoder(state: dict) -> nn.Sequential:
    """The encoder whose layout matches `state` (latent channels and branches read from it)."""
    latent = int(state["14.weight"].shape[0])
    layers: list[nn.Module] = [_conv(3, WIDTH), Block(WIDTH, _pool_width(state, 1))]
    for stage in range(3):  # each: a stride-2 conv, then three blocks
        first = 2 + 4 * stage
        layers += [_conv(WIDTH, WIDTH, stride=2, bias=False)]
        layers += [Block(WIDTH, _pool_width(state, first + k)) for k in (1, 2, 3)]
    layers.append(_conv(WIDTH, latent))
    return nn.Sequential(*layers)


def build_decoder(state: dict) -> nn.Sequential:
    latent = int(state["1.weight"].shape[1])
    layers: list[nn.Module] = [Clamp(), _conv(latent, WIDTH), nn.ReLU()]
    for stage in range(3):  # each: three blocks, a 2x upsample, a conv
        first = 3 + 5 * stage
        layers += [Block(WIDTH, _pool_width(state, first + k)) for k in (0, 1, 2)]
        layers += [nn.Upsample(scale_factor=2), _conv(WIDTH, WIDTH, bias=False)]
    layers += [Block(WIDTH, _pool_width(state, 18)), _conv(WIDTH, 3)]
    return nn.Sequential(*layers)


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """A .pth/.pt state dict (read with weights_only: no pickled code runs) or .safetensors."""
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated zip, bad header, pickle with code: all unreadable here
        raise TAEError(f"cannot read TAESD weights '{path}': {str(exc).splitlines()[0] if str(exc) else exc!r}. "
                       "Fix: the file is damaged or not a state dict; download it again "
                       "(github.com/madebyollin/taesd)") from exc
    if not isinstance(state, dict) or not all(torch.is_tensor(v) for v in state.values()):
        raise TAEError(f"'{path}' holds a {type(state).__name__}, not a state dict of tensors. Fix: use "
                       "the published *_encoder.pth / *_decoder.pth files")
    return state


def _find(folder: Path, part: str) -> Path:
    found = sorted(p for p in folder.iterdir() if part in p.name.lower()
                   and p.suffix in (".pth", ".pt", ".safetensors"))
    if len(found) != 1:
        what = "no file" if not found else f"{len(found)} files ({', '.join(p.name for p in found)})"
        raise TAEError(f"codec.pretrained '{folder}': {what} named *{part}*.pth|.safetensors. Fix: the "
                       "folder must hold exactly one encoder and one decoder file, e.g. taef2_encoder.pth "
                       "and taef2_decoder.pth")
    return found[0]


def _load_into(module: nn.Module, state: dict, path: Path) -> nn.Module:
    result = module.load_state_dict({k: v.float() for k, v in state.items()}, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise TAEError(f"'{path}' is not a TAESD-family {path.stem.split('_')[-1]}: missing "
                       f"{result.missing_keys[:4]}, unexpected {result.unexpected_keys[:4]}. Fix: point "
                       "codec.pretrained at a folder with TAESD / TAESDXL / TAEF1 / TAEF2 files")
    return module


def load_tae(folder: str | Path) -> tuple[nn.Sequential, nn.Sequential]:
    """(encoder, decoder) in float32 eval mode from a folder with *encoder* and *decoder* files."""
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise TAEError(f"codec.pretrained '{folder}' is not a folder. Fix: point it at a folder holding "
                       "the TAESD-family *_encoder.pth and *_decoder.pth files")
    modules = []
    for part, build, key in (("encoder", build_encoder, "14.weight"), ("decoder", build_decoder, "1.weight")):
        path = _find(folder, part)
        state = read_state_dict(path)
        if key not in state or state[key].dim() != 4:
            raise TAEError(f"'{path}' has no '{key}' conv weight, so it is not a TAESD-family {part}. "
                           "Fix: use the published *_encoder.pth / *_decoder.pth files")
        modules.append(_load_into(build(state), state, path).eval())
    enc, dec = modules
    if enc[-1].out_channels != dec[1].in_channels:
        raise TAEError(f"'{folder}': the encoder gives {enc[-1].out_channels} latent channels but the "
                       f"decoder takes {dec[1].in_channels}. Fix: use the encoder and decoder of one release")
    return enc, dec
