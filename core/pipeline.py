"""The flow of one photo: working copy -> the model (encode, network, decode) -> full-resolution transfer.

    pipe = EditPipeline(edit, long_side=512, transfer="grid", grid=32, multiple=32)
    pipe = load_model("runs/demo/student").pipeline()   # the same, its settings read from the manifest
    out = pipe(rgb)            # (H, W, 3) uint8 -> uint8, or float in [0, 1] -> float, the edit applied
    outs = pipe.edit_photos([a, b, c])   # uint8 photos, those of one size batched together
    y = pipe.edit_batch(x)     # (B, 3, H, W) uint8 tensor -> same, every step on pipe.device

The network only ever sees the working copy; the edit it makes there is carried to the
original pixels by a grid of local affine colour transforms (core.transfer), so the output
keeps every pixel of detail at any size, with no tiles. A model trained over a colour prior
(`edit.prior`, core/prior.py) has the prior's tone curves applied to every full-size pixel, in the
same pass as the grid, which then carries the rest: the prior's colour mixing and the network's
residual (core/transfer.py).

Two paths, one result (within one level of 255, tests/test_speed_path.py):
- uint8 (the photo path, `edit_batch`): the photo stays uint8 on the device; the working copy
  is an antialiased bicubic downscale of the uint8 pixels, and the transfer reads uint8 and
  writes uint8 (a C kernel on the CPU, core/kernels.py), so no float copy of the full-size
  photo is ever made. At 24 MP this is a few memory copies' worth of time.
- float (the reference, `__call__` on a float array): float32 throughout, for 16-bit photos
  and for the eval's metrics.
"""

from __future__ import annotations

