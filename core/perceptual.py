"""LPIPS, only ever with its real weights (a random backbone only where a test asks for one).

The `lpips` package ships its linear layers but takes the backbone (AlexNet, or VGG16 as HYPIR
uses) from torchvision, which would download it. We build the backbone empty and fill it from
the torch hub cache ourselves, so nothing is downloaded and a randomly initialised backbone
never gets through: with no weights, LPIPS is unavailable, with the reason. Used as a training
loss (teacher) and as a metric (eval: always the real weights).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch


class LPIPSUnavailable(RuntimeError):
    pass


def backbone_weights_path(net: str = "alex") -> Path:
    """Where torchvision keeps the ImageNet weights of `net` (alex | vgg) in the torch hub cache."""
    from torchvision.models import AlexNet_Weights, VGG16_Weights

    weights = {"alex": AlexNet_Weights, "vgg": VGG16_Weights}[net].IMAGENET1K_V1
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(weights.url).name


def build_lpips(device="cpu", net: str = "alex", random_backbone: bool = False):
    """The frozen LPIPS(net) module, net alex | vgg: forward(a, b) on (B, 3, H, W) in [-1, 1] (or
    [0, 1] with normalize=True). Raises LPIPSUnavailable with a one-line reason and fix.
    random_backbone=True (tests only, never for a reported figure) skips the backbone weights."""
    try:
        import lpips
    except ImportError as err:
        raise LPIPSUnavailable("LPIPS unavailable: the lpips package is not installed (pip install lpips)") from err
    path = backbone_weights_path(net)
    if not path.is_file() and not random_backbone:
        name = {"alex": "alexnet", "vgg": "vgg16"}[net]
        raise LPIPSUnavailable(f"LPIPS unavailable: {name} weights not in the torch hub cache ({path}); "
                               "run once with network to download them")
    with warnings.catch_warnings():  # lpips passes torchvision's deprecated `pretrained`
        warnings.simplefilter("ignore")
        model = lpips.LPIPS(pretrained=True, net=net, pnet_rand=True, verbose=False)
    if random_backbone:
        warnings.warn(f"LPIPS({net}) with a RANDOM backbone (teacher.lpips_random_backbone): a test "
                      "stand-in, not LPIPS; never report its values", stacklevel=2)
        return model.to(device).eval().requires_grad_(False)
    try:
        alexnet = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # a damaged download: unavailable, never a number
        raise LPIPSUnavailable(f"LPIPS unavailable: cannot read {path} ({err}); "
                               "delete it and download it again") from err
    # lpips keeps torchvision's layer indices: net.slice2.3.weight is features.3.weight.
    backbone = {}
    for key in model.net.state_dict():
        source = "features." + key.split(".", 1)[1]
        if source not in alexnet:
            raise LPIPSUnavailable(f"LPIPS unavailable: {path} has no {source}; delete it and download it again")
        backbone[key] = alexnet[source]
    model.net.load_state_dict(backbone)
    return model.to(device).eval().requires_grad_(False)


def load_lpips(device="cpu", net: str = "alex", random_backbone: bool = False):
    """For the training loss: build_lpips, with the fix for a run that asked for it."""
    try:
        return build_lpips(device, net, random_backbone)
    except LPIPSUnavailable as err:
        raise LPIPSUnavailable(f"{err} (or set teacher.lpips_weight=0)") from err
