"""All stages on tiny settings: teacher -> distill (with and without the adversarial term) -> eval."""

import json
import sys

import pytest
import torch

from tests.conftest import REPO, tiny_overrides

CONFIG = str(REPO / "configs" / "demo.yaml")


@pytest.fixture(scope="module")
def trained(tiny_data, tmp_path_factory):
    from teacher.train import main as train_teacher

    root = tmp_path_factory.mktemp("runs")
    train_teacher(["--config", CONFIG, *tiny_overrides(tiny_data, root)])
    return tiny_data, root


@pytest.mark.parametrize("lambda_adv", [0.0, 0.1])
def test_distill_with_and_without_adversarial_term(trained, tmp_path, lambda_adv):
    from core.models import load_model
    from distill.run import main as distill

    data, root = trained
    out = tmp_path / "student"
    metrics = distill(["--config", CONFIG, *tiny_overrides(data, root), "--output_dir", str(out),
                       f"distill.lambda_adv={lambda_adv}"])
    assert metrics["psnr"] > 0
    student = load_model(out)
    manifest = student.manifest
    assert manifest["lambda_adv"] == lambda_adv and manifest["step"] == 6
    assert manifest["kind"] == "student" and manifest["class"] == "student.model:Student"
    z = torch.randn(1, 192, 8, 8)
    assert student.predict(z).shape == z.shape
    x = torch.rand(1, 3, 64, 64)
    assert student(x).shape == x.shape and 0 <= student(x).min() and student(x).max() <= 1
    names = {p.name for p in (out / "checkpoint-6").iterdir()}
    assert {"model.safetensors", "model_1.safetensors", "optimizer.bin", "optimizer_1.bin"} <= names  # D saved too


def test_distill_resume_is_exact_with_the_discriminator(trained, tmp_path):
    import shutil

    from safetensors.torch import load_file

    from distill.run import main as distill

    data, root = trained
    args = ["--config", CONFIG, *tiny_overrides(data, root), "distill.lambda_adv=0.1"]
    distill([*args, "--output_dir", str(tmp_path / "a")])
    (tmp_path / "b").mkdir()
    shutil.copytree(tmp_path / "a" / "checkpoint-3", tmp_path / "b" / "checkpoint-3")
    distill([*args, "--output_dir", str(tmp_path / "b"), "--resume_from_checkpoint", "latest"])
    for name in ("model.safetensors", "model_1.safetensors"):  # student and discriminator
        a, b = load_file(tmp_path / "a" / "checkpoint-6" / name), load_file(tmp_path / "b" / "checkpoint-6" / name)
        assert all(torch.equal(a[k], b[k]) for k in a), name


def test_eval_report_and_enhance(trained, tmp_path):
    from distill.run import main as distill
    from eval.run import main as evaluate
    from student.enhance import main as enhance

    data, root = trained
    distill(["--config", CONFIG, *tiny_overrides(data, root)])
    report = evaluate(["--config", CONFIG, *tiny_overrides(data, root)])
    names = [r["name"] for r in report["rows"]]
    assert names[:5] == ["identity", "curve", "prior", "teacher K=1", "teacher K=2"] and "student" in names
    for row in report["rows"]:
        assert row["quality"]["mean"]["psnr"] > 0 and row["throughput"]["64"]["p50_ms"] > 0
    ev = root / "demo" / "eval"
    for f in ("report.html", "report.json", "plot.png", "writeup.md", "submission.zip", "selection.json"):
        assert (ev / f).is_file(), f
    assert json.loads((ev / "selection.json").read_text())["chosen"] != "identity"

    out = tmp_path / "out"
    rc = enhance(["--model", str(root / "demo" / "student"), "--input", str(data / "val" / "input"),
                  "--output", str(out), "--zip", str(tmp_path / "out.zip")])
    assert rc == 0
    inputs = sorted(p.name for p in (data / "val" / "input").iterdir())
    photos = sorted(p.name for p in out.iterdir() if not p.name.startswith("."))  # .enhance_summary.json beside
    assert photos == inputs and (tmp_path / "out.zip").is_file()
    before = (out / inputs[0]).stat().st_mtime_ns
    assert enhance(["--model", str(root / "demo" / "student"), "--input", str(data / "val" / "input"),
                    "--output", str(out)]) == 0
    assert (out / inputs[0]).stat().st_mtime_ns == before  # done photos are skipped


