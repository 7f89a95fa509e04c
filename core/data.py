"""Paired data: (input photo, edited photo) pairs, checked before anything trains on them.

A source is either
  (a) a folder with input/ and target/, pairs matched by file stem (input/a.png pairs with
      target/a.jpg), or
  (b) a Hugging Face `datasets` dataset with two image columns (default input_image and
      edited_image): a hub id, parquet file(s), an imagefolder, or a save_to_disk folder.

    python -m core.data check PATH [--input-column X --target-column Y --split S --max-pixels N]

`check_pairs` reports every problem at once; `PairSource.open` refuses a source with any problem
(nothing is skipped silently). A target that is a uniform rescale of its input (same aspect ratio
within 1 px) is fine and is resized to the input's size when loaded. `PairedDataset` serves
(3, H, W) tensors in [0, 1] with crops that depend only on (seed, epoch, index), so a resumed run
sees the same crops; `shard_indices` splits an epoch across processes.
"""

from __future__ import annotations

import argparse
import hashlib
import math
import sys
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from core.images import (
    DEFAULT_MAX_PIXELS,
    IMAGE_SUFFIXES,
    ImageError,
    decode_image,
    load_image,
    resize,
    to_tensor,
    verify_image,
)

_JUNK = {"Thumbs.db", "desktop.ini"}  # OS litter, ignored like hidden files
FORMATS_FIX = "remove it or convert to JPEG/PNG/TIFF/WebP"


class DataError(ValueError):
    """A paired-data source that cannot be used; the message lists every problem."""


@dataclass
class Problem:
    path: str
    message: str
    fix: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message} -> {self.fix}"


@dataclass
class Pair:
    name: str  # the shared file stem, or the dataset row's name
    input: str  # file path, or "source[split][row].column" for a dataset row
    target: str
    input_size: tuple[int, int]  # (w, h) after EXIF orientation
    target_size: tuple[int, int]
    row: int | None = None  # dataset row; None for folder pairs


@dataclass
class CheckReport:
    pairs: list[Pair]
    problems: list[Problem]

    @property
    def ok(self) -> bool:
        return not self.problems


def _size_problem(pair: Pair) -> Problem | None:
    """None if the target is the input's size or a uniform rescale of it (1 px rounding)."""
    (w1, h1), (w2, h2) = pair.input_size, pair.target_size
    if (w1, h1) == (w2, h2) or (abs(h2 * w1 / w2 - h1) <= 1 and abs(w2 * h1 / h2 - w1) <= 1):
        return None
    return Problem(pair.target, f"size {w2}x{h2} does not match the input's {w1}x{h1} "
                   f"({pair.input}) and is not a uniform rescale of it",
                   "re-export the edit at the input's size (or the same aspect ratio)")


def _verify(src, name: str, max_pixels: int, problems: list[Problem]) -> tuple[int, int] | None:
    try:
        return verify_image(src, name, max_pixels)
    except ImageError as e:
        problems.append(Problem(e.path, e.what, e.fix))
        return None


def _list_side(folder: Path, problems: list[Problem]) -> dict[str, list[Path | None]]:
    """Image files of one side by stem; other entries become problems, hidden files are ignored."""
    by_stem: dict[str, list[Path | None]] = defaultdict(list)
    for f in sorted(folder.iterdir()):
        if f.name.startswith(".") or f.name in _JUNK:
            continue
        if f.is_dir():
            problems.append(Problem(str(f), "is a folder (pairs are the files directly inside "
                                    f"{folder.name}/)", "move its photos up or remove it"))
        elif f.suffix.lower() not in IMAGE_SUFFIXES:
            problems.append(Problem(str(f), "not an image file", FORMATS_FIX))
        elif f.stat().st_size == 0:
            problems.append(Problem(str(f), "file is empty (0 bytes)", "re-export or remove it"))
            by_stem[f.stem].append(None)  # still counts for matching and duplicates
        else:
            by_stem[f.stem].append(f)
    for stem, files in by_stem.items():
        real = [f for f in files if f is not None]
        if len(files) > 1 and real:
            problems.append(Problem(str(real[0]), f"{len(files)} files in {folder.name}/ are "
                                    f"named {stem!r}", "keep one of them"))
    return by_stem


