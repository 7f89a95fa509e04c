"""The 3D LUT baseline: exact identity start, banding, trilinear look-up, training, reload, pipeline."""

import json
import math

import numpy as np
import pytest
import torch

from core.models import load_model
from lut.model import (
    AdaptiveLUT,
    apply_lut,
    identity_lut,
    monotonicity_loss,
    tv_loss,
)
from tests.conftest import REPO, tiny_overrides

TINY = dict(num_basis=3, size=9, cnn_size=32)
LUT_OVERRIDES = ["lut.size=9", "lut.cnn_size=32", "lut.train_steps=8", "lut.learning_rate=0.01",
                 "train.ema_decay=0"]


def test_a_new_model_returns_its_input():
    torch.manual_seed(0)
    x = torch.rand(2, 3, 20, 30)
    with torch.no_grad():
        assert (AdaptiveLUT(**TINY)(x) - x).abs().max() < 1e-5


def test_banded_apply_equals_whole_apply():
    torch.manual_seed(0)
    lut, x = torch.rand(2, 3, 5, 5, 5), torch.rand(2, 3, 37, 23)
    whole = apply_lut(lut, x, band_pixels=10**9)
    banded = apply_lut(lut, x, band_pixels=2 * 23 * 4)  # 4 rows a band, the last one short
    assert torch.equal(whole, banded)


def hand_trilinear(lut: torch.Tensor, rgb) -> torch.Tensor:
    """The look-up written out: lut (3, S, S, S) indexed [c, b, g, r], rgb in [0, 1] -> (3,)."""
    s = lut.shape[-1]
    pos = [v * (s - 1) for v in rgb]
    lo = [min(int(math.floor(p)), s - 2) for p in pos]
    frac = [p - i for p, i in zip(pos, lo)]
    out = torch.zeros(3, dtype=torch.float64)
    for dr in (0, 1):
        for dg in (0, 1):
            for db in (0, 1):
                weight = ((frac[0] if dr else 1 - frac[0]) * (frac[1] if dg else 1 - frac[1])
                          * (frac[2] if db else 1 - frac[2]))
                out += weight * lut[:, lo[2] + db, lo[1] + dg, lo[0] + dr].double()
    return out


def test_a_constant_colour_gets_the_trilinear_value():
    torch.manual_seed(0)
    model = AdaptiveLUT(num_basis=1, size=5, cnn_size=32)  # one basis: its weight is exactly 1 at the start
    lut = torch.rand(3, 5, 5, 5)
    with torch.no_grad():
        model.luts[0] = lut
    for rgb in [(0.3, 0.55, 0.9), (0.0, 1.0, 0.125), (0.71, 0.71, 0.02)]:
        image = torch.tensor(rgb).view(1, 3, 1, 1).expand(1, 3, 6, 4).contiguous()
        with torch.no_grad():
            out = model(image)
        expected = hand_trilinear(lut, rgb).float().view(1, 3, 1, 1)
        assert torch.allclose(out, expected.expand_as(out), atol=1e-6), rgb


def test_regularisers_see_a_rough_or_inverted_lut():
    ident = identity_lut(9)[None]
    assert monotonicity_loss(ident) == 0
    assert monotonicity_loss(ident.flip(-1)) > 0  # red out falls as red in rises
    noisy = ident + 0.1 * torch.randn(ident.shape, generator=torch.Generator().manual_seed(0))
    assert tv_loss(noisy) > 2 * tv_loss(ident)


def run_lut(args):
    from lut.train import main

    return main(["--config", str(REPO / "configs" / "demo.yaml"), *args])


def test_training_beats_identity_saves_and_reloads(tiny_data, tmp_path):
    metrics = run_lut([*tiny_overrides(tiny_data, tmp_path), *LUT_OVERRIDES])
    assert metrics["psnr"] > metrics["identity_psnr"] + 0.1
    run = tmp_path / "demo" / "lut"
    checkpoints = [p.name for p in run.glob("checkpoint-*")]
    assert "checkpoint-6" in checkpoints and len(checkpoints) <= 2  # demo.yaml keeps the last two
    assert json.loads((run / "model" / "config.json").read_text())["kind"] == "lut"

    loaded = load_model(run)
    model, manifest = loaded.net, loaded.manifest
    assert manifest["step"] == 8 and manifest["train_seconds"] > 0 and manifest["metrics"] == metrics
    assert manifest["class"] == "lut.model:AdaptiveLUT" and loaded.codec is None and loaded.full_resolution
    again = AdaptiveLUT.from_pretrained(run / "model")
    x = torch.rand(1, 3, 48, 40)
    with torch.no_grad():
        out = model(x)
        assert torch.equal(out, again(x))
        assert (out - x).abs().max() > 1e-3  # the reloaded model is the trained one, not a new one


def test_resume_matches_an_uninterrupted_run(tiny_data, tmp_path, capsys):
    import shutil

    args = [*tiny_overrides(tiny_data, tmp_path), *LUT_OVERRIDES, "lut.train_steps=6"]
    run_lut([*args, "--output_dir", str(tmp_path / "straight")])
    (tmp_path / "resumed").mkdir()
    shutil.copytree(tmp_path / "straight" / "checkpoint-3", tmp_path / "resumed" / "checkpoint-3")
    capsys.readouterr()
    run_lut([*args, "--output_dir", str(tmp_path / "resumed"), "--resume_from_checkpoint", "latest"])
    assert "resuming from" in capsys.readouterr().out  # steps 4-6 only; a fresh run would also match
    a = AdaptiveLUT.from_pretrained(tmp_path / "straight")
    b = AdaptiveLUT.from_pretrained(tmp_path / "resumed")
    for (name, pa), (_, pb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(pa, pb), name


def test_pipeline_keeps_size_and_reports_its_timings(tmp_path):
    torch.manual_seed(0)
    AdaptiveLUT(**TINY).save_pretrained(tmp_path / "model", manifest={"step": 0})
    model = load_model(tmp_path, "cpu")  # what eval/run.py and student.enhance call
    pipe = model.pipeline(512)  # the LUT's own full-resolution path: no working size, no transfer
    assert model.manifest["step"] == 0 and model.function_evals() == 1
    rgb = np.random.default_rng(0).random((200, 300, 3), dtype=np.float32)
    out = pipe(rgb)
    assert out.shape == (200, 300, 3) and out.dtype == np.float32
    np.testing.assert_allclose(out, rgb, atol=1e-5)  # a new model is the identity
    assert set(pipe.timings) == {"resize_ms", "encode_ms", "model_ms", "decode_ms", "transfer_ms"}
    small = pipe.working_copy(rgb)
    assert small.shape == (32, 32, 3)
    x = torch.from_numpy(small).permute(2, 0, 1)[None].repeat(2, 1, 1, 1)
    assert pipe.edit_working(x).shape == (2, 3, 32, 32)


def test_from_pretrained_refuses_another_kind_of_model(tmp_path):
    from core.checkpoint import CheckpointError, save_model_folder

    save_model_folder(tmp_path / "m", {"w": torch.zeros(1)}, config={"kind": "student", "arch": {}}, manifest={})
    with pytest.raises(CheckpointError, match="not a 'lut' one"):
        AdaptiveLUT.from_pretrained(tmp_path / "m")
