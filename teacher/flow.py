"""The `flow` teacher: residual latent flow matching from the input latents to the edit's.

    z_t = (1 - t) z_in + t z_target (+ noise_std * n),   velocity = z_target - z_in
    loss = || net([z_t, z_in], t) - velocity ||^2
    sampling: K Euler (or Heun) steps of dz/dt = net([z, z_in], t) from z_0 = z_in to t = 1.

With `members` M > 1 (teacher.ensemble) the teacher is an ensemble of M such networks, each
trained on its own (another seed: its own initial weights and crops), and the ODE follows their
mean velocity: a few dozen pairs leave one network's edit with much variance, and the mean has
less. Distillation is where the cost goes away: the one-step student learns the ensemble's output.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from core.models import ModelFolder
from core.nets import make_unet, run_unet, to_channels_last


class FlowTeacher(ModelFolder, nn.Module):
    kind, space = "flow", "latent"  # the model-folder protocol (core/models.py)

    def __init__(self, channels: int, block_out_channels=(64, 128, 128), layers_per_block: int = 1,
                 norm_num_groups: int = 16, noise_std: float = 0.0, t_scale: float = 1000.0,
                 num_steps: int = 8, sampler: str = "euler", members: int = 1):
        super().__init__()
        self.arch = dict(channels=channels, block_out_channels=list(block_out_channels),
                         layers_per_block=layers_per_block, norm_num_groups=norm_num_groups,
                         noise_std=noise_std, t_scale=t_scale, num_steps=num_steps, sampler=sampler)
        if members > 1:  # a one-network teacher's config.json stays as it was
            self.arch["members"] = members
        self.channels, self.noise_std, self.t_scale = channels, noise_std, t_scale
        self.num_steps, self.sampler = num_steps, sampler
        net = make_unet(2 * channels, channels, block_out_channels, layers_per_block, norm_num_groups)
        # velocity 0 at the start: the untrained teacher returns its input, the colour prior's output
        torch.nn.init.zeros_(net.conv_out.weight)
        torch.nn.init.zeros_(net.conv_out.bias)
        self.net = to_channels_last(net)
        # members 2..M of an ensemble (member 1 is `net`, which a teacher-initialised student copies)
        self.more = nn.ModuleList(to_channels_last(make_unet(2 * channels, channels, block_out_channels,
                                                             layers_per_block, norm_num_groups))
                                  for _ in range(members - 1))

    @property
    def members(self) -> int:
        return 1 + len(self.more)

    @classmethod
    def ensemble(cls, teachers: list[FlowTeacher]) -> FlowTeacher:
        """One teacher whose velocity is the mean of these one-network teachers' (same architecture)."""
        archs = [{k: v for k, v in t.arch.items() if k != "members"} for t in teachers]
        if any(a != archs[0] for a in archs[1:]):
            raise ValueError("an ensemble's members must share one architecture")
        out = cls(**archs[0], members=sum(t.members for t in teachers))
        nets = [n for t in teachers for n in (t.net, *t.more)]
        for dst, src in zip((out.net, *out.more), nets):
            dst.load_state_dict(src.state_dict())
        return out

    def velocity(self, z_t: torch.Tensor, t: torch.Tensor, z_in: torch.Tensor) -> torch.Tensor:
        """z_t, z_in (B, C, h, w); t (B,) in [0, 1] -> velocity (B, C, h, w) (an ensemble's: the mean)."""
        x = torch.cat([z_t, z_in], dim=1)
        v = run_unet(self.net, x, t * self.t_scale)
        for net in self.more:
            v = v + run_unet(net, x, t * self.t_scale)
        return v / self.members if self.more else v

    def forward(self, z_in: torch.Tensor, z_target: torch.Tensor):
        """Flow-matching loss and the one-step estimate of the result (for pixel-space losses)."""
        t = torch.rand(z_in.shape[0], device=z_in.device)
        tb = t.view(-1, 1, 1, 1)
        z_t = (1 - tb) * z_in + tb * z_target
        if self.noise_std > 0:
            z_t = z_t + self.noise_std * torch.randn_like(z_t)
        v = self.velocity(z_t, t, z_in)
        loss = F.mse_loss(v.float(), (z_target - z_in).float())  # || v_theta - (z_target - z_in) ||^2
        return loss, z_t + (1 - tb) * v

    @torch.no_grad()
    def sample(self, z_in: torch.Tensor, num_steps: int | None = None, sampler: str | None = None) -> torch.Tensor:
        """K-step deterministic ODE from z_in at t=0 to the edit at t=1."""
        k, sampler = num_steps or self.num_steps, sampler or self.sampler
        z, dt = z_in, 1.0 / k
        for i in range(k):
            t = torch.full((z.shape[0],), i * dt, device=z.device, dtype=z.dtype)
            v = self.velocity(z, t, z_in)
            if sampler == "heun" and i < k - 1:  # trapezoid rule; the last step stays Euler
                v2 = self.velocity(z + dt * v, t + dt, z_in)
                v = (v + v2) / 2
            z = z + dt * v
        return z

    infer = sample  # the protocol's inference: latents -> latents in K steps

    def function_evals(self, num_steps: int | None = None) -> int:
        k = num_steps or self.num_steps
        return self.members * (k if self.sampler == "euler" else 2 * k - 1)

    def trainable_parameters(self):
        return [p for p in self.parameters() if p.requires_grad]
