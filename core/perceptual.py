"""LPIPS, only ever with its real weights.

The `lpips` package ships its linear layers but takes the AlexNet backbone from torchvision,
which would download it. We build the backbone empty and fill it from the torch hub cache
ourselves, so nothing is downloaded and a randomly initialised backbone never gets through:
with no weights, LPIPS is unavailable, with the reason. Used as a training loss (teacher) and
as a metric (eval).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch


class LPIPSUnavailable(RuntimeError):
    pass


def alexnet_weights_path() -> Path:
    from torchvision.models import AlexNet_Weights

    return Path(torch.hub.get_dir()) / "checkpoints" / Path(AlexNet_Weights.IMAGENET1K_V1.url).name


def build_lpips(device="cpu"):
    """The frozen LPIPS(alex) module: forward(a, b) on (B, 3, H, W) in [-1, 1] (or [0, 1] with
    normalize=True). Raises LPIPSUnavailable with a one-line reason and fix."""
    try:
        import lpips
    except ImportError as err:
        raise LPIPSUnavailable("LPIPS unavailable: the lpips package is not installed (pip install lpips)") from err
    path = alexnet_weights_path()
    if not path.is_file():
        raise LPIPSUnavailable(f"LPIPS unavailable: alexnet weights not in the torch hub cache ({path}); "
                               "run once with network to download them")
    with warnings.catch_warnings():  # lpips passes torchvision's deprecated `pretrained`
        warnings.simplefilter("ignore")
        model = lpips.LPIPS(pretrained=True, net="alex", pnet_rand=True, verbose=False)
    try:
        alexnet = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # a damaged download: unavailable, never a number
        raise LPIPSUnavailable(f"LPIPS unavailable: cannot read {path} ({err}); "
                               "delete it and download it again") from err
    # lpips keeps AlexNet's layer indices: net.slice2.3.weight is features.3.weight.
    backbone = {}
    for key in model.net.state_dict():
        source = "features." + key.split(".", 1)[1]
        if source not in alexnet:
            raise LPIPSUnavailable(f"LPIPS unavailable: {path} has no {source}; delete it and download it again")
        backbone[key] = alexnet[source]
    model.net.load_state_dict(backbone)
    return model.to(device).eval().requires_grad_(False)


def load_lpips(device="cpu"):
    """For the training loss: build_lpips, with the fix for a run that asked for it."""
    try:
        return build_lpips(device)
    except LPIPSUnavailable as err:
        raise LPIPSUnavailable(f"{err} (or set teacher.lpips_weight=0)") from err
