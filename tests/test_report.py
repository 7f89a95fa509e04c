"""The eval report (eval/report.py): an offline HTML page, a plot, a write-up and the submission
ZIP, built from a complete fake report dict and real small PNGs."""
import json
import re
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from core.config import Config
from eval.report import pareto_front, write_report

NAMES = ["kitchen 01", "living#room", "bath"]  # a space and a '#' to test URL quoting
ROWS = [  # name, kind, slug, K, psnr, p50 ms at 1024
    ("identity", "baseline", "identity", None, 11.4, 12.0),
    ("teacher K=1", "teacher", "teacher_K1", 1, 24.0, 90.0),
    ("teacher K=8", "teacher", "teacher_K8", 8, 27.5, 610.0),
    ("student", "student", "student", None, 26.8, 85.0),
]
CHOSEN = "student"


def _png(path: Path, seed: int) -> None:
    """A 48x32 colour gradient, different per seed, so a screenshot of it is not flat."""
    y, x = np.mgrid[0:32, 0:48]
    rgb = np.stack([x * 5 + seed * 40, y * 7, 255 - x * 4 - seed * 20], -1) % 256
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rgb.astype(np.uint8)).save(path)


def _throughput(p50: float, model: bool) -> dict:
    out = {}
    for res, scale in (("512", 0.4), ("1024", 1.0), ("native", 1.3)):
        t = {"size": f"{res}x{res}" if res != "native" else "48x32", "working_size": "256x256",
             "p50_ms": p50 * scale, "p95_ms": p50 * scale * 1.1, "mean_ms": p50 * scale, "runs": 3,
             "images_per_s": 1000 / (p50 * scale), "peak_mem_mib": 321.0, "resize_ms": 1.0,
             "encode_ms": 2.0, "model_ms": p50 * scale * 0.9, "decode_ms": 1.0, "transfer_ms": 1.0}
        if model and res != "native":
            t["best_batch"] = {"batch": 4, "images_per_s": 2500 / (p50 * scale)}
        out[res] = t
    return out


def make_report(out_dir: Path) -> dict:
    teacher_manifest = {"stage": "teacher", "train_seconds": 1234.5, "wall_seconds": 1300.25,
                        "step": 1000, "created": "2025-01-01T00:00:00", "metrics": {"psnr": 27.0}}
    student_manifest = {"stage": "student", "train_seconds": 456.5, "wall_seconds": 480.75,
                        "step": 600, "created": "2025-01-02T00:00:00", "metrics": {}}
    rows = []
    for i, (name, kind, slug, k, psnr, p50) in enumerate(ROWS):
        per = [{"name": n, "psnr": psnr + j, "ssim": 0.8, "ciede2000": 4.0, "lpips": None}
               for j, n in enumerate(NAMES)]
        evals = k or (1 if kind == "student" else 0)
        row = {"name": name, "kind": kind, "slug": slug, "function_evals": evals,
               "manifest": {"teacher": teacher_manifest, "student": student_manifest}.get(kind, {}),
               "quality": {"per_image": per, "mean": {"psnr": psnr, "ssim": 0.8, "ciede2000": 4.0,
                                                      "lpips": None}},
               "throughput": _throughput(p50, kind != "baseline"),
               "score": {"quality": (psnr - 10) / 30, "efficiency": 1000 / (1000 + p50),
                         "score": 0.7 * (psnr - 10) / 30 + 0.3 * 1000 / (1000 + p50),
                         "psnr_db": psnr, "latency_ms": p50}}
        if k:
            row["num_steps"] = k
        rows.append(row)
        for j, n in enumerate(NAMES):
            _png(out_dir / "images" / slug / f"{n}.png", i + j)
    for j, n in enumerate(NAMES):
        _png(out_dir / "images" / "input" / f"{n}.png", 10 + j)
        _png(out_dir / "images" / "target" / f"{n}.png", 20 + j)
    cfg = Config()
    chosen = next(r for r in rows if r["name"] == CHOSEN)
    scores = {r["name"]: r["score"]["score"] for r in rows}
    selection = {"chosen": CHOSEN, "kind": "student", "scores": scores,
                 "normalisation": "score = 0.7 * quality + 0.3 * efficiency (test)",
                 "score_resolution": "1024", "chosen_detail": chosen["score"]}
    (out_dir / "selection.json").write_text(json.dumps(selection, indent=2))
    return {"config": cfg.to_dict(), "device": "CPU: test <cpu> (2 threads)",
            "num_images": len(NAMES), "image_names": NAMES,
            "lpips": {"available": False, "reason": "AlexNet weights not in the cache"},
            "rows": rows, "selection": selection, "eval_seconds": 12.5}


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    out = tmp_path_factory.mktemp("eval")
    report = make_report(out)
    write_report(report, out, None, Config())
    return out, report


