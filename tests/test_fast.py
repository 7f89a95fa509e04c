"""The student's fast paths and ONNX export give the eager student's answer, within stated tolerances."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from student import Student
from student import export as export_mod
from student.export import ONNX_ATOL, check_onnx, export_onnx, run_onnx
from student.fast import BF16_RTOL, COMPILE_ATOL, compile_available, fast_variants, make_fast

REPO = Path(__file__).resolve().parents[1]
CUDA = torch.cuda.is_available()


def tiny_student(**arch) -> Student:
    torch.manual_seed(0)
    arch = {"block_out_channels": [8, 8], "norm_num_groups": 4, **arch}
    student = Student(channels=12, init="slim", **arch)
    # conv_out starts at zero (identity student); give it weights so G(z) is not trivially 0
    torch.nn.init.normal_(student.net.conv_out.weight, std=0.05)
    torch.nn.init.normal_(student.net.conv_out.bias, std=0.05)
    return student.eval()


def latents(shape, seed=1) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(seed).uniform(-1, 1, shape).astype(np.float32))


def eager(student, z):
    with torch.no_grad():
        return student(z)


def test_onnx_matches_eager_on_a_shape_it_was_not_exported_at(tmp_path):
    student = tiny_student()
    path = export_onnx(student, tmp_path / "student.onnx", (1, 12, 16, 16))
    z = latents((2, 12, 24, 40))  # other batch, height and width than the export sample
    out = run_onnx(path, z.numpy())
    assert out.shape == (2, 12, 24, 40)
    ref = eager(student, z)
    assert (ref - z).abs().max() > 0.1  # the student really edits
    err = check_onnx(student, path, z.numpy())
    assert err == pytest.approx(float(np.abs(out - ref.numpy()).max()))
    assert err <= ONNX_ATOL


def test_export_cli_on_a_saved_student_folder(tmp_path):
    tiny_student().save_pretrained(tmp_path / "model", manifest={"codec": {"kind": "pixel", "factor": 2}})
    out = tmp_path / "out" / "student.onnx"
    proc = subprocess.run([sys.executable, "-m", "student.export", "--model", str(tmp_path / "model"),
                           "--output", str(out), "--height", "32", "--width", "32"],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert out.is_file() and "max abs error" in proc.stdout and "OK" in proc.stdout


def test_export_cli_exits_1_when_onnx_exceeds_the_tolerance(tmp_path, monkeypatch, capsys):
    tiny_student().save_pretrained(tmp_path / "model", manifest={"codec": {"kind": "pixel", "factor": 2}})
    monkeypatch.setattr(export_mod, "ONNX_ATOL", 0.0)  # fp32 reassociation is never exactly zero here
    code = export_mod.main(["--model", str(tmp_path / "model"), "--output", str(tmp_path / "s.onnx"),
                            "--height", "16", "--width", "16"])
    assert code == 1
    assert "FAILED" in capsys.readouterr().out


def test_bf16_autocast_is_close_to_eager_but_really_bf16():
    student = tiny_student()
    z = latents((1, 12, 32, 32))
    ref = eager(student, z)
    out = make_fast(student, "cpu", "bf16")(z)
    assert out.dtype == torch.float32 and out.shape == z.shape
    err = (out - ref).abs().max().item()
    assert 0 < err <= BF16_RTOL * (ref - z).abs().max().item()


def test_make_fast_names_what_the_cpu_cannot_run():
    student = tiny_student()
    for mode in ("fp16", "cudagraphs"):
        with pytest.raises(ValueError, match="needs a CUDA device"):
            make_fast(student, "cpu", mode)
    with pytest.raises(ValueError, match="unknown mode 'int8'"):
        make_fast(student, "cpu", "int8")


def test_fast_variants_on_cpu_all_match_eager_and_skip_compile_with_a_reason(monkeypatch, capsys):
    import student.fast as fast

    monkeypatch.setattr(fast, "compile_available", lambda device_type: "no C++ compiler (test)")
    student = tiny_student()
    rows = dict(fast_variants(student, "cpu"))
    assert list(rows) == ["bf16 autocast", "contiguous (NCHW)", "onnxruntime (CPU)"]
    assert "skipping torch.compile: no C++ compiler (test)" in capsys.readouterr().out
    z = latents((1, 12, 16, 24))
    ref = eager(student, z)
    assert (rows["contiguous (NCHW)"](z) - ref).abs().max() <= 1e-5
    assert (rows["onnxruntime (CPU)"](z) - ref).abs().max() <= ONNX_ATOL
    assert (rows["bf16 autocast"](z) - ref).abs().max() <= BF16_RTOL * (ref - z).abs().max()


@pytest.mark.slow  # inductor compiles C++ kernels: ~25 s on two CPU cores with a cold cache
def test_torch_compile_matches_eager():
    reason = compile_available("cpu")
    if reason:
        pytest.skip(f"torch.compile unavailable here: {reason}")
    student = tiny_student(block_out_channels=[8], mid_attention=False)  # one level: half the kernels to compile
    z = latents((1, 12, 16, 16))
    ref = eager(student, z)
    fn = make_fast(student, "cpu", "compile")
    out = fn(z)
    assert not fn.failed, "compile fell back to eager"
    assert (out - ref).abs().max() <= COMPILE_ATOL


@pytest.mark.skipif(not CUDA, reason="fp16 and CUDA graphs need a CUDA device")
def test_fp16_and_cuda_graphs_match_eager_on_cuda():
    student = tiny_student().cuda()
    ref = {}
    for shape in [(1, 12, 16, 16), (2, 12, 24, 40)]:
        ref[shape] = (z := latents(shape).cuda(), eager(student, z))
    graphs = make_fast(student, "cuda", "cudagraphs")
    half = make_fast(student, "cuda", "fp16")
    for _ in range(2):  # second round replays the captured graphs
        for z, r in ref.values():
            assert (graphs(z) - r).abs().max() <= COMPILE_ATOL
            assert (half(z) - r).abs().max() <= BF16_RTOL * (r - z).abs().max() + 1e-3
