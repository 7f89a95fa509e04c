"""The TAESD-family codec (core/tae.py) on the real TAEF2 weights in ../shared/weights/taef2, and
its errors on wrong files. Tests that need the weights skip when the folder is absent."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from core.codecs import build_codec
from core.config import CodecConfig
from core.tae import TAEError, build_decoder, build_encoder, load_tae
from tests.conftest import FIVEK, REPO, tiny_overrides

TAEF2 = REPO.parent / "shared" / "weights" / "taef2"
needs_taef2 = pytest.mark.skipif(not TAEF2.is_dir(), reason=f"no TAEF2 weights at {TAEF2}")


def photo_512(name_index: int = 0) -> torch.Tensor:
    """A real FiveK edit resized to long side 512 (sides multiples of 8): (1, 3, H, W) in [0, 1]."""
    from PIL import Image

    path = sorted((FIVEK / "target").iterdir())[name_index]
    im = Image.open(path).convert("RGB")
    w, h = im.size
    s = 512 / max(w, h)
    im = im.resize((round(w * s) // 8 * 8, round(h * s) // 8 * 8), Image.BICUBIC)
    return torch.from_numpy(np.array(im)).permute(2, 0, 1)[None].float() / 255


@needs_taef2
@pytest.mark.skipif(not FIVEK.is_dir(), reason="no FiveK sample")
def test_taef2_reconstructs_real_photos_at_29_db():
    codec = build_codec(CodecConfig(kind="tae", pretrained=str(TAEF2)))
    assert (codec.factor, codec.channels) == (8, 32)
    psnrs = []
    with torch.no_grad():
        for i in (1, 2):
            x = photo_512(i)
            z = codec.encode(x)
            assert z.shape == (1, 32, x.shape[2] // 8, x.shape[3] // 8)
            mse = torch.mean((codec.decode(z).clamp(0, 1) - x) ** 2).item()
            psnrs.append(10 * math.log10(1 / mse))
    assert min(psnrs) >= 29.0, psnrs


@needs_taef2
def test_taef2_has_the_groupnorm_branch_where_the_weights_do():
    enc, dec = load_tae(TAEF2)
    with_branch = [i for i, m in enumerate(enc) if getattr(m, "pool", None) is not None]
    assert with_branch == [11, 12, 13]  # the encoder's last three blocks
    assert [i for i, m in enumerate(dec) if getattr(m, "pool", None) is not None] == [3, 4, 5]


def test_plain_taesd_layout_loads_without_the_branch(tmp_path):
    """A TAESD-style (4-channel, no GroupNorm) pair written by the module itself loads back exactly."""
    fake_enc = {"14.weight": torch.zeros(4, 64, 3, 3)}
    fake_dec = {"1.weight": torch.zeros(64, 4, 3, 3)}
    enc, dec = build_encoder(fake_enc), build_decoder(fake_dec)
    torch.save(enc.state_dict(), tmp_path / "taesd_encoder.pth")
    from safetensors.torch import save_file

    save_file(dec.state_dict(), str(tmp_path / "taesd_decoder.safetensors"))
    codec = build_codec(CodecConfig(kind="tae", pretrained=str(tmp_path)))
    assert (codec.factor, codec.channels) == (8, 4)
    assert not any(getattr(m, "pool", None) is not None for m in codec.encoder)
    x = torch.rand(1, 3, 32, 48)
    assert codec.decode(codec.encode(x)).shape == x.shape


def test_wrong_or_truncated_files_name_the_file(tmp_path):
    with pytest.raises(TAEError, match="not a folder"):
        load_tae(tmp_path / "missing")
    with pytest.raises(TAEError, match="no file named \\*encoder\\*"):
        load_tae(tmp_path)
    enc = build_encoder({"14.weight": torch.zeros(4, 64, 3, 3)})
    torch.save(enc.state_dict(), tmp_path / "x_encoder.pth")
    data = (tmp_path / "x_encoder.pth").read_bytes()
    (tmp_path / "x_decoder.pth").write_bytes(data[: len(data) // 2])  # truncated
    with pytest.raises(TAEError, match="x_decoder.pth"):
        load_tae(tmp_path)
    torch.save({"1.weight": torch.zeros(64, 4, 3, 3), "junk": torch.zeros(1)}, tmp_path / "x_decoder.pth")
    with pytest.raises(TAEError, match="x_decoder.pth.*unexpected"):
        load_tae(tmp_path)
    torch.save(enc.state_dict(), tmp_path / "x_decoder.pth")  # an encoder where the decoder should be
    with pytest.raises(TAEError, match="x_decoder.pth"):
        load_tae(tmp_path)


@needs_taef2
@pytest.mark.slow
def test_flow_teacher_and_student_train_in_the_taef2_space(tiny_data, tmp_path):
    """A few teacher and distillation steps with the real pretrained codec (32 channels, factor 8)."""
    from core.models import load_model
    from distill.run import main as distill
    from teacher.train import main as train_teacher

    args = ["--config", str(REPO / "configs" / "demo.yaml"), *tiny_overrides(tiny_data, tmp_path),
            "codec.kind=tae", f"codec.pretrained={TAEF2}", "teacher.train_steps=3", "distill.train_steps=3",
            "train.checkpointing_steps=0"]
    t_metrics = train_teacher(args)
    teacher = load_model(tmp_path / "demo" / "teacher")
    assert teacher.manifest["codec"]["kind"] == "tae" and teacher.codec.channels == 32
    s_metrics = distill(args)
    student = load_model(tmp_path / "demo" / "student")
    assert student.net.channels == 32 and student.manifest["step"] == 3
    # through a real codec the identity is no longer exact, but the validation ran on real pixels
    assert 10 < t_metrics["identity_psnr"] < 100 and s_metrics["psnr"] > 5
