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
    from distill.run import main as distill
    from student import Student

    data, root = trained
    out = tmp_path / "student"
    metrics = distill(["--config", CONFIG, *tiny_overrides(data, root), "--output_dir", str(out),
                       f"distill.lambda_adv={lambda_adv}"])
    assert metrics["psnr"] > 0
    student, codec, manifest = Student.from_pretrained(out)
    assert manifest["lambda_adv"] == lambda_adv and manifest["step"] == 6
    z = torch.randn(1, 192, 8, 8)
    assert student(z).shape == z.shape
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
    assert names[:3] == ["identity", "teacher K=1", "teacher K=2"] and "student" in names
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
    assert sorted(p.name for p in out.iterdir()) == inputs and (tmp_path / "out.zip").is_file()
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


def test_cli_scripts_run_as_files(trained):
    import subprocess

    res = subprocess.run([sys.executable, str(REPO / "teacher" / "train.py"), "--help"], capture_output=True,
                         text=True, cwd="/")
    assert res.returncode == 0 and "--resume_from_checkpoint" in res.stdout
