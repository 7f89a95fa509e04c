"""`.cube` 3D LUTs: write/read round trip, the common variants, malformed files, ffmpeg agreement,
the apply CLI (size, EXIF, ICC, failures) and export from trained model folders."""

import json
import shutil
import subprocess

import numpy as np
import pytest
import torch
from PIL import Image, ImageCms

from core.demo import photo_path
from lut.apply import grade
from lut.apply import main as apply_main
from lut.cube import CubeError, apply_cube, format_cube, parse_cube, read_cube, write_cube
from lut.model import identity_lut


def known_mapping(size: int) -> torch.Tensor:
    """A look no axis-aligned mistake survives: a per-channel tone curve plus a cross-channel tint."""
    r, g, b = identity_lut(size)
    return torch.stack([r ** 0.8, 0.9 * g + 0.1 * b, (b ** 1.3 + 0.2 * r) / 1.2]).clamp(0, 1)


def test_write_then_read_gives_the_table_back(tmp_path):
    table = known_mapping(17)
    path = write_cube(tmp_path / "look.cube", table, title="studio look")
    lines = path.read_text().splitlines()
    assert lines[:4] == ['TITLE "studio look"', "LUT_3D_SIZE 17", "DOMAIN_MIN 0 0 0", "DOMAIN_MAX 1 1 1"]
    # red varies fastest: the second entry is input (r, g, b) = (1/16, 0, 0)
    assert [float(v) for v in lines[5].split()] == pytest.approx(table[:, 0, 0, 1].tolist(), abs=1e-6)
    cube = read_cube(path)
    assert cube.title == "studio look" and cube.size == 17
    assert (cube.table - table).abs().max() < 1e-5


def test_reader_takes_comments_blank_lines_crlf_a_bom_and_a_domain_before_the_size(tmp_path):
    table = known_mapping(5)
    data = format_cube(table).splitlines()[3:]  # the 125 entries
    text = ("\ufeff# made by hand\r\n\r\nTITLE \"x\"\r\nDOMAIN_MIN 0 0 0\r\nDOMAIN_MAX 1.0 1.0 1.0\r\n"
            "LUT_IN_VIDEO_RANGE\r\nLUT_3D_SIZE\t5\r\n# the table\r\n" + "\r\n".join(data[:60]) + "\r\n\r\n"
            + "\r\n".join(d.replace(" ", "\t") for d in data[60:]) + "\r\n")
    (tmp_path / "v.cube").write_bytes(text.encode("utf-8"))
    cube = read_cube(tmp_path / "v.cube")
    assert cube.comments == ["made by hand", "the table"]
    assert (cube.table - table).abs().max() < 1e-5


def test_a_domain_maps_inputs_onto_the_lattice():
    table = known_mapping(9)
    body = "\n".join(format_cube(table).splitlines()[3:])
    cube = parse_cube(f"LUT_3D_INPUT_RANGE 0 2\nLUT_3D_SIZE 9\n{body}\n")
    assert cube.domain_max == (2.0, 2.0, 2.0)
    x = torch.rand(1, 3, 8, 8)
    same = parse_cube(format_cube(table))
    assert torch.allclose(apply_cube(cube, 2 * x), apply_cube(same, x), atol=1e-6)


def cube_text(size=2, entries=None, head=None) -> str:
    head = head if head is not None else [f"LUT_3D_SIZE {size}"]
    entries = entries if entries is not None else ["0 0 0"] * size ** 3
    return "\n".join(["# test", *head, *entries]) + "\n"


