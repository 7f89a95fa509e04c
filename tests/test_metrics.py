"""Quality metrics (eval/metrics.py): known values, both input forms, and an LPIPS that says
it is unavailable rather than making a number up."""
import socket
from pathlib import Path

import numpy as np
import pytest
import torch

from eval.metrics import (
    PSNR_CAP_DB,
    LPIPSMetric,
    ciede2000,
    ciede2000_lab,
    evaluate_pair,
    psnr,
    ssim,
    summarize,
)

ALEXNET_FILE = "alexnet-owt-7be5be79.pth"


def image(seed: int = 0, size: int = 48) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return 0.2 + 0.6 * torch.rand(3, size, size, generator=g)


@pytest.fixture
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a metric tried to reach the network")
    # A name lookup comes first; refuse it too, with an error no metric would swallow.
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)


def test_psnr_of_identical_images_is_capped():
    x = image()
    assert psnr(x, x) == PSNR_CAP_DB == 100.0


def test_psnr_matches_known_mse():
    target = image()
    sign = torch.where(torch.rand(target.shape, generator=torch.Generator().manual_seed(1)) > 0.5,
                       1.0, -1.0)
    pred = target + 0.03 * sign  # every pixel off by 0.03: MSE = 9e-4
    assert abs(psnr(pred, target) - 10 * np.log10(1 / 9e-4)) < 1e-3


def test_ssim_is_one_for_identical_and_drops_with_noise():
    x = image()
    assert ssim(x, x) == pytest.approx(1.0, abs=1e-6)
    noisy = (x + 0.1 * torch.randn(x.shape, generator=torch.Generator().manual_seed(2))).clamp(0, 1)
    assert ssim(noisy, x) < 0.9


def test_ciede2000_reference_pairs_and_extremes():
    # Sharma, Wu & Dalal (2005), test data pairs 1 and 7.
    lab_1 = np.array([[50.0, 2.6772, -79.7751], [50.0, 0.0, 0.0]])
    lab_2 = np.array([[50.0, 0.0, -82.7485], [50.0, -1.0, 2.0]])
    np.testing.assert_allclose(ciede2000_lab(lab_1, lab_2), [2.0425, 2.3669], atol=1e-4)
    x = image()
    assert ciede2000(x, x) == 0.0
    white, black = torch.ones(3, 8, 8), torch.zeros(3, 8, 8)
    assert ciede2000(white, black) == pytest.approx(100.0, abs=1e-3)  # L 100 vs 0, S_L = 1


def test_numpy_and_torch_inputs_give_equal_results():
    pred, target = image(0), image(3)
    as_torch = evaluate_pair(pred, target)
    as_batch = evaluate_pair(pred[None], target[None])
    as_numpy = evaluate_pair(pred.permute(1, 2, 0).numpy(), target.permute(1, 2, 0).numpy())
    assert set(as_torch) == {"psnr", "ssim", "ciede2000", "lpips"}
    assert as_torch["lpips"] is None
    for key in ("psnr", "ssim", "ciede2000"):
        assert as_batch[key] == pytest.approx(as_torch[key], rel=1e-6)
        assert as_numpy[key] == pytest.approx(as_torch[key], rel=1e-6)


def test_mismatched_sizes_are_explained():
    with pytest.raises(ValueError, match="differ"):
        psnr(image(size=32), image(size=48))


def test_lpips_without_cached_weights_is_unavailable(tmp_path, monkeypatch, no_network):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    metric = LPIPSMetric()
    assert not metric.available
    assert metric.reason.startswith("LPIPS unavailable: alexnet weights not in the torch hub cache")
    assert str(tmp_path / "hub" / "checkpoints" / ALEXNET_FILE) in metric.reason
    x = image()
    assert metric(x, x) is None
    assert evaluate_pair(x, x, metric)["lpips"] is None


def test_lpips_with_a_broken_cache_file_is_unavailable(tmp_path, monkeypatch, no_network):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    (tmp_path / "hub" / "checkpoints").mkdir(parents=True)
    (tmp_path / "hub" / "checkpoints" / ALEXNET_FILE).write_bytes(b"half a download")
    metric = LPIPSMetric()
    assert not metric.available and metric.reason.startswith("LPIPS unavailable")
    assert metric(image(), image(1)) is None


def test_lpips_loads_backbone_from_the_cache_file(tmp_path, monkeypatch, no_network):
    from torchvision.models import alexnet
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    (tmp_path / "hub" / "checkpoints").mkdir(parents=True)
    torch.manual_seed(0)
    weights = alexnet(weights=None).state_dict()  # stands in for the ImageNet file
    torch.save(weights, tmp_path / "hub" / "checkpoints" / ALEXNET_FILE)
    metric = LPIPSMetric()
    assert metric.available, metric.reason
    # The backbone holds the file's weights, not a fresh random init.
    backbone = metric.model.net.state_dict()
    assert torch.equal(backbone["slice1.0.weight"], weights["features.0.weight"])
    assert torch.equal(backbone["slice5.10.weight"], weights["features.10.weight"])
    # ...and the linear heads are the calibrated ones shipped with lpips.
    import lpips
    shipped = torch.load(Path(lpips.__file__).parent / "weights" / "v0.1" / "alex.pth",
                         map_location="cpu")
    assert torch.equal(metric.model.lin0.model[1].weight, shipped["lin0.model.1.weight"])
    x = image(size=64)
    assert metric(x, x) == pytest.approx(0.0, abs=1e-6)
    assert metric(x, image(1, size=64)) > 0
    assert evaluate_pair(x, image(1, size=64), metric)["lpips"] > 0


def test_summarize_means_ignore_none():
    rows = [{"name": "a", "psnr": 20.0, "lpips": None, "ssim": 0.5},
            {"name": "b", "psnr": 30.0, "lpips": None, "ssim": None}]
    assert summarize(rows) == {"psnr": 25.0, "lpips": None, "ssim": 0.5}
    assert summarize([]) == {}
