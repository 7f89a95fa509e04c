"""The image-adaptive 3D LUT baseline (Zeng et al. 2020, "Learning Image-adaptive 3D Lookup Tables").

    model = AdaptiveLUT(num_basis=3, size=33, cnn_size=256)
    out = model(x)                        # (B, 3, H, W) in [0, 1] -> same shape, any size
    pipe = LUTPipeline(model); rgb_out = pipe(rgb)   # (H, W, 3) -> (H, W, 3), full resolution

A tiny CNN looks at a downscaled copy of the photo and predicts `num_basis` weights; the photo's
own LUT is the weighted sum of the learnt basis LUTs, applied to every original pixel by
trilinear interpolation. The cost at full resolution is one table look-up per pixel, no network.

LUT layout: `lut[c, b, g, r]` is output channel c for the input colour (r, g, b) on the grid
(r, g, b) = (i, j, k) / (size - 1); that is what `F.grid_sample` reads when the pixel's (r, g, b)
in [-1, 1] is its (x, y, z) sampling coordinate.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from core.images import to_numpy, to_tensor
from core.models import ModelFolder, device_clock
from core.pipeline import downscale_u8, photo_list, photo_tensor

BAND_PIXELS = 1 << 21  # pixels per grid_sample call at full resolution: ~50 MB of temporaries


def identity_lut(size: int) -> torch.Tensor:
    """(3, size, size, size) LUT that maps every colour to itself, in the `lut[c, b, g, r]` layout."""
    ramp = torch.linspace(0, 1, size)
    r = ramp.view(1, 1, size).expand(size, size, size)  # r varies along the last axis
    g = ramp.view(1, size, 1).expand(size, size, size)
    b = ramp.view(size, 1, 1).expand(size, size, size)
    return torch.stack([r, g, b]).contiguous()


def _sample(lut: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Trilinear look-up: lut (B, 3, S, S, S), x (B, 3, h, w) -> (B, 3, h, w)."""
    grid = (x.permute(0, 2, 3, 1) * 2 - 1).unsqueeze(1)  # (B, 1, h, w, 3): (r, g, b) -> (x, y, z)
    out = F.grid_sample(lut, grid.to(lut.dtype), mode="bilinear", padding_mode="border", align_corners=True)
    return out.squeeze(2)


