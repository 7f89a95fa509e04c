"""The fast photo path (uint8, batched, C kernels) gives the float reference's answer, and
`enhance` as a throughput tool keeps what a user sees: every photo, subfolders, alpha, metadata."""
import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageCms

from core import kernels
from core.codecs import PixelCodec
from core.demo import PHOTOS, photo_path
from core.pipeline import EditPipeline, photo_tensor
from core.transfer import apply_affine_grid, apply_affine_grid_u8
from lut.model import AdaptiveLUT, LUTPipeline, apply_lut, identity_lut
from student import Student
from student.enhance import main as enhance

REPO = Path(__file__).resolve().parents[1]
CODEC = PixelCodec(8)


def smooth_edit(z: torch.Tensor) -> torch.Tensor:
    """What a trained student does, in latent space: a colour matrix, a vignette gain and a tone curve."""
    x = CODEC.decode(z)
    h, w = x.shape[-2:]
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, h), torch.linspace(-1, 1, w), indexing="ij")
    m = torch.tensor([[0.9, 0.1, 0.0], [0.05, 0.85, 0.1], [0.0, 0.1, 0.8]])
    y = ((1.2 - 0.3 * (xx ** 2 + yy ** 2)) * torch.einsum("ij,bjhw->bihw", m, x) + 0.03).clamp(0, 1) ** 0.8
    return CODEC.encode(y)


def latent(predict):
    """A working-size edit (EditPipeline's `edit`) from a function on the codec's latents; None stays None."""
    return None if predict is None else (lambda x: CODEC.decode(predict(CODEC.encode(x))))


def random_student(channels: int = CODEC.channels) -> Student:
    torch.manual_seed(0)
    student = Student(channels, "slim", [16, 16], norm_num_groups=8).eval()
    torch.nn.init.normal_(student.net.conv_out.weight, std=0.01)
    return student


def demo_photo(name: str) -> np.ndarray:
    return np.asarray(Image.open(photo_path(name)).convert("RGB"))


def levels(a: np.ndarray, b: np.ndarray) -> int:
    return int(np.abs(a.astype(int) - b.astype(int)).max())


@pytest.mark.parametrize("name", PHOTOS)
def test_uint8_path_matches_the_float_reference_on_the_demo_photos(name):
    u8 = demo_photo(name)  # 300x451 .. 600x512: working copy 256, a real resize
    for predict, exact in ((None, False), (smooth_edit, False), (torch.no_grad()(random_student()), True)):
        pipe = EditPipeline(latent(predict), 256, "grid", 32, "cpu", 32, exact_working_copy=exact)
        out = pipe(u8)
        assert out.dtype == np.uint8 and out.shape == u8.shape
        reference = np.round(pipe(u8.astype(np.float32) / 255) * 255)
        assert levels(out, reference) <= 1, (name, predict)


def test_batches_of_mixed_sizes_equal_one_photo_at_a_time(monkeypatch):
    a, b = demo_photo("coffee"), demo_photo("chelsea")
    pipe = EditPipeline(latent(torch.no_grad()(random_student())), 128, "grid", 8, "cpu", 32, batch_size=2)
    batches = []
    edit_batch = pipe.edit_batch
    monkeypatch.setattr(pipe, "edit_batch",
                        lambda x, *r, **k: batches.append((len(x), *x[0].shape)) or edit_batch(x, *r, **k))
    outs = pipe.edit_photos([a, b, a, a, b])  # lists of views of the decoded photos: nothing stacked
    assert sorted(batches) == sorted([(2, 3, *a.shape[:2]), (1, 3, *a.shape[:2]), (2, 3, *b.shape[:2])])
    for photo, out in zip([a, b, a, a, b], outs):
        assert out.shape == photo.shape and levels(out, pipe(photo)) <= 1
    # a (B, 3, H, W) tensor in: the same photos, a tensor out (into `out` when given)
    monkeypatch.undo()
    x = photo_tensor(np.stack([a, a]))
    buf = torch.zeros_like(x)
    assert pipe.edit_batch(x, out=buf) is buf
    assert np.array_equal(buf[0].permute(1, 2, 0).numpy(), outs[0]) and torch.equal(buf[0], buf[1])
    with pytest.raises(ValueError, match="one size"):
        pipe.edit_batch([photo_tensor(a)[0], photo_tensor(b)[0]])


