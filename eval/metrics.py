"""Quality metrics against the target, from well-kept libraries (DESIGN.md, "Eval").

PSNR and SSIM: torchmetrics. CIEDE2000: scikit-image (sRGB -> CIELAB D65, then the
Sharma et al. formula). LPIPS: the `lpips` package with AlexNet, only when the backbone's
ImageNet weights are already in the torch hub cache: it is reported unavailable otherwise,
never computed with a random backbone and never downloaded.

Images: (3, H, W) or (1, 3, H, W) torch float in [0, 1], or (H, W, 3) numpy float in [0, 1]
(uint8 is read as /255).
"""
from __future__ import annotations

import numpy as np
import torch
from skimage.color import deltaE_ciede2000, rgb2lab
from torchmetrics.functional.image import structural_similarity_index_measure

from core.images import PSNR_CAP_DB, psnr_db, to_tensor

# rgb2lab works in float64 with several temporaries: bands of rows keep 24 MP within memory.
_LAB_BAND_ROWS = 256


def to_bchw(x: torch.Tensor | np.ndarray) -> torch.Tensor:
    """Any accepted image form -> (1, 3, H, W) float32 torch in [0, 1] (batches pass through)."""
    if isinstance(x, np.ndarray):
        if x.ndim != 3 or x.shape[2] != 3:
            raise ValueError(f"eval/metrics.py: numpy image has shape {x.shape}; "
                             "expected (H, W, 3)")
        x = x.astype(np.float32) / 255.0 if x.dtype == np.uint8 else x.astype(np.float32)
        return to_tensor(x, view=True)[None]
    if x.ndim == 3:
        x = x[None]
    if x.ndim != 4 or x.shape[1] != 3:
        raise ValueError(f"eval/metrics.py: image tensor has shape {tuple(x.shape)}; "
                         "expected (3, H, W) or (B, 3, H, W)")
    return x.detach().float()


def _pair(pred, target) -> tuple[torch.Tensor, torch.Tensor]:
    pred, target = to_bchw(pred), to_bchw(target)
    if pred.shape != target.shape:
        raise ValueError(f"eval/metrics.py: pred {tuple(pred.shape)} and target "
                         f"{tuple(target.shape)} differ; compare at the target's resolution")
    return pred, target.to(pred.device)


def psnr(pred, target) -> float:
    """PSNR in dB (data_range 1), capped at PSNR_CAP_DB; a batch gives the mean per image."""
    return psnr_db(*_pair(pred, target))


def ssim(pred, target) -> float:
    """SSIM (Gaussian window 11, sigma 1.5, data_range 1), mean over pixels and images."""
    pred, target = _pair(pred, target)
    return float(structural_similarity_index_measure(pred, target, data_range=1.0))


def ciede2000_lab(lab_pred: np.ndarray, lab_target: np.ndarray) -> np.ndarray:
    """Per-pixel CIEDE2000 between CIELAB arrays (..., 3) (skimage.color.deltaE_ciede2000)."""
    return deltaE_ciede2000(lab_pred, lab_target, channel_axis=-1)


def ciede2000(pred, target) -> float:
    """Mean CIEDE2000 colour difference over pixels of sRGB images in [0, 1]."""
    pred, target = _pair(pred, target)
    total, count = 0.0, 0
    for p, t in zip(pred.clamp(0, 1).cpu().numpy(), target.clamp(0, 1).cpu().numpy()):
        p, t = p.transpose(1, 2, 0), t.transpose(1, 2, 0)  # (H, W, 3)
        for top in range(0, p.shape[0], _LAB_BAND_ROWS):
            rows = slice(top, top + _LAB_BAND_ROWS)
            d = ciede2000_lab(rgb2lab(p[rows]), rgb2lab(t[rows]))
            total += float(d.sum())
            count += d.size
    return total / count


class LPIPSMetric:
    """LPIPS (AlexNet), offline only.

    `available` is False, with a one-line `reason`, when the AlexNet ImageNet weights are not
    in the torch hub cache (`$TORCH_HOME/hub/checkpoints/`); then calls return None. The
    backbone is built empty and filled from that file ourselves, so torchvision never tries
    to download; the linear layers ship inside the lpips package.
    """

    def __init__(self, device: str | torch.device = "cpu"):
        from core.perceptual import LPIPSUnavailable, build_lpips

        self.device = torch.device(device)
        self.model = None
        self.reason = ""
        try:
            self.model = build_lpips(self.device)
        except LPIPSUnavailable as err:  # any failure to load reads as "unavailable", never as a number
            self.reason = str(err)
        self.available = self.model is not None

    @torch.no_grad()
    def __call__(self, pred, target) -> float | None:
        """Mean LPIPS distance (lower is closer), or None when unavailable."""
        if self.model is None:
            return None
        pred, target = _pair(pred, target)
        d = self.model(pred.to(self.device), target.to(self.device), normalize=True)
        return float(d.mean())


def evaluate_pair(pred, target, lpips_metric: LPIPSMetric | None = None) -> dict:
    """{"psnr", "ssim", "ciede2000", "lpips"} for one image pair; lpips is None without a
    metric or when its weights are unavailable."""
    return {"psnr": psnr(pred, target), "ssim": ssim(pred, target),
            "ciede2000": ciede2000(pred, target),
            "lpips": lpips_metric(pred, target) if lpips_metric is not None else None}


def summarize(rows: list[dict]) -> dict:
    """Mean of each numeric key over rows, ignoring None (a key with no values maps to None);
    keys holding other things (names, paths) are left out."""
    out = {}
    for key in dict.fromkeys(k for row in rows for k in row):
        values = [row.get(key) for row in rows]
        if not all(v is None or isinstance(v, (int, float)) for v in values):
            continue
        numbers = [float(v) for v in values if v is not None]
        out[key] = float(np.mean(numbers)) if numbers else None
    return out


__all__ = ["PSNR_CAP_DB", "LPIPSMetric", "ciede2000", "ciede2000_lab", "evaluate_pair", "psnr",
           "ssim", "summarize", "to_bchw"]