def test_html_is_offline_and_complete(built):
    out, _ = built
    text = (out / "report.html").read_text()
    refs = re.findall(r'(?:src|href)\s*=\s*"([^"]*)"', text)
    assert refs and not [r for r in refs if "://" in r or r.startswith("//")]
    # every referenced local file is there (URL-quoted names included)
    from urllib.parse import unquote
    for r in refs:
        assert (out / unquote(r)).is_file() or r in ("report.json",), r
    for name, *_ in ROWS:
        assert name in text
    assert "unavailable" in text and "AlexNet weights not in the cache" in text
    assert "test &lt;cpu&gt;" in text and "<cpu>" not in text  # escaped
    assert "images/teacher_K8/living%23room.png" in text  # highest-K teacher in the strip


def test_plot_is_png(built):
    out, _ = built
    with Image.open(out / "plot.png") as im:
        assert im.format == "PNG" and im.width > 300 and im.height > 200


def test_writeup_mentions_choice_and_training_time(built):
    out, _ = built
    text = (out / "writeup.md").read_text()
    assert "**student**" in text
    assert "1234 s (20.6 min)" in text and "456 s (7.6 min)" in text  # teacher and student stages
    assert "unavailable" in text and "85.0" in text  # LPIPS honest; chosen p50 at 1024


def test_submission_zip_holds_the_chosen_outputs(built):
    out, _ = built
    with zipfile.ZipFile(out / "submission.zip") as z:
        assert sorted(z.namelist()) == sorted([f"{n}.png" for n in NAMES] + ["selection.json"])
        assert json.loads(z.read("selection.json"))["chosen"] == CHOSEN
        assert z.read("bath.png") == (out / "images" / "student" / "bath.png").read_bytes()
    assert not list(out.glob(".submission*"))  # no temporary left behind


def test_pareto_front():
    pts = [("fast", 10.0, 20.0), ("slow_good", 100.0, 30.0), ("dominated", 50.0, 19.0),
           ("mid", 40.0, 25.0), ("same_as_mid_slower", 45.0, 25.0), ("nan", float("nan"), 40.0)]
    assert pareto_front(pts) == ["fast", "mid", "slow_good"]
    assert pareto_front([("a", 1.0, 1.0), ("b", 1.0, 1.0)]) == ["a", "b"]  # ties dominate nobody
    assert pareto_front([]) == []


@pytest.mark.skipif(not (Path("/usr/bin/chromium").is_file() or shutil.which("chromium")),
                    reason="chromium not installed (apt-get install chromium)")
def test_screenshot_shows_the_report(built, tmp_path):
    from eval.screenshot import main

    out, _ = built
    png = tmp_path / "shot.png"
    assert main([str(out / "report.html"), str(png), "--width", "1000", "--height", "1400"]) == 0
    with Image.open(png) as im:
        a = np.asarray(im.convert("RGB"))
    assert a.shape[:2] == (1400, 1000)
    assert len(np.unique(a.reshape(-1, 3), axis=0)) > 50  # text, tables and images, not blank
