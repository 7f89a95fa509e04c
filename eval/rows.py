"""The rows an evaluation compares: identity, the teacher at each K, the students, the baselines."""

from __future__ import annotations

from core.checkpoint import CheckpointError
from core.models import LoadedModel, curve_model, load_model
from core.pipeline import EditPipeline


def model_pipe(model: LoadedModel):
    """`make_pipe(long_side, transfer=None)` of a loaded model; unset settings come from its manifest."""
    return lambda long_side, transfer=None: model.pipeline(long_side, transfer)


def load_models(cfg, device) -> tuple[list[dict], LoadedModel]:
    """Rows to evaluate: {"name", "kind", "make_pipe", "function_evals", "manifest"}, and the teacher.

    `make_pipe(long_side, transfer=None)` returns a pipeline (EditPipeline or the LUT's) taking a
    photo of any size to the edited photo of the same size (transfer: the model's by default).
    """
    teacher = load_model(cfg.run_dir("teacher"), device)
    codec_cfg = teacher.manifest["codec"]

    def identity_pipe(long_side, transfer=None):  # the input as output, at the teacher's settings
        return EditPipeline(None, long_side, transfer or teacher.transfer, teacher.transfer_grid, device,
                            teacher.size_multiple)

    rows = [{"name": "identity", "kind": "baseline", "make_pipe": identity_pipe, "function_evals": 0,
             "manifest": {}, "has_model": False}]
    if teacher.prior is not None:  # the plain least-squares curve, and the prior the networks start from
        reference = teacher.prior.reference_curve()
        named = [("curve", reference)] + ([("prior", teacher.prior)] if reference is not teacher.prior else [])
        for name, prior in named:
            curve = curve_model(prior, device)
            rows.append({"name": name, "kind": "baseline", "make_pipe": model_pipe(curve), "function_evals": 0,
                         "manifest": curve.manifest})
    for k in sorted(set(cfg.eval.teacher_steps)):
        at_k = teacher.with_steps(k)
        rows.append({"name": f"teacher K={k}", "kind": "teacher", "num_steps": k, "function_evals":
                     at_k.function_evals(), "manifest": teacher.manifest, "make_pipe": model_pipe(at_k)})
    for name in cfg.eval.students:
        try:
            student = load_model(cfg.run_dir(name), device)
        except CheckpointError as exc:
            print(f"warning: student '{name}' not evaluated: {exc}")
            continue
        if student.manifest["codec"] != codec_cfg:
            print(f"warning: {cfg.run_dir(name)} works in another latent space than the teacher; skipped")
            continue
        rows.append({"name": name, "kind": "student", "function_evals": 1, "manifest": student.manifest,
                     "width": student.net.arch["block_out_channels"], "make_pipe": model_pipe(student)})
    for name in cfg.eval.baselines:
        if (cfg.run_dir(name) / "model").is_dir():
            model = load_model(cfg.run_dir(name), device)
            label = "3D LUT" if model.kind == "lut" else name
            rows.append({"name": label, "kind": model.kind, "function_evals": model.function_evals(),
                         "manifest": model.manifest, "make_pipe": model_pipe(model)})
    return rows, teacher