def test_c_kernels_equal_the_pytorch_path(monkeypatch):
    if not kernels.available():
        pytest.skip("no C compiler: the PyTorch path is the only one")
    g = torch.Generator().manual_seed(0)
    hwc = torch.randint(0, 256, (2, 37, 53, 3), dtype=torch.uint8, generator=g).permute(0, 3, 1, 2)
    coeffs = torch.eye(3, 4).repeat(2, 5, 7, 1, 1) + 0.1 * torch.randn(2, 5, 7, 3, 4, generator=g)
    lut = identity_lut(9)[None] ** torch.tensor([1.3, 0.8]).view(2, 1, 1, 1, 1)
    fast = [(apply_affine_grid_u8(x, coeffs), apply_lut(lut, x)) for x in (hwc, hwc.contiguous())]
    assert fast[0][0].is_contiguous(memory_format=torch.channels_last)  # the photo's own layout
    monkeypatch.setenv("ESTATE_EDIT_KERNELS", "0")
    assert not kernels.available()
    slow = (apply_affine_grid_u8(hwc, coeffs), apply_lut(lut, hwc))
    float_ref = (apply_affine_grid(hwc.float() / 255, coeffs) * 255).round()
    for affine, looked_up in fast:
        assert (affine.float() - float_ref).abs().max() <= 1
        assert (affine.int() - slow[0].int()).abs().max() <= 1
        assert (looked_up.int() - slow[1].int()).abs().max() <= 1
    lut_ref = (apply_lut(lut, hwc.float() / 255) * 255).clamp(0, 255).round()
    assert (fast[0][1].float() - lut_ref).abs().max() <= 1


def test_lut_kernel_on_every_tail_width():
    """The packed look-up runs 32 pixels at a time (two groups of 16): rows of any width, in both layouts,
    agree with the float trilinear look-up within one level, a random (rough) LUT included."""
    if not kernels.available():
        pytest.skip("no C compiler: the PyTorch path is the only one")
    g = torch.Generator().manual_seed(3)
    lut = (0.8 * identity_lut(17)[None] + 0.2 * torch.rand(1, 3, 17, 17, 17, generator=g))
    for w in (1, 5, 16, 17, 31, 32, 33, 47, 48, 63, 64, 65, 70):
        hwc = torch.randint(0, 256, (1, 3, w, 3), dtype=torch.uint8, generator=g).permute(0, 3, 1, 2)
        ref = (apply_lut(lut, hwc.float() / 255) * 255).clamp(0, 255).round()
        for x in (hwc, hwc.contiguous()):
            assert (apply_lut(lut, x).float() - ref).abs().max() <= 1, w


def test_fast_group_norm_equals_torch_and_keeps_autograd():
    """A loaded model's GroupNorms take the C kernel on channels_last float32 maps without autograd and
    give nn.GroupNorm's numbers within float rounding; under autograd, on contiguous maps or in bf16
    they are nn.GroupNorm itself."""
    from core.nets import FastGroupNorm, fast_group_norms

    if not kernels.available():
        pytest.skip("no C compiler: nn.GroupNorm is the only path")
    g = torch.Generator().manual_seed(6)
    ref = torch.nn.GroupNorm(8, 32)
    with torch.no_grad():
        ref.weight.normal_(generator=g)
        ref.bias.normal_(generator=g)
    fast = fast_group_norms(torch.nn.Sequential(copy.deepcopy(ref)))[0]
    assert type(fast) is FastGroupNorm and fast.state_dict().keys() == ref.state_dict().keys()
    x = (3 * torch.randn(3, 32, 7, 9, generator=g) + 1).contiguous(memory_format=torch.channels_last)
    calls = []
    real = kernels.group_norm_nhwc
    with pytest.MonkeyPatch.context() as m:
        m.setattr(kernels, "group_norm_nhwc", lambda *a: calls.append(1) or real(*a))
        with torch.no_grad():
            out = fast(x)
            assert len(calls) == 1 and out.is_contiguous(memory_format=torch.channels_last)
            assert (out - ref(x)).abs().max() < 1e-5
            assert torch.equal(fast(x.contiguous()), ref(x.contiguous())) and len(calls) == 1
        y = fast(x.requires_grad_())
        y.square().sum().backward()
        assert len(calls) == 1 and fast.weight.grad is not None