MALFORMED = {
    "too few entries": (cube_text(entries=["0 0 0"] * 7), "line 9", "ends after 7 entries"),
    "too many entries": (cube_text(entries=["0 0 0"] * 9), "line 11", "more entries than LUT_3D_SIZE 2"),
    "a non-numeric value": (cube_text(entries=["0 0 0"] * 4 + ["0 0.5 O.7"] + ["1 1 1"] * 3), "line 7",
                            "'O.7' is not a number"),
    "two values on a line": (cube_text(entries=["0 0 0", "0 1"] + ["1 1 1"] * 6), "line 4", "expected 3"),
    "a 1D LUT": (cube_text(head=["LUT_1D_SIZE 2"], entries=["0 0 0", "1 1 1"]), "line 3", "1D LUT"),
    "no size": (cube_text(head=['TITLE "x"'], entries=["0 0 0"] * 8), "line 3", "before any LUT_3D_SIZE"),
    "a bad size": (cube_text(head=["LUT_3D_SIZE 1"]), "line 2", "LUT_3D_SIZE '1'"),
    "integer-scaled values": (cube_text(entries=["0 0 0"] * 5 + ["1023 0 512"] + ["0 0 0"] * 2), "line 8",
                              "far outside the domain"),
    "a keyword inside the table": (cube_text(entries=["0 0 0"] * 3 + ["DOMAIN_MAX 1 1 1"] + ["0 0 0"] * 5),
                                   "line 6", "after the table started"),
}


@pytest.mark.parametrize("kind", MALFORMED)
def test_a_malformed_file_is_refused_naming_the_line(tmp_path, kind):
    text, line, what = MALFORMED[kind]
    (tmp_path / "bad.cube").write_text(text)
    with pytest.raises(CubeError, match=what) as info:
        read_cube(tmp_path / "bad.cube")
    assert f"bad.cube, {line}:" in str(info.value)


def test_ffmpeg_lut3d_gives_our_colours(tmp_path):
    """An exported .cube through ffmpeg's lut3d filter and through apply_cube agree within 2/255.

    What this checks of ffmpeg's conventions (libavfilter/vf_lut3d.c, parse_cube): entries are read
    with red fastest (lut[r][g][b] filled with r innermost), the same order as ours; DOMAIN lines are
    only read after LUT_3D_SIZE (so we write them there) and only their width is used, so we export
    the [0, 1] domain where every reader agrees; interp=trilinear is asked for, as ffmpeg defaults
    to tetrahedral; ffmpeg truncates the interpolated value to 8 bits where we round, up to 1/255.
    """
    if shutil.which("ffmpeg") is None:
        pytest.skip("ffmpeg is not installed (Debian: apt-get install ffmpeg)")
    table = known_mapping(17)
    write_cube(tmp_path / "look.cube", table)
    rgb = np.asarray(Image.open(photo_path("coffee")).convert("RGB"))  # a real photo, 400 x 600
    Image.fromarray(rgb).save(tmp_path / "in.png")
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-i", str(tmp_path / "in.png"), "-vf",
                    f"lut3d=file={tmp_path / 'look.cube'}:interp=trilinear", "-pix_fmt", "rgb24",
                    str(tmp_path / "ffmpeg.png")], check=True)
    theirs = np.asarray(Image.open(tmp_path / "ffmpeg.png").convert("RGB")).astype(int)
    ours = np.round(grade(read_cube(tmp_path / "look.cube"), rgb / 255.0) * 255).astype(int)
    assert theirs.shape == ours.shape == rgb.shape
    assert np.abs(theirs - ours).max() <= 2
    assert np.abs(theirs - rgb.astype(int)).mean() > 5  # the look really changed the photo


def test_apply_cli_keeps_size_exif_and_icc_and_lists_failures(tmp_path, capsys):
    table = known_mapping(9)
    write_cube(tmp_path / "look.cube", table)
    src = tmp_path / "in"
    src.mkdir()
    rgb = np.asarray(Image.open(photo_path("coffee")).convert("RGB"))[:123, :217]  # odd size
    exif = Image.Exif()
    exif[0x010F] = "TestCam"
    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    Image.fromarray(rgb).save(src / "house.jpg", quality=95, exif=exif.tobytes(), icc_profile=icc)
    Image.fromarray(rgb).save(src / "house.png")
    before = (src / "house.jpg").read_bytes()
    out = tmp_path / "out"
    assert apply_main([str(tmp_path / "look.cube"), "--input", str(src), "--output", str(out)]) == 0
    assert json.loads(capsys.readouterr().out.strip())["done"] == 2
    with Image.open(out / "house.jpg") as im:
        assert im.size == (217, 123)
        assert im.getexif()[0x010F] == "TestCam" and im.info.get("icc_profile") == icc
    assert (src / "house.jpg").read_bytes() == before  # the input is untouched
    png = np.asarray(Image.open(out / "house.png")).astype(int)
    expected = np.round(grade(read_cube(tmp_path / "look.cube"), rgb / 255.0) * 255).astype(int)
    assert np.abs(png - expected).max() == 0  # lossless output: exactly the LUT's colours

    (src / "broken.jpg").write_bytes(b"not a photo")
    assert apply_main([str(tmp_path / "look.cube"), "--input", str(src), "--output", str(out)]) == 1
    err = capsys.readouterr().err
    assert "1 photo(s) failed" in err and "broken.jpg" in err
    assert apply_main([str(tmp_path / "look.cube"), "--input", str(src), "--output", str(src)]) == 1
    assert "would overwrite the input" in capsys.readouterr().err


