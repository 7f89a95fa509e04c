"""core.data on real folders and datasets written to tmp_path (and FiveK pairs when present)."""

import io
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from core.data import (
    DataError,
    PairedDataset,
    PairSource,
    check_pairs,
    fit_long_side,
    random_crop_flip,
    shard_indices,
)
from tests.conftest import FIVEK, REPO


def photo(h, w, seed=0) -> np.ndarray:
    """(h, w, 3) uint8 with smooth gradients and a bright block in the top-left corner."""
    y, x = np.mgrid[0:h, 0:w]
    a = np.stack([x * 255 // max(w - 1, 1), y * 255 // max(h - 1, 1),
                  np.full_like(x, 40 * seed % 256)], -1)
    a[: h // 4, : w // 4] = 255
    return a.astype(np.uint8)


def save(path: Path, a: np.ndarray, **kw) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(a).save(path, **kw)


def good_pairs(root: Path) -> None:
    """Four pairs that must pass: 16-bit PNG, CMYK JPEG, EXIF-rotated JPEG, 2x-rescaled target."""
    deep = (np.arange(48 * 64, dtype=np.uint16).reshape(48, 64) * 13)
    save(root / "input" / "deep16.png", deep)
    save(root / "target" / "deep16.png", (deep // 2).astype(np.uint16))
    Image.fromarray(photo(48, 64)).convert("CMYK").save(root / "input" / "cmyk.jpg")
    save(root / "target" / "cmyk.png", photo(48, 64, 1))  # stems match across suffixes
    exif = Image.Exif()
    exif[0x0112] = 6  # stored portrait, shown landscape
    save(root / "input" / "rotated.jpg", np.rot90(photo(48, 64), 1).copy(), exif=exif.tobytes())
    save(root / "target" / "rotated.png", photo(48, 64, 2))
    save(root / "input" / "rescale.png", photo(24, 32))
    save(root / "target" / "rescale.jpg", photo(48, 64, 3), quality=95)
    (root / "input" / ".DS_Store").write_bytes(b"\0junk")  # hidden: ignored silently


@pytest.fixture
def clean(tmp_path) -> Path:
    good_pairs(tmp_path / "clean")
    return tmp_path / "clean"


@pytest.fixture
def bad(tmp_path) -> tuple[Path, set[str]]:
    """The good pairs plus one of every problem; returns the folder and the files to blame."""
    root = tmp_path / "bad"
    good_pairs(root)
    save(root / "input" / "corrupt.jpg", photo(64, 64))
    data = (root / "input" / "corrupt.jpg").read_bytes()
    (root / "input" / "corrupt.jpg").write_bytes(data[: len(data) // 2])
    save(root / "target" / "corrupt.jpg", photo(64, 64))
    (root / "input" / "empty.png").write_bytes(b"")
    save(root / "target" / "empty.png", photo(8, 8))
    save(root / "target" / "orphan.jpg", photo(8, 8))
    save(root / "input" / "mismatch.png", photo(48, 64))
    save(root / "target" / "mismatch.png", photo(40, 64))
    save(root / "input" / "dup.jpg", photo(8, 8))
    save(root / "input" / "dup.png", photo(8, 8))
    save(root / "target" / "dup.png", photo(8, 8))
    (root / "input" / "notes.txt").write_text("shot list")
    blamed = {"input/corrupt.jpg", "input/empty.png", "target/orphan.jpg", "target/mismatch.png",
              "input/dup.jpg", "input/notes.txt"}
    return root, blamed


def run_cli(*args) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "core.data", "check", *map(str, args)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=120,
                          check=False)


def test_check_reports_every_problem_at_once(bad):
    root, blamed = bad
    report = check_pairs(root)
    found = [str(Path(p.path).relative_to(root)) for p in report.problems]
    assert sorted(found) == sorted(blamed)  # each problem once, none missed
    assert not report.ok
    assert sorted(p.name for p in report.pairs) == ["cmyk", "deep16", "rescale", "rotated"]
    by_file = {str(Path(p.path).relative_to(root)): p for p in report.problems}
    assert "64x40" in by_file["target/mismatch.png"].message
    assert "64x48" in by_file["target/mismatch.png"].message
    assert "truncated" in by_file["input/corrupt.jpg"].message
    assert "0 bytes" in by_file["input/empty.png"].message
    assert "convert to JPEG/PNG/TIFF/WebP" in by_file["input/notes.txt"].fix
    assert str(by_file["target/orphan.jpg"]).startswith(str(root / "target" / "orphan.jpg"))


def test_cli_exit_status_and_listing(bad, clean):
    root, blamed = bad
    result = run_cli(root)
    assert result.returncode == 1, result.stderr
    for name in blamed:
        assert str(root / name) in result.stdout
    assert "4 good pair(s), 6 problem(s)" in result.stdout
    result = run_cli(clean)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "4 good pair(s), 0 problem(s)" in result.stdout


def test_pair_source_refuses_a_bad_folder(bad):
    root, blamed = bad
    with pytest.raises(DataError) as error:
        PairSource.open(root)
    for name in blamed:
        assert str(root / name) in str(error.value)


def test_pair_source_loads_at_the_input_size(clean):
    source = PairSource.open(clean)
    assert source.names == ["cmyk", "deep16", "rescale", "rotated"]
    for i in range(len(source)):
        a, b = source.load(i)
        assert a.shape == b.shape == (48 if source.names[i] != "rescale" else 24,
                                      64 if source.names[i] != "rescale" else 32, 3)
        assert a.dtype == b.dtype == np.float32 and 0 <= a.min() and a.max() <= 1
    a, b = source.load(source.names.index("rescale"))
    assert np.abs(b - photo(24, 32, 3) / 255).mean() < 0.03  # the 2x target, scaled down
    a, _ = source.load(source.names.index("rotated"))
    assert np.abs(a - photo(48, 64) / 255).mean() < 0.03  # upright after EXIF orientation
    keys = [source.content_key(i) for i in range(len(source))]
    assert len(set(keys)) == 4 and keys == [PairSource.open(clean).content_key(i)
                                            for i in range(4)]
    save(clean / "target" / "cmyk.png", photo(48, 64, 5))
    assert PairSource.open(clean).content_key(0) != keys[0]  # new content, new key


def _png(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, "PNG")
    return buf.getvalue()


@pytest.mark.parametrize("layout", ["parquet", "save_to_disk"])
@pytest.mark.parametrize("columns", [("input_image", "edited_image"), ("before", "after")])
def test_hf_dataset_through_the_same_api(tmp_path, layout, columns):
    from datasets import Dataset
    from datasets import Image as ImageFeature

    inp, out = columns
    ds = Dataset.from_dict({
        inp: [{"bytes": _png(photo(24, 32, s)), "path": f"p{s}.png"} for s in range(3)],
        out: [{"bytes": _png(photo(48, 64, s + 1)), "path": None} for s in range(3)],
    })
    ds = ds.cast_column(inp, ImageFeature()).cast_column(out, ImageFeature())
    if layout == "parquet":
        path = tmp_path / "pairs.parquet"
        ds.to_parquet(str(path))
    else:
        path = tmp_path / "pairs"
        ds.save_to_disk(str(path))
    kw = {} if columns == ("input_image", "edited_image") else {
        "input_column": inp, "target_column": out}
    report = check_pairs(path, **kw)
    assert report.ok, [str(p) for p in report.problems]
    source = PairSource.open(path, **kw)
    assert source.names == ["p0", "p1", "p2"]
    a, b = source.load(1)
    assert a.shape == b.shape == (24, 32, 3)
    assert np.allclose(a, photo(24, 32, 1) / 255)
    assert len({source.content_key(i) for i in range(3)}) == 3
    if kw:  # wrong names: one clear problem that names the columns there are
        report = check_pairs(path)
        assert len(report.problems) == 1 and "before, after" in report.problems[0].message


def test_hf_dataset_problems_name_the_row(tmp_path):
    from datasets import Dataset
    from datasets import Image as ImageFeature

    cut = _png(photo(32, 32))[:100]
    ds = Dataset.from_dict({
        "input_image": [{"bytes": _png(photo(24, 32)), "path": None},
                        {"bytes": cut, "path": None}],
        "edited_image": [{"bytes": _png(photo(30, 32)), "path": None},
                         {"bytes": _png(photo(32, 32)), "path": None}],
    })
    for column in ("input_image", "edited_image"):
        ds = ds.cast_column(column, ImageFeature())
    ds.save_to_disk(str(tmp_path / "pairs"))
    problems = check_pairs(tmp_path / "pairs").problems
    assert [p.path.rsplit("/", 1)[-1] for p in problems] == [
        "pairs[train][0].edited_image", "pairs[train][1].input_image"]
    result = run_cli(tmp_path / "pairs")
    assert result.returncode == 1 and "pairs[train][1].input_image" in result.stdout


def test_fit_long_side():
    assert fit_long_side(3000, 4000, 1024, 8) == (768, 1024)
    assert fit_long_side(341, 512, 256, 8) == (168, 256)
    assert fit_long_side(100, 50, 1024, 8) == (96, 48)  # never upscaled, rounded down
    assert fit_long_side(5, 300, 64, 8) == (8, 64)  # at least one factor


def test_random_crop_flip_same_on_both_and_aligned():
    h, w = 40, 56
    x = torch.arange(w, dtype=torch.float32).expand(3, h, w).clone()  # value = column
    x[1] = torch.arange(h, dtype=torch.float32)[:, None]  # channel 1: value = row
    flips = set()
    for seed in range(20):
        a, b = random_crop_flip(x, x.clone(), 16, 8, torch.Generator().manual_seed(seed))
        assert torch.equal(a, b) and a.shape == (3, 16, 16)
        left = int(min(a[0, 0, 0], a[0, 0, -1]))
        assert left % 8 == 0 and int(a[1, 0, 0]) % 8 == 0  # corner on a multiple of the factor
        flips.add(bool(a[0, 0, 0] > a[0, 0, -1]))
        same = random_crop_flip(x, x, 16, 8, torch.Generator().manual_seed(seed))[0]
        assert torch.equal(a, same)  # same generator state, same crop
    assert flips == {True, False}
    a, _ = random_crop_flip(x, x, 64, 8, torch.Generator().manual_seed(0))
    assert a.shape == (3, 40, 56)  # larger than the image: the image, rounded to the factor
    a, _ = random_crop_flip(x, x, 16, 8, torch.Generator().manual_seed(0), flip=False)
    assert a[0, 0, 0] < a[0, 0, -1]


def test_paired_dataset_crops_depend_on_seed_epoch_index(clean):
    source = PairSource.open(clean)

    def crops(epoch, seed=0):
        ds = PairedDataset(source, crop_size=16, long_side=32, factor=8, flip=True, seed=seed)
        ds.set_epoch(epoch)
        return [ds[i] for i in range(len(ds))]

    first, again = crops(3), crops(3)
    for item, same in zip(first, again):
        assert torch.equal(item["input"], same["input"]) and item["name"] == same["name"]
        assert item["input"].shape == (3, 16, 16) == item["target"].shape
    assert any(not torch.equal(a["input"], b["input"]) for a, b in zip(first, crops(4)))
    assert any(not torch.equal(a["input"], b["input"]) for a, b in zip(first, crops(3, seed=1)))
    val = PairedDataset(source, crop_size=None, long_side=32, factor=8, train=False)
    item = val[source.names.index("rescale")]
    assert item["input"].shape == item["target"].shape == (3, 24, 32)
    assert item["name"] == "rescale" and item["index"] == 2
    batch = next(iter(torch.utils.data.DataLoader(
        PairedDataset(source, crop_size=16, long_side=32, factor=8), batch_size=4)))
    assert batch["input"].shape == (4, 3, 16, 16)


def test_shard_indices_split_an_epoch_exactly():
    for n, world in ((12, 3), (10, 3), (5, 4), (7, 1)):
        shards = [shard_indices(n, epoch=2, seed=7, rank=r, world=world) for r in range(world)]
        assert len({len(s) for s in shards}) == 1  # equal length: no rank waits on another
        flat = [i for shard in shards for i in shard]
        assert set(flat) == set(range(n)) and len(flat) == -(-n // world) * world
        if n % world == 0:
            assert len(flat) == len(set(flat))  # disjoint
        assert shards == [shard_indices(n, 2, 7, r, world) for r in range(world)]
    assert shard_indices(50, 0, 7, 0, 2) != shard_indices(50, 1, 7, 0, 2)
    assert shard_indices(6, 0, 7, 1, 2, shuffle=False) == [1, 3, 5]


@pytest.mark.skipif(not (FIVEK / "input").is_dir(), reason="FiveK pairs not present")
def test_real_fivek_pairs_are_clean():
    report = check_pairs(FIVEK)
    assert report.ok, [str(p) for p in report.problems]
    assert len(report.pairs) == len(list((FIVEK / "input").iterdir()))
    result = run_cli(FIVEK)
    assert result.returncode == 0, result.stdout + result.stderr


def test_split_links_pairs_without_copying(tmp_path):
    from core.data import split_folder

    src = tmp_path / "pairs"
    for side in ("input", "target"):
        (src / side).mkdir(parents=True)
        for i in range(5):
            Image.fromarray(np.full((8, 8, 3), i * 20, np.uint8)).save(src / side / f"p{i}.png")
    names = split_folder(src, tmp_path / "out", val=2)
    assert names == {"train": ["p0", "p1", "p2"], "val": ["p3", "p4"]}
    linked = tmp_path / "out" / "val" / "target" / "p4.png"
    assert linked.is_symlink() and linked.resolve() == (src / "target" / "p4.png").resolve()
    assert check_pairs(tmp_path / "out" / "train").ok
