"""The rows an evaluation compares: identity, the teacher at each K, the students, the baselines."""

from __future__ import annotations

import torch

from core.checkpoint import CheckpointError
from core.codecs import build_codec
from core.config import CodecConfig
from core.pipeline import EditPipeline
from student import Student
from teacher import load_teacher


def load_models(cfg, device) -> tuple[list[dict], dict]:
    """Rows to evaluate: {"name", "kind", "make_pipe", "function_evals", "manifest"}, and the codec.

    `make_pipe(long_side, transfer=None)` returns a pipeline (EditPipeline or the LUT's) taking a
    photo of any size to the edited photo of the same size (transfer: the config's by default).
    """
    teacher, codec_cfg, t_manifest = load_teacher(cfg.run_dir("teacher"))
    teacher = teacher.to(device)
    codec = build_codec(CodecConfig(**codec_cfg)).to(device)
    e, d = cfg.eval, cfg.data

    def latent_pipe(predict):
        return lambda long_side, transfer=None: EditPipeline(predict, codec, long_side, transfer or e.transfer,
                                                             e.transfer_grid, device, d.size_multiple)

    rows = [{"name": "identity", "kind": "baseline", "make_pipe": latent_pipe(None), "function_evals": 0,
             "manifest": {}, "has_model": False}]
    for k in sorted(set(e.teacher_steps)):
        rows.append({"name": f"teacher K={k}", "kind": "teacher", "num_steps": k, "function_evals":
                     teacher.function_evals(k), "manifest": t_manifest,
                     "make_pipe": latent_pipe(lambda z, k=k: teacher.sample(z, num_steps=k))})
    for name in e.students:
        try:
            student, s_codec, s_manifest = Student.from_pretrained(cfg.run_dir(name))
        except CheckpointError as exc:
            print(f"warning: student '{name}' not evaluated: {exc}")
            continue
        if s_codec != codec_cfg:
            print(f"warning: {cfg.run_dir(name)} works in another latent space than the teacher; skipped")
            continue
        student = student.to(device)
        rows.append({"name": name, "kind": "student", "function_evals": 1, "manifest": s_manifest,
                     "width": student.arch["block_out_channels"], "make_pipe": latent_pipe(torch.no_grad()(student))})
    for name in e.baselines:
        if name == "lut" and (cfg.run_dir(name) / "model").is_dir():
            from lut import load_lut_pipeline

            make, manifest = load_lut_pipeline(cfg.run_dir(name), device)
            rows.append({"name": "3D LUT", "kind": "lut", "function_evals": 1, "manifest": manifest, "make_pipe": make})
    return rows, codec
