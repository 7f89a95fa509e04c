"""Build a teacher from the config. A teacher saves itself with `save_pretrained(dir, manifest)`;
other stages open its folder with `core.models.load_model` (the manifest names the class)."""

from __future__ import annotations

from core.config import Config
from teacher.flow import FlowTeacher


def build_teacher(cfg: Config, channels: int):
    t = cfg.teacher
    if t.kind == "flow":
        f = t.flow
        return FlowTeacher(channels, f.block_out_channels, f.layers_per_block, f.norm_num_groups,
                           f.noise_std, f.t_scale, t.num_steps, t.sampler)
    from teacher.hypir import HypirTeacher

    return HypirTeacher.from_config(t.hypir, num_steps=t.num_steps, channels=channels)
