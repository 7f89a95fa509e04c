"""Export a model's colour mapping as a `.cube` 3D LUT (Lightroom, Photoshop, Capture One, Resolve, ffmpeg).

    python -m lut.export --model runs/demo/lut --out look.cube
    python -m lut.export --model runs/demo/student --out look.cube --size 33 --photos more/photos
    python -m lut.export --model runs/fivek/student --out s.cube --eval-photos data/fivek/val --json s.json

What goes in the table:
- A pure global colour map (a model with `map_colours`: the global colour curve prior,
  core/prior.py): the map evaluated on the lattice nodes, exactly.
- Any other model (teacher, student, the image-adaptive 3D LUT): the best global LUT for the
  model's input -> output colours on a set of photos (`--photos`: the training inputs named in the
  run's config.yaml by default), fitted in closed form with smoothing where no photo has colours
  (lut/fit.py). The 3D-LUT baseline has no single table (its CNN mixes its basis LUTs per photo),
  so the fit also decides its table; far from the photos' colours it falls back on the model's own
  basis tables mixed with its mean weights over those photos, rather than on the identity. That
  mean table is also a candidate: the fit has the lower total squared error against the model
  but the mean table can have the higher mean PSNR (demo: 35.5 vs 33.7 dB on the training photos,
  41.5 vs 40.5 on validation, the fit 0.2 dB closer to the targets there); the export keeps
  whichever is closer to the model in mean PSNR on the fitted photos, and says which.
  The fit runs on a 17^3 lattice and is resampled exactly to --size (trilinear on 17^3 is
  trilinear on 33^3): the held-out optimum is so smooth that finer lattices add nothing.

Then it prints how close the LUT gets to the model's own output and to the targets (PSNR, mean
over the photos of `--eval-photos`, or the fitted photos), one line each, so the user sees what a
global LUT loses: the local part of the edit. `--json` writes the same figures per photo.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

from core.checkpoint import CheckpointError, atomic_write_json, resolve_model_dir
from core.config import load_config
from core.data import DataError, PairSource, fit_long_side
from core.images import list_photos, load_image, psnr_db, resize, to_tensor
from core.models import load_model
from lut.cube import CubeLUT, apply_cube, parse_cube, write_cube
from lut.fit import LatticeFit, resample
from lut.model import AdaptiveLUT, identity_lut

FIT_SIZE = 17


def training_source(model_dir: Path, required: bool = True) -> str | None:
    """The training data named in the run's config.yaml (beside the model folder)."""
    for config in (model_dir / "config.yaml", model_dir.parent / "config.yaml"):
        if config.is_file():
            return load_config(config).data.train
    if required:
        raise SystemExit(f"error: no config.yaml beside {model_dir} names the training photos: pass --photos DIR")
    return None


def load_photos(source: str, long_side: int, multiple: int) -> list[tuple[str, np.ndarray, np.ndarray | None]]:
    """(name, input, target or None) at the working size, from a folder of pairs (input/ and target/),
    a paired dataset, or a plain folder (or file) of photos without targets."""
    path = Path(source)
    if path.is_dir() and not (path / "input").is_dir():
        photos = [(p.stem, load_image(p)[0], None) for p in list_photos(path, "--photos")]
    else:
        try:
            pairs = PairSource.open(source)
        except DataError as exc:
            raise SystemExit(f"error: {exc}") from None
        photos = [(name, *pairs.load(i)) for i, name in enumerate(pairs.names)]
    out = []
    for name, x, y in photos:
        h, w = fit_long_side(*x.shape[:2], long_side, multiple)
        out.append((name, resize(x, (w, h)), None if y is None else resize(y, (w, h))))
    if not out:
        raise SystemExit(f"error: no photos in {source}: pass a folder of photos or of pairs (input/, target/)")
    return out


@torch.no_grad()
def own_table(net: AdaptiveLUT, photos) -> torch.Tensor:
    """The 3D-LUT baseline's basis tables mixed with its mean weights over `photos`: (3, S, S, S)."""
    weights = [net.mix(net.cnn_input(to_tensor(x)[None].to(net.luts.device)))[1][0] for _, x, _ in photos]
    return torch.einsum("k,kcdhw->cdhw", torch.stack(weights).mean(0), net.luts).float().cpu()


def lattice_table(map_colours, size: int) -> torch.Tensor:
    """A global colour map (N, 3) -> (N, 3) evaluated on every lattice node: (3, S, S, S)."""
    grid = identity_lut(size).reshape(3, -1).T
    return torch.as_tensor(map_colours(grid), dtype=torch.float32).T.reshape(3, size, size, size).clamp(0, 1)


def fit_table(outputs, photos, prior: torch.Tensor | None, size: int) -> torch.Tensor:
    """The closed-form global LUT for input -> model output on `photos` (lut/fit.py), at `size`."""
    fit = LatticeFit(min(size, FIT_SIZE))
    for (_, x, _), y in zip(photos, outputs):
        fit.add(torch.from_numpy(x).reshape(-1, 3), torch.from_numpy(y).reshape(-1, 3))
    return resample(fit.solve(None if prior is None else resample(prior, fit.size)), size)