def test_half_precision_errors_are_as_documented():
    """docs/benchmarks.md states these: the transfer in float16 within one level; the network in
    bf16 autocast within two levels of fp32 on a demo photo."""
    g = torch.Generator().manual_seed(0)
    x = torch.from_numpy(demo_photo("astronaut")).permute(2, 0, 1)[None]
    coeffs = torch.eye(3, 4).repeat(1, 8, 8, 1, 1) + 0.05 * torch.randn(1, 8, 8, 3, 4, generator=g)
    ref = (apply_affine_grid(x.float() / 255, coeffs) * 255).round()
    half = apply_affine_grid_u8(x, coeffs, dtype=torch.float16)
    assert (half.float() - ref).abs().max() <= 1
    u8 = demo_photo("coffee")
    student = latent(torch.no_grad()(random_student()))
    fp32 = EditPipeline(student, 256, "grid", 32, "cpu", 32)(u8)
    bf16 = EditPipeline(student, 256, "grid", 32, "cpu", 32, precision="bf16")(u8)
    assert 0 < levels(fp32, bf16) <= 2  # measured: 1 level at most on the demo photos


def test_lut_pipeline_on_uint8_matches_its_float_path():
    torch.manual_seed(0)
    model = AdaptiveLUT(num_basis=2, size=9, cnn_size=32, channels=(8, 8))
    with torch.no_grad():
        model.luts[1].normal_(0, 0.05)
    pipe = LUTPipeline(model)
    u8 = demo_photo("rocket")
    out = pipe(u8)
    ref = np.round(np.clip(pipe(u8.astype(np.float32) / 255), 0, 1) * 255)
    assert out.dtype == np.uint8 and levels(out, ref) <= 2  # the CNN's copy is resized from uint8
    # a list of photos of one size: their CNN copies in one batch, each its own LUT (as one at a time)
    other = demo_photo("coffee")
    other = np.asarray(Image.fromarray(other).resize(u8.shape[1::-1]))
    edited = pipe.edit_batch([photo_tensor(u8)[0], photo_tensor(other)[0]])
    assert isinstance(edited, list) and not np.array_equal(edited[0].numpy(), edited[1].numpy())
    for photo, got in zip((u8, other), edited):
        assert levels(got.permute(1, 2, 0).numpy(), pipe(photo)) <= 1


def test_curve_pipeline_takes_a_list_photo_by_photo():
    """The curve (a per-pixel model) edits a list of photos one at a time, as each alone, and times
    the whole batch."""
    from core.prior import ColourPrior, CurvePipeline

    x = torch.rand(3, 32, 32, generator=torch.Generator().manual_seed(2))
    pipe = CurvePipeline(ColourPrior.fit([(x, x ** 0.7)], 1e-3))
    a, b = demo_photo("rocket"), demo_photo("coffee")
    b = np.asarray(Image.fromarray(b).resize(a.shape[1::-1]))
    edited = pipe.edit_batch([photo_tensor(a)[0], photo_tensor(b)[0]])
    total = pipe.timings["model_ms"]
    alone = [pipe(p) for p in (a, b)]
    assert all(np.array_equal(e.permute(1, 2, 0).numpy(), o) for e, o in zip(edited, alone))
    assert not np.array_equal(alone[0], a) and total > 0


@pytest.fixture
def student_dir(tmp_path) -> Path:
    path = tmp_path / "student"
    random_student(12).save_pretrained(path, {"codec": {"kind": "pixel", "factor": 2}, "working_long_side": 64,
                                              "size_multiple": 8, "transfer": {"mode": "grid", "grid": 8}})
    return path


