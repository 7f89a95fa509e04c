"""Inference fast paths for the student: each optional, each measured beside eager by eval/bench.py.

    fn = make_fast(student, device, "bf16")   # eager | bf16 | fp16 | compile | compile-bf16 | cudagraphs | onnx
    z_out = fn(z_in)                          # z_in (B, C, h, w) float32 on device -> z_out, float32, no grad
    for name, fn in fast_variants(student, device): ...   # every path this device can run

Accuracy against the fp32 eager student, latents in [-1, 1] (tests/test_fast.py holds them):
- bf16 autocast: max abs error <= `BF16_RTOL` * max |G(z_in)|. bf16 keeps 8 significant bits
  (relative step 2^-8 = 3.9e-3) and the rounding of ~20 convolutions and norms adds up (measured
  1.1-1.2e-2 relative, tiny and demo-size students). The residual add `z_in + G(z_in)` stays fp32
  (fp32 + bf16 promotes), so the error scales with the edit G, not with z_in.
- fp16 (CUDA): 11 significant bits, at least as close as bf16; z_in itself is rounded to fp16
  (<= 4.9e-4 on [-1, 1], a sixteenth of an 8-bit step).
- torch.compile, CUDA graphs: fp32, same maths, differences from fusion order only (<= 1e-4);
  compile-bf16 (torch.compile under bf16 autocast) as bf16.
- onnxruntime: fp32, `student.export.ONNX_ATOL` (1e-3; see there why).

Measured p50 on 2 Xeon cores with AMX, demo student (1.0M params) on z (1, 192, 128, 128), a
1024 px photo through the pixel codec: eager 69 ms, bf16 42, NCHW 64, compile 52, compile-bf16
28, onnxruntime 46 (compile's first call per shape: ~35 s cold, 2 s from inductor's cache).
"""

from __future__ import annotations

import copy
import functools
import tempfile
import warnings
from collections import OrderedDict
from pathlib import Path
from typing import Callable

import torch

MODES = ("eager", "bf16", "fp16", "compile", "compile-bf16", "cudagraphs", "onnx")
BF16_RTOL = 3e-2  # of max |G|: 2.5x the measured error; with |G| <= 1, about 4 8-bit steps (2 / 255)
COMPILE_ATOL = 1e-4
NCHW_MAX_PARAMS = 100_000_000  # the NCHW reference copy doubles the weights' memory: small students only

Predict = Callable[[torch.Tensor], torch.Tensor]


def _eager(model: torch.nn.Module) -> Predict:
    @torch.no_grad()
    def predict(z_in: torch.Tensor) -> torch.Tensor:
        return model(z_in).float()
    return predict


def _bf16(model: torch.nn.Module, device: torch.device) -> Predict:
    @torch.no_grad()
    def predict(z_in: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device.type, dtype=torch.bfloat16):
            return model(z_in).float()
    return predict


def _fp16(model: torch.nn.Module) -> Predict:
    half = copy.deepcopy(model).half()

    @torch.no_grad()
    def predict(z_in: torch.Tensor) -> torch.Tensor:
        return half(z_in.half()).float()
    return predict


class _Compiled:
    """torch.compile(model), optionally under bf16 autocast (inductor then fuses the casts with
    the norms and activations); compiles on the first call per shape. If compiling fails (no C++
    compiler, no Triton), says why once and runs eager: a benchmark row must never crash."""

    def __init__(self, model: torch.nn.Module, device: torch.device, mode: str | None, bf16: bool = False):
        self.model, self.compiled, self.failed = model, torch.compile(model, mode=mode), False
        self.device_type, self.bf16 = device.type, bf16

    @torch.no_grad()
    def __call__(self, z_in: torch.Tensor) -> torch.Tensor:
        with torch.autocast(self.device_type, dtype=torch.bfloat16, enabled=self.bf16):
            if not self.failed:
                try:
                    with warnings.catch_warnings():  # diffusers' is_torch_version is lru_cached and pure
                        warnings.filterwarnings("ignore", message="Dynamo detected a call to a `functools.lru_cache`")
                        return self.compiled(z_in).float()
                except Exception as exc:  # inductor raises many types; eager is always a correct answer
                    self.failed = True
                    print(f"student.fast: torch.compile failed ({type(exc).__name__}: {str(exc)[:200]}); "
                          "running eager")
            return self.model(z_in).float()


class _CudaGraphs:
    """Capture one CUDA graph per input shape, then replay it: no per-kernel launch cost.

    The input is copied into the graph's static buffer and the output cloned out of it, so the
    caller never sees a buffer that the next replay overwrites. Keeps the `max_graphs` most
    recently used shapes (each holds its activations' memory)."""

    def __init__(self, model: torch.nn.Module, max_graphs: int = 8):
        self.model, self.max_graphs, self.graphs = model, max_graphs, OrderedDict()

    def _capture(self, z_in: torch.Tensor):
        static_in = z_in.clone()
        side = torch.cuda.Stream()  # warm-up on a side stream, as capture requires
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(2):
                self.model(static_in)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            static_out = self.model(static_in)
        return graph, static_in, static_out

    @torch.no_grad()
    def __call__(self, z_in: torch.Tensor) -> torch.Tensor:
        key = (tuple(z_in.shape), z_in.dtype, z_in.device)
        if key not in self.graphs:
            if len(self.graphs) >= self.max_graphs:
                self.graphs.popitem(last=False)
            self.graphs[key] = self._capture(z_in)
        self.graphs.move_to_end(key)
        graph, static_in, static_out = self.graphs[key]
        static_in.copy_(z_in)
        graph.replay()
        return static_out.float().clone()


