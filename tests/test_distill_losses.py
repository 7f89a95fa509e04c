"""Stage-two loss terms on known values: each equation in distill/losses.py checked by hand."""

import math

import pytest
import torch
import torch.nn.functional as F

from core.gan import gan_d_loss, gan_g_loss, hinge_d, hinge_g, ns_d, ns_g, r1_penalty
from distill.losses import distill_loss, distill_mse, distill_pseudo_huber


def t(*values):
    return torch.tensor(values, dtype=torch.float32)


def test_hinge_on_known_logits():
    assert hinge_d([t(2.0)], [t(-2.0)]).item() == 0.0  # both beyond the margin
    assert hinge_d([t(0.0)], [t(0.0)]).item() == 2.0
    assert hinge_d(t(0.5), t(0.5)).item() == pytest.approx(0.5 + 1.5)  # a bare tensor works too
    assert hinge_g([t(3.0)]).item() == -3.0
    # a list is the mean of each head's mean: a 1-patch head weighs as much as a 2-patch one
    assert hinge_g([t(1.0), t(3.0, 3.0)]).item() == pytest.approx(-2.0)


def test_non_saturating_on_known_logits():
    log2 = math.log(2.0)
    assert ns_d([t(0.0)], [t(0.0)]).item() == pytest.approx(2 * log2)
    assert ns_g([t(0.0)]).item() == pytest.approx(log2)
    assert ns_g([t(-20.0)]).item() == pytest.approx(20.0, rel=1e-6)  # no saturation: ~ -logit
    real, fake = torch.randn(4, 1, 3, 3), torch.randn(4, 1, 3, 3)
    expected = (F.binary_cross_entropy_with_logits(real, torch.full_like(real, 0.8))
                + F.binary_cross_entropy_with_logits(fake, torch.zeros_like(fake)))
    assert ns_d([real], [fake], real_label=0.8).item() == pytest.approx(expected.item(), rel=1e-5)


def test_label_smoothing_moves_the_optimum_to_logit_log4():
    # with real_label 0.8 the best real logit is log(0.8 / 0.2): D stops pushing real logits up
    real = torch.tensor([math.log(4.0)], requires_grad=True)
    ns_d([real], [t(0.0)], real_label=0.8).backward()
    assert abs(real.grad.item()) < 1e-6
    real1 = torch.tensor([math.log(4.0)], requires_grad=True)
    ns_d([real1], [t(0.0)]).backward()
    assert real1.grad.item() < -0.1  # with label 1 it still would


def test_gan_dispatch_and_errors():
    real, fake = [t(0.3, -0.2)], [t(-0.1, 0.4)]
    assert gan_d_loss("hinge", real, fake) == hinge_d(real, fake)
    assert gan_d_loss("ns", real, fake, real_label=0.8) == ns_d(real, fake, 0.8)
    assert gan_g_loss("hinge", fake) == hinge_g(fake)
    assert gan_g_loss("ns", fake) == ns_g(fake)
    with pytest.raises(ValueError, match="distill.gan_loss='wgan'"):
        gan_d_loss("wgan", real, fake)
    with pytest.raises(ValueError, match="distill.gan_loss"):
        gan_g_loss("wgan", fake)


def test_pseudo_huber_matches_its_formula_and_limits():
    c = 0.03
    a, b = torch.zeros(1, 1, 1, 1), torch.full((1, 1, 1, 1), 0.04)
    assert distill_pseudo_huber(a, b, c).item() == pytest.approx(0.05 - 0.03, rel=1e-5)  # sqrt(.04^2+.03^2)-.03
    small = torch.randn(2, 4, 8, 8) * 1e-4
    mse = distill_mse(small, torch.zeros_like(small))
    assert distill_pseudo_huber(small, torch.zeros_like(small), c).item() == pytest.approx(
        mse.item() / (2 * c), rel=1e-2)  # quadratic near zero: MSE / 2c
    big = torch.full((2, 4, 8, 8), 10.0)
    assert distill_pseudo_huber(big, torch.zeros_like(big), c).item() == pytest.approx(10.0 - c, rel=1e-4)


def test_pseudo_huber_per_sample_is_the_consistency_model_form():
    c, zs, zt = 0.03, torch.randn(3, 4, 8, 8), torch.randn(3, 4, 8, 8)
    dim = 4 * 8 * 8
    norm2 = (zs - zt).pow(2).flatten(1).sum(1)
    cm = (norm2 + (c * math.sqrt(dim)) ** 2).sqrt() - c * math.sqrt(dim)  # Song & Dhariwal 2023
    got = distill_pseudo_huber(zs, zt, c, per_sample=True)
    assert got.item() == pytest.approx((cm / math.sqrt(dim)).mean().item(), rel=1e-5)
    small = torch.randn(3, 4, 8, 8) * 1e-4
    assert distill_pseudo_huber(small, 0 * small, c, per_sample=True).item() == pytest.approx(
        distill_mse(small, 0 * small).item() / (2 * c), rel=1e-2)


def test_distill_loss_dispatch():
    zs, zt = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8)
    assert distill_loss("mse", zs, zt).item() == pytest.approx(F.mse_loss(zs, zt).item())
    assert distill_loss("pseudo_huber", zs, zt) == distill_pseudo_huber(zs, zt)
    with pytest.raises(ValueError, match="distill.distill_loss='l1'"):
        distill_loss("l1", zs, zt)


def test_r1_of_a_linear_discriminator_is_the_squared_weight_norm():
    torch.manual_seed(0)
    w = torch.randn(4 * 5 * 5, requires_grad=True)
    x = torch.randn(3, 4, 5, 5, requires_grad=True)
    logits = (x.flatten(1) @ w).view(3, 1)
    r1 = r1_penalty([logits], x)
    assert r1.item() == pytest.approx(w.detach().pow(2).sum().item(), rel=1e-5)
    r1.backward()  # create_graph: the penalty trains D, d||w||^2/dw = 2w
    assert torch.allclose(w.grad, 2 * w.detach(), rtol=1e-5)


def test_r1_averages_heads_and_patches():
    w1, w2 = torch.randn(16), torch.randn(16)
    x = torch.randn(2, 16, requires_grad=True)
    head1 = (x @ w1).view(2, 1, 1, 1).expand(2, 1, 3, 3)  # every patch scores w1 . x
    head2 = (x @ w2).view(2, 1)
    expected = ((w1 + w2) / 2).pow(2).sum().item()
    assert r1_penalty([head1, head2], x).item() == pytest.approx(expected, rel=1e-5)