def photo(seed: int, h: int = 48, w: int = 72) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    noise = np.random.default_rng(seed).integers(0, 40, (h, w, 3))
    return np.clip(np.stack([xx * 3, yy * 4, xx + yy], -1) + noise, 0, 255).astype(np.uint8)


def test_enhance_mirrors_subfolders_keeps_alpha_and_lists_skipped_files(student_dir, tmp_path, capsys):
    src, out = tmp_path / "shoot", tmp_path / "out"
    (src / "kitchen" / "raw").mkdir(parents=True)
    Image.fromarray(photo(0)).save(src / "front.jpg", quality=95)
    Image.fromarray(photo(1)).save(src / "kitchen" / "a.jpg", quality=95)
    rgba = np.dstack([photo(2), np.random.default_rng(3).integers(0, 256, (48, 72), dtype=np.uint8)])
    Image.fromarray(rgba, "RGBA").save(src / "kitchen" / "raw" / "logo.png")
    (src / "kitchen" / "notes.txt").write_text("not a photo")

    assert enhance(["--model", str(student_dir), "--input", str(src), "--output", str(out)]) == 0
    # without --recursive, subfolders are left alone
    assert sorted(p.name for p in out.iterdir()) == [".enhance_summary.json", "front.jpg"]
    from PIL import JpegImagePlugin
    assert JpegImagePlugin.get_sampling(Image.open(out / "front.jpg")) == 0  # 4:4:4 chroma, as save_image writes

    assert enhance(["--model", str(student_dir), "--input", str(src), "--output", str(out), "--recursive",
                    "--batch-size", "2", "--zip", str(tmp_path / "out.zip")]) == 0
    printed = capsys.readouterr()
    assert "photos/s" in printed.out and "notes.txt" in printed.err
    for rel in ("front.jpg", "kitchen/a.jpg", "kitchen/raw/logo.png"):
        assert (out / rel).is_file(), rel
    with Image.open(out / "kitchen" / "raw" / "logo.png") as im:
        assert im.mode == "RGBA" and np.array_equal(np.asarray(im)[..., 3], rgba[..., 3])
    summary = json.loads((out / ".enhance_summary.json").read_text())
    assert summary["edited_now"] == 2 and summary["already_done"] == 1  # front.jpg was done by the first run
    assert summary["skipped_not_photos"] == [str(src / "kitchen" / "notes.txt")]
    assert set(summary["ms_per_photo"]) == {"decode", "working_copy", "model", "transfer", "encode"}
    import zipfile
    assert sorted(zipfile.ZipFile(tmp_path / "out.zip").namelist()) == [
        "front.jpg", "kitchen/a.jpg", "kitchen/raw/logo.png"]


def test_torchvision_io_keeps_size_exif_and_icc(student_dir, tmp_path):
    """The GPU's JPEG path (decode_jpeg/encode_jpeg), run here on the CPU: same size, orientation
    applied, EXIF and ICC profile written back."""
    src = tmp_path / "in"
    src.mkdir()
    exif = Image.Exif()
    exif[0x010F] = "TestCam"
    exif[0x0112] = 6  # rotated: the output is upright, 48 wide and 72 high
    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    Image.fromarray(photo(4)).save(src / "house.jpg", quality=95, exif=exif.tobytes(), icc_profile=icc)
    assert enhance(["--model", str(student_dir), "--input", str(src), "--output", str(tmp_path / "out"),
                    "--io", "torchvision"]) == 0
    with Image.open(tmp_path / "out" / "house.jpg") as im:
        assert im.size == (48, 72) and im.getexif()[0x010F] == "TestCam"
        assert im.getexif().get(0x0112, 1) == 1 and im.info.get("icc_profile") == icc