import time
import warnings
from contextlib import nullcontext
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from core.data import fit_long_side
from core.images import resize, to_tensor
from core.models import device_clock
from core.transfer import apply_affine_grid_u8, apply_transfer, fit_affine_grid

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def photo_tensor(photos: np.ndarray) -> torch.Tensor:
    """(H, W, 3) or (B, H, W, 3) uint8 numpy -> (B, 3, H, W), a channels_last view of the same memory.
    Decoded photos are often read-only arrays; the pipeline never writes to its input."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        x = torch.from_numpy(photos)
    return (x[None] if x.ndim == 3 else x).permute(0, 3, 1, 2)


def photo_list(x: torch.Tensor | Sequence[torch.Tensor], out=None, device=None
               ) -> tuple[list[torch.Tensor], list, object]:
    """The photos of an edit_batch call as a list of (3, H, W) uint8 tensors of one size (a (B, 3, H, W)
    tensor: views of it), on `device` when given; where each result goes (`out`'s photos; for a list
    without `out`, None each); and what the call returns for a tensor (`out`, or a new tensor like x;
    None for a list). Raises a ValueError naming what was passed otherwise."""
    photos = list(x) if isinstance(x, (list, tuple)) else (list(x.unbind(0)) if x.ndim == 4 else [x])
    if not photos or any(p.dtype != torch.uint8 or p.ndim != 3 or p.shape[0] != 3 for p in photos) or (
            isinstance(x, torch.Tensor) and x.ndim != 4) or len({tuple(p.shape) for p in photos}) != 1:
        what = ([(p.dtype, tuple(p.shape)) for p in x] if isinstance(x, (list, tuple))
                else f"{x.dtype} {tuple(x.shape)}")
        raise ValueError(f"core/pipeline.py: edit_batch takes (B, 3, H, W) uint8 or a list of (3, H, W) uint8 "
                         f"photos of one size, got {what}; for float photos call the pipeline on an (H, W, 3) array")
    if device is not None:
        photos = [p.to(device, non_blocking=True) for p in photos]
    if out is None and isinstance(x, torch.Tensor):
        out = torch.empty_like(x, device=device)  # written photo by photo through views
    outs = [None] * len(photos) if out is None else list(out) if isinstance(out, (list, tuple)) else list(out.unbind(0))
    return photos, outs, out if isinstance(x, torch.Tensor) else None


REDUCING_GAP = 3.0  # box-reduce first while the rest of the downscale stays at least this factor


def downscale_u8(x: torch.Tensor, size: tuple[int, int], exact: bool = False,
                 mode: str = "bicubic") -> torch.Tensor:
    """(B, 3, H, W) uint8 -> (B, 3, h, w) float in [0, 1] for size (h, w): antialiased bicubic,
    as core.images.resize (`mode`: or "bilinear", the LUT's CNN copy). `exact` resizes a float copy
    of the photo (the float path's arithmetic).

    Otherwise, on the CPU: when the photo is over 2 * REDUCING_GAP times the working size (a 24 MP
    photo to 256 px: 23x), a C kernel first averages k x k blocks of the uint8 pixels (one read of
    the photo, k = the largest factor that leaves a downscale of at least REDUCING_GAP), and the
    antialiased bicubic runs on that small float image with the photo's own scale (so pixel
    centres stay where they were); the approach of Pillow's `reducing_gap`. Smaller ratios: torch
    resamples the uint8 pixels directly (rounded to uint8 levels: at most 0.72 of a level from the
    float resize on the demo photos). On a GPU: the float resize."""
    from core import kernels

    h, w = size
    if tuple(x.shape[-2:]) == (h, w):
        return x.float() / 255
    if exact:
        return F.interpolate(x.float() / 255, size=size, mode=mode, antialias=True,
                             align_corners=False).clamp_(0, 1)
    if x.device.type == "cpu":
        k = int(min(x.shape[-2] / h, x.shape[-1] / w) / REDUCING_GAP)
        if k >= 2 and kernels.available():
            small = kernels.box_reduce_u8(x, min(k, 255), reuse=True)  # read at once by the resample below
            scale = (h * k / x.shape[-2], w * k / x.shape[-1])  # the photo's scale, in reduced pixels
            return kernels.resample_aa(small, scale, size, mode).div_(255).clamp_(0, 1)
        small = F.interpolate(x, size=size, mode=mode, antialias=True, align_corners=False)
        return small.float() / 255
    small = F.interpolate(x.float(), size=size, mode=mode, antialias=True, align_corners=False)
    return small.div_(255).clamp_(0, 1)


class EditPipeline:
    def __init__(self, edit: Callable[[torch.Tensor], torch.Tensor] | None, long_side: int, transfer: str,
                 grid: int, device: str | torch.device = "cpu", multiple: int = 1, precision: str = "fp32",
                 batch_size: int = 4, exact_working_copy: bool = False):
        """`edit(x) -> y` on working-size images (B, 3, h, w) in [0, 1] (a `core.models.LoadedModel`:
        codec and network inside; its `timings` are reported here); None = identity (the input as output).

        The working copy's sides are multiples of `multiple` (the codec factor times the
        networks' downsampling), so every model sees sizes it can take. `precision` (fp32, bf16,
        fp16): the autocast dtype around the model; `batch_size` photos of one size go through
        `edit_photos` together. `exact_working_copy`: the uint8 path resizes a float copy of the
        photo, as the float path does (slower at 24 MP; see downscale_u8).
        """
        if precision not in PRECISIONS:
            raise ValueError(f"core/pipeline.py: precision={precision!r}; use one of {list(PRECISIONS)}")
        self.edit, self.long_side, self.multiple = edit, long_side, multiple
        self.transfer, self.grid, self.device = transfer, grid, torch.device(device)
        self.precision, self.batch_size, self.exact_working_copy = precision, batch_size, exact_working_copy
        prior = getattr(edit, "prior", None)  # the model's colour prior: its tone curves go before the grid
        self.pre = None if prior is None else prior.tone_curves()
        self.timings: dict[str, float] = {}

    def working_size(self, h: int, w: int) -> tuple[int, int]:
        return fit_long_side(h, w, self.long_side, self.multiple)

    def working_copy(self, rgb: np.ndarray) -> np.ndarray:
        """(H, W, 3) float in [0, 1] -> the working copy (h, w, 3), float (the reference path)."""
        h2, w2 = self.working_size(*rgb.shape[:2])
        return rgb if (h2, w2) == rgb.shape[:2] else resize(rgb, (w2, h2))

    def _now(self) -> float:
        return device_clock(self.device)

    @torch.no_grad()
    def edit_working(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, h, w) in [0, 1] at the working size -> the model's edit, same shape, in [0, 1],
        float32 on self.device."""
        x = x.to(self.device)
        if self.edit is None:
            return x
        dtype = PRECISIONS[self.precision]
        t0 = self._now()
        with torch.autocast(self.device.type, dtype=dtype) if dtype else nullcontext():
            out = self.edit(x).float()
            if not getattr(self.edit, "clamps_output", False):  # a LoadedModel's output is in [0, 1] already
                out = out.clamp(0, 1)
        parts = getattr(self.edit, "timings", None) or {"model_ms": (self._now() - t0) * 1e3}
        self.timings.update(parts)
        return out

    @torch.no_grad()
    def edit_batch(self, x: torch.Tensor | Sequence[torch.Tensor], lo: torch.Tensor | None = None,
                   out: torch.Tensor | Sequence[torch.Tensor] | None = None) -> torch.Tensor | list[torch.Tensor]:
        """The photo path: x (B, 3, H, W) uint8 (photos of one size; an HWC photo as a channels_last
        view), or a list of B (3, H, W) uint8 photos of one size (e.g. separately decoded photos:
        nothing is stacked, no copy) -> the edited photos, uint8 on self.device, in x's form and
        layout. The B working copies go through the model together; the transfer runs photo by photo.
        `lo`, optional: ready working copies (B, 3, h, w) in [0, 1] (e.g. from a JPEG's reduced decode,
        core.images.load_draft); `out`, optional: where to write (like x: a tensor, or a list).
        `timings` (ms, the whole batch): resize_ms, encode_ms, model_ms, decode_ms, fit_ms, transfer_ms."""
        t0 = self._now()
        photos, outs, result = photo_list(x, out, self.device)
        size = self.working_size(*photos[0].shape[-2:])
        if lo is None:
            lo = torch.cat([downscale_u8(p[None], size, self.exact_working_copy) for p in photos])
        elif tuple(lo.shape[-2:]) != size:
            lo = F.interpolate(lo.to(self.device).float(), size=size, mode="bicubic", antialias=True,
                               align_corners=False).clamp_(0, 1)
        lo = lo.to(self.device)
        t1 = self._now()
        self.timings = {"resize_ms": (t1 - t0) * 1e3, "encode_ms": 0.0, "model_ms": 0.0, "decode_ms": 0.0}
        out_lo = self.edit_working(lo)
        t2 = self._now()
        if self.transfer == "grid":
            coeffs = fit_affine_grid(lo if self.pre is None else self.pre(lo), out_lo, self.grid)
            t3 = self._now()
            edited = [apply_affine_grid_u8(p[None], coeffs[i:i + 1], pre=self.pre,
                                           out=None if outs[i] is None else outs[i][None])[0]
                      for i, p in enumerate(photos)]
        else:  # "none" (bilinear upsampling of the edit) and unknown modes: the float function decides
            t3 = self._now()
            edited = [apply_transfer(self.transfer, p[None], lo[i:i + 1], out_lo[i:i + 1], self.grid)
                      .mul_(255).round_().to(torch.uint8)[0] for i, p in enumerate(photos)]
            edited = [e if o is None else o.copy_(e) for e, o in zip(edited, outs)]
        self.timings.update(fit_ms=(t3 - t2) * 1e3, transfer_ms=(self._now() - t2) * 1e3)
        return edited if result is None else result

    def edit_photos(self, photos: Sequence[np.ndarray]) -> list[np.ndarray]:
        """(H, W, 3) uint8 photos of any sizes -> the edited photos, same sizes and order; photos of
        one size go through `edit_batch` together, `batch_size` at a time."""
        out: list[np.ndarray | None] = [None] * len(photos)
        by_size: dict[tuple, list[int]] = {}
        for i, p in enumerate(photos):
            by_size.setdefault(p.shape, []).append(i)
        for idx in by_size.values():
            for s in range(0, len(idx), self.batch_size):
                chunk = idx[s:s + self.batch_size]
                y = self.edit_batch([photo_tensor(photos[i])[0] for i in chunk])  # views: nothing stacked
                for j, i in enumerate(chunk):
                    out[i] = y[j].cpu().permute(1, 2, 0).numpy()
        return out

    def __call__(self, rgb: np.ndarray) -> np.ndarray:
        """(H, W, 3) uint8 -> uint8 through the photo path; float in [0, 1] -> float32 (the reference)."""
        if rgb.dtype == np.uint8:
            return self.edit_batch(photo_tensor(rgb))[0].permute(1, 2, 0).cpu().numpy()
        t0 = time.perf_counter()
        lo = self.working_copy(rgb)
        lo_t = to_tensor(lo, view=True)[None]
        self.timings = {"resize_ms": (time.perf_counter() - t0) * 1e3, "encode_ms": 0.0, "model_ms": 0.0,
                        "decode_ms": 0.0}
        out_lo = self.edit_working(lo_t).cpu()
        t2 = time.perf_counter()
        # even at equal size the transfer earns its cost: as a guided filter it keeps the input's
        # detail and drops the network's texture artefacts (demo: SSIM 0.84 -> 0.91 at the same PSNR)
        full = to_tensor(rgb, view=True)[None]  # a view of the photo: no 24 MP copy
        out = apply_transfer(self.transfer, full, lo_t, out_lo, self.grid, pre=self.pre)
        self.timings["transfer_ms"] = (time.perf_counter() - t2) * 1e3
        return out[0].permute(1, 2, 0).numpy()
