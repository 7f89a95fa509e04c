"""Memory and speed options, under the diffusers examples' names (`train.*` in the config and
`--gradient_checkpointing --allow_tf32 --use_8bit_adam` on the command line).

    apply_speed_options(cfg.train, teacher)     # checkpointing, attention kernel, TF32
    opt_cls = adamw_class(cfg.train)            # torch.optim.AdamW, or bitsandbytes' AdamW8bit
"""

from __future__ import annotations

import torch
from torch import nn


def apply_speed_options(tc, *modules: nn.Module) -> None:
    """Gradient checkpointing on every diffusers model inside `modules` that supports it, the
    attention kernel (`sdpa` | `math`), and TF32 when asked."""
    if tc.allow_tf32:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    for module in modules:
        for sub in module.modules():
            if tc.gradient_checkpointing and getattr(sub, "_supports_gradient_checkpointing", False):
                sub.enable_gradient_checkpointing()
            if hasattr(sub, "set_attn_processor") and hasattr(sub, "attn_processors"):
                set_attention(sub, tc.attention)


def set_attention(model: nn.Module, kind: str) -> None:
    """diffusers' AttnProcessor2_0 (torch SDPA, the fused kernels) or AttnProcessor (plain matmul
    and softmax: slower, but every op has a second derivative)."""
    from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0

    if not model.attn_processors:
        return
    model.set_attn_processor(AttnProcessor2_0() if kind == "sdpa" else AttnProcessor())


def math_attention():
    """A context in which torch's SDPA uses its math backend (composite ops, twice differentiable),
    for double backward such as an R1 penalty; the fused CPU kernels have no second derivative."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel(SDPBackend.MATH)


def adamw_class(tc):
    """torch.optim.AdamW, or bitsandbytes.optim.AdamW8bit when train.use_8bit_adam is set."""
    if not tc.use_8bit_adam:
        return torch.optim.AdamW
    try:
        import bitsandbytes as bnb
    except ImportError as exc:
        raise ImportError("train.use_8bit_adam=true (--use_8bit_adam) needs bitsandbytes: pip install "
                          "bitsandbytes (CUDA only), or drop the flag") from exc
    return bnb.optim.AdamW8bit