def test_cpu_jpeg_decode_by_torchvision_gives_pils_pixels(tmp_path):
    """--io auto on the CPU decodes JPEGs with torchvision: the very pixels PIL gives (RGB, grey,
    turned by EXIF), as an HWC view the kernels read in place; CMYK goes to PIL's conversion."""
    from core.batch import _read, resolve_io
    from core.images import load_photo

    assert resolve_io("auto") == ("torchvision", "pil")  # PIL encodes on the CPU: 4:4:4 chroma at quality 95
    assert resolve_io("auto", "cuda") == ("torchvision", "torchvision") and resolve_io("pil") == ("pil", "pil")
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(photo(7, 40, 64)).save(tmp_path / "rgb.jpg", quality=90)
    Image.fromarray(photo(8, 40, 64)).save(tmp_path / "turned.jpg", quality=90, exif=exif.tobytes())
    Image.fromarray(photo(9, 40, 64)[..., 0]).save(tmp_path / "grey.jpg", quality=90)
    Image.fromarray(photo(10, 40, 64)).convert("CMYK").save(tmp_path / "cmyk.jpg", quality=90)
    for name in ("rgb", "turned", "grey"):
        px, meta, _, _ = _read(tmp_path / f"{name}.jpg", "torchvision", torch.device("cpu"), 0)
        assert isinstance(px, torch.Tensor) and px.permute(1, 2, 0).is_contiguous(), name
        assert np.array_equal(px.permute(1, 2, 0).numpy(), load_photo(tmp_path / f"{name}.jpg")[0]), name
    assert tuple(px.shape) == (3, 40, 64) and meta.mode == "L"
    assert _read(tmp_path / "turned.jpg", "torchvision", torch.device("cpu"), 0)[0].shape == (3, 64, 40)
    px, meta, _, _ = _read(tmp_path / "cmyk.jpg", "torchvision", torch.device("cpu"), 0)
    assert isinstance(px, np.ndarray) and meta.mode == "CMYK"


def test_enhance_reuses_output_memory_and_writes_the_same_photos(student_dir, tmp_path, monkeypatch):
    """The uint8 path writes into buffers recycled once their photo is encoded: a run of 7 photos
    uses at most workers + batch_size of them, and its files equal those of a run that keeps none.
    PIL's block cache is on during the run only."""
    from core.batch import Buffers, enhance_files, plan
    from core.models import load_model

    src = tmp_path / "in"
    src.mkdir()
    for i in range(7):
        Image.fromarray(photo(20 + i)).save(src / f"p{i}.png")
    pipe = load_model(student_dir).pipeline()
    seen, blocks, edit = set(), set(), pipe.edit_batch

    def spy(x, lo=None, out=None):
        seen.update(o.data_ptr() for o in out)
        blocks.add(Image.core.get_blocks_max())
        return edit(x, lo, out)

    pipe.edit_batch = spy
    jobs = plan(sorted(src.iterdir()), src, tmp_path / "reused")
    before = Image.core.get_blocks_max()
    assert enhance_files(pipe, jobs, workers=1, batch_size=2)["done"] == 7
    assert 1 < len(seen) <= 3
    # PIL kept its freed image memory during the run (encodes reuse it), and lets it go after
    assert blocks == {max(before, 8)} and Image.core.get_blocks_max() == before
    monkeypatch.setattr(Buffers, "give", lambda self, buf: None)  # nothing kept: every photo in fresh memory
    enhance_files(pipe, plan(sorted(src.iterdir()), src, tmp_path / "fresh"), workers=1, batch_size=2)
    for i in range(7):
        assert np.array_equal(np.asarray(Image.open(tmp_path / "reused" / f"p{i}.png")),
                              np.asarray(Image.open(tmp_path / "fresh" / f"p{i}.png"))), i


@pytest.mark.slow
def test_two_processes_write_every_photo_exactly_once(student_dir, tmp_path):
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    for i in range(7):
        Image.fromarray(photo(i)).save(src / f"p{i}.jpg", quality=95)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m", "student.enhance",
           "--model", str(student_dir), "--input", str(src), "--output", str(out), "--zip", str(tmp_path / "o.zip")]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    run = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=240)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-4000:]
    summary = json.loads((out / ".enhance_summary.json").read_text())
    assert summary["processes"] == 2 and summary["failed"] == []
    # 7 writes in all and 7 distinct outputs: each photo was written by exactly one process
    assert summary["edited_now"] == 7 and sorted(summary["edited_by_rank"]) == [3, 4]
    assert sorted(p.name for p in out.glob("*.jpg")) == [f"p{i}.jpg" for i in range(7)]
    import zipfile
    assert len(zipfile.ZipFile(tmp_path / "o.zip").namelist()) == 7
    (out / "p5.jpg").unlink()  # interrupted: the rerun redoes only the missing photo
    run = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=240)
    assert run.returncode == 0, run.stderr[-4000:]
    summary = json.loads((out / ".enhance_summary.json").read_text())
    assert summary["edited_now"] == 1 and summary["already_done"] == 6