def _check_folder(root: Path, max_pixels: int) -> CheckReport:
    problems: list[Problem] = []
    sides = {}
    for side, what in (("input", "original"), ("target", "edited")):
        if (root / side).is_dir():
            sides[side] = _list_side(root / side, problems)
        else:
            sides[side] = {}
            problems.append(Problem(str(root / side), "folder is missing",
                                    f"create {side}/ with the {what} photos, named like the "
                                    "other side's"))
    inputs, targets = sides["input"], sides["target"]
    for stems, other, side in ((inputs, targets, "target"), (targets, inputs, "input")):
        for stem in sorted(set(stems) - set(other)):
            for f in filter(None, stems[stem]):
                problems.append(Problem(str(f), f"no {side} named {stem!r}.* in {side}/",
                                        f"add the {side} photo or remove this one"))
    pairs = []
    for stem in sorted(set(inputs) & set(targets)):
        a, b = inputs[stem], targets[stem]
        if len(a) != 1 or len(b) != 1 or a[0] is None or b[0] is None:
            continue  # already reported: duplicate or empty
        sa = _verify(a[0], str(a[0]), max_pixels, problems)
        sb = _verify(b[0], str(b[0]), max_pixels, problems)
        if sa and sb:
            pairs.append(Pair(stem, str(a[0]), str(b[0]), sa, sb))
    return _finish(pairs, problems)


def _finish(pairs: list[Pair], problems: list[Problem]) -> CheckReport:
    good = []
    for pair in pairs:
        bad = _size_problem(pair)
        if bad:
            problems.append(bad)
        else:
            good.append(pair)
    return CheckReport(good, sorted(problems, key=lambda p: p.path))


def _load_hf(source: str, split: str):
    """A `datasets.Dataset` from a save_to_disk folder, parquet file(s), a folder or a hub id."""
    import datasets

    path = Path(source)
    if path.is_dir() and ((path / "state.json").exists() or (path / "dataset_dict.json").exists()):
        ds = datasets.load_from_disk(str(path))
        if isinstance(ds, datasets.DatasetDict):
            if split not in ds:
                raise KeyError(f"no split {split!r} (splits: {', '.join(ds)})")
            ds = ds[split]
        return ds
    if source.endswith(".parquet"):
        return datasets.load_dataset("parquet", data_files={split: source}, split=split)
    return datasets.load_dataset(source, split=split)  # a local folder or a hub id


def _cell_bytes(cell, label: str) -> bytes:
    """The file bytes of an undecoded `datasets.Image` cell ({"bytes", "path"})."""
    if isinstance(cell, dict) and cell.get("bytes"):
        return cell["bytes"]
    if isinstance(cell, dict) and cell.get("path"):
        try:
            return Path(cell["path"]).read_bytes()
        except OSError as e:
            raise ImageError(label, f"cannot read {cell['path']} ({e.strerror})",
                             "embed the images in the dataset (cast_column(..., Image()))") from e
    raise ImageError(label, "the cell holds no image", "fill it or remove the row")


def _open_dataset(source: str, input_column: str, target_column: str, split: str):
    """(dataset with undecoded image columns, None) or (None, Problem)."""
    fix = ("give a folder with input/ and target/, a parquet file, a save_to_disk folder, an "
           "imagefolder, or a reachable hub id")
    looks_local = source.startswith((".", "/", "~")) or source.count("/") > 1  # not owner/name
    if looks_local and not Path(source).expanduser().exists():
        return None, Problem(source, "no such file or folder", "check the path")
    try:
        ds = _load_hf(source, split)
    except Exception as e:  # noqa: BLE001 - datasets fails in many types; each becomes a Problem
        return None, Problem(source, f"cannot load it as a dataset ({type(e).__name__}: {e})", fix)
    missing = [c for c in (input_column, target_column) if c not in ds.column_names]
    if missing:
        return None, Problem(source, f"no column {', '.join(map(repr, missing))} (columns: "
                             f"{', '.join(ds.column_names)})",
                             "pass --input-column/--target-column (data.input_column and "
                             "data.target_column in the config)" + (
                                 "; a folder of pairs needs input/ and target/"
                                 if Path(source).is_dir() else ""))
    from datasets import Image as ImageFeature

    try:  # undecoded: we decode the bytes ourselves, exactly as load_image does
        ds = ds.select_columns([input_column, target_column])
        for column in (input_column, target_column):
            ds = ds.cast_column(column, ImageFeature(decode=False))
    except Exception as e:  # noqa: BLE001 - reported as a Problem, with the reason
        return None, Problem(source, f"the columns are not images ({e})",
                             "cast them with datasets.Image() before saving")
    return ds, None


