"""Adversarial loss terms shared by both stages, one small function each, the equation in the
comment above its body.

Discriminator outputs ("logits") may be one tensor or a list of tensors of any shapes
(multi-scale / multi-head discriminators): every GAN term is the mean over the list of the
per-tensor mean, so each head weighs the same whatever its size.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

Logits = torch.Tensor | list[torch.Tensor] | tuple[torch.Tensor, ...]


def _as_list(logits: Logits) -> list[torch.Tensor]:
    return [logits] if isinstance(logits, torch.Tensor) else list(logits)


def _mean_over_heads(fn, logits: Logits) -> torch.Tensor:
    """mean_k mean(fn(logits_k)) over the heads k."""
    return torch.stack([fn(head.float()).mean() for head in _as_list(logits)]).mean()


# --- adversarial terms --------------------------------------------------------------------

def hinge_d(real_logits: Logits, fake_logits: Logits) -> torch.Tensor:
    """Discriminator hinge loss; 0 once real logits >= 1 and fake logits <= -1."""
    # L_D = E[relu(1 - D(real))] + E[relu(1 + D(fake))]
    return (_mean_over_heads(lambda r: F.relu(1 - r), real_logits)
            + _mean_over_heads(lambda f: F.relu(1 + f), fake_logits))


def hinge_g(fake_logits: Logits) -> torch.Tensor:
    """Generator hinge loss."""
    # L_G = -E[D(fake)]
    return _mean_over_heads(lambda f: -f, fake_logits)


def ns_d(real_logits: Logits, fake_logits: Logits, real_label: float = 1.0) -> torch.Tensor:
    """Non-saturating (BCE) discriminator loss; real_label < 1 (e.g. 0.8) is one-sided label
    smoothing, as HYPIR and pix2pix-turbo use with their frozen-CLIP heads."""
    # L_D = E[y softplus(-D(real)) + (1 - y) softplus(D(real))] + E[softplus(D(fake))],  y = real_label
    y = real_label
    return (_mean_over_heads(lambda r: y * F.softplus(-r) + (1 - y) * F.softplus(r), real_logits)
            + _mean_over_heads(F.softplus, fake_logits))


def ns_g(fake_logits: Logits) -> torch.Tensor:
    """Non-saturating generator loss."""
    # L_G = E[softplus(-D(fake))] = -E[log sigmoid(D(fake))]
    return _mean_over_heads(lambda f: F.softplus(-f), fake_logits)


def gan_d_loss(kind: str, real_logits: Logits, fake_logits: Logits,
               real_label: float = 1.0) -> torch.Tensor:
    """`distill.gan_loss` ("hinge" | "ns") for the discriminator; real_label is used by "ns" only
    (hinge has no labels)."""
    if kind == "hinge":
        return hinge_d(real_logits, fake_logits)
    if kind == "ns":
        return ns_d(real_logits, fake_logits, real_label)
    raise ValueError(f"distill.gan_loss={kind!r} is not one of hinge, ns")


def gan_g_loss(kind: str, fake_logits: Logits) -> torch.Tensor:
    """`distill.gan_loss` ("hinge" | "ns") for the generator (the student)."""
    if kind == "hinge":
        return hinge_g(fake_logits)
    if kind == "ns":
        return ns_g(fake_logits)
    raise ValueError(f"distill.gan_loss={kind!r} is not one of hinge, ns")


def r1_penalty(real_logits: Logits, real_inputs: torch.Tensor) -> torch.Tensor:
    """R1 gradient penalty E_b[ ||grad_x D(x_b)||^2 ] on real inputs, WITHOUT gamma / 2.

    The caller adds `r1_gamma / 2 * r1_penalty(D(x, z_in), x)` to the discriminator loss, where
    x (B, C, h, w) had requires_grad set before D saw it. D(x_b) is sample b's score: the mean
    over heads and over each head's patch positions, the same score the GAN losses average.
    The graph is kept (create_graph=True) so the penalty trains D.
    """
    heads = _as_list(real_logits)
    b = real_inputs.shape[0]
    # score_b = mean_k mean_patches D_k(x)_b ; the sum over b keeps each sample's gradient apart
    score = torch.stack([h.float().reshape(b, -1).mean(1) for h in heads]).mean(0).sum()
    (grad,) = torch.autograd.grad(score, real_inputs, create_graph=True)
    # R1 = E_b[ ||grad_x score_b||^2 ]
    return grad.float().pow(2).flatten(1).sum(1).mean()
