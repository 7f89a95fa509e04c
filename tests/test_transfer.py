"""Full-resolution transfer (core/transfer.py): an edit made at working size lands on the
full-size original with its detail, as well as the design promises."""
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from core.transfer import (
    TRANSFER_MODES,
    apply_affine_grid,
    apply_transfer,
    fit_affine_grid,
    transfer_edit,
    transfer_edit_np,
)
from tests.conftest import FIVEK

COLOUR = torch.tensor([[0.80, 0.10, 0.00], [0.05, 0.75, 0.10], [0.00, 0.10, 0.70]])
OFFSET = torch.tensor([0.05, 0.03, 0.08])


def textured() -> torch.Tensor:
    """(1, 3, 512, 512) photo with fine detail: skimage's astronaut, else a synthetic texture."""
    try:
        from skimage.data import astronaut
        img = torch.from_numpy(astronaut().astype(np.float32) / 255).permute(2, 0, 1)[None]
    except ImportError:
        g = torch.Generator().manual_seed(0)
        yy, xx = torch.meshgrid(torch.arange(512.0), torch.arange(512.0), indexing="ij")
        stripes = 0.5 + 0.2 * torch.sin(xx * 0.9) * torch.cos(yy * 0.7)
        img = (stripes + 0.15 * torch.rand(1, 3, 512, 512, generator=g)).clamp(0, 1)
    return img


def down(x: torch.Tensor, factor: int) -> torch.Tensor:
    size = (round(x.shape[-2] / factor), round(x.shape[-1] / factor))
    return F.interpolate(x, size=size, mode="bilinear", antialias=True, align_corners=False)


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(10 * torch.log10(1 / ((a - b) ** 2).mean()))


def global_edit(x: torch.Tensor) -> torch.Tensor:
    return torch.einsum("ij,bjhw->bihw", COLOUR, x) + OFFSET[:, None, None]


def vignette_edit(x: torch.Tensor) -> torch.Tensor:
    """A smooth local edit: a radial gain (dark corners, bright centre) times a colour matrix."""
    h, w = x.shape[-2:]
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, h), torch.linspace(-1, 1, w), indexing="ij")
    gain = 1.15 - 0.45 * (xx ** 2 + yy ** 2)
    return (gain * torch.einsum("ij,bjhw->bihw", COLOUR, x)).clamp(0, 1)


def test_global_colour_transform_is_reproduced_at_full_size():
    full = textured()
    lo = down(full, 4)
    out = transfer_edit(full, lo, global_edit(lo))
    assert psnr(out, global_edit(full)) > 40


def test_smooth_local_edit_beats_bilinear_upsampling():
    full = textured()
    truth = vignette_edit(full)
    lo_in, lo_out = down(full, 4), down(truth, 4)  # a perfect edit at 1/4 of the size
    grid_db = psnr(apply_transfer("grid", full, lo_in, lo_out), truth)
    plain_db = psnr(apply_transfer("none", full, lo_in, lo_out), truth)
    assert grid_db > 35
    assert grid_db > plain_db + 6, (grid_db, plain_db)


def test_banded_application_equals_one_shot_and_f_interpolate():
    torch.manual_seed(0)
    full = torch.rand(2, 3, 45, 70)
    coeffs = torch.randn(2, 5, 9, 3, 4) * 0.3
    one_shot = apply_affine_grid(full, coeffs, band_rows=45)
    banded = apply_affine_grid(full, coeffs, band_rows=7)  # 7 does not divide 45
    assert torch.equal(banded, one_shot)
    # Reference: the whole coefficient grid upsampled with F.interpolate, then applied.
    grid = F.interpolate(coeffs.flatten(3).permute(0, 3, 1, 2), size=(45, 70), mode="bilinear",
                         align_corners=False).unflatten(1, (3, 4))
    ref = (torch.einsum("bikhw,bkhw->bihw", grid[:, :, :3], full) + grid[:, :, 3]).clamp(0, 1)
    torch.testing.assert_close(banded, ref, atol=1e-5, rtol=0)


