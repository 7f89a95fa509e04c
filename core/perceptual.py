"""LPIPS, only ever with its real weights.

The `lpips` package ships its linear layers but takes the AlexNet backbone from torchvision,
which downloads it to the torch hub cache. We look for that file first and never let a
randomly initialised backbone through: with no weights, LPIPS is "unavailable", with the reason.
"""

from __future__ import annotations

from pathlib import Path

import torch

ALEXNET_FILE = "alexnet-owt-7be5be79.pth"  # torchvision's AlexNet_Weights.IMAGENET1K_V1


class LPIPSUnavailable(RuntimeError):
    pass


def alexnet_weights_path() -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints" / ALEXNET_FILE


def lpips_unavailable_reason() -> str | None:
    """None when LPIPS can be built offline, else one line saying why not and how to fix it."""
    try:
        import lpips  # noqa: F401
    except ImportError:
        return "LPIPS unavailable: the lpips package is not installed (pip install lpips)"
    path = alexnet_weights_path()
    if not path.is_file():
        return (f"LPIPS unavailable: AlexNet weights not in the torch hub cache ({path}); run "
                "`python -c \"import torchvision; torchvision.models.alexnet(weights='DEFAULT')\"` once "
                "with network, or copy the file there")
    return None


def load_lpips(device="cpu"):
    """The frozen LPIPS(alex) module taking (B, 3, H, W) in [-1, 1]; raises LPIPSUnavailable."""
    reason = lpips_unavailable_reason()
    if reason:
        raise LPIPSUnavailable(reason + " (or set the LPIPS weight to 0)")
    import lpips

    model = lpips.LPIPS(net="alex", pretrained=True, pnet_rand=False, verbose=False)
    return model.eval().requires_grad_(False).to(device)
