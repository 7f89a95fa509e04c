"""The embedded demo data set: real photos that ship inside installed packages, no download.

Targets (the "professionally edited" side) are photos read straight from the files of the
installed packages: scikit-image's ``skimage/data`` (coffee, astronaut, chelsea, rocket,
motorcycle_left, motorcycle_right) and matplotlib's ``mpl-data/sample_data/grace_hopper.jpg``.
Inputs are a real-estate "un-edit" of each target, the inverse of what an editor does.
Every variant of a photo is a random crop (60-100% of the largest box of its aspect, aspect
within 3:4..4:3), resized with Pillow LANCZOS so the long side is ``long_side`` and both sides
are multiples of 16, then un-edited with its own parameters.

The un-edit, in order (``lin`` = linear light, via the sRGB transfer curve):
  1. under-exposure     lin *= 2**-U,                 U ~ U(0.4, 1.5) EV
  2. colour cast        lin *= gains (R, G, B), normalised so the Rec.709 luminance of grey
                        is kept (the cast does not change exposure). 50/50:
                        tungsten:     R *= 1 + U(0.10, 0.30), B *= 1 - U(0.20, 0.45)
                        fluorescent:  G *= 1 + U(0.10, 0.25), R and B *= 1 - U(0.0, 0.10)
  3. vignetting         lin *= 1 - V * r**2,          V ~ U(0.10, 0.30), r = 1 at the corners
  4. lower contrast     srgb = mu + C * (srgb - mu),  C ~ U(0.60, 0.85), mu = mean luma
  5. lower saturation   srgb = Y + S * (srgb - Y),    S ~ U(0.50, 0.85), Y = per-pixel luma
  6. blown windows      1-3 rectangles, each U(0.5, 2.0)% of the image, aspect 1:2..2:1,
                        2 px feathered edge; inside: lin = min(1, K * lin + B),
                        K ~ U(3, 8), B ~ U(0.3, 0.6): clipped to near-white, the target keeps
                        the detail. Together at most 6% of the pixels.
Blacks are never crushed (no offset below zero), so the un-edit stays invertible in
principle outside the windows. Random draws come from
``numpy.random.default_rng([seed, photo_index, variant_index])``: the same seed gives
byte-identical files.

Layout (the same loader as user data reads it):
  OUT/train/{input,target}/<photo>_<variant:03d>.png, OUT/val/{input,target}/..., 8-bit PNG,
  OUT/demo.json: the build parameters, a summary and the parameters of every pair.
The split is by source photo; motorcycle_left/right are one stereo scene and always share a side.

    python -m core.demo build --out data/demo --seed 0 --long-side 256
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from core.images import linear_to_srgb, srgb_to_linear

PHOTOS = ("coffee", "astronaut", "chelsea", "rocket", "motorcycle_left", "motorcycle_right",
          "grace_hopper")
SCENES = {"motorcycle_right": "motorcycle_left"}  # one stereo scene: never split across sides
FORMAT_VERSION = 1
LUMA = np.array([0.2126, 0.7152, 0.0722])  # Rec.709


def _candidate(name: str) -> tuple[Path, str]:
    """Where the installed packages keep a photo (may not exist), and which package that is."""
    if name == "grace_hopper":
        import matplotlib
        path = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"
        return path, f"matplotlib {matplotlib.__version__}"
    import skimage
    folder = Path(skimage.__file__).parent / "data"
    jpg = folder / f"{name}.jpg"
    return (jpg if jpg.is_file() else folder / f"{name}.png"), f"scikit-image {skimage.__version__}"


def photo_path(name: str) -> Path:
    """The file of a package photo, or FileNotFoundError naming the photo and what exists.

    Read from the package folder, never through skimage.data's fetcher: nothing downloads.
    """
    path, where = _candidate(name)
    if name not in PHOTOS or not path.is_file():
        found = [p for p in PHOTOS if _candidate(p)[0].is_file()]
        raise FileNotFoundError(
            f"demo photo {name!r} is not shipped by the installed {where} (looked for {path}); "
            f"photos found: {found}. Install scikit-image>=0.22 and matplotlib>=3.8, "
            f"or leave {name!r} out of val_photos.")
    return path


def _window_mask(h: int, w: int, rng: np.random.Generator) -> tuple[np.ndarray, list]:
    """(H, W) in [0, 1]: 1-3 feathered rectangles, and their boxes [x0, y0, x1, y1] in pixels."""
    mask, boxes = np.zeros((h, w)), []
    for _ in range(int(rng.integers(1, 4))):
        area, aspect = rng.uniform(0.005, 0.02) * h * w, np.exp(rng.uniform(-0.69, 0.69))
        bw, bh = min(w, np.sqrt(area * aspect)), min(h, np.sqrt(area / aspect))
        x0, y0 = rng.uniform(0, w - bw), rng.uniform(0, h - bh)
        xs, ys = np.arange(w) + 0.5, np.arange(h) + 0.5
        # a 2-pixel ramp at the edge: real window frames are sharp but not aliased
        mx = np.clip(np.minimum(xs - x0, x0 + bw - xs) / 2 + 0.5, 0, 1)
        my = np.clip(np.minimum(ys - y0, y0 + bh - ys) / 2 + 0.5, 0, 1)
        mask = np.maximum(mask, my[:, None] * mx[None, :])
        boxes.append([round(float(v), 2) for v in (x0, y0, x0 + bw, y0 + bh)])
    return mask, boxes


def unedit(target_rgb: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, dict]:
    """Make a plausible unedited input from an edited photo (steps in the module docstring).

    target_rgb: (H, W, 3) float sRGB in [0, 1]. Returns (input_rgb (H, W, 3) float in [0, 1],
    params: a JSON-serialisable dict of every drawn parameter).
    """
    h, w, _ = target_rgb.shape
    lin = srgb_to_linear(np.clip(target_rgb.astype(np.float64), 0, 1))

    ev = rng.uniform(0.4, 1.5)
    lin = lin * 2.0 ** -ev

    if rng.random() < 0.5:
        cast, gains = "tungsten", np.array([1 + rng.uniform(0.10, 0.30), 1.0,
                                            1 - rng.uniform(0.20, 0.45)])
    else:
        rb = 1 - rng.uniform(0.0, 0.10)
        cast, gains = "fluorescent", np.array([rb, 1 + rng.uniform(0.10, 0.25), rb])
    gains = gains / (LUMA @ gains)
    lin = lin * gains

    vignette = rng.uniform(0.10, 0.30)
    ys, xs = np.mgrid[0:h, 0:w]
    r2 = (((xs + 0.5) / w - 0.5) ** 2 + ((ys + 0.5) / h - 0.5) ** 2) / 0.5
    lin = lin * (1 - vignette * r2)[..., None]

    srgb = linear_to_srgb(lin)
    contrast = rng.uniform(0.60, 0.85)
    mu = float((srgb @ LUMA).mean())
    srgb = mu + contrast * (srgb - mu)
    saturation = rng.uniform(0.50, 0.85)
    luma = (srgb @ LUMA)[..., None]
    srgb = np.clip(luma + saturation * (srgb - luma), 0, 1)

    mask, boxes = _window_mask(h, w, rng)
    k, b = rng.uniform(3, 8), rng.uniform(0.3, 0.6)
    blown = linear_to_srgb(np.minimum(1.0, k * srgb_to_linear(srgb) + b))
    srgb = srgb * (1 - mask[..., None]) + blown * mask[..., None]

    params = {"exposure_ev": -ev, "cast": cast, "cast_gains_rgb": gains.tolist(),
              "vignette": vignette, "contrast": contrast, "saturation": saturation,
              "windows_xyxy": boxes, "window_gain": k, "window_lift": b,
              "window_fraction": float(mask.mean())}
    params = {key: round(v, 5) if isinstance(v, float) else v for key, v in params.items()}
    params["cast_gains_rgb"] = [round(g, 5) for g in params["cast_gains_rgb"]]
    return srgb, params


def photometric_variant(x, rng: np.random.Generator):
    """The same shot as another camera setting might have taken it: an input-side training
    augmentation (the target stays). x: (3, H, W) torch tensor in [0, 1] -> same shape.

    Exposure +-0.7 EV and white balance / tint (+-8 %) in linear light, highlights clipped at
    0.85-1 (blown windows) half of the time, sensor noise (sigma <= 0.015), JPEG (q 60-95) half
    of the time.
    """
    import io

    import torch

    rgb = x.permute(1, 2, 0).double().numpy()
    lin = srgb_to_linear(np.clip(rgb, 0, 1)) * 2.0 ** rng.uniform(-0.7, 0.7)
    gains = np.exp(rng.normal(0.0, 0.08, 3))
    lin = lin * gains / (LUMA @ gains)
    srgb = linear_to_srgb(lin)
    if rng.random() < 0.5:
        srgb = np.minimum(srgb, rng.uniform(0.85, 1.0))
    srgb = np.clip(srgb + rng.normal(0.0, rng.uniform(0, 0.015), srgb.shape), 0, 1)
    if rng.random() < 0.5:
        buf = io.BytesIO()
        Image.fromarray((srgb * 255 + 0.5).astype(np.uint8)).save(buf, "JPEG", quality=int(rng.integers(60, 96)))
        srgb = np.asarray(Image.open(buf).convert("RGB"), dtype=np.float64) / 255
    return torch.from_numpy(np.ascontiguousarray(srgb.transpose(2, 0, 1))).float()


def random_crop(photo: Image.Image, long_side: int, rng: np.random.Generator):
    """A random crop resized so the long side is long_side and both sides are multiples of 16.

    Returns ((H, W, 3) uint8, crop box [left, top, right, bottom] in source pixels).
    """
    short = max(16, round(long_side * rng.uniform(0.75, 1.0) / 16) * 16)
    w, h = (long_side, short) if rng.random() < 0.5 else (short, long_side)
    # the largest box of aspect w:h inside the photo, then 60-100% of its side
    scale = min(photo.width / w, photo.height / h) * rng.uniform(0.6, 1.0)
    cw, ch = w * scale, h * scale
    left, top = rng.uniform(0, photo.width - cw), rng.uniform(0, photo.height - ch)
    box = (left, top, left + cw, top + ch)
    crop = photo.resize((w, h), Image.Resampling.LANCZOS, box=box)
    return np.asarray(crop), [round(v, 2) for v in box]


def _split(val_photos) -> tuple[list, list]:
    unknown = [p for p in val_photos if p not in PHOTOS]
    if unknown:
        raise ValueError(f"val_photos {unknown} are not demo photos; choose from {list(PHOTOS)}")
    scene = {p: SCENES.get(p, p) for p in PHOTOS}
    val_scenes = {scene[p] for p in val_photos}
    val = [p for p in PHOTOS if scene[p] in val_scenes]
    train = [p for p in PHOTOS if p not in val]
    if not train or not val:
        raise ValueError(f"val_photos={list(val_photos)} leaves an empty split; name 1 to "
                         f"{len(PHOTOS) - 2} of {list(PHOTOS)}")
    return train, val


def _summary_out(out: Path, summary: dict, rebuilt: bool) -> dict:
    """The stored summary plus the output paths (computed now, so a moved folder still works)."""
    paths = {f"{s}_{side}": str(out / s / side) for s in ("train", "val")
             for side in ("input", "target")}
    return {**summary, "rebuilt": rebuilt, "out_dir": str(out),
            "demo_json": str(out / "demo.json"), "paths": paths}


def _is_built(out: Path, build: dict) -> dict | None:
    try:
        meta = json.loads((out / "demo.json").read_text())
    except (OSError, ValueError):
        return None
    if meta.get("build") != build:
        return None
    for pair in meta["pairs"]:
        for side in ("input", "target"):
            if not (out / pair["split"] / side / f"{pair['name']}.png").is_file():
                return None
    return meta["summary"]


def build_demo_dataset(out_dir, *, seed: int = 0, long_side: int = 256,
                       variants_per_photo: int = 24, val_variants_per_photo: int = 4,
                       val_photos=("chelsea", "grace_hopper"), force: bool = False) -> dict:
    """Write the demo pairs to out_dir (layout in the module docstring) and return the summary.

    Does nothing when out_dir/demo.json holds the same build parameters (unless force);
    otherwise builds in a temporary sibling folder and renames it into place.
    Summary: counts, photos, mean identity PSNR (input as output, dB) and mean luma per split,
    build_seconds, rebuilt (False when it was up to date), out_dir, demo_json, paths.
    """
    from core.images import psnr_db, to_tensor  # imported here: `core.demo` itself stays free of torch

    if long_side < 16 or long_side % 16:
        raise ValueError(f"long_side={long_side} must be a positive multiple of 16 (e.g. 256)")
    if variants_per_photo < 1 or val_variants_per_photo < 1:
        raise ValueError(f"variants_per_photo={variants_per_photo} and val_variants_per_photo="
                         f"{val_variants_per_photo} must both be >= 1")
    if int(seed) < 0:
        raise ValueError(f"seed={seed} must be >= 0")
    out = Path(out_dir).resolve()
    train, val = _split(tuple(val_photos))
    build = {"format": FORMAT_VERSION, "seed": int(seed), "long_side": long_side,
             "variants_per_photo": variants_per_photo,
             "val_variants_per_photo": val_variants_per_photo, "val_photos": val}
    if not force and (summary := _is_built(out, build)) is not None:
        return _summary_out(out, summary, rebuilt=False)

    start = time.perf_counter()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        pairs, stats = [], {"train": [], "val": []}
        for split, photos, count in (("train", train, variants_per_photo),
                                     ("val", val, val_variants_per_photo)):
            for side in ("input", "target"):
                (tmp / split / side).mkdir(parents=True)
            for name in photos:
                photo = Image.open(photo_path(name)).convert("RGB")
                for variant in range(count):
                    rng = np.random.default_rng([int(seed), PHOTOS.index(name), variant])
                    target, box = random_crop(photo, long_side, rng)
                    x, params = unedit(target / 255.0, rng)
                    inp = np.round(x * 255).astype(np.uint8)
                    stem = f"{name}_{variant:03d}"
                    Image.fromarray(inp).save(tmp / split / "input" / f"{stem}.png")
                    Image.fromarray(target).save(tmp / split / "target" / f"{stem}.png")
                    psnr = psnr_db(to_tensor(inp / 255.0), to_tensor(target / 255.0))
                    stats[split].append((psnr, float((inp / 255.0 @ LUMA).mean()),
                                         float((target / 255.0 @ LUMA).mean())))
                    pairs.append({"name": stem, "split": split, "photo": name, "seed": int(seed),
                                  "variant": variant, "source": photo_path(name).name,
                                  "crop_box": box, "size_wh": [target.shape[1], target.shape[0]],
                                  "unedit": params, "identity_psnr_db": round(psnr, 3)})
        summary = {"counts": {s: len(stats[s]) for s in stats},
                   "photos": {"train": train, "val": val},
                   "identity_psnr_db": {s: round(float(np.mean([r[0] for r in stats[s]])), 3)
                                        for s in stats},
                   "mean_luma": {s: {"input": round(float(np.mean([r[1] for r in stats[s]])), 4),
                                     "target": round(float(np.mean([r[2] for r in stats[s]])), 4)}
                                 for s in stats},
                   "build_seconds": round(time.perf_counter() - start, 2)}
        meta = {"build": build, "summary": summary, "pairs": pairs}
        (tmp / "demo.json").write_text(json.dumps(meta, indent=1))
        # a directory cannot be replaced in one rename: move the old one aside first
        old = None
        if out.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
            os.replace(out, old / "demo")
        os.replace(tmp, out)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return _summary_out(out, summary, rebuilt=True)


def _print_summary(summary: dict) -> None:
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:
        print(json.dumps(summary, indent=1))
        return
    table = Table(title=f"demo data set: {summary['out_dir']}")
    for col in ("split", "pairs", "photos", "identity PSNR (dB)", "luma input / target"):
        table.add_column(col)
    for s in ("train", "val"):
        luma = summary["mean_luma"][s]
        table.add_row(s, str(summary["counts"][s]), ", ".join(summary["photos"][s]),
                      f"{summary['identity_psnr_db'][s]:.2f}",
                      f"{luma['input']:.3f} / {luma['target']:.3f}")
    Console().print(table)
    state = "built" if summary["rebuilt"] else "up to date, was built"
    print(f"{state} in {summary['build_seconds']} s; pairs in {summary['demo_json']}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m core.demo", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="write the demo pairs (no download)")
    b.add_argument("--out", default="data/demo")
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--long-side", type=int, default=256)
    b.add_argument("--variants-per-photo", type=int, default=24)
    b.add_argument("--val-variants-per-photo", type=int, default=4)
    b.add_argument("--val-photos", nargs="+", default=["chelsea", "grace_hopper"])
    b.add_argument("--force", action="store_true", help="rebuild even if up to date")
    args = parser.parse_args(argv)
    try:
        summary = build_demo_dataset(
            args.out, seed=args.seed, long_side=args.long_side,
            variants_per_photo=args.variants_per_photo,
            val_variants_per_photo=args.val_variants_per_photo,
            val_photos=tuple(args.val_photos), force=args.force)
    except (ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    _print_summary(summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