def _onnx(model: torch.nn.Module, device: torch.device, providers: list[str] | None) -> tuple[Predict, str]:
    """Export to a temporary folder, load it into onnxruntime (which keeps the graph in memory)."""
    import numpy as np

    from student.export import export_onnx, onnx_session

    if providers is None and device.type == "cuda":
        import onnxruntime as ort

        if "CUDAExecutionProvider" not in ort.get_available_providers():
            raise ValueError("student.fast: mode 'onnx' on CUDA needs onnxruntime's CUDAExecutionProvider "
                             f"(have {ort.get_available_providers()}); pip install onnxruntime-gpu, or use "
                             "device cpu, or pass providers=['CPUExecutionProvider']")
        providers = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    providers = providers or ["CPUExecutionProvider"]
    channels = model.channels
    m = 2 ** (len(model.arch["block_out_channels"]) - 1)
    with tempfile.TemporaryDirectory(prefix="student-onnx-") as tmp:
        path = export_onnx(model, Path(tmp) / "student.onnx", (1, channels, 4 * m, 4 * m))
        session = onnx_session(path, providers)

    def predict(z_in: torch.Tensor) -> torch.Tensor:
        z = z_in.detach().float().cpu().numpy()  # on CUDA: two host copies, part of the measured cost
        out = session.run(["z_out"], {"z_in": np.ascontiguousarray(z)})[0]
        return torch.from_numpy(out).to(z_in.device)
    return predict, session.get_providers()[0].replace("ExecutionProvider", "")


def make_fast(student: torch.nn.Module, device: torch.device | str, mode: str = "eager", *,
              compile_mode: str | None = None, max_graphs: int = 8, providers: list[str] | None = None) -> Predict:
    """A callable z_in (B, C, h, w) float32 on `device` -> z_out (B, C, h, w) float32, no grad.

    mode: eager | bf16 | fp16 (CUDA) | compile | compile-bf16 | cudagraphs (CUDA) | onnx. The student is moved
    to `device` and put in eval mode. compile_mode: torch.compile's mode (default
    "max-autotune-no-cudagraphs" on CUDA, torch's default on CPU). max_graphs: input shapes kept
    captured by cudagraphs. providers: onnxruntime execution providers (default: the device's).
    Raises ValueError for a mode this device cannot run, naming the modes it can.
    """
    device = torch.device(device)
    if mode not in MODES:
        raise ValueError(f"student.fast: unknown mode {mode!r}; use one of {', '.join(MODES)}")
    if mode in ("fp16", "cudagraphs") and device.type != "cuda":
        raise ValueError(f"student.fast: mode {mode!r} needs a CUDA device, got {device}; on CPU use "
                         "eager, bf16, compile, compile-bf16 or onnx")
    student = student.to(device).eval()
    if mode == "eager":
        return _eager(student)
    if mode == "bf16":
        return _bf16(student, device)
    if mode == "fp16":
        return _fp16(student)
    if mode in ("compile", "compile-bf16"):
        default = "max-autotune-no-cudagraphs" if device.type == "cuda" else None
        return _Compiled(student, device, compile_mode or default, bf16=mode == "compile-bf16")
    if mode == "cudagraphs":
        return _CudaGraphs(student, max_graphs)
    return _onnx(student, device, providers)[0]


@functools.lru_cache(maxsize=None)
def compile_available(device_type: str) -> str | None:
    """None when torch.compile works on this device type, else the reason (one tiny probe, cached)."""
    probe = torch.nn.Sequential(torch.nn.Conv2d(4, 4, 3, padding=1), torch.nn.GroupNorm(2, 4), torch.nn.SiLU())
    probe = probe.to(device_type)
    try:
        with torch.no_grad():
            torch.compile(probe)(torch.randn(1, 4, 8, 8, device=device_type))
    except Exception as exc:  # no C++ compiler, no Triton, an unsupported platform
        lines = str(exc).strip().splitlines()
        return f"{type(exc).__name__}: {lines[0][:200] if lines else ''}"
    return None


def fast_variants(student: torch.nn.Module, device: torch.device | str) -> list[tuple[str, Predict]]:
    """[(name, predict)] for every fast path this device can run, beside the eager student
    (channels_last, fp32). A path that cannot be built here is skipped with a printed reason."""
    device = torch.device(device)
    student = student.to(device).eval()
    cuda = device.type == "cuda"
    rows: list[tuple[str, Predict]] = [("bf16 autocast", _bf16(student, device))]
    if cuda:
        rows.append(("fp16", _fp16(student)))
    n_params = sum(p.numel() for p in student.parameters())
    if n_params <= NCHW_MAX_PARAMS:  # reference: what channels_last (the eager default) buys
        rows.append(("contiguous (NCHW)", _eager(copy.deepcopy(student).to(memory_format=torch.contiguous_format))))
    reason = compile_available(device.type)
    if reason is None:
        rows.append(("torch.compile", make_fast(student, device, "compile")))
        rows.append(("torch.compile + bf16", make_fast(student, device, "compile-bf16")))
    else:
        print(f"student.fast: skipping torch.compile: {reason}")
    if cuda:
        rows.append(("CUDA graphs", _CudaGraphs(student)))
    try:
        predict, provider = _onnx(student, device, None)
        rows.append((f"onnxruntime ({provider})", predict))
    except Exception as exc:  # onnxruntime-gpu missing on CUDA, an op the exporter lacks
        print(f"student.fast: skipping onnxruntime: {type(exc).__name__}: {str(exc)[:200]}")
    return rows
