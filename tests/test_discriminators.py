"""Discriminators on tiny latents: logits, frozen parts, gradient to the generator, learning,
and the OpenCLIP loading paths (tiny random towers registered here; no hub)."""

import json
import time
from contextlib import nullcontext

import open_clip
import pytest
import torch
import torch.nn.functional as F

from core.config import DiscriminatorConfig
from core.discriminators import OpenCLIPDiscriminator, load_openclip_visual
from core.gan import hinge_d, hinge_g, r1_penalty
from core.nets import make_unet
from distill.discriminators import LatentPatchGAN, build_discriminator

C = 48  # pixel codec, factor 4: (B, 48, 16, 16) latents <-> (B, 3, 64, 64) images
TEXT = {"context_length": 8, "vocab_size": 64, "width": 16, "heads": 2, "layers": 1}
TINY_MODELS = {
    "test-tiny-convnext": {"embed_dim": 32, "text_cfg": TEXT, "vision_cfg": {
        "timm_model_name": "convnext_atto", "timm_model_pretrained": False, "timm_pool": "",
        "timm_proj": "linear", "timm_drop_path": 0.1, "image_size": 32}},
    "test-tiny-vit": {"embed_dim": 32, "text_cfg": TEXT, "vision_cfg": {
        "image_size": 32, "layers": 3, "width": 32, "head_width": 16, "patch_size": 8}},
}


@pytest.fixture(scope="module", autouse=True)
def tiny_openclip_models(tmp_path_factory):
    folder = tmp_path_factory.mktemp("openclip_configs")
    for name, cfg in TINY_MODELS.items():
        (folder / f"{name}.json").write_text(json.dumps(cfg))
    open_clip.add_model_config(folder)


def decode(z):
    """Stand-in codec: (B, 48, h, w) -> (B, 3, 4h, 4w) in [0, 1]."""
    return torch.sigmoid(F.pixel_shuffle(z, 4))


def make(kind, model="test-tiny-convnext"):
    torch.manual_seed(0)
    dcfg = DiscriminatorConfig(kind=kind, channels=16, num_layers=2, num_scales=2,
                               openclip_model=model, openclip_image_size=32)
    teacher_net = make_unet(2 * C, C, [16, 32], 1, 8)
    with pytest.warns(UserWarning, match="RANDOM") if kind == "openclip" else nullcontext():
        return build_discriminator(dcfg, C, decode=decode, teacher_unet=teacher_net)


def frozen_params(d):
    return [p for p in d.parameters() if not p.requires_grad]


KINDS = ["patchgan", "openclip", "unet"]


@pytest.mark.parametrize("kind", KINDS)
def test_returns_a_list_of_finite_logits(kind):
    d = make(kind)
    out = d(torch.randn(2, C, 16, 16), torch.randn(2, C, 16, 16))
    assert isinstance(out, list) and len(out) >= 2
    for logits in out:
        assert logits.shape[0] == 2 and torch.isfinite(logits).all()
    assert d.real_label == (0.8 if kind == "openclip" else 1.0)


def test_openclip_vit_tower_works_too():
    d = make("openclip", model="test-tiny-vit")
    z = torch.randn(2, C, 16, 16, requires_grad=True)
    out = d(z, torch.randn(2, C, 16, 16))
    assert len(out) == 4 and all(torch.isfinite(o).all() for o in out)  # 3 blocks + pooled
    hinge_g(out).backward()
    assert z.grad.abs().sum() > 0


def test_patchgan_keeps_patches_on_small_and_shrinks_large_latents():
    d = LatentPatchGAN(4, base=8, num_layers=3, num_scales=2)
    small = d(torch.randn(1, 4, 8, 8), torch.randn(1, 4, 8, 8))
    assert all(o.shape[-1] >= 1 and o.shape[-2] >= 1 for o in small)
    large = d(torch.randn(1, 4, 64, 64), torch.randn(1, 4, 64, 64))
    assert large[0].shape[-2:] == (4, 4) and large[1].shape[-2:] == (4, 4)
    assert d(torch.randn(1, 4, 1, 1), torch.randn(1, 4, 1, 1))[1].shape[-2:] == (1, 1)