def _name_rows(pairs: list[Pair], stems: list[str | None]) -> None:
    """Name rows by their input file's stem where all are known and unique, else row-00012."""
    if not (all(stems) and len(set(stems)) == len(stems)):
        stems = [f"row-{i:05d}" for i in range(len(stems))]
    for pair in pairs:
        pair.name = stems[pair.row]


def _check_dataset(source: str, input_column: str, target_column: str, split: str,
                   max_pixels: int):
    ds, problem = _open_dataset(source, input_column, target_column, split)
    if problem:
        return CheckReport([], [problem]), None
    problems: list[Problem] = []
    pairs, stems = [], []
    for i, row in enumerate(ds):
        path = (row[input_column] or {}).get("path")
        stems.append(Path(path).stem if path else None)
        labels = [f"{source}[{split}][{i}].{c}" for c in (input_column, target_column)]
        sizes = []
        for label, column in zip(labels, (input_column, target_column)):
            try:
                sizes.append(verify_image(_cell_bytes(row[column], label), label, max_pixels))
            except ImageError as e:
                problems.append(Problem(e.path, e.what, e.fix))
        if len(sizes) == 2:
            pairs.append(Pair("", labels[0], labels[1], sizes[0], sizes[1], row=i))
    _name_rows(pairs, stems)
    return _finish(pairs, problems), ds


def _check(source, input_column, target_column, split, max_pixels):
    root = Path(source)
    if root.is_dir() and ((root / "input").is_dir() or (root / "target").is_dir()):
        return _check_folder(root, max_pixels), None
    return _check_dataset(str(source), input_column, target_column, split, max_pixels)


def check_pairs(source: str | Path, *, input_column: str = "input_image",
                target_column: str = "edited_image", split: str = "train",
                max_pixels: int = DEFAULT_MAX_PIXELS) -> CheckReport:
    """Check every pair of a folder or dataset; every problem is reported, none stops the check.

    Each photo is fully decoded (truncated files are caught), so this costs one read of the data.
    """
    return _check(source, input_column, target_column, split, max_pixels)[0]