def test_apply_cli_refuses_a_malformed_cube(tmp_path, capsys):
    (tmp_path / "bad.cube").write_text(cube_text(entries=["0 0 0"] * 7))
    (tmp_path / "a.png").write_bytes(b"")
    assert apply_main([str(tmp_path / "bad.cube"), "--input", str(tmp_path), "--output", str(tmp_path / "o")]) == 2
    assert "line 9" in capsys.readouterr().err


LUT_RUN = ["lut.num_basis=1", "lut.size=9", "lut.cnn_size=32", "lut.train_steps=8", "lut.learning_rate=0.01",
           "train.ema_decay=0"]


@pytest.mark.slow  # trains the tiny LUT first: about 25 s on 2 cores
def test_export_of_a_trained_3d_lut_fits_its_training_photos(tiny_data, tmp_path, capsys):
    from lut.export import main as export
    from lut.train import main as train_lut
    from tests.conftest import REPO, tiny_overrides

    train_lut(["--config", str(REPO / "configs" / "demo.yaml"), *tiny_overrides(tiny_data, tmp_path), *LUT_RUN])
    capsys.readouterr()
    out = tmp_path / "look.cube"
    run = tmp_path / "demo" / "lut"
    assert export(["--model", str(run), "--out", str(out), "--json", str(tmp_path / "f.json")]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert any(line.startswith("LUT vs the model's own output: PSNR") for line in lines)
    assert any(line.startswith("LUT vs the target: PSNR") for line in lines)
    figures = json.loads((tmp_path / "f.json").read_text())
    assert figures["fit_photos"]["source"] == str(tiny_data / "train")  # the run's training data by default
    assert figures["eval_photos"]["count"] == len(list((tiny_data / "train" / "input").iterdir()))
    cube = read_cube(out)
    assert cube.size == 33 and cube.table.min() >= 0 and cube.table.max() <= 1
    # one basis LUT, scaled per photo by the CNN: nearly global, so the LUT stands for the model
    assert figures["lut_vs_model_db"] > figures["input_vs_model_db"] + 5
    row = figures["per_photo"][0]
    assert set(row) == {"name", "lut_vs_model_db", "input_vs_model_db", "lut_vs_target_db", "model_vs_target_db",
                        "input_vs_target_db"}
    # the figure is the written file's: re-measure the first photo from the .cube and the model
    from core.images import psnr_db, to_tensor
    from core.models import load_model
    from lut.export import load_photos

    name, x, _ = load_photos(str(tiny_data / "train"), 64, 8)[0]
    again = psnr_db(apply_cube(cube, to_tensor(x)[None]).clamp(0, 1)[0], to_tensor(load_model(run).pipeline()(x)))
    assert name == row["name"] and again == pytest.approx(row["lut_vs_model_db"], abs=1e-3)


def test_a_global_lut_model_exports_its_own_table(tiny_data, tmp_path):
    from lut.export import main as export
    from lut.fit import resample
    from lut.model import AdaptiveLUT

    net = AdaptiveLUT(num_basis=1, size=9, cnn_size=32)  # one basis, weight exactly 1: a global LUT
    with torch.no_grad():
        net.luts[0] = known_mapping(9)
    serving = {"codec": None, "working_long_side": 64, "size_multiple": 8, "transfer": {"mode": "grid", "grid": 4}}
    net.save_pretrained(tmp_path / "run" / "model", manifest=serving)
    assert export(["--model", str(tmp_path / "run"), "--out", str(tmp_path / "own.cube"),
                   "--photos", str(tiny_data / "val"), "--json", str(tmp_path / "f.json")]) == 0
    assert (read_cube(tmp_path / "own.cube").table - resample(known_mapping(9), 33)).abs().max() < 1e-5
    assert json.loads((tmp_path / "f.json").read_text())["lut_vs_model_db"] > 60


def test_export_of_a_student_fits_a_closer_lut_than_the_identity(tiny_data, tmp_path, capsys):
    from lut.export import main as export
    from student import Student

    torch.manual_seed(0)
    student = Student(12, "slim", (8, 8), 1, 4)
    with torch.no_grad():  # a student that edits (a fresh one is the identity)
        student.net.conv_out.weight.normal_(0, 0.05)
    serving = {"codec": {"kind": "pixel", "factor": 2}, "working_long_side": 64, "size_multiple": 8,
               "transfer": {"mode": "grid", "grid": 4}}
    student.save_pretrained(tmp_path / "s" / "model", manifest=serving)
    plain = tmp_path / "plain"  # photos without targets: only the figure against the model
    shutil.copytree(tiny_data / "val" / "input", plain)
    capsys.readouterr()
    assert export(["--model", str(tmp_path / "s"), "--out", str(tmp_path / "s.cube"), "--size", "17",
                   "--photos", str(tiny_data / "train"), "--eval-photos", str(plain),
                   "--json", str(tmp_path / "f.json")]) == 0
    assert "LUT vs the target" not in capsys.readouterr().out
    figures = json.loads((tmp_path / "f.json").read_text())
    assert figures["method"] == "fit" and figures["eval_photos"]["count"] == 2
    assert read_cube(tmp_path / "s.cube").size == 17
    from core.images import load_image, psnr_db, to_tensor
    from core.models import load_model

    pipe = load_model(tmp_path / "s").pipeline()
    rgb = load_image(sorted(plain.iterdir())[0])[0]
    row = figures["per_photo"][0]
    assert row["input_vs_model_db"] == pytest.approx(psnr_db(to_tensor(rgb), to_tensor(pipe(rgb))), abs=1e-4)
    assert row["lut_vs_model_db"] > row["input_vs_model_db"] + 3


def test_a_global_colour_map_is_evaluated_on_the_lattice():
    from lut.export import lattice_table

    table = lattice_table(lambda rgb: rgb.flip(1) ** 2, 9)  # (N, 3) -> (N, 3)
    r, g, b = identity_lut(9)
    assert torch.allclose(table, torch.stack([b ** 2, g ** 2, r ** 2]))


def test_the_colour_prior_is_written_exactly_and_measured(tiny_data, tmp_path, capsys):
    from core.data import PairSource
    from core.images import to_tensor
    from core.prior import ColourPrior
    from lut.export import main as export

    pairs = PairSource.open(tiny_data / "train")
    prior = ColourPrior.fit([tuple(to_tensor(a) for a in pairs.load(i)) for i in range(len(pairs))])
    serving = {"codec": None, "working_long_side": 64, "size_multiple": 8, "transfer": {"mode": "none", "grid": 4}}
    prior.save_pretrained(tmp_path / "curve", manifest=serving)
    assert export(["--model", str(tmp_path / "curve"), "--out", str(tmp_path / "c.cube"), "--size", "17"]) == 0
    assert "LUT vs" not in capsys.readouterr().out  # no photos named, none in a config: no figures
    nodes = identity_lut(17)
    expected = prior(nodes.reshape(1, 3, 17, 17 * 17)).reshape(3, 17, 17, 17)  # the curve at every node
    assert (read_cube(tmp_path / "c.cube").table - expected).abs().max() < 1e-5
    assert export(["--model", str(tmp_path / "curve"), "--out", str(tmp_path / "c.cube"),
                   "--photos", str(tiny_data / "val"), "--json", str(tmp_path / "c.json")]) == 0
    figures = json.loads((tmp_path / "c.json").read_text())
    assert figures["method"] == "lattice" and figures["lut_vs_model_db"] > 40  # only trilinear error left
