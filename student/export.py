"""Export the student `z_in -> z_out` to ONNX, check it and compare onnxruntime with eager.

    python -m student.export --model runs/demo/student --output student.onnx
    python -m student.export --model runs/demo/student --output student.onnx --height 128 --width 128 --opset 17

Batch, height and width are dynamic axes: one file serves every working size (height and width
multiples of the UNet's 2 ** (levels - 1), as for the eager student). Exits 1 when onnxruntime
differs from the eager student by more than `ONNX_ATOL`.

Tolerance: `ONNX_ATOL = 1e-3` absolute on latents (pixel codec latents lie in [-1, 1]). Both
sides compute in fp32 (eps 1.2e-7); they differ only in the order of sums (oneDNN vs
onnxruntime convolution and GroupNorm kernels). Each output is a chain of ~20 convolutions
and norms with reductions over up to 64 * 9 terms, so reassociation gives about 1e-6 on these
values (measured: 2e-6 on a tiny student, see tests/test_fast.py); 1e-3 leaves 500x room
for deep students and large activations, and is still 8x below one 8-bit step in [-1, 1]
(2 / 255), so a wrong graph (a dropped op, a frozen shape) fails it by orders of magnitude.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

import numpy as np
import torch

ONNX_ATOL = 1e-3
AXES = {0: "batch", 2: "height", 3: "width"}


def export_onnx(student: torch.nn.Module, path: str | Path, sample_shape=(1, 12, 64, 64), opset: int = 17) -> Path:
    """Write `student` as ONNX: input `z_in` (B, C, h, w) float32, output `z_out` (B, C, h, w).

    The TorchScript-based exporter (dynamo=False): 10x faster to export than torch.export for
    this UNet and exact here; its trace warnings are about diffusers' shape asserts and
    memory-layout branches (`.contiguous()`), which do not change values, so they are silenced.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    param = next(student.parameters())
    sample = torch.randn(tuple(sample_shape), device=param.device, dtype=torch.float32)
    was_training = student.training
    student.eval()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(student, (sample,), str(path), input_names=["z_in"], output_names=["z_out"],
                          dynamic_axes={"z_in": AXES, "z_out": AXES}, opset_version=opset, dynamo=False)
    student.train(was_training)
    return path


def onnx_session(path: str | Path, providers: list[str] | None = None):
    """An onnxruntime session; CUDA first where onnxruntime-gpu provides it, else CPU."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    if providers is None:
        providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]
    return ort.InferenceSession(str(path), providers=providers)


def run_onnx(path: str | Path, z: np.ndarray) -> np.ndarray:
    """z (B, C, h, w) float32 -> z_out (B, C, h, w) float32 through onnxruntime (a fresh session)."""
    return onnx_session(path).run(["z_out"], {"z_in": np.ascontiguousarray(z, dtype=np.float32)})[0]


def check_onnx(student: torch.nn.Module, path: str | Path, z: np.ndarray) -> float:
    """Max abs difference between onnxruntime and the eager student on z (B, C, h, w); also runs onnx.checker."""
    import onnx

    onnx.checker.check_model(str(path))
    param = next(student.parameters())
    with torch.no_grad():
        ref = student.eval()(torch.from_numpy(np.asarray(z, dtype=np.float32)).to(param.device)).float().cpu().numpy()
    return float(np.abs(run_onnx(path, z) - ref).max())


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", required=True, help="a student run folder or model folder (config.json + weights)")
    p.add_argument("--output", required=True, help="the .onnx file to write")
    p.add_argument("--height", type=int, default=256, help="latent height of the export sample (any works later)")
    p.add_argument("--width", type=int, default=256, help="latent width of the export sample")
    p.add_argument("--opset", type=int, default=17)
    args = p.parse_args(argv)

    from student import Student

    student = Student.from_pretrained(args.model)
    shape = (1, student.channels, args.height, args.width)
    path = export_onnx(student, args.output, shape, args.opset)
    # check at a different size from the export sample, so a frozen height/width fails here
    m = 2 ** (len(student.arch["block_out_channels"]) - 1)  # each UNet level halves h and w
    h2 = max(m, args.height // 2 // m * m)
    z = np.random.default_rng(0).uniform(-1, 1, (2, student.channels, h2, args.width)).astype(np.float32)
    err = check_onnx(student, path, z)
    ok = err <= ONNX_ATOL
    print(f"wrote {path} ({path.stat().st_size / 2**20:.1f} MiB, opset {args.opset}, dynamic batch/height/width)")
    print(f"onnxruntime vs eager on {tuple(z.shape)}: max abs error {err:.2e} "
          f"(tolerance {ONNX_ATOL:.0e}) {'OK' if ok else 'FAILED'}")
    if not ok:
        print(f"error: {path} does not match the eager student from {args.model}; try another --opset, "
              f"or report the onnxruntime version", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
