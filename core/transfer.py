"""Full-resolution edit transfer: a grid of local affine colour transforms.

The networks run at a working resolution, but the edit of a photo is mostly smooth in space
(tone, colour, local exposure; DESIGN.md, "Full-resolution transfer"). So we fit, per cell of
a coarse grid, the affine colour map `out = A @ [r, g, b] + b` that takes the working-size
input to the model's working-size output (closed-form ridge least squares, guided-filter
style), upsample the grid bilinearly and apply it to the full-size original: the output keeps
every pixel of the original's detail at any size. Linear in pixels, no tiles, no seams.

    coeffs = fit_affine_grid(lo_in, lo_out, grid=32)      # (B, 32, 32, 3, 4)
    full_out = apply_affine_grid(full_in, coeffs)         # (B, 3, H, W), banded rows

A model trained over a colour prior (core/prior.py: a global per-pixel cubic) passes the prior's
tone curves as `pre` (ColourPrior.tone_curves(): one cubic per channel, on the grey axis): they
are applied to every full-resolution pixel and the grid carries curves(lo_in) -> lo_out, the
prior's cross-channel part and the network's residual. A model that learnt nothing (the step-0
checkpoint) then reproduces the curve row at any size (57 dB from the exact cubic on FiveK; the
grid alone, with no curves first, approximates the cubic piecewise affinely, which cost 0.04-0.44
dB a fold). `pre` may be any per-pixel map on [0, 1] images; the C kernel knows the tone curves
and the full cubic (`kernel_args()`), anything else runs in the PyTorch bands.
"""
from __future__ import annotations

import functools

import numpy as np
import torch
import torch.nn.functional as F

from core.config import EvalConfig
from core.images import to_tensor

TRANSFER_MODES = ("grid", "none")
DEFAULT_GRID = EvalConfig.transfer_grid  # the config's default (eval.transfer_grid), written once there
DEFAULT_EPS = 1e-4
BAND_ROWS = 32  # small bands stay in cache: 24 MP applies ~2.5x faster than with 512


def _grid_size(grid: int | tuple[int, int]) -> tuple[int, int]:
    gh, gw = (grid, grid) if isinstance(grid, int) else tuple(grid)
    if gh < 1 or gw < 1:
        raise ValueError(f"core/transfer.py: grid={grid!r} must be positive, e.g. 16 or (16, 16)")
    return int(gh), int(gw)


def _check_image(name: str, x: torch.Tensor) -> None:
    if x.ndim != 4 or x.shape[1] != 3:
        raise ValueError(f"core/transfer.py: {name} has shape {tuple(x.shape)}; "
                         "expected (B, 3, H, W) float in [0, 1]")


def _interp_index(n_out: int, n_grid: int, device):
    """Bilinear sampling of `n_grid` cell centres at `n_out` pixel centres (align_corners=False,
    the convention of F.interpolate): pixel p reads cells i0[p], i1[p] with weights 1-f, f."""
    src = ((torch.arange(n_out, device=device, dtype=torch.float64) + 0.5) * (n_grid / n_out) - 0.5)
    src = src.clamp(min=0)
    i0 = src.floor().long().clamp(max=n_grid - 1)
    i1 = (i0 + 1).clamp(max=n_grid - 1)
    return i0, i1, src - i0


