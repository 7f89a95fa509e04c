"""Stage-two loss terms, one small function each, the equation in the comment above its body.

Latents are `(B, C, h, w)` float tensors. Discriminator outputs ("logits") may be one tensor or
a list of tensors of any shapes (multi-scale / multi-head discriminators): every GAN term is
the mean over the list of the per-tensor mean, so each head weighs the same whatever its size.
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


# --- L_distill: student vs the teacher's K-step output -------------------------------------

def distill_mse(z_student: torch.Tensor, z_teacher: torch.Tensor) -> torch.Tensor:
    """Mean squared error between latents (B, C, h, w) -> scalar."""
    # L = E[(z_s - z_t)^2]
    return F.mse_loss(z_student.float(), z_teacher.float())


def distill_pseudo_huber(z_student: torch.Tensor, z_teacher: torch.Tensor, c: float = 0.03,
                         per_sample: bool = False) -> torch.Tensor:
    """Pseudo-Huber distance between latents (B, C, h, w) -> scalar.

    per_sample=False: per element, sqrt(d^2 + c^2) - c averaged over all elements: ~ d^2 / 2c
    (i.e. MSE / 2c) for |d| << c, ~ |d| (L1) for |d| >> c, so single outlier latents do not dominate.
    per_sample=True: the consistency-model form (Song & Dhariwal 2023) on each sample's whole
    latent, sqrt(||d||^2 + (c sqrt(D))^2) - c sqrt(D) with D = C*h*w, divided by sqrt(D) so both
    forms have the same small-difference limit MSE / 2c: robust to whole bad samples, not pixels.
    """
    d = z_student.float() - z_teacher.float()
    if per_sample:
        # L = E_b[ sqrt(mean_i d_bi^2 + c^2) - c ]
        return ((d.pow(2).flatten(1).mean(1) + c * c).sqrt() - c).mean()
    # L = E[ sqrt(d^2 + c^2) - c ]
    return ((d.pow(2) + c * c).sqrt() - c).mean()


def distill_loss(kind: str, z_student: torch.Tensor, z_teacher: torch.Tensor) -> torch.Tensor:
    """`distill.distill_loss` ("mse" | "pseudo_huber") -> scalar."""
    if kind == "mse":
        return distill_mse(z_student, z_teacher)
    if kind == "pseudo_huber":
        return distill_pseudo_huber(z_student, z_teacher)
    raise ValueError(f"distill.distill_loss={kind!r} is not one of mse, pseudo_huber")


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