@pytest.mark.parametrize("kind", KINDS)
def test_grads_reach_heads_and_generator_not_frozen_parts(kind):
    d = make(kind).train()
    frozen = frozen_params(d)
    assert bool(frozen) == (kind != "patchgan")
    assert all(not m.training for m in d._frozen())  # D.train() leaves the frozen tower in eval
    z = torch.randn(2, C, 16, 16, requires_grad=True)
    hinge_g(d(z, torch.randn(2, C, 16, 16))).backward()
    assert z.grad is not None and z.grad.abs().sum() > 0  # the student gets a signal
    assert all(p.grad is None for p in frozen)
    heads = d.trainable_parameters()
    assert heads and all(p.requires_grad for p in heads)
    assert sum(p.grad.abs().sum() for p in heads if p.grad is not None) > 0
    assert len(heads) + len(frozen) == len(list(d.parameters()))
    d.requires_grad_(False)  # as a loop does while the generator steps: the heads are still named
    assert [id(p) for p in d.trainable_parameters()] == [id(p) for p in heads]


@pytest.mark.parametrize("kind", KINDS)
def test_a_few_d_steps_separate_real_from_fake(kind):
    d = make(kind).train()
    g = torch.Generator().manual_seed(1)
    z_in = torch.randn(2, C, 16, 16, generator=g)
    real = z_in + 0.5 * torch.randn(2, C, 16, 16, generator=g) + 0.5
    fake = z_in + 0.5 * torch.randn(2, C, 16, 16, generator=g) - 0.5
    opt = torch.optim.Adam(d.trainable_parameters(), lr=2e-3, betas=(0.0, 0.99))
    losses = []
    for _ in range(8):
        loss = hinge_d(d(real, z_in), d(fake, z_in))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.75 * losses[0], losses  # untrained heads sit at ~2
    with torch.no_grad():
        gap = [(r.mean() - f.mean()).item() for r, f in zip(d(real, z_in), d(fake, z_in))]
    assert sum(gap) > 0, gap


def test_r1_through_patchgan_is_finite_and_trains_d():
    d = make("patchgan")
    x = torch.randn(2, C, 16, 16, requires_grad=True)
    r1 = r1_penalty(d(x, torch.randn(2, C, 16, 16)), x)
    assert torch.isfinite(r1) and r1.item() > 0
    r1.backward()
    assert sum(p.grad.abs().sum() for p in d.trainable_parameters() if p.grad is not None) > 0


def test_r1_through_the_unet_discriminator_needs_the_math_attention_backend():
    """The fused CPU attention kernel has no second derivative; SDPA's math backend does."""
    from core.perf import math_attention

    d = make("unet")
    z_in = torch.randn(2, C, 8, 8)
    x = torch.randn(2, C, 8, 8, requires_grad=True)
    with pytest.raises(RuntimeError, match="not implemented"):
        r1_penalty(d(x, z_in), x).backward()
    d.zero_grad(set_to_none=True)
    with math_attention():
        r1 = r1_penalty(d(x, z_in), x)
    r1.backward()
    assert torch.isfinite(r1) and r1.item() > 0
    assert sum(p.grad.abs().sum() for p in d.trainable_parameters() if p.grad is not None) > 0


def test_build_errors_name_the_missing_piece():
    with pytest.raises(ValueError, match="decode"):
        build_discriminator(DiscriminatorConfig(kind="openclip"), C)
    with pytest.raises(ValueError, match="teacher_unet"):
        build_discriminator(DiscriminatorConfig(kind="unet"), C)
    with pytest.raises(ValueError, match="2 x 48"):
        build_discriminator(DiscriminatorConfig(kind="unet"), C, teacher_unet=make_unet(C, C, [16], 1, 8))
    with pytest.raises(ValueError, match="kind='stylegan'"):
        build_discriminator(DiscriminatorConfig(kind="stylegan"), C)
    with pytest.raises(RuntimeError, match="openclip_model='convnext_bse'"):
        load_openclip_visual("convnext_bse")


def test_unavailable_pretrained_tag_fails_fast_with_the_fix(monkeypatch):
    import huggingface_hub.constants
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    start = time.perf_counter()
    with pytest.raises(RuntimeError) as err:
        load_openclip_visual("convnext_base", "laion400m_s13b_b51k")
    assert time.perf_counter() - start < 10
    msg = str(err.value)
    assert "'convnext_base'" in msg and "laion400m_s13b_b51k" in msg
    assert "distill.discriminator.openclip_pretrained" in msg and "hub repo laion/" in msg


def test_local_checkpoint_file_loads_its_weights(tmp_path):
    torch.manual_seed(3)
    model = open_clip.create_model("test-tiny-convnext")
    path = tmp_path / "tiny_clip.pt"
    torch.save(model.state_dict(), path)
    d = OpenCLIPDiscriminator(decode, "test-tiny-convnext", str(path), image_size=32, head_channels=8)
    for name, p in model.visual.state_dict().items():
        assert torch.equal(d.visual.state_dict()[name], p), name