def _apply_lut_u8(lut: torch.Tensor, x: torch.Tensor, band_pixels: int, out: torch.Tensor | None) -> torch.Tensor:
    """uint8 pixels through the trilinear LUT, rounded to uint8: on the CPU one C loop
    (core/kernels.py) that reads the LUT pre-interpolated at every pair of red and blue levels, elsewhere
    `_sample`."""
    from core import kernels

    if x.device.type == "cpu" and kernels.available():
        return kernels.lut3d_u8(x, lut, out)
    b, _, h, w = x.shape
    out = torch.empty_like(x) if out is None else out
    rows = max(1, band_pixels // max(1, b * w))
    for top in range(0, h, rows):
        band = _sample(lut.float(), x[:, :, top:top + rows].float() / 255)
        out[:, :, top:top + rows] = band.mul_(255).clamp_(0, 255).round_()
    return out


def apply_lut(lut: torch.Tensor, x: torch.Tensor, band_pixels: int = BAND_PIXELS,
              out: torch.Tensor | None = None) -> torch.Tensor:
    """Apply per-image LUTs (B, 3, S, S, S) to x (B, 3, H, W) in [0, 1] -> (B, 3, H, W), trilinear.

    float x -> float, not clamped. uint8 x (levels 0..255, any layout: an HWC photo as a
    channels_last view is read in place) -> uint8, clamped and rounded, into `out` when given;
    on the CPU that is a C kernel at a few memory copies' cost (the float path: 1.2 s at 24 MP),
    within one level of round(255 * apply_lut(lut, x / 255)) (tests/test_speed_path.py).
    Large float images go through in bands of rows (each pixel is independent, so the result is
    the same) to keep the sampling grid small: a 24 MP photo needs no more than its output.
    """
    if x.dtype == torch.uint8:
        return _apply_lut_u8(lut, x, band_pixels, out)
    b, _, h, w = x.shape
    rows = max(1, band_pixels // max(1, b * w))
    if rows >= h:
        return _sample(lut, x)
    out = torch.empty_like(x, dtype=lut.dtype)  # keeps x's memory layout (e.g. an HWC photo)
    for top in range(0, h, rows):
        out[:, :, top:top + rows] = _sample(lut, x[:, :, top:top + rows])
    return out


# Regularisers (section 3.3 of the paper), on the image's own LUT O (B, 3, S, S, S), the one applied.
# Taking them on the mixed LUT rather than on each basis also removes the trade-off between
# the bases' scale and the weights' (the paper adds a weight-norm term for that).

def tv_loss(lut: torch.Tensor) -> torch.Tensor:
    # R_s = sum over the r, g, b axes of mean_{c,i,j,k} (O^c_{i+1} - O^c_i)^2
    return sum(lut.diff(dim=d).pow(2).mean() for d in (2, 3, 4))


def monotonicity_loss(lut: torch.Tensor) -> torch.Tensor:
    # R_m = sum over the r, g, b axes of mean_{c,i,j,k} ReLU(O^c_i - O^c_{i+1}): brighter in, never darker out
    return sum(F.relu(-lut.diff(dim=d)).mean() for d in (2, 3, 4))


class AdaptiveLUT(ModelFolder, nn.Module):
    """`num_basis` learnt LUTs mixed per image by weights a tiny CNN predicts from a downscaled copy."""

    kind, space = "lut", "image"  # the model-folder protocol (core/models.py): works on pixels, no codec

    def __init__(self, num_basis: int = 3, size: int = 33, cnn_size: int = 256,
                 channels: tuple[int, ...] = (16, 32, 64, 128, 128)):
        super().__init__()
        if cnn_size < 2 ** len(channels):
            raise ValueError(f"cnn_size={cnn_size} is too small for {len(channels)} stride-2 layers: "
                             f"use at least {2 ** len(channels)} (lut.cnn_size in the config)")
        if num_basis < 1 or size < 2:
            raise ValueError(f"num_basis={num_basis}, size={size}: need num_basis >= 1 and size >= 2")
        self.arch = dict(num_basis=num_basis, size=size, cnn_size=cnn_size, channels=list(channels))
        self.num_basis, self.size, self.cnn_size = num_basis, size, cnn_size
        luts = torch.zeros(num_basis, 3, size, size, size)
        luts[0] = identity_lut(size)  # basis 0 starts as the identity, the others as zero
        self.luts = nn.Parameter(luts)
        layers, c_in = [], 3
        for i, c_out in enumerate(channels):
            layers += [nn.Conv2d(c_in, c_out, 3, stride=2, padding=1), nn.LeakyReLU(0.2)]
            if i < len(channels) - 1:  # the last map may be tiny; a norm over few pixels is noise
                layers.append(nn.InstanceNorm2d(c_out, affine=True))
            c_in = c_out
        self.cnn = nn.Sequential(*layers)
        self.head = nn.Linear(c_in, num_basis)
        # Start at w = (1, *, *): the identity exactly (other bases are zero), but the other
        # weights random so every basis gets a gradient from the first step.
        with torch.no_grad():
            self.head.weight[0].zero_()
            self.head.bias.zero_()
            self.head.bias[0] = 1.0

    def cnn_input(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [0, 1], any size and aspect -> (B, 3, cnn_size, cnn_size), bilinear."""
        return F.interpolate(x, size=(self.cnn_size, self.cnn_size), mode="bilinear", align_corners=False,
                             antialias=True)

    def mix(self, small: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """CNN input (B, 3, cnn_size, cnn_size) -> (the images' LUTs (B, 3, S, S, S), weights (B, K))."""
        weights = self.head(self.cnn(small).mean(dim=(2, 3)))
        return torch.einsum("bk,kcdhw->bcdhw", weights, self.luts), weights

    def forward(self, x: torch.Tensor, return_lut: bool = False):
        """x (B, 3, H, W) in [0, 1] -> edited (B, 3, H, W), not clamped; with `return_lut`,
        (edited, the images' LUTs (B, 3, S, S, S)) for the regularisers."""
        lut, _ = self.mix(self.cnn_input(x))
        out = apply_lut(lut, x)
        return (out, lut) if return_lut else out

    def infer(self, x: torch.Tensor, num_steps: int | None = None) -> torch.Tensor:
        """The protocol's inference: (B, 3, H, W) in [0, 1] -> the edit, clamped to [0, 1]."""
        return self(x).clamp(0, 1)

    def function_evals(self, num_steps: int | None = None) -> int:
        return 1

    def full_resolution_pipeline(self, device: str | torch.device = "cpu") -> LUTPipeline:
        """The LUT's own path for a photo of any size: every original pixel through the look-up."""
        return LUTPipeline(self, device)


class LUTPipeline:
    """The EditPipeline interface for the LUT: `pipe(rgb)` edits every pixel at full resolution.

    There is no working copy to edit and transfer back: the CNN sees a `cnn_size` copy, the
    LUT it picks is applied to the original pixels. `timings` (ms): resize_ms (the CNN's copy),
    encode_ms 0, model_ms (CNN + mixing), decode_ms 0, transfer_ms (the full-resolution look-up).
    """

    def __init__(self, model: AdaptiveLUT, device: str | torch.device = "cpu", band_pixels: int = BAND_PIXELS):
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.long_side, self.band_pixels = model.cnn_size, band_pixels
        self.timings: dict[str, float] = {}

    def _now(self) -> float:
        return device_clock(self.device)

    @torch.no_grad()
    def working_copy(self, rgb: np.ndarray) -> np.ndarray:
        """(H, W, 3) in [0, 1] -> the CNN's input, (cnn_size, cnn_size, 3)."""
        return to_numpy(self.model.cnn_input(to_tensor(rgb, view=True)[None])[0])

    @torch.no_grad()
    def edit_working(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, h, w) in [0, 1] -> the LUT edit of x, same shape, in [0, 1] (on the CPU)."""
        return self.model(x.to(self.device)).clamp(0, 1).cpu()

    @torch.no_grad()
    def edit_batch(self, x: torch.Tensor | list[torch.Tensor], lo: torch.Tensor | None = None,
                   out: torch.Tensor | list[torch.Tensor] | None = None) -> torch.Tensor | list[torch.Tensor]:
        """The photo path, as EditPipeline.edit_batch: (B, 3, H, W) uint8, or a list of (3, H, W) photos of
        one size -> uint8 on self.device, in x's form. The CNN's copies are antialiased bilinear
        downscales of the uint8 pixels (core.pipeline.downscale_u8; `lo` unused: the CNN has its own
        size) and go through the CNN together; each photo's LUT is applied to its uint8 pixels in one pass."""
        t0 = self._now()
        photos, outs, result = photo_list(x, out, self.device)
        size = (self.model.cnn_size, self.model.cnn_size)
        small = torch.cat([downscale_u8(p[None], size, mode="bilinear") for p in photos])
        t1 = self._now()
        lut, _ = self.model.mix(small)  # the CNN on the whole batch
        t2 = self._now()
        edited = [apply_lut(lut[i:i + 1], p[None], self.band_pixels, None if o is None else o[None])[0]
                  for i, (p, o) in enumerate(zip(photos, outs))]
        t3 = self._now()
        self.timings = {"resize_ms": (t1 - t0) * 1e3, "encode_ms": 0.0, "model_ms": (t2 - t1) * 1e3,
                        "decode_ms": 0.0, "fit_ms": 0.0, "transfer_ms": (t3 - t2) * 1e3}
        return edited if result is None else result

    @torch.no_grad()
    def __call__(self, rgb: np.ndarray) -> np.ndarray:
        """(H, W, 3) uint8 -> uint8 (edit_batch); float in [0, 1] -> float32 in [0, 1], every pixel
        through the LUT."""
        if rgb.dtype == np.uint8:
            return self.edit_batch(photo_tensor(rgb))[0].permute(1, 2, 0).cpu().numpy()
        t0 = self._now()
        x = to_tensor(rgb, view=True).to(self.device)[None]  # a view: the look-up reads the pixels in place
        small = self.model.cnn_input(x)
        t1 = self._now()
        lut, _ = self.model.mix(small)
        t2 = self._now()
        out = to_numpy(apply_lut(lut, x, self.band_pixels).clamp_(0, 1)[0])
        t3 = self._now()
        self.timings = {"resize_ms": (t1 - t0) * 1e3, "encode_ms": 0.0, "model_ms": (t2 - t1) * 1e3,
                        "decode_ms": 0.0, "transfer_ms": (t3 - t2) * 1e3}
        return out
