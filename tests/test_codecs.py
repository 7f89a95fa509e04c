"""Codecs: the exact pixel codec, and SD-VAE / TAESD through their real loading path."""

import pytest
import torch
from diffusers import AutoencoderKL, AutoencoderTiny

from core.codecs import CodecError, build_codec
from core.config import CodecConfig


def test_pixel_codec_is_exact():
    codec = build_codec(CodecConfig(kind="pixel", factor=4))
    x = torch.rand(2, 3, 32, 48)
    z = codec.encode(x)
    assert z.shape == (2, 48, 8, 12) and codec.channels == 48 and codec.factor == 4
    assert torch.allclose(codec.decode(z), x, atol=1e-6)
    with pytest.raises(CodecError, match="multiple of the codec factor"):
        codec.encode(torch.rand(1, 3, 30, 32))


@pytest.fixture(params=["C", "torch"])
def shuffles(request, monkeypatch):
    """The pixel codec's inference passes: the C kernels (where built) or the PyTorch fallback."""
    from core import codecs, kernels

    if request.param == "C" and not kernels.available():
        pytest.skip("no C compiler")
    if request.param == "torch":
        monkeypatch.setattr(codecs, "_c_shuffle", lambda x: False)
    return request.param


def test_pixel_codec_inference_path_is_pixel_unshuffle(shuffles):
    """Without autograd the encoder writes channels_last latents in one pass: the very values of
    pixel_unshuffle, from either input layout; with autograd, pixel_unshuffle itself (gradients flow)."""
    import torch.nn.functional as F

    codec = build_codec(CodecConfig(kind="pixel", factor=8))
    x = torch.rand(2, 3, 32, 48)
    ref = F.pixel_unshuffle(x * 2 - 1, 8)
    for inp in (x, x.contiguous(memory_format=torch.channels_last)):
        with torch.no_grad():
            z = codec.encode(inp)
        assert torch.equal(z, ref) and z.is_contiguous(memory_format=torch.channels_last)
    xg = x.clone().requires_grad_()
    codec.encode(xg).square().sum().backward()
    assert torch.allclose(xg.grad, 4 * (2 * x - 1))


def test_pixel_codec_inference_decode_is_pixel_shuffle(shuffles):
    """Without autograd the decoder reads the latents (either layout) in one strided pass: the very
    values of (pixel_shuffle(z) + 1) / 2, as a plain contiguous image; with autograd, that expression."""
    import torch.nn.functional as F

    codec = build_codec(CodecConfig(kind="pixel", factor=8))
    z = torch.randn(2, 192, 4, 6)
    ref = (F.pixel_shuffle(z, 8) + 1) / 2
    for inp in (z, z.contiguous(memory_format=torch.channels_last)):
        with torch.no_grad():
            x = codec.decode(inp)
        assert torch.equal(x, ref) and x.is_contiguous()
    zg = z.clone().requires_grad_()
    codec.decode(zg).sum().backward()
    assert torch.equal(zg.grad, torch.full_like(z, 0.5))


def _tiny_vae(path):
    vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 16),
                        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                        layers_per_block=1, norm_num_groups=4, sample_size=32, scaling_factor=0.5)
    vae.save_pretrained(path / "vae")
    return vae


def test_sd_vae_codec_loads_from_a_folder(tmp_path):
    vae = _tiny_vae(tmp_path)
    codec = build_codec(CodecConfig(kind="sd-vae", pretrained=str(tmp_path), subfolder="vae"))
    assert codec.factor == 2 and codec.channels == 4 and codec.scaling_factor == 0.5
    x = torch.rand(1, 3, 16, 16)
    z = codec.encode(x)
    assert z.shape == (1, 4, 8, 8)
    expected = vae.encode(x * 2 - 1).latent_dist.mode() * 0.5  # same weights, same latents
    assert torch.allclose(z, expected, atol=1e-5)
    assert codec.decode(z).shape == (1, 3, 16, 16)
    assert codec.cache_key.startswith("sd-vae-")


def test_taesd_codec_loads_from_a_folder(tmp_path):
    tiny = AutoencoderTiny(encoder_block_out_channels=(8, 8, 8, 8), decoder_block_out_channels=(8, 8, 8, 8),
                           num_encoder_blocks=(1, 1, 1, 1), num_decoder_blocks=(1, 1, 1, 1), latent_channels=4)
    tiny.save_pretrained(tmp_path / "taesd")
    codec = build_codec(CodecConfig(kind="taesd", pretrained=str(tmp_path / "taesd")))
    assert codec.factor == 8 and codec.channels == 4
    z = codec.encode(torch.rand(1, 3, 32, 32))
    assert z.shape == (1, 4, 4, 4)
    assert codec.decode(z).shape == (1, 3, 32, 32)


def test_missing_weights_fail_fast_with_the_fix(tmp_path):
    with pytest.raises(CodecError, match="cannot load AutoencoderKL") as err:
        build_codec(CodecConfig(kind="sd-vae", pretrained=str(tmp_path / "nowhere")))
    assert "Fix:" in str(err.value)
    with pytest.raises(CodecError, match="HF_HUB_OFFLINE|network"):
        build_codec(CodecConfig(kind="taesd", pretrained="madebyollin/taesd"))