def test_bench_enhance_reports_photos_per_s_parts_and_the_copy_ratio(tmp_path):
    from eval.bench_enhance import main as bench

    res = bench(["--n", "2", "--size", "320x240", "--folder", str(tmp_path / "photos"), "--repeats", "1",
                 "--copy-photos", "1", "--json", str(tmp_path / "b.json")])
    assert set(res["rows"]) == {"identity", "student (fresh, demo config)", "3D LUT (fresh, demo config)"}
    for row in res["rows"].values():
        assert row["photos_per_s"] > 0 and row["path_ms"] > 0 and row["copy_ms"] > 0 and row["before_ms"] > 0
        assert row["ratio"] == pytest.approx(row["path_ms"] / row["copy_ms"])
        assert set(row["enhance_ms_per_photo"]) == {"decode", "working_copy", "model", "transfer", "encode"}
        assert row["max_levels_from_float"] <= 3 and row["share_over_one_level"] < 0.01
    assert res["lut_over_student"] > 0 and json.loads((tmp_path / "b.json").read_text())["n"] == 2


def test_torchvision_io_falls_back_to_pil_when_it_cannot(student_dir, tmp_path, monkeypatch):
    import torchvision.io as tio

    def refuse(*args, **kwargs):
        raise RuntimeError("not supported on this device")

    monkeypatch.setattr(tio, "decode_jpeg", refuse)
    src = tmp_path / "in"
    src.mkdir()
    Image.fromarray(photo(5)).save(src / "a.jpg", quality=95)
    with pytest.warns(UserWarning, match="PIL decodes it instead"):
        assert enhance(["--model", str(student_dir), "--input", str(src), "--output", str(tmp_path / "out"),
                        "--io", "torchvision"]) == 0
    assert Image.open(tmp_path / "out" / "a.jpg").size == (72, 48)


def test_fixed_point_kernel_equals_the_float_paths(monkeypatch):
    """The 16-bit kernel (AVX-512; in fixed point, and in float16 where the CPU has AVX512-FP16), the
    float kernel and the PyTorch bands agree within one level, with nothing, the prior's tone curves
    or the whole cubic prior before the grid, in both layouts and on widths that leave partial
    blocks; a grid outside the 16-bit range goes to the float kernel and is still right."""
    if not kernels.available():
        pytest.skip("no C compiler: the PyTorch path is the only one")
    from core.prior import ColourPrior

    g = torch.Generator().manual_seed(4)
    prior = ColourPrior.fit([(x, (x ** 0.7 * torch.tensor([1.0, 0.95, 0.85]).view(3, 1, 1)).clamp(0, 1))
                             for x in [torch.rand(3, 24, 24, generator=g)]])
    hwc = torch.randint(0, 256, (2, 29, 101, 3), dtype=torch.uint8, generator=g).permute(0, 3, 1, 2)
    coeffs = torch.eye(3, 4).repeat(2, 4, 6, 1, 1) + 0.1 * torch.randn(2, 4, 6, 3, 4, generator=g)
    wild = coeffs * 6  # |A| * 255 summed beyond the 16-bit range: the float kernel takes it
    in_levels = [torch.cat([c[..., :3], c[..., 3:] * 255], -1).flatten(3) for c in (coeffs, wild)]
    assert kernels.fixed_point_ok(in_levels[0]) == bool(kernels._lib.has_fixed_point())
    assert not kernels.fixed_point_ok(in_levels[1])
    for grid in (coeffs, wild):
        plain = (apply_affine_grid(hwc.float() / 255, grid) * 255).round()
        for pre in (None, prior.tone_curves(), prior):
            ref = (apply_affine_grid(hwc.float() / 255, grid, pre=pre) * 255).round()
            assert pre is None or (ref - plain).abs().max() > 5  # what runs first changes the result
            fixed = {}  # the build's 16-bit modes: 1 = fixed point, 2 = float16 (the default where built)
            for mode in range(1, kernels._lib.has_fixed_point() + 1):
                with monkeypatch.context() as m:
                    m.setattr(kernels._lib, "has_fixed_point", lambda mode=mode: mode)
                    fixed[mode] = [apply_affine_grid_u8(x, grid, pre=pre) for x in (hwc, hwc.contiguous())]
            with monkeypatch.context() as m:
                m.setattr(kernels, "fixed_point_ok", lambda grid: False)
                floating = apply_affine_grid_u8(hwc, grid, pre=pre)
                m.setenv("ESTATE_EDIT_KERNELS", "0")
                bands = apply_affine_grid_u8(hwc, grid, pre=pre)
            for out in (*sum(fixed.values(), []), floating, bands):
                assert (out.float() - ref).abs().max() <= 1
            for hwc_out, planar_out in fixed.values():
                assert torch.equal(hwc_out, planar_out.contiguous(memory_format=torch.channels_last))
            if len(fixed) == 2 and grid is coeffs and not isinstance(pre, ColourPrior):
                # float16 and fixed point round differently: both ran (the whole prior takes the float kernel)
                assert not torch.equal(fixed[1][0], fixed[2][0])
            if fixed and grid is coeffs:
                assert torch.equal(apply_affine_grid_u8(hwc, grid, pre=pre), fixed[max(fixed)][0])


