"""Build, save and load teachers. Other stages use only `load_teacher(folder)`.

A teacher folder holds `config.json` ({"kind", "arch", "codec"}), its trained weights as
safetensors (the whole network for `flow`; the LoRA adapters alone,
`pytorch_lora_weights.safetensors`, for `hypir`) and `manifest.json`.
"""

from __future__ import annotations

from pathlib import Path

from core.checkpoint import load_model_folder, resolve_model_dir, save_model_folder
from core.config import Config
from teacher.flow import FlowTeacher

LORA_WEIGHTS_NAME = "pytorch_lora_weights.safetensors"


def build_teacher(cfg: Config, channels: int):
    t = cfg.teacher
    if t.kind == "flow":
        f = t.flow
        return FlowTeacher(channels, f.block_out_channels, f.layers_per_block, f.norm_num_groups,
                           f.noise_std, f.t_scale, t.num_steps, t.sampler)
    from teacher.hypir import HypirTeacher

    return HypirTeacher.from_config(t.hypir, num_steps=t.num_steps, channels=channels)


def teacher_from_arch(kind: str, arch: dict):
    if kind == "flow":
        return FlowTeacher(**arch)
    if kind == "hypir":
        from teacher.hypir import HypirTeacher

        return HypirTeacher.from_arch(arch)
    raise ValueError(f"unknown teacher kind {kind!r} (expected flow or hypir)")


def save_teacher(teacher, directory: str | Path, codec: dict, manifest: dict) -> Path:
    name = LORA_WEIGHTS_NAME if teacher.kind == "hypir" else "model.safetensors"
    config = {"kind": teacher.kind, "arch": teacher.arch, "codec": codec}
    return save_model_folder(directory, teacher.trainable_state_dict(), config=config,
                             manifest={"stage": "teacher", **manifest}, weights_name=name)


def load_teacher(path: str | Path):
    """(teacher in eval mode, codec config dict, manifest) from a run or model folder."""
    directory = resolve_model_dir(path)
    tensors, config, manifest = load_model_folder(directory)
    teacher = teacher_from_arch(config["kind"], config["arch"])
    teacher.load_trainable_state_dict(tensors)
    return teacher.eval(), config["codec"], manifest