def test_output_shape_dtype_and_range():
    torch.manual_seed(0)
    full = torch.rand(1, 3, 90, 130, dtype=torch.float64)
    lo_in = down(full, 3)
    coeffs = fit_affine_grid(lo_in, (2 * lo_in).clamp(0, 1), grid=(4, 6))
    assert coeffs.shape == (1, 4, 6, 3, 4) and coeffs.dtype == torch.float32
    out = apply_affine_grid(full, coeffs)
    assert out.shape == full.shape and out.dtype == torch.float32
    assert out.min() >= 0 and out.max() <= 1 and out.max() == 1  # the 2x gain overshoots: clamped
    none = apply_transfer("none", full, None, lo_in)
    assert none.shape == full.shape and none.dtype == torch.float32


def test_numpy_helper_matches_torch_and_reads_uint8():
    full = textured()[:, :, :200, :300]
    lo_in = down(full, 4)
    lo_out = vignette_edit(lo_in)
    ref = transfer_edit(full, lo_in, lo_out, grid=8)[0].permute(1, 2, 0).numpy()
    hwc = [t[0].permute(1, 2, 0).numpy() for t in (full, lo_in, lo_out)]
    out = transfer_edit_np(*hwc, grid=8)
    assert out.shape == (200, 300, 3) and out.dtype == np.float32
    np.testing.assert_allclose(out, ref, atol=1e-6)
    as_uint8 = transfer_edit_np((hwc[0] * 255).round().astype(np.uint8), hwc[1], hwc[2], grid=8)
    assert np.abs(as_uint8 - ref).max() < 0.01


def test_flat_working_image_keeps_detail_and_moves_the_mean():
    # A flat working image says nothing about colour gain: the fit must fall back to identity
    # plus the offset, not blow up the full image's texture.
    full = textured()
    lo_in = torch.full((1, 3, 32, 32), 0.4)
    out = transfer_edit(full, lo_in, lo_in + 0.1, grid=8)
    inside = (full > 0.02) & (full < 0.88)
    assert (out - (full + 0.1))[inside].abs().max() < 1e-3


def test_unknown_mode_and_bad_shapes_are_explained():
    x = torch.rand(1, 3, 16, 16)
    assert TRANSFER_MODES == ("grid", "none")
    with pytest.raises(ValueError, match="grid.*none"):
        apply_transfer("wavelet", x, x, x)
    with pytest.raises(ValueError, match="lo_in .* and lo_out"):
        fit_affine_grid(x, torch.rand(1, 3, 8, 8))
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        apply_affine_grid(torch.rand(3, 16, 16), torch.zeros(1, 2, 2, 3, 4))


def _load(path: Path) -> torch.Tensor:
    from PIL import Image
    rgb = np.asarray(Image.open(path).convert("RGB"), dtype=np.float32) / 255
    return torch.from_numpy(rgb).permute(2, 0, 1)[None]


@pytest.mark.skipif(not (FIVEK / "input").is_dir(), reason="FiveK pairs not present")
def test_fivek_target_at_quarter_size_transfers_back(capsys):
    """The design's ceiling: a perfect edit at 1/4 size, transferred to full size."""
    pairs = [(_load(p), _load(FIVEK / "target" / p.name))
             for p in sorted((FIVEK / "input").iterdir())]
    scores = {}
    for mode, grid in (("none", 0), ("grid", 8), ("grid", 16), ("grid", 32)):
        scores[(mode, grid)] = np.mean([
            psnr(apply_transfer(mode, x, down(x, 4), down(y, 4), grid=grid or 1), y)
            for x, y in pairs])
    with capsys.disabled():
        print("\nFiveK, target at 1/4 size back to full, mean PSNR: "
              + ", ".join(f"{m} {g or ''}: {db:.2f} dB" for (m, g), db in scores.items()))
    assert scores[("grid", 32)] >= 30
    assert scores[("grid", 32)] > scores[("none", 0)] + 5