def test_box_reduction_and_the_working_copy_made_from_it():
    """box_reduce_u8 is the mean of each k x k block (partial edge blocks: of the pixels they have), in
    both layouts; a large photo's working copy made from it stays close to the float resize."""
    if not kernels.available():
        pytest.skip("no C compiler: the working copy is torch's resize")
    import torch.nn.functional as F

    from core.pipeline import downscale_u8

    g = torch.Generator().manual_seed(5)
    # every k to 17 (each k <= 16 has its own unrolled loop; past 16 the channel sums leave the 16-bit
    # fields); rows of 93 bytes and more take the 64-byte vector sums and the scalar tail; partial
    # blocks at the right and bottom edges
    for k in range(1, 18):
        h, w = 2 * k + 3, max(31, 5 * k + 7)
        x = torch.randint(0, 256, (2, 3, h, w), dtype=torch.uint8, generator=g)
        pad = (0, -w % k, 0, -h % k)  # whole blocks of k (the padding counts for nothing below)
        sums = F.avg_pool2d(F.pad(x.float(), pad), k, divisor_override=1)
        counts = F.avg_pool2d(F.pad(torch.ones(1, 1, h, w), pad), k, divisor_override=1)
        for layout in (x, x.contiguous(memory_format=torch.channels_last)):
            got = kernels.box_reduce_u8(layout, k)
            assert got.shape == (2, 3, -(-h // k), -(-w // k)) and torch.allclose(got, sums / counts, atol=1e-4)
            kept = kernels.box_reduce_u8(layout, k, reuse=True)  # into the thread's kept buffer: same values
            assert torch.equal(kept, got)
            assert kernels.box_reduce_u8(layout[:1], k, reuse=True).data_ptr() == kept.data_ptr()
    # a photo 12x the working size: box-reduced by 6, then the antialiased bicubic
    photo = torch.from_numpy(demo_photo("astronaut")).permute(2, 0, 1)[None]
    big = F.interpolate(photo.float(), scale_factor=6, mode="bilinear").round().to(torch.uint8)
    big = big.contiguous(memory_format=torch.channels_last)
    size = (big.shape[-2] // 12, big.shape[-1] // 12)
    fast, exact = downscale_u8(big, size), downscale_u8(big, size, exact=True)
    err = (fast - exact).abs() * 255
    assert fast.shape == exact.shape and err.mean() < 0.5 and err.max() < 8


def test_separable_resampling_in_c_equals_torchs_antialiased_resize():
    """kernels.resample_aa (the working copy's second step) is F.interpolate with antialias, to float
    rounding: bicubic and bilinear, scale factors as downscale_u8 passes them, odd sizes, and a
    factor just over 1 (the filter's support reaches past the image edges)."""
    if not kernels.available():
        pytest.skip("no C compiler: the working copy is torch's resize")
    import torch.nn.functional as F

    g = torch.Generator().manual_seed(8)
    x = torch.rand(2, 3, 61, 97, generator=g) * 255
    for mode in ("bicubic", "bilinear"):
        for size in ((17, 29), (20, 31), (55, 90)):
            scale = (size[0] * 1.01 / 61, size[1] * 1.003 / 97)  # not the sizes' own ratio: as passed
            ref = F.interpolate(x, scale_factor=scale, mode=mode, antialias=True, align_corners=False,
                                recompute_scale_factor=False)[..., :size[0], :size[1]]
            got = kernels.resample_aa(x, scale, size, mode)
            assert got.shape == ref.shape == (2, 3, *size), (mode, size)
            assert (got - ref).abs().max() < 1e-2, (mode, size)  # levels 0..255: float rounding only


def test_grid_moments_in_c_equal_the_einsum_fit(monkeypatch):
    """The C fit (moments, then the ridge solves) is the PyTorch one, empty cells included."""
    if not kernels.available():
        pytest.skip("no C compiler: the fit is the einsum")
    from core.transfer import fit_affine_grid

    g = torch.Generator().manual_seed(6)
    lo = torch.rand(2, 3, 40, 56, generator=g)
    out = (lo ** 0.8 * torch.tensor([1.0, 0.9, 0.8]).view(1, 3, 1, 1) + 0.02 * torch.rand(2, 3, 40, 56, generator=g))
    fast = fit_affine_grid(lo, out, (5, 7))
    tiny = fit_affine_grid(lo[..., :3, :4], out[..., :3, :4], (6, 8))  # cells no pixel reaches: the global fit
    monkeypatch.setenv("ESTATE_EDIT_KERNELS", "0")
    assert torch.allclose(fast, fit_affine_grid(lo, out, (5, 7)), atol=1e-5)
    assert torch.allclose(tiny, fit_affine_grid(lo[..., :3, :4], out[..., :3, :4], (6, 8)), atol=1e-4)


def test_the_portable_build_without_avx512_gives_the_same_photos(monkeypatch, tmp_path):
    """Machines without AVX-512 get the plain C loops: same grid (plain, tone curves, cubic prior) and
    LUT results within one level, same box reduction."""
    if not kernels.available():
        pytest.skip("no C compiler")
    from core.prior import ColourPrior

    g = torch.Generator().manual_seed(7)
    prior = ColourPrior.fit([(x, (x ** 0.7).clamp(0, 1)) for x in [torch.rand(3, 24, 24, generator=g)]])
    hwc = torch.randint(0, 256, (1, 19, 83, 3), dtype=torch.uint8, generator=g).permute(0, 3, 1, 2)
    coeffs = torch.eye(3, 4).repeat(1, 3, 5, 1, 1) + 0.1 * torch.randn(1, 3, 5, 3, 4, generator=g)
    lut = identity_lut(9)[None] ** 1.3

    def photos():
        grids = [apply_affine_grid_u8(x, coeffs, pre=pre) for x in (hwc, hwc.contiguous())
                 for pre in (None, prior.tone_curves(), prior)]
        return grids + [apply_lut(lut, hwc), apply_lut(lut, hwc.contiguous()), kernels.box_reduce_u8(hwc, 3)]

    native = photos()
    monkeypatch.setenv("ESTATE_EDIT_CACHE", str(tmp_path))
    monkeypatch.setattr(kernels, "FLAGS", [f for f in kernels.FLAGS if f != "-march=native"] + ["-mno-avx512f"])
    monkeypatch.setattr(kernels, "_tried", False)
    monkeypatch.setattr(kernels, "_lib", None)
    if not kernels.available() or kernels._lib.has_fixed_point():
        pytest.skip("this compiler cannot build without AVX-512 here")
    portable = photos()
    for a, b in zip(native[:-1], portable[:-1]):
        assert (a.int() - b.int()).abs().max() <= 1
    assert torch.allclose(native[-1], portable[-1])