class PairSource:
    """Checked pairs: `load(i)` -> (input, target), each (H, W, 3) float32 in [0, 1], same size."""

    def __init__(self, source: str, pairs: list[Pair], dataset=None, *,
                 input_column: str = "input_image", target_column: str = "edited_image",
                 max_pixels: int = DEFAULT_MAX_PIXELS):
        self.source, self.pairs, self.dataset = str(source), pairs, dataset
        self.columns = (input_column, target_column)
        self.max_pixels = max_pixels
        self._keys: dict[int, str] = {}

    @classmethod
    def open(cls, source: str | Path, *, input_column: str = "input_image",
             target_column: str = "edited_image", split: str = "train",
             max_pixels: int = DEFAULT_MAX_PIXELS) -> PairSource:
        """Check the source; raise DataError listing every problem if there is any."""
        report, dataset = _check(source, input_column, target_column, split, max_pixels)
        if not report.ok:
            lines = "\n".join(f"  {p}" for p in report.problems)
            raise DataError(f"{source}: {len(report.problems)} problem(s) in the paired data; "
                            "nothing is skipped silently. Fix them, then run `python -m core.data "
                            f"check {source}`:\n{lines}")
        return cls(str(source), report.pairs, dataset, input_column=input_column,
                   target_column=target_column, max_pixels=max_pixels)

    def __len__(self) -> int:
        return len(self.pairs)

    @property
    def names(self) -> list[str]:
        return [p.name for p in self.pairs]

    def _bytes(self, i: int) -> tuple[bytes, bytes]:
        pair = self.pairs[i]
        if self.dataset is None:
            return Path(pair.input).read_bytes(), Path(pair.target).read_bytes()
        row = self.dataset[pair.row]
        return (_cell_bytes(row[self.columns[0]], pair.input),
                _cell_bytes(row[self.columns[1]], pair.target))

    def load(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """(input, target), (H, W, 3) float32 in [0, 1]; the target resized to the input's size."""
        pair = self.pairs[i]
        if self.dataset is None:
            a, _ = load_image(pair.input, self.max_pixels)
            b, _ = load_image(pair.target, self.max_pixels)
        else:
            data_a, data_b = self._bytes(i)
            a, _ = decode_image(data_a, pair.input, self.max_pixels)
            b, _ = decode_image(data_b, pair.target, self.max_pixels)
        if b.shape != a.shape:  # a uniform rescale, accepted by the check
            b = resize(b, (a.shape[1], a.shape[0]))
        return a, b

    def content_key(self, i: int) -> str:
        """sha1 of the pair's two files (or cells): a cache key that changes with the content."""
        if i not in self._keys:
            h = hashlib.sha1()
            for data in self._bytes(i):
                h.update(len(data).to_bytes(8, "little"))
                h.update(data)
            self._keys[i] = h.hexdigest()
        return self._keys[i]


def fit_long_side(h: int, w: int, long_side: int, factor: int) -> tuple[int, int]:
    """(h2, w2): the long side scaled down to `long_side` (never up), each side then rounded
    down to a multiple of `factor` (at least `factor`)."""
    scale = min(1.0, long_side / max(h, w))
    return tuple(max(factor, round(n * scale) // factor * factor) for n in (h, w))


def _crop_side(n: int, crop: int | None, factor: int) -> int:
    fit = n // factor * factor
    if fit == 0 or (crop is not None and crop < factor):
        raise ValueError(f"cannot crop {crop} px from a side of {n} px with factor {factor}: "
                         "use images and crops of at least the codec factor")
    return fit if crop is None else min(crop // factor * factor, fit)


def random_crop_flip(input_t: torch.Tensor, target_t: torch.Tensor, crop: int | None,
                     factor: int, rng: torch.Generator, flip: bool = True
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """The same random crop and horizontal flip of two (C, H, W) tensors.

    The crop is `crop` x `crop` (a side smaller than that: its largest multiple of `factor`;
    None: the whole image so rounded); its top-left corner is on a multiple of `factor`, so it
    matches a crop of cached latents. Two draws from `rng`, always, flip or not.
    """
    if input_t.shape != target_t.shape:
        raise ValueError(f"input {tuple(input_t.shape)} and target {tuple(target_t.shape)} "
                         "differ in shape: resize the target to the input first")
    both = torch.stack([input_t, target_t])  # one crop for both
    h, w = both.shape[-2:]
    ch, cw = _crop_side(h, crop, factor), _crop_side(w, crop, factor)
    y0 = factor * int(torch.randint((h - ch) // factor + 1, (1,), generator=rng))
    x0 = factor * int(torch.randint((w - cw) // factor + 1, (1,), generator=rng))
    both = both[..., y0:y0 + ch, x0:x0 + cw]
    if bool(torch.rand((), generator=rng) < 0.5) and flip:
        both = both.flip(-1)
    return both[0], both[1]


def item_seed(seed: int, epoch: int, index: int) -> int:
    """A well-mixed seed for one item of one epoch."""
    return int(np.random.SeedSequence([seed, epoch, index]).generate_state(1, np.uint64)[0])


class PairedDataset(torch.utils.data.Dataset):
    """Items {"input", "target": (3, H, W) float in [0, 1], "name": str, "index": int}.

    Train: resized so the long side is `long_side` (if set), then a random crop/flip that
    depends only on (seed, epoch, index); call `set_epoch` each epoch (DataLoader workers must
    see it: use num_workers=0 or non-persistent workers). Val: resized to `long_side` (or kept),
    sides rounded to `factor`, no crop or flip. Decoded images are cached in memory.
    """

    def __init__(self, source: PairSource, *, crop_size: int | None = None,
                 long_side: int | None = None, factor: int = 8, flip: bool = True,
                 seed: int = 0, train: bool = True):
        self.source, self.factor, self.flip, self.seed, self.train = (
            source, factor, flip, seed, train)
        self.crop_size, self.long_side = crop_size or None, long_side or None  # 0 means off
        self.epoch = 0
        self._cache: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.source)

    def pair(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(input, target) (3, H, W) resized for this dataset, before any crop (cached)."""
        if i not in self._cache:
            a, b = self.source.load(i)
            h, w = a.shape[:2]
            if self.long_side or not self.train:
                h2, w2 = fit_long_side(h, w, self.long_side or max(h, w), self.factor)
                a, b = resize(a, (w2, h2)), resize(b, (w2, h2))
            self._cache[i] = (to_tensor(a), to_tensor(b))
        return self._cache[i]

    def __getitem__(self, i: int) -> dict:
        x, y = self.pair(i)
        if self.train:
            rng = torch.Generator().manual_seed(item_seed(self.seed, self.epoch, i))
            x, y = random_crop_flip(x, y, self.crop_size, self.factor, rng, self.flip)
        else:
            x, y = x.clone(), y.clone()  # callers may write in place; keep the cache intact
        return {"input": x, "target": y, "name": self.source.names[i], "index": i}


def shard_indices(n: int, epoch: int, seed: int, rank: int, world: int,
                  shuffle: bool = True) -> list[int]:
    """This process's indices for one epoch: the epoch's permutation (seeded by seed + epoch),
    padded by wrap-around to a multiple of `world`, then every world-th from `rank`."""
    if not 0 <= rank < world:
        raise ValueError(f"rank {rank} is not in 0..{world - 1}")
    if n == 0:
        return []
    order = (torch.randperm(n, generator=torch.Generator().manual_seed(seed + epoch)).tolist()
             if shuffle else list(range(n)))
    total = math.ceil(n / world) * world
    order = (order * math.ceil(total / n))[:total]
    return order[rank::world]


def split_folder(source: str | Path, out: str | Path, val: int) -> dict[str, list[str]]:
    """Lay out `out/train` and `out/val` (input/ and target/ each) as symbolic links to a checked
    pair folder: the last `val` stems in sorted order go to validation. Nothing is copied."""
    report = check_pairs(source)
    if not report.ok:
        raise DataError(f"{source}: fix these first:\n" + "\n".join(map(str, report.problems)))
    pairs = sorted(report.pairs, key=lambda p: p.name)
    if not 0 < val < len(pairs):
        raise DataError(f"--val {val}: choose between 1 and {len(pairs) - 1} for {len(pairs)} pairs")
    splits = {"train": pairs[:-val], "val": pairs[-val:]}
    for split, members in splits.items():
        for side in ("input", "target"):
            folder = Path(out) / split / side
            folder.mkdir(parents=True, exist_ok=True)
            for old in folder.iterdir():
                old.unlink()
            for pair in members:
                src = Path(getattr(pair, side)).resolve()
                (folder / src.name).symlink_to(src)
    return {k: [p.name for p in v] for k, v in splits.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m core.data", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    split = sub.add_parser("split", help="link a pair folder into train/ and val/ folders (no copies)")
    split.add_argument("path", help="folder with input/ and target/")
    split.add_argument("out", help="where train/ and val/ are made")
    split.add_argument("--val", type=int, default=4, help="number of pairs for validation (the last stems)")
    check = sub.add_parser("check", help="check a folder or dataset of pairs, list every problem")
    check.add_argument("path", help="folder with input/ and target/, or a dataset path / hub id")
    check.add_argument("--input-column", default="input_image")
    check.add_argument("--target-column", default="edited_image")
    check.add_argument("--split", default="train")
    check.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS)
    args = parser.parse_args(argv)
    if args.command == "split":
        try:
            names = split_folder(args.path, args.out, args.val)
        except DataError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        print(f"{args.out}: {len(names['train'])} train, {len(names['val'])} val ({', '.join(names['val'])})")
        return 0

    from rich.console import Console
    from rich.text import Text

    report = check_pairs(args.path, input_column=args.input_column,
                         target_column=args.target_column, split=args.split,
                         max_pixels=args.max_pixels)
    console = Console(soft_wrap=True, highlight=False)  # soft_wrap: never break a path
    style = "green" if report.ok else "red"
    console.print(Text(f"{args.path}: {len(report.pairs)} good pair(s), "
                       f"{len(report.problems)} problem(s)", style=f"bold {style}"))
    for problem in report.problems:
        console.print(Text.assemble((problem.path, "bold"), f": {problem.message} -> ",
                                    (problem.fix, "yellow")))
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
