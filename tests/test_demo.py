"""The embedded demo data set: built from package photos, no download, split by photo."""

import json
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from core.demo import build_demo_dataset, photo_path, unedit

SMALL = {"long_side": 64, "variants_per_photo": 2, "val_variants_per_photo": 1}
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "demo"
    return out, build_demo_dataset(out, seed=0, **SMALL)


def _stems(folder: Path) -> list:
    return sorted(p.stem for p in folder.glob("*.png"))


def _files(out: Path) -> dict:
    return {p.relative_to(out): p.read_bytes() for p in sorted(out.rglob("*.png"))}


def test_folders_have_matching_stems_and_sizes_multiple_of_16(demo):
    out, summary = demo
    for split in ("train", "val"):
        stems = _stems(out / split / "input")
        assert stems and stems == _stems(out / split / "target")
        assert len(stems) == summary["counts"][split]
        for stem in stems:
            for side in ("input", "target"):
                img = Image.open(out / split / side / f"{stem}.png")
                assert img.mode == "RGB"
                w, h = img.size
                assert w % 16 == 0 and h % 16 == 0 and max(w, h) == 64


def test_no_source_photo_on_both_sides(demo):
    out, _ = demo
    pairs = json.loads((out / "demo.json").read_text())["pairs"]
    photos = {s: {p["photo"] for p in pairs if p["split"] == s} for s in ("train", "val")}
    assert photos["val"] == {"chelsea", "grace_hopper"}
    assert photos["train"] and not photos["train"] & photos["val"]
    for p in pairs:  # the file stem names its photo, and it sits in its split's folder
        assert p["name"].rsplit("_", 1)[0] == p["photo"]
        assert (out / p["split"] / "input" / f"{p['name']}.png").is_file()


def test_stereo_pair_stays_on_one_side(tmp_path):
    summary = build_demo_dataset(tmp_path / "d", val_photos=("motorcycle_right",), **SMALL)
    assert set(summary["photos"]["val"]) == {"motorcycle_left", "motorcycle_right"}


def test_same_seed_identical_files_other_seed_different(demo, tmp_path):
    out, _ = demo
    again = build_demo_dataset(tmp_path / "again", seed=0, **SMALL)
    other = build_demo_dataset(tmp_path / "other", seed=1, **SMALL)
    assert _files(out) == _files(Path(again["out_dir"]))
    other_files = _files(Path(other["out_dir"]))
    assert other_files.keys() == _files(out).keys()
    assert all(other_files[k] != v for k, v in _files(out).items())


def test_input_is_darker_and_far_from_target(demo):
    out, summary = demo
    luma = np.array([0.2126, 0.7152, 0.0722])
    psnr, darker = [], []
    for inp in sorted(out.glob("*/input/*.png")):
        x = np.asarray(Image.open(inp), dtype=np.float64) / 255
        y = np.asarray(Image.open(inp.parents[1] / "target" / inp.name), dtype=np.float64) / 255
        psnr.append(10 * np.log10(1 / np.mean((x - y) ** 2)))
        darker.append((y @ luma).mean() - (x @ luma).mean())
    assert np.mean(psnr) < 22 and np.mean(darker) > 0.03
    assert abs(np.mean(psnr) - np.mean(list(summary["identity_psnr_db"].values()))) < 1.5
    for s in ("train", "val"):
        assert summary["identity_psnr_db"][s] < 22


def test_unedit_keeps_shape_range_and_blown_windows_are_small():
    rng = np.random.default_rng(3)
    target = rng.uniform(0.2, 0.8, (48, 64, 3))
    x, params = unedit(target, np.random.default_rng(7))
    x2, params2 = unedit(target, np.random.default_rng(7))
    assert x.shape == target.shape and x.min() >= 0 and x.max() <= 1
    assert np.array_equal(x, x2) and params == params2
    assert -1.5 <= params["exposure_ev"] <= -0.4 and 0 < params["window_fraction"] <= 0.06
    json.dumps(params)  # stored in demo.json


def test_build_twice_does_not_rebuild_force_does(tmp_path):
    out = tmp_path / "d"
    build_demo_dataset(out, **SMALL)
    probe = out / "train" / "input" / "astronaut_000.png"
    before = (probe.stat().st_ino, probe.stat().st_mtime_ns)
    assert build_demo_dataset(out, **SMALL)["rebuilt"] is False
    assert (probe.stat().st_ino, probe.stat().st_mtime_ns) == before
    assert build_demo_dataset(out, force=True, **SMALL)["rebuilt"] is True
    assert (probe.stat().st_ino, probe.stat().st_mtime_ns) != before
    assert [p.name for p in tmp_path.iterdir()] == ["d"]  # no temporary folder left behind


def test_builds_with_the_network_blocked(tmp_path, monkeypatch):
    def no_network(*args, **kwargs):
        raise OSError("network blocked by test")
    monkeypatch.setattr(socket.socket, "connect", no_network)
    summary = build_demo_dataset(tmp_path / "d", long_side=32, variants_per_photo=1,
                                 val_variants_per_photo=1)
    assert summary["counts"] == {"train": 5, "val": 2}


def test_errors_name_the_problem(tmp_path):
    with pytest.raises(ValueError, match="kitchen"):
        build_demo_dataset(tmp_path / "d", val_photos=("kitchen",), **SMALL)
    with pytest.raises(ValueError, match="multiple of 16"):
        build_demo_dataset(tmp_path / "d", long_side=100)
    with pytest.raises(FileNotFoundError, match="photos found: .*coffee"):
        photo_path("kitchen")


def test_cli_build_exits_0(tmp_path):
    out = tmp_path / "cli"
    cmd = [sys.executable, "-m", "core.demo", "build", "--out", str(out), "--long-side", "32",
           "--variants-per-photo", "1", "--val-variants-per-photo", "1", "--seed", "2"]
    result = subprocess.run(cmd, check=False, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "built in" in result.stdout
    assert json.loads((out / "demo.json").read_text())["build"]["seed"] == 2
