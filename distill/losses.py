"""Stage-two distillation loss terms, one small function each, the equation in the comment above
its body. Latents are `(B, C, h, w)` float tensors. The adversarial terms (hinge, non-saturating,
R1) are shared with stage one and live in core/gan.py.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

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