@functools.lru_cache(maxsize=32)
def _kernel_index(n_out: int, n_grid: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """_interp_index on the CPU in the C kernel's types (int32 cells, float32 weights), kept between
    photos of one size (read only)."""
    i0, i1, f = _interp_index(n_out, n_grid, "cpu")
    return i0.int(), i1.int(), f.float()


def _interp_matrix(n_out: int, n_grid: int, device) -> torch.Tensor:
    """(n_out, n_grid) float64 matrix of the weights above; rows sum to 1."""
    i0, i1, f = _interp_index(n_out, n_grid, device)
    m = torch.zeros(n_out, n_grid, dtype=torch.float64, device=device)
    rows = torch.arange(n_out, device=device)
    m.index_put_((rows, i0), 1 - f, accumulate=True)
    m.index_put_((rows, i1), f, accumulate=True)
    return m


def _ridge_solve(s_xx: torch.Tensor, s_xy: torch.Tensor, eps: float,
                 prior: torch.Tensor) -> torch.Tensor:
    """theta (..., 4, 3) minimising sum_w |[x,1] theta - y|^2 + eps*n*|A - A_prior|^2.

    s_xx (..., 4, 4) = sum w [x,1][x,1]^T, s_xy (..., 4, 3) = sum w [x,1] y^T; the offset b
    is not pulled (so a cell always matches its mean), only a 1e-6 ridge keeps empty cells solvable.
    """
    n = s_xx[..., 3, 3, None, None]
    pull = torch.diag(torch.tensor([1.0, 1.0, 1.0, 0.0], dtype=s_xx.dtype, device=s_xx.device))
    eye = torch.eye(4, dtype=s_xx.dtype, device=s_xx.device)
    reg = eps * n * pull + (1e-6 * n + 1e-9) * eye
    return torch.linalg.solve(s_xx + reg, s_xy + reg @ prior)


def fit_affine_grid(lo_in: torch.Tensor, lo_out: torch.Tensor,
                    grid: int | tuple[int, int] = DEFAULT_GRID,
                    eps: float = DEFAULT_EPS) -> torch.Tensor:
    """Fit one affine colour transform per grid cell, from `lo_in` to `lo_out`.

    lo_in, lo_out: (B, 3, h, w) float in [0, 1], the working-size input and edited output.
    grid: cells (G_h, G_w), or an int G for (G, G). eps: ridge weight per pixel that pulls
    each cell's matrix A toward the image's global fit (which is pulled toward identity), as in
    the guided filter; b is free, so a flat cell keeps the global colour matrix and its own mean.
    Each cell weighs pixels with the bilinear tent that `apply_affine_grid` uses to spread it,
    reaching the neighbouring cell centres, so adjacent cells agree.
    Returns (B, G_h, G_w, 3, 4) float32 [A | b]: out = A @ [r, g, b] + b.
    """
    _check_image("lo_in", lo_in)
    _check_image("lo_out", lo_out)
    if lo_in.shape != lo_out.shape:
        raise ValueError(f"core/transfer.py: lo_in {tuple(lo_in.shape)} and lo_out "
                         f"{tuple(lo_out.shape)} differ; resize both to the same working size")
    gh, gw = _grid_size(grid)
    _, _, h, w = lo_in.shape
    dev = lo_in.device
    from core import kernels

    if dev.type == "cpu" and kernels.available():  # moments in one C pass (sums in float64), then the solves
        stats = kernels.grid_moments(lo_in, lo_out, gh, gw, _interp_index(h, gh, dev), _interp_index(w, gw, dev))
        return kernels.ridge_grid(stats, eps)  # the solves below, in C
    # float64: the moment sums cancel (E[xx] - E[x]^2) in flat cells.
    x = torch.cat([lo_in.double(), torch.ones_like(lo_in[:, :1], dtype=torch.float64)], 1)
    y = lo_out.double()
    # einsum, not broadcasting: the broadcast product of (B, 4, 1, h, w) and (B, 1, 4, h, w) in float64
    # took 50 ms at 256x160 here, this 0.4 ms
    feats = torch.cat([torch.einsum("bihw,bjhw->bijhw", x, x).flatten(1, 2),    # (B, 16, h, w)
                       torch.einsum("bihw,bjhw->bijhw", x, y).flatten(1, 2)], 1)  # (B, 12, h, w)
    wy, wx = _interp_matrix(h, gh, dev), _interp_matrix(w, gw, dev)
    stats = torch.einsum("bchw,wk->bchk", feats, wx)
    stats = torch.einsum("bchk,hg->bgkc", stats, wy)                         # (B, gh, gw, 28)
    s_xx, s_xy = stats[..., :16].unflatten(-1, (4, 4)), stats[..., 16:].unflatten(-1, (4, 3))

    identity = torch.cat([torch.eye(3, dtype=torch.float64, device=dev),
                          torch.zeros(1, 3, dtype=torch.float64, device=dev)])
    # Tent weights of every pixel sum to 1, so the cells' sums add up to the whole image's.
    theta_global = _ridge_solve(s_xx.sum((1, 2)), s_xy.sum((1, 2)), eps, identity)
    theta = _ridge_solve(s_xx, s_xy, eps, theta_global[:, None, None])
    return theta.transpose(-1, -2).float().contiguous()


def _check_coeffs(full_in: torch.Tensor, coeffs: torch.Tensor) -> None:
    if coeffs.ndim != 5 or coeffs.shape[-2:] != (3, 4) or coeffs.shape[0] != full_in.shape[0]:
        raise ValueError(f"core/transfer.py: coeffs has shape {tuple(coeffs.shape)}; expected "
                         f"({full_in.shape[0]}, G_h, G_w, 3, 4) from fit_affine_grid")


def _apply_bands(full_in: torch.Tensor, coeffs: torch.Tensor, out: torch.Tensor, band_rows: int,
                 dtype: torch.dtype = torch.float32, pre=None) -> torch.Tensor:
    """The PyTorch apply, band_rows rows at a time; uint8 `out` means pixels in levels 0..255 and
    the result rounded to uint8 in the same pass (no full-size float copy is ever made).
    `pre`: a per-pixel colour map on [0, 1] images (the colour prior) applied to each band first."""
    b, _, h, w = full_in.shape
    gh, gw = coeffs.shape[1:3]
    dev = full_in.device
    scale = 255.0 if out.dtype == torch.uint8 else 1.0
    coeffs = coeffs.to(dev, torch.float32).clone()
    coeffs[..., 3] *= scale  # the offset b in the pixels' units
    grid = coeffs.flatten(3).permute(0, 3, 1, 2)                          # (B, 12, gh, gw)
    i0, i1, fx = _interp_index(w, gw, dev)
    fx = fx.float()
    along_x = (grid[..., i0] * (1 - fx) + grid[..., i1] * fx).to(dtype)  # (B, 12, gh, W)
    j0, j1, fy = _interp_index(h, gh, dev)
    fy = fy.to(dtype)[:, None]
    for top in range(0, h, band_rows):
        rows = slice(top, min(top + band_rows, h))
        c = along_x[:, :, j0[rows]].lerp_(along_x[:, :, j1[rows]], fy[rows])
        c = c.unflatten(1, (3, 4))                                        # (B, 3, 4, r, W)
        px = full_in[:, :, rows].to(dtype)
        if pre is not None:
            px = (pre(px.float() / scale) * scale).to(dtype)
        band = c[:, :, 3].clone()
        for k in range(3):
            band.addcmul_(c[:, :, k], px[:, k:k + 1])
        out[:, :, rows] = band.clamp_(0, scale).round_() if scale != 1 else band.clamp_(0, 1)
    return out


def apply_affine_grid(full_in: torch.Tensor, coeffs: torch.Tensor,
                      band_rows: int = BAND_ROWS, pre=None) -> torch.Tensor:
    """Apply a (B, G_h, G_w, 3, 4) grid of affine colour transforms to a full-size image.

    full_in: (B, 3, H, W) float in [0, 1]. The grid is upsampled bilinearly to (H, W) with cell
    centres aligned as F.interpolate(mode="bilinear", align_corners=False) does, band_rows rows
    at a time, so a 24 MP image needs only one band of per-pixel coefficients in memory; the
    result equals the one-shot computation. Returns (B, 3, H, W) float32 clamped to [0, 1].
    `pre`: a per-pixel map (the prior's ToneCurves, or the ColourPrior), applied to every pixel first.
    """
    _check_image("full_in", full_in)
    _check_coeffs(full_in, coeffs)
    b, _, h, w = full_in.shape
    out = torch.empty(b, 3, h, w, dtype=torch.float32, device=full_in.device)
    return _apply_bands(full_in, coeffs, out, band_rows, pre=pre)


def apply_affine_grid_u8(full_in: torch.Tensor, coeffs: torch.Tensor, band_rows: int | None = None,
                         dtype: torch.dtype = torch.float32, out: torch.Tensor | None = None,
                         pre=None) -> torch.Tensor:
    """apply_affine_grid on uint8 pixels: (B, 3, H, W) uint8 in (any layout; HWC photos as
    channels_last views stay in place) -> (B, 3, H, W) uint8, rounded, in full_in's layout.

    On the CPU the C kernel (core/kernels.py) reads each pixel once and writes it once; elsewhere
    (CUDA, or no compiler) the PyTorch bands do the same arithmetic, in `dtype` (float16 on a GPU
    halves the traffic; its error is at most one level, tests/test_speed_path.py).
    Equals round(255 * apply_affine_grid(full_in / 255, coeffs)) within one level of 255.
    `out`: a uint8 buffer like full_in to write into (reused buffers skip a fresh allocation).
    `pre`: a per-pixel map applied to every pixel before the grid (the prior's ToneCurves, or the
    ColourPrior itself: in the kernel's same pass).
    """
    _check_image("full_in", full_in)
    _check_coeffs(full_in, coeffs)
    if full_in.dtype != torch.uint8:
        raise ValueError(f"core/transfer.py: full_in is {full_in.dtype}; apply_affine_grid_u8 takes uint8 "
                         "pixels (use apply_affine_grid for float images)")
    from core import kernels

    if (full_in.device.type == "cpu" and dtype == torch.float32 and kernels.available()
            and (pre is None or hasattr(pre, "kernel_args"))):
        gh, gw = coeffs.shape[1:3]
        h, w = full_in.shape[-2:]
        grid = coeffs.float().clone()
        grid[..., 3] *= 255
        j0, j1, fy = _kernel_index(h, gh)
        i0, _, fx = _kernel_index(w, gw)
        return kernels.affine_grid_u8(full_in, grid.flatten(3), j0, j1, fy, i0, fx, out,
                                      **({} if pre is None else pre.kernel_args()))
    rows = band_rows or (BAND_ROWS if full_in.device.type == "cpu" else 1024)  # a GPU wants big launches
    return _apply_bands(full_in, coeffs, torch.empty_like(full_in) if out is None else out, rows, dtype, pre)


def transfer_edit(full_in: torch.Tensor, lo_in: torch.Tensor, lo_out: torch.Tensor,
                  grid: int | tuple[int, int] = DEFAULT_GRID, eps: float = DEFAULT_EPS,
                  band_rows: int = BAND_ROWS, pre=None) -> torch.Tensor:
    """Carry the edit lo_in -> lo_out (B, 3, h, w) over to full_in (B, 3, H, W), all in [0, 1];
    with `pre` (the prior's tone curves) the grid carries pre(lo_in) -> lo_out.
    Returns (B, 3, H, W) float32 in [0, 1]."""
    base = lo_in if pre is None else pre(lo_in)
    return apply_affine_grid(full_in, fit_affine_grid(base, lo_out, grid, eps), band_rows, pre)


def _to_bchw(name: str, a: np.ndarray) -> torch.Tensor:
    a = np.asarray(a)
    if a.ndim != 3 or a.shape[2] != 3:
        raise ValueError(f"core/transfer.py: {name} has shape {a.shape}; expected (H, W, 3)")
    a = a.astype(np.float32) / 255.0 if a.dtype == np.uint8 else a.astype(np.float32)
    return to_tensor(a, view=True)[None]


def transfer_edit_np(full_rgb: np.ndarray, lo_in: np.ndarray, lo_out: np.ndarray,
                     grid: int | tuple[int, int] = DEFAULT_GRID,
                     eps: float = DEFAULT_EPS) -> np.ndarray:
    """numpy form of transfer_edit: (H, W, 3), (h, w, 3), (h, w, 3) float in [0, 1]
    (uint8 is read as /255). Returns (H, W, 3) float32 in [0, 1]."""
    out = transfer_edit(_to_bchw("full_rgb", full_rgb), _to_bchw("lo_in", lo_in),
                        _to_bchw("lo_out", lo_out), grid, eps)
    return out[0].permute(1, 2, 0).numpy()


def apply_transfer(mode: str, full_in: torch.Tensor, lo_in: torch.Tensor | None,
                   lo_out: torch.Tensor, grid: int | tuple[int, int] = DEFAULT_GRID,
                   eps: float = DEFAULT_EPS, pre=None) -> torch.Tensor:
    """Bring the working-size edit lo_out (B, 3, h, w) to full_in's size (B, 3, H, W).

    mode "grid": the affine-grid transfer (keeps full_in's detail); "none": plain bilinear
    upsampling of lo_out, the baseline (lo_in and pre unused). `pre`: see transfer_edit.
    Returns (B, 3, H, W) float32 in [0, 1].
    """
    if mode == "grid":
        return transfer_edit(full_in, lo_in, lo_out, grid, eps, pre=pre)
    if mode == "none":
        _check_image("lo_out", lo_out)
        up = F.interpolate(lo_out.float(), size=full_in.shape[-2:], mode="bilinear",
                           align_corners=False)
        return up.clamp_(0, 1)
    raise ValueError(f"core/transfer.py: transfer mode {mode!r} is unknown; "
                     f"use one of {TRANSFER_MODES} (config key `transfer`)")