def test_enhance_reports_unreadable_photos(trained, tmp_path):
    from distill.run import main as distill
    from student.enhance import main as enhance

    data, root = trained
    distill(["--config", CONFIG, *tiny_overrides(data, root), "--output_dir", str(tmp_path / "s")])
    src = tmp_path / "in"
    src.mkdir()
    good = sorted((data / "val" / "input").iterdir())[0]
    (src / good.name).write_bytes(good.read_bytes())
    (src / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    rc = enhance(["--model", str(tmp_path / "s"), "--input", str(src), "--output", str(tmp_path / "out")])
    assert rc == 1
    assert (tmp_path / "out" / good.name).is_file() and not (tmp_path / "out" / "broken.jpg").exists()


@pytest.mark.parametrize("script", ["teacher/train.py", "distill/run.py", "lut/train.py", "eval/run.py"])
def test_cli_scripts_run_as_files(script):
    """`python teacher/train.py` (what `accelerate launch teacher/train.py` runs) from any folder:
    the entry files carry no path hacks, the installed package is found."""
    import subprocess

    res = subprocess.run([sys.executable, str(REPO / script), "--help"], capture_output=True, text=True, cwd="/")
    assert res.returncode == 0, res.stderr
    assert "--config" in res.stdout and "--output_dir" in res.stdout


def test_distill_with_an_openclip_discriminator(trained, tmp_path):
    """The ADD/HYPIR-style option: a frozen OpenCLIP tower (tiny, random here) with trainable heads."""
    import open_clip

    from distill.run import main as distill

    cfg = {"embed_dim": 32, "vision_cfg": {"timm_model_name": "convnext_atto", "timm_model_pretrained": False,
                                           "timm_pool": "", "timm_proj": "linear", "image_size": 32},
           "text_cfg": {"context_length": 8, "vocab_size": 64, "width": 16, "heads": 2, "layers": 1}}
    (tmp_path / "cfgs").mkdir()
    (tmp_path / "cfgs" / "e2e-tiny-convnext.json").write_text(json.dumps(cfg))
    open_clip.add_model_config(tmp_path / "cfgs")
    data, root = trained
    with pytest.warns(UserWarning, match="RANDOM"):
        metrics = distill(["--config", CONFIG, *tiny_overrides(data, root), "--output_dir", str(tmp_path / "s"),
                           "distill.discriminator.kind=openclip", "distill.discriminator.openclip_model="
                           "e2e-tiny-convnext", "distill.discriminator.openclip_image_size=32",
                           "distill.adv_warmup_steps=0", "distill.lambda_adv=0.5"])
    assert metrics["psnr"] > 0
    logs = (tmp_path / "s" / "checkpoint-6").iterdir()
    assert "model_1.safetensors" in {p.name for p in logs}


def test_enhance_keeps_a_24mp_photo_whole_with_its_exif(trained, tmp_path):
    """A 6000x4000 JPEG comes out 6000x4000, with its EXIF (orientation reset) and ICC profile."""
    import numpy as np
    from PIL import Image, ImageCms

    from distill.run import main as distill
    from student.enhance import main as enhance

    data, root = trained
    distill(["--config", CONFIG, *tiny_overrides(data, root), "--output_dir", str(tmp_path / "s")])
    src = tmp_path / "in"
    src.mkdir()
    yy, xx = np.mgrid[0:4000, 0:6000]
    rgb = np.stack([(xx * 255 // 6000), (yy * 255 // 4000), ((xx + yy) % 256)], -1).astype(np.uint8)
    exif = Image.Exif()
    exif[0x010F] = "TestCam"  # Make
    exif[0x0112] = 1
    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    Image.fromarray(rgb).save(src / "house.jpg", quality=90, exif=exif.tobytes(), icc_profile=icc)
    assert enhance(["--model", str(tmp_path / "s"), "--input", str(src), "--output", str(tmp_path / "out")]) == 0
    with Image.open(tmp_path / "out" / "house.jpg") as out:
        assert out.size == (6000, 4000)
        assert out.getexif()[0x010F] == "TestCam"
        assert out.info.get("icc_profile") == icc


def test_distill_unet_discriminator_with_r1_trains(trained, tmp_path):
    """The teacher's-UNet discriminator with the default R1 (gamma 0.1): its double backward goes
    through attention, which runs on SDPA's math backend for that pass (the fused CPU kernel has no
    second derivative)."""
    from core.models import load_model
    from distill.run import main as distill

    data, root = trained
    out = tmp_path / "student_unet_d"
    distill(["--config", CONFIG, *tiny_overrides(data, root), "--output_dir", str(out),
             "distill.discriminator.kind=unet", "distill.lambda_adv=0.1", "distill.r1_gamma=0.1",
             "distill.train_steps=4", "train.log_every=1"])
    manifest = load_model(out).manifest
    assert manifest["discriminator"] == "unet" and manifest["step"] == 4
