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

Exposure alignment (`align="exposure"`, prior.align): photographers shoot the same kind of scene
a stop over or under, and the editor's curve undoes that too. One least-squares curve over such
pairs averages a family of curves (one per exposure) into a flat one. The aligned fit alternates:
fit W on the inputs re-exposed by per-photo gains g_i (in linear light), then pick each g_i from
a grid (+-1.7 stops) to minimise that photo's error under W, the gains normalised to a geometric
mean of 1; `ALIGN_ITERS` rounds. The curve kept is the last W, applied to photos as they come
(gain 1, the training photos' mean exposure): still one cubic, fitted in a few seconds, but the
curve of a consistently exposed set. The plain least-squares curve is kept beside it as
`reference` (the `curve` row of the reports; the aligned one is the `prior` row).
"""

from __future__ import annotations

import itertools
import math
import time
from typing import Iterable

import numpy as np
import torch
from torch import nn

from core.images import linear_to_srgb, srgb_to_linear, to_numpy, to_tensor
from core.models import ModelFolder, class_path

DEFAULT_RIDGE = 1e-4
MAX_FIT_PIXELS = 1 << 16
BAND_PIXELS = 1 << 20  # per photo: the fit is a 20x20 system, a strided subsample is plenty
# the monomials r^a g^b b^c with a + b + c <= 3, in a fixed order: 1, r, g, b, rr, rg, ...
ALIGN_ITERS = 3
ALIGN_GAINS = torch.exp(torch.linspace(-1.2, 1.2, 25, dtype=torch.float64))  # natural log: +-1.73 stops
ALIGN_PIXELS = 1 << 14  # per photo, for the gain search
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


def _solve(moments: list[tuple[torch.Tensor, torch.Tensor]], ridge: float) -> torch.Tensor:
    """The ridge solution from each photo's normalised moments (m m^T / n, m y^T / n)."""
    n_terms = len(MONOMIALS)
    a = sum(m for m, _ in moments) / len(moments)
    b = sum(t for _, t in moments) / len(moments)
    pull = torch.eye(n_terms, dtype=torch.float64) * ridge
    pull[0, 0] = 0.0  # the offset is free
    return torch.linalg.solve(a + pull, b + pull @ identity_coeffs())


def _terms(x: torch.Tensor) -> torch.Tensor:
    """(3, n) pixels -> (20, n) monomials."""
    return monomials(x[None, :, :, None])[0, :, :, 0]


def _moments(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(3, n) pixels of an input and its target -> (m m^T / n, m y^T / n): every photo weighs the same."""
    m = _terms(x)
    return m @ m.T / m.shape[1], m @ y.T / m.shape[1]


def _best_gain(x_lin: torch.Tensor, y: torch.Tensor, w: torch.Tensor) -> float:
    """The gain of ALIGN_GAINS that, applied to x in linear light, minimises |curve(x) - y|^2."""
    errors = [((torch.einsum("kn,kc->cn", _terms(linear_to_srgb(x_lin * g)), w).clamp(0, 1) - y) ** 2).mean()
              for g in ALIGN_GAINS]
    return float(ALIGN_GAINS[int(torch.stack(errors).argmin())])


def _subsample(x: torch.Tensor, limit: int) -> torch.Tensor:
    """(3, H, W) -> (3, n) pixels, a regular stride so that n <= limit."""
    stride = max(1, math.ceil(math.sqrt(x.shape[-2] * x.shape[-1] / limit)))
    return x[:, ::stride, ::stride].reshape(3, -1)


_LEVEL_POWERS = 255.0 ** (1 - torch.arange(4, dtype=torch.float64))[:, None]  # v^j on [0, 1] -> on levels


class ToneCurves(nn.Module):
    """The colour prior's tone curve per channel: the cubic along the grey axis, each channel through
    its own curve, out_c = clamp(T_c(x_c), 0, 1) with T_c(v) = prior_c(v, v, v) (a cubic in v).

    What the full-resolution transfer applies before its grid (core/transfer.py): the curves carry the
    prior's tone, per pixel and exactly; its cross-channel part (saturation, colour mixing), smooth in
    colour, goes through the grid's local affine maps with the network's residual. On FiveK
    (12 pairs, a step-0 model) the result is 57 dB from the exact prior and equally far from the
    experts' edits (26.21 dB both); the cubic's 76 operations a pixel become 3 table look-ups."""

    def __init__(self, coeffs: torch.Tensor):
        super().__init__()
        self.register_buffer("coeffs", coeffs.float())  # (4, 3): v^0 .. v^3 per channel, v in [0, 1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [0, 1] -> (B, 3, H, W) in [0, 1]. On the CPU, without autograd, the C pass of
        the whole prior with only each channel's own terms (0.85 -> 0.45 ms for four 256x160 copies)."""
        from core import kernels

        if kernels.cpu_inference(x, self.coeffs):
            return kernels.prior_planes(x, self.as_cubic())
        c = self.coeffs.to(device=x.device, dtype=torch.float32)[:, :, None, None]
        x = x.float()
        return (((c[3] * x + c[2]) * x + c[1]) * x + c[0]).clamp_(0, 1)

    def as_cubic(self) -> torch.Tensor:
        """The curves as the prior's (20, 3) coefficients over MONOMIALS: channel c's v^j on the term c^j."""
        w = torch.zeros(len(MONOMIALS), 3, dtype=self.coeffs.dtype, device=self.coeffs.device)
        for c in range(3):
            w[0, c] = self.coeffs[0, c]
            for j in (1, 2, 3):
                w[MONOMIALS.index((c,) * j), c] = self.coeffs[j, c]
        return w

    def kernel_args(self) -> dict:
        """What the C kernel takes (core.kernels.affine_grid_u8): the curves on levels 0..255."""
        return {"curves": (self.coeffs.detach().double().cpu() * _LEVEL_POWERS).float()}


class ColourPrior(ModelFolder, nn.Module):
    """The curve as a model of its own (kind "curve", an image-space model with its own
    full-resolution path: a per-pixel map needs no working copy and no transfer)."""

    kind = "curve"
    space = "image"
    weights_name = "prior.safetensors"

    def __init__(self, coeffs: torch.Tensor | None = None, ridge: float = DEFAULT_RIDGE, align: str = "none",
                 reference: torch.Tensor | None = None):
        super().__init__()
        self.ridge, self.align = ridge, align
        self.arch = {"ridge": ridge, "align": align}
        self.gains: list[float] = []  # the training photos' exposure gains (align="exposure"), for the manifest
        self.register_buffer("coeffs", (identity_coeffs() if coeffs is None else coeffs).float())
        if reference is not None:  # the plain least-squares curve an aligned fit started from
            self.register_buffer("reference", reference.float())

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor], entry: dict) -> ColourPrior:
        """The prior saved as `prior.safetensors` beside a model, `entry` its manifest record."""
        return cls(tensors["coeffs"], float(entry["ridge"]), entry.get("align", "none"), tensors.get("reference"))

    def load_trainable_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        if "reference" in state and getattr(self, "reference", None) is None:
            self.register_buffer("reference", torch.empty_like(state["reference"]))
        self.load_state_dict(state)

    def reference_curve(self) -> ColourPrior:
        """The plain ridge least-squares curve (itself when the fit was not aligned)."""
        return self if getattr(self, "reference", None) is None else ColourPrior(self.reference, self.ridge)

    @classmethod
    def fit(cls, pairs: Iterable[tuple[torch.Tensor, torch.Tensor]], ridge: float = DEFAULT_RIDGE,
            max_pixels: int = MAX_FIT_PIXELS, align: str = "none") -> ColourPrior:
        """Ridge least squares over `pairs` of (input, target), each (3, H, W) in [0, 1];
        align="exposure": the exposure-aligned fit of the module docstring."""
        if align not in ("none", "exposure"):
            raise ValueError(f"core/prior.py: align={align!r}; expected 'none' or 'exposure' (prior.align)")
        moments, photos = [], []
        for x, y in pairs:
            if x.shape != y.shape or x.ndim != 3 or x.shape[0] != 3:
                raise ValueError(f"core/prior.py: a pair has shapes {tuple(x.shape)} and {tuple(y.shape)}; "
                                 "expected two (3, H, W) images of the same size")
            xs, ys = _subsample(x.double(), max_pixels), _subsample(y.double(), max_pixels)
            moments.append(_moments(xs, ys))
            if align == "exposure":
                photos.append((srgb_to_linear(_subsample(x.double(), ALIGN_PIXELS)),
                               _subsample(y.double(), ALIGN_PIXELS), srgb_to_linear(xs), ys))
        if not moments:
            raise ValueError("core/prior.py: no training pairs to fit the colour prior to")
        reference = _solve(moments, ridge)
        if align == "none":
            return cls(reference, ridge)
        coeffs, gains = reference, torch.ones(len(photos), dtype=torch.float64)
        for _ in range(ALIGN_ITERS):
            gains = torch.tensor([_best_gain(x_lin, y, coeffs) for x_lin, y, _, _ in photos], dtype=torch.float64)
            gains = gains / gains.log().mean().exp()  # gain 1 is the photos' mean exposure
            coeffs = _solve([_moments(linear_to_srgb(x_lin * g), y)
                             for (_, _, x_lin, y), g in zip(photos, gains)], ridge)
        prior = cls(coeffs, ridge, align=align, reference=reference)
        prior.gains = [round(float(g), 4) for g in gains]
        return prior

    def tone_curves(self) -> ToneCurves:
        """The per-channel tone curves on the grey axis (ToneCurves): the sum of each degree's coefficients."""
        degree = torch.tensor([len(m) for m in MONOMIALS])
        coeffs = torch.stack([self.coeffs[degree == j].sum(0) for j in range(4)])
        return ToneCurves(coeffs).to(self.coeffs.device)

    def kernel_args(self) -> dict:
        """What the C kernel takes (core.kernels.affine_grid_u8): the cubic itself, applied exactly."""
        return {"poly": self.coeffs}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [0, 1] -> the curve applied, (B, 3, H, W) clamped to [0, 1]. On the CPU, without
        autograd, one C pass (core.kernels.prior_planes: the same sums in another order)."""
        from core import kernels

        if kernels.cpu_inference(x, self.coeffs):
            return kernels.prior_planes(x, self.coeffs)
        w = self.coeffs.to(device=x.device, dtype=torch.float32)
        rows = max(1, BAND_PIXELS // max(1, x.shape[0] * x.shape[-1]))  # bands keep the 20 terms small
        wt = w.T.contiguous()  # (3, 20) @ (B, 20, pixels): one matrix product per band, no permuted copies
        bands = [torch.matmul(wt, monomials(x[:, :, top:top + rows].float()).flatten(2)).unflatten(2, (-1, x.shape[-1]))
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
        out = {"kind": self.kind, "class": class_path(type(self)), "ridge": self.ridge, "align": self.align,
               "weights": self.weights_name}
        if self.gains:
            out["exposure_gains"] = self.gains
        return out


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
    def edit_batch(self, x: torch.Tensor | list[torch.Tensor], lo: torch.Tensor | None = None,
                   out: torch.Tensor | list[torch.Tensor] | None = None) -> torch.Tensor | list[torch.Tensor]:
        """(B, 3, H, W) uint8, or a list of (3, H, W) photos of one size -> the curve applied, uint8 in x's
        form and layout, photo by photo (`lo` unused)."""
        from core.models import device_clock
        from core.pipeline import photo_list
        from core.transfer import apply_affine_grid_u8

        t0 = device_clock(self.device)
        photos, outs, result = photo_list(x, out, self.device)
        identity = torch.eye(3, 4, device=self.device).expand(1, 1, 1, 3, 4)
        edited = [apply_affine_grid_u8(p[None], identity, out=None if o is None else o[None], pre=self.prior)[0]
                  for p, o in zip(photos, outs)]
        self.timings = {"resize_ms": 0.0, "encode_ms": 0.0, "model_ms": (device_clock(self.device) - t0) * 1e3,
                        "decode_ms": 0.0, "fit_ms": 0.0, "transfer_ms": 0.0}
        return edited if result is None else result

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
