"""The global colour prior: one cubic colour curve fitted in closed form to the training pairs.

    prior = ColourPrior.fit(pairs)          # pairs of (3, H, W) in [0, 1]; about a second
    y = prior(x)                            # (B, 3, H, W) in [0, 1] -> same shape, in [0, 1]

out_c = sum_k W[k, c] * m_k(r, g, b), with m_k the 20 monomials of R, G, B of degree <= 3. W is
ridge least squares over all training pixels, each photo weighted equally, pulled toward the
identity (W_id) with weight `ridge` per pixel:

    W = argmin  mean_photos mean_pixels |m(x) W - y|^2  +  ridge |W - W_id|^2     (offset not pulled)

Regularisation matters with a few dozen pairs (FiveK, 4-fold CV: 23.4 dB with ridge 1e-4,
21.6 dB unregularised). It is the floor of every trained model: the teacher and the student
learn the residual over prior(x), so at step 0 they reproduce it (docs/quality.md).
"""

from __future__ import annotations

import itertools
import math
import time
from typing import Iterable

import numpy as np
import torch
from torch import nn

from core.images import to_numpy, to_tensor
from core.models import ModelFolder, class_path

DEFAULT_RIDGE = 1e-4
MAX_FIT_PIXELS = 1 << 16
BAND_PIXELS = 1 << 20  # per photo: the fit is a 20x20 system, a strided subsample is plenty
# the monomials r^a g^b b^c with a + b + c <= 3, in a fixed order: 1, r, g, b, rr, rg, ...
MONOMIALS = [()] + [c for d in (1, 2, 3) for c in itertools.combinations_with_replacement(range(3), d)]