def closeness(table: torch.Tensor, photos, outputs) -> float:
    """Mean PSNR of the table's output against `outputs` (the model's) on `photos`."""
    cube = CubeLUT(table)
    return float(np.mean([psnr_db(apply_cube(cube, to_tensor(x)[None]).clamp(0, 1)[0], to_tensor(y))
                          for (_, x, _), y in zip(photos, outputs)]))


def figures(cube, photos, outputs) -> dict:
    """PSNR of the LUT's output against the model's `outputs` and the target, per photo and their means."""
    rows = []
    for (name, x, y), out in zip(photos, outputs):
        xt = to_tensor(x)[None]
        model, graded = to_tensor(out), apply_cube(cube, xt).clamp(0, 1)[0]
        row = {"name": name, "lut_vs_model_db": psnr_db(graded, model), "input_vs_model_db": psnr_db(xt[0], model)}
        if y is not None:
            yt = to_tensor(y)
            row.update(lut_vs_target_db=psnr_db(graded, yt), model_vs_target_db=psnr_db(model, yt),
                       input_vs_target_db=psnr_db(xt[0], yt))
        rows.append(row)
    keys = [k for k in rows[0] if k != "name"] if all(len(r) == len(rows[0]) for r in rows) else list(rows[0])[1:3]
    return {**{k: float(np.mean([r[k] for r in rows])) for k in keys}, "per_photo": rows}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="Export a model's colour mapping as a .cube 3D LUT.")
    p.add_argument("--model", required=True, help="a run or model folder (teacher, student, 3D LUT, colour prior)")
    p.add_argument("--out", required=True, help="the .cube file to write")
    p.add_argument("--size", type=int, default=33, help="lattice points per axis (17, 33 or 65 are usual)")
    p.add_argument("--photos", default=None, help="photos to fit on: a folder of photos or of pairs "
                   "(input/, target/), or a dataset (default: the run's training data)")
    p.add_argument("--eval-photos", default=None, help="photos to measure on (default: the fitted photos)")
    p.add_argument("--long-side", type=int, default=None, help="working size of the photos (default: the model's)")
    p.add_argument("--json", default=None, help="also write the figures, per photo, to this JSON file")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = p.parse_args(argv)
    if not 2 <= args.size <= 256:
        raise SystemExit(f"error: --size {args.size}: use 2 to 256 (33 is what most tools expect)")
    try:
        folder = resolve_model_dir(args.model)
        model = load_model(folder, args.device)
    except CheckpointError as exc:
        raise SystemExit(f"error: {exc}") from None
    long_side = args.long_side or model.working_long_side
    pipe = model.pipeline(long_side)
    needs_photos = not hasattr(model.net, "map_colours")  # a pure global colour map needs none
    source = args.photos or training_source(folder, required=needs_photos)
    photos = load_photos(source, long_side, model.size_multiple) if source else []
    outputs = [pipe(x) for _, x, _ in photos]

    if not needs_photos:
        method, table = "lattice", lattice_table(model.net.map_colours, args.size)
        how = f"{model.kind} colour map evaluated on the lattice"
    else:
        prior = own_table(model.net, photos) if isinstance(model.net, AdaptiveLUT) else None
        method, table = "fit", fit_table(outputs, photos, prior, args.size)
        how = f"global LUT fitted to the {model.kind} model's colours on {len(photos)} photos ({source})"
        if prior is not None:  # the baseline's own mean table can be closer to it in mean PSNR: keep the closer
            own = resample(prior, args.size).clamp(0, 1)  # .cube values in [0, 1], as the model's output
            if closeness(own, photos, outputs) > closeness(table, photos, outputs):
                method, table = "own-table", own
                how = f"3D LUT's basis tables mixed with its mean weights on {len(photos)} photos ({source})"
    run = folder.parent if folder.name == "model" else folder
    title = f"estate-edit {model.kind} {run.parent.name}/{run.name}"
    write_cube(args.out, table, title=title, comments=(f"{how}; python -m lut.export --model {args.model}",))
    print(f"wrote {args.out}: {args.size}^3 {how}")

    eval_source = args.eval_photos or (source if photos else None)
    result = {"cube": str(args.out), "model": str(folder), "kind": model.kind, "method": method, "size": args.size,
              "fit_photos": {"source": str(source), "count": len(photos)} if needs_photos else None}
    if eval_source:
        evals = photos if eval_source == source else load_photos(eval_source, long_side, model.size_multiple)
        eval_outputs = outputs if evals is photos else [pipe(x) for _, x, _ in evals]
        cube = parse_cube(Path(args.out).read_text(), args.out)  # measure what the file holds
        result.update(eval_photos={"source": str(eval_source), "count": len(evals)},
                      **figures(cube, evals, eval_outputs))
        where = f"mean over {len(evals)} photos of {eval_source}"
        print(f"LUT vs the model's own output: PSNR {result['lut_vs_model_db']:.2f} dB; the input "
              f"{result['input_vs_model_db']:.2f} dB ({where})")
        if "lut_vs_target_db" in result:
            print(f"LUT vs the target: PSNR {result['lut_vs_target_db']:.2f} dB; the model itself "
                  f"{result['model_vs_target_db']:.2f} dB, the input {result['input_vs_target_db']:.2f} dB (the "
                  f"model's local edit adds {result['model_vs_target_db'] - result['lut_vs_target_db']:+.2f} dB "
                  "over its global LUT)")
    if args.json:
        atomic_write_json(args.json, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
