"""The one-step latent student: one network evaluation, `z_out = z_in + G(z_in)`.

G is either the teacher's own network evaluated at a fixed t (`init: teacher`, flow teacher
only: G(z) = (1 - t) * v([z, z], t), i.e. one Euler step from t to 1) or a slimmer UNet
(`init: slim`, any teacher, including the 865M-parameter hypir UNet) whose last layer starts
at zero, so training starts from the identity.
"""

from __future__ import annotations

import torch
from torch import nn

from core.models import ModelFolder
from core.nets import make_unet, run_unet, to_channels_last


class Student(ModelFolder, nn.Module):
    kind, space = "student", "latent"  # the model-folder protocol (core/models.py)

    def __init__(self, channels: int, init: str = "slim", block_out_channels=(32, 64, 64),
                 layers_per_block: int = 1, norm_num_groups: int = 16, t: float = 0.0, t_scale: float = 1000.0,
                 mid_attention: bool = True):
        super().__init__()
        self.arch = dict(channels=channels, init=init, block_out_channels=list(block_out_channels),
                         layers_per_block=layers_per_block, norm_num_groups=norm_num_groups, t=t,
                         t_scale=t_scale, mid_attention=mid_attention)
        self.channels, self.init, self.t, self.t_scale = channels, init, t, t_scale
        in_ch = 2 * channels if init == "teacher" else channels
        self.net = make_unet(in_ch, channels, block_out_channels, layers_per_block, norm_num_groups, mid_attention)
        if init == "slim":
            nn.init.zeros_(self.net.conv_out.weight)
            nn.init.zeros_(self.net.conv_out.bias)
        to_channels_last(self.net)

    @classmethod
    def from_config(cls, s, channels: int, teacher=None) -> Student:
        """The student the config's `student` section asks for. `channels`: the codec's latent channels;
        `teacher`: the loaded teacher network, needed for `init: teacher` (a flow teacher only)."""
        if s.init != "teacher":
            return cls(channels, "slim", s.block_out_channels, s.layers_per_block, s.norm_num_groups)
        if teacher is None or teacher.kind != "flow":
            kind = getattr(teacher, "kind", None)
            raise SystemExit(f"error: student.init=teacher needs a flow teacher; this teacher is {kind!r} "
                             "(for hypir: an 865M-parameter UNet): use student.init=slim")
        return cls.from_flow_teacher(teacher, t=s.t)

    @classmethod
    def from_flow_teacher(cls, teacher, t: float = 0.0) -> Student:
        """Copy a flow teacher's network; the student is its single Euler step from t to 1."""
        a = teacher.arch
        student = cls(a["channels"], "teacher", a["block_out_channels"], a["layers_per_block"],
                      a["norm_num_groups"], t=t, t_scale=a["t_scale"])
        student.net.load_state_dict(teacher.net.state_dict())
        return student

    def forward(self, z_in: torch.Tensor) -> torch.Tensor:
        """z_in (B, C, h, w) -> z_out (B, C, h, w)."""
        b = z_in.shape[0]
        if self.init == "teacher":
            t = torch.full((b,), self.t * self.t_scale, device=z_in.device, dtype=z_in.dtype)
            return z_in + (1 - self.t) * run_unet(self.net, torch.cat([z_in, z_in], 1), t)
        t0 = torch.zeros((b,), device=z_in.device, dtype=z_in.dtype)
        residual = run_unet(self.net, z_in, t0)
        return residual.add_(z_in) if not torch.is_grad_enabled() else z_in + residual

    def infer(self, z_in: torch.Tensor, num_steps: int | None = None) -> torch.Tensor:
        """The protocol's inference: one step whatever `num_steps` asks."""
        return self(z_in)

    def function_evals(self, num_steps: int | None = None) -> int:
        return 1