def monomials(x: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) -> (B, 20, H, W): the terms of a cubic in R, G, B (the first is 1)."""
    ch = [x[:, i] for i in range(3)]
    out = [torch.ones_like(ch[0])]
    for combo in MONOMIALS[1:]:
        term = ch[combo[0]]
        for i in combo[1:]:
            term = term * ch[i]
        out.append(term)
    return torch.stack(out, 1)


def identity_coeffs() -> torch.Tensor:
    w = torch.zeros(len(MONOMIALS), 3, dtype=torch.float64)
    for c in range(3):
        w[MONOMIALS.index((c,)), c] = 1.0
    return w


def _subsample(x: torch.Tensor, limit: int) -> torch.Tensor:
    """(3, H, W) -> (3, n) pixels, a regular stride so that n <= limit."""
    stride = max(1, math.ceil(math.sqrt(x.shape[-2] * x.shape[-1] / limit)))
    return x[:, ::stride, ::stride].reshape(3, -1)


class ColourPrior(ModelFolder, nn.Module):
    """The curve as a model of its own (kind "curve", an image-space model with its own
    full-resolution path: a per-pixel map needs no working copy and no transfer)."""

    kind = "curve"
    space = "image"
    weights_name = "prior.safetensors"

    def __init__(self, coeffs: torch.Tensor | None = None, ridge: float = DEFAULT_RIDGE):
        super().__init__()
        self.ridge = ridge
        self.arch = {"ridge": ridge}
        self.register_buffer("coeffs", (identity_coeffs() if coeffs is None else coeffs).float())

    @classmethod
    def fit(cls, pairs: Iterable[tuple[torch.Tensor, torch.Tensor]], ridge: float = DEFAULT_RIDGE,
            max_pixels: int = MAX_FIT_PIXELS) -> ColourPrior:
        """Ridge least squares over `pairs` of (input, target), each (3, H, W) in [0, 1]."""
        n_terms = len(MONOMIALS)
        a = torch.zeros(n_terms, n_terms, dtype=torch.float64)
        b = torch.zeros(n_terms, 3, dtype=torch.float64)
        count = 0
        for x, y in pairs:
            if x.shape != y.shape or x.ndim != 3 or x.shape[0] != 3:
                raise ValueError(f"core/prior.py: a pair has shapes {tuple(x.shape)} and {tuple(y.shape)}; "
                                 "expected two (3, H, W) images of the same size")
            m = monomials(_subsample(x.double(), max_pixels)[None, :, :, None])[0, :, :, 0]  # (20, n)
            t = _subsample(y.double(), max_pixels)
            a += m @ m.T / m.shape[1]  # every photo weighs the same, whatever its size
            b += m @ t.T / m.shape[1]
            count += 1
        if count == 0:
            raise ValueError("core/prior.py: no training pairs to fit the colour prior to")
        pull = torch.eye(n_terms, dtype=torch.float64) * ridge
        pull[0, 0] = 0.0  # the offset is free
        coeffs = torch.linalg.solve(a / count + pull, b / count + pull @ identity_coeffs())
        return cls(coeffs, ridge)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [0, 1] -> the curve applied, (B, 3, H, W) clamped to [0, 1]."""
        w = self.coeffs.to(device=x.device, dtype=torch.float32)
        rows = max(1, BAND_PIXELS // max(1, x.shape[0] * x.shape[-1]))  # bands keep the 20 terms small
        bands = [torch.einsum("bkhw,kc->bchw", monomials(x[:, :, top:top + rows].float()), w)
                 for top in range(0, x.shape[-2], rows)]
        return torch.cat(bands, 2).clamp_(0, 1)

    def infer(self, x: torch.Tensor, num_steps: int | None = None) -> torch.Tensor:
        return self(x)

    def map_colours(self, rgb: torch.Tensor) -> torch.Tensor:
        """(N, 3) colours -> (N, 3): a pure per-pixel map, so `lut.export` writes it on the lattice exactly."""
        return self(rgb.T.reshape(1, 3, -1, 1))[0, :, :, 0].T

    def function_evals(self, num_steps: int | None = None) -> int:
        return 0  # no network

    def full_resolution_pipeline(self, device: str | torch.device = "cpu") -> CurvePipeline:
        return CurvePipeline(self, device)

    def describe(self) -> dict:
        """What a manifest records of the prior a latent model was trained over."""
        return {"kind": self.kind, "class": class_path(type(self)),
                "ridge": self.ridge, "weights": self.weights_name}


class CurvePipeline:
    """The EditPipeline interface for the curve: `pipe(rgb)` maps every pixel at full resolution;
    uint8 photos go through `edit_batch` (the C kernel's prior pass with an identity grid: one read
    and one write of each pixel)."""

    def __init__(self, prior: ColourPrior, device: str | torch.device = "cpu"):
        self.prior, self.device = prior.to(device).eval(), torch.device(device)
        self.timings: dict[str, float] = {}

    def working_copy(self, rgb: np.ndarray) -> np.ndarray:
        return rgb  # a per-pixel map: no working copy

    @torch.no_grad()
    def edit_working(self, x: torch.Tensor) -> torch.Tensor:
        return self.prior(x.to(self.device)).cpu()

    @torch.no_grad()
    def edit_batch(self, x: torch.Tensor, lo: torch.Tensor | None = None, out: torch.Tensor | None = None
                   ) -> torch.Tensor:
        """(B, 3, H, W) uint8 -> the curve applied, uint8 in x's layout (`lo` unused)."""
        from core.models import device_clock
        from core.transfer import apply_affine_grid_u8

        t0 = device_clock(self.device)
        x = x.to(self.device, non_blocking=True)
        identity = torch.eye(3, 4, device=self.device).expand(x.shape[0], 1, 1, 3, 4)
        out = apply_affine_grid_u8(x, identity, out=out, pre=self.prior)
        self.timings = {"resize_ms": 0.0, "encode_ms": 0.0, "model_ms": (device_clock(self.device) - t0) * 1e3,
                        "decode_ms": 0.0, "fit_ms": 0.0, "transfer_ms": 0.0}
        return out

    @torch.no_grad()
    def __call__(self, rgb: np.ndarray) -> np.ndarray:
        """(H, W, 3) uint8 -> uint8 (edit_batch); float in [0, 1] -> float32, the curve on every pixel."""
        if rgb.dtype == np.uint8:
            from core.pipeline import photo_tensor

            return self.edit_batch(photo_tensor(rgb))[0].permute(1, 2, 0).cpu().numpy()
        t0 = time.perf_counter()
        out = to_numpy(self.prior(to_tensor(rgb, view=True)[None].to(self.device))[0])
        self.timings = {"resize_ms": 0.0, "encode_ms": 0.0, "model_ms": (time.perf_counter() - t0) * 1e3,
                        "decode_ms": 0.0, "transfer_ms": 0.0}
        return out
