"""K-fold cross-validation of the whole pipeline: the project's quality yardstick.

    python -m eval.cv --config configs/fivek_sample.yaml --folds 4 --data ../shared/data/fivek-expert-c
    python -m eval.cv --config configs/fivek_sample.yaml --folds 4 --train_sizes 4,8,12   # learning curve
    python -m eval.cv --config configs/fivek_sample.yaml --folds 4 --select 2 --unpaired transductive

The pairs (--data, else eval.cv_data, else data.train and data.val together) are sorted by name;
fold j holds out names[j*n//K:(j+1)*n//K]. For each fold and training size n (the first n training
names; default all of them), the stages run in this process with the config's settings on
DIR/fold-j/n-NN/data/train: the teacher, the student (distill/run.py) if distill.output_name is in
eval.students, and the LUT if "lut" is in eval.baselines (so `eval.students=[] eval.baselines=[]`
cross-validates the teacher alone, for quick ablations). Then every row of `eval.rows.load_models`
is scored on the held-out pairs at output resolution, exactly as eval/run.py does
(`eval.quality.measure_quality`).

--select N (or a fraction such as 0.25; default eval.cv_select) carves N of the n training names
out as the stages' data.val, evenly spaced through them (eval.cv_select_from: spread; or the last
N: last): the selection split. The networks are not trained on it; it
picks their best checkpoint (train.keep_best, step 0 = the colour prior included) and the colour
prior is fitted on it too (prior.fit_on=train+val: a closed-form curve loses nothing by seeing it).
With 0, data.val is the training pairs themselves and the last checkpoint is kept.

Writes DIR/fold-j/n-NN/result.json, DIR/cv.json, DIR/cv.md and, with several sizes,
DIR/learning_curve.png (DIR: --output_dir, default {output_root}/{name}/cv). Everything resumes:
a stage whose model/manifest.json exists is not retrained, a fold whose result.json exists is not
rescored. The overrides given here apply to every stage; the fold's data and run folders are set
by this driver and win over them.
"""

from __future__ import annotations

import argparse
import importlib
import json
import shlex
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

from core.checkpoint import atomic_path, atomic_write_bytes, atomic_write_json
from core.config import ConfigError, load_config
from core.data import DataError, PairSource
from core.images import save_image
from core.stage import open_sources
from eval.quality import measure_quality
from eval.rows import load_models

METRICS = (("psnr", "PSNR dB"), ("ssim", "SSIM"), ("ciede2000", "ΔE00"))
TRANSDUCTIVE = "transductive: the held-out inputs, without targets"


def cv_folds(names: list[str], k: int, sort: bool = True) -> list[tuple[list[str], list[str]]]:
    """(train_names, test_names) for each of k folds: the names sorted (as given with sort=False, e.g.
    a permutation), fold j holding out the contiguous chunk names[j*n//k:(j+1)*n//k]; every name is
    held out exactly once."""
    names = sorted(names) if sort else list(names)
    n = len(names)
    if len(set(names)) != n:
        raise ValueError("the pair names are not unique: each photo must have one name")
    if not 2 <= k <= n:
        raise ValueError(f"--folds {k}: choose between 2 and {n} for {n} pairs")
    folds = []
    for j in range(k):
        lo, hi = j * n // k, (j + 1) * n // k
        folds.append((names[:lo] + names[hi:], names[lo:hi]))
    return folds


def open_pool(cfg, data: str) -> tuple[str, dict[str, tuple[PairSource, int]]]:
    """(label, {name: (source, index)}): the pairs of `data`, or of data.train and data.val together
    (the demo built first if the config asks; a name in both is taken once, from data.train)."""
    d = cfg.data
    common = dict(input_column=d.input_column, target_column=d.target_column, max_pixels=d.max_pixels)
    if data:
        sources, label = [PairSource.open(data, split=d.train_split, **common)], data
    else:  # open_sources builds the demo if asked; a stand-in for the one-process accelerator
        sources = list(open_sources(cfg, SimpleNamespace(is_main_process=True, wait_for_everyone=lambda: None)))
        label = f"{d.train} + {d.val}"
    pool: dict[str, tuple[PairSource, int]] = {}
    for source in sources:
        for i, name in enumerate(source.names):
            pool.setdefault(name, (source, i))
    return label, pool


def lay_out(folder: Path, names: list[str], pool: dict) -> None:
    """folder/{input,target}/ holding exactly these pairs: symbolic links for folder sources, PNG files
    for dataset rows. Anything else in the folders is removed."""
    for side, column in (("input", 0), ("target", 1)):
        wanted = {}
        for name in names:
            source, i = pool[name]
            if source.dataset is None:
                path = Path(getattr(source.pairs[i], side)).resolve()
                wanted[name + path.suffix] = path
            else:
                wanted[name + ".png"] = (source, i)
        out = folder / side
        out.mkdir(parents=True, exist_ok=True)
        for f in out.iterdir():
            if f.name not in wanted or (f.is_symlink() and f.resolve() != wanted[f.name]):
                f.unlink()
        for file, src in wanted.items():
            if (out / file).exists() or (out / file).is_symlink():
                continue
            if isinstance(src, Path):
                (out / file).symlink_to(src)
            else:
                save_image(out / file, src[0].load(src[1])[column])


def stages_to_train(cfg) -> list[tuple[str, str, str]]:
    """(stage, run folder, entry module) of each stage a fold trains; a stage whose row is not
    evaluated is not trained (eval.students=[] eval.baselines=[]: the teacher alone)."""
    stages = [("teacher", "teacher", "teacher.train")]
    if cfg.distill.output_name in cfg.eval.students:
        stages.append(("student", cfg.distill.output_name, "distill.run"))
    if "lut" in cfg.eval.baselines:
        stages.append(("lut", "lut", "lut.train"))
    return stages


STEPS_KEY = {"teacher": "teacher.train_steps", "student": "distill.train_steps", "lut": "lut.train_steps"}


def selected_step(manifest: dict) -> int:
    """The step train.keep_best kept (step 0: the colour prior itself), else the last one."""
    return int(manifest.get("metrics", {}).get("selected_step", manifest.get("step", 0)))


def train_stage(config: str, overrides: list[str], cfg, stage: str, folder: str, module: str, say) -> dict:
    """One stage's command-line entry point, as `accelerate launch teacher/train.py` runs it, unless
    its model is saved already; its manifest."""
    manifest = cfg.run_dir(folder) / "model" / "manifest.json"
    if manifest.is_file():
        say(f"  {stage}: trained already ({manifest.parent})")
    else:
        say(f"  {stage}: training ({module}) -> {cfg.run_dir(folder)}")
        importlib.import_module(module).main(["--config", config, "--resume_from_checkpoint", "latest",
                                              *overrides])
    return json.loads(manifest.read_text())


def run_stages(config: str, overrides: list[str], cfg, say, refit: tuple | None = None) -> dict:
    """Train what is not trained yet (teacher, student, LUT), in this process; {stage: manifest}.

    `refit` = (overrides, cfg) of the refit pass: each stage is first trained with `overrides` (the
    selection pass: train.keep_best on the selection split), then again from the start on the
    training and selection pairs together for the number of steps the selection pass kept, and the
    refitted model is the one returned (its manifest carries "selected_step"). The student's
    selection pass distils the selection pass's teacher (the refitted one has seen the selection
    split); its refit distils the refitted teacher."""
    manifests = {}
    for stage, folder, module in stages_to_train(cfg):
        manifest = train_stage(config, overrides, cfg, stage, folder, module, say)
        if refit:
            step = selected_step(manifest)
            say(f"  {stage}: the selection split kept step {step}; refit on every training pair")
            again = [*refit[0], f"{STEPS_KEY[stage]}={step}", "train.keep_best=false", "train.validation_steps=0"]
            seconds = manifest.get("train_seconds") or 0.0
            manifest = train_stage(config, again, refit[1], stage, folder, module, say)
            manifest = {**manifest, "selected_step": step,
                        "train_seconds": seconds + (manifest.get("train_seconds") or 0.0)}
        manifests[stage] = manifest
    return manifests


def score_fold(cfg, test_dir: Path, device) -> list[dict]:
    """Every row of load_models on the held-out pairs at output resolution: per image and mean."""
    rows, _ = load_models(cfg, device)
    d = cfg.data
    test = PairSource.open(test_dir, max_pixels=d.max_pixels)
    pairs = [test.load(i) for i in range(len(test))]
    measure_quality(rows, pairs, test.names, d.val_long_side)
    keep = ("name",) + tuple(m for m, _ in METRICS)
    return [{"name": r["name"], "kind": r["kind"], "train_seconds": r["manifest"].get("train_seconds"),
             "per_image": [{k: p[k] for k in keep} for p in r["quality"]["per_image"]],
             "mean": {m: r["quality"]["mean"][m] for m, _ in METRICS}} for r in rows]


def aggregate(results: list[dict]) -> dict:
    """One training size over all folds: per row, mean and sd over every held-out photo, the mean PSNR
    of each fold, the worst fold and train seconds; the train seconds of each fold (all stages)."""
    rows: dict[str, dict] = {}
    for res in results:
        for row in res["rows"]:
            r = rows.setdefault(row["name"], {"name": row["name"], "kind": row["kind"], "per_image": [],
                                              "fold_psnr": [], "train_seconds": []})
            r["per_image"] += [{"fold": res["fold"], **p} for p in row["per_image"]]
            r["fold_psnr"].append({"fold": res["fold"], "psnr": row["mean"]["psnr"]})
            if row["train_seconds"] is not None:
                r["train_seconds"].append(row["train_seconds"])
    for r in rows.values():
        for m, _ in METRICS:
            values = np.array([p[m] for p in r["per_image"]], dtype=float)
            r[m] = {"mean": float(values.mean()), "sd": float(values.std(ddof=1)) if len(values) > 1 else 0.0}
        r["worst_fold"] = min(r["fold_psnr"], key=lambda f: f["psnr"])
        r["train_seconds"] = float(np.mean(r["train_seconds"])) if r["train_seconds"] else None
        r["num_photos"] = len(r["per_image"])
    return {"rows": list(rows.values()), "train_pairs": [res["train_pairs"] for res in results],
            "train_seconds_per_fold": [{"fold": res["fold"], "seconds": res["train_seconds"]} for res in results]}


def write_markdown(summary: dict) -> str:
    s = summary
    lines = ["# Cross-validation", "", f"`{s['command']}`", "",
             f"- data: {s['data']['source']} ({s['data']['num_pairs']} pairs), {s['folds']} folds "
             "(sorted names, contiguous held-out chunks)",
             f"- selection split (--select): {s['select']} of the training pairs" if s["select"] else
             "- selection split: none (validation on the training pairs)",
             "- refit (--refit): each stage trained again on every training pair for the steps the selection "
             "split kept" if s.get("refit") else "- refit: no (the models trained beside the selection split)",
             f"- unpaired photos for distillation: {s['unpaired']}", ""]
    for size, res in s["results"].items():
        lines += [f"## {size} training pairs per fold" if size != "all" else
                  f"## All training pairs per fold ({', '.join(map(str, res['train_pairs']))})", "",
                  "Mean ± sd over every held-out photo; PSNR per fold in fold order.", "",
                  "| row | " + " | ".join(label for _, label in METRICS) + " | PSNR per fold | worst fold | train s |",
                  "|---" * (len(METRICS) + 4) + "|"]
        for r in res["rows"]:
            cells = [f"{r[m]['mean']:.3f} ± {r[m]['sd']:.3f}" if m == "ssim" else
                     f"{r[m]['mean']:.2f} ± {r[m]['sd']:.2f}" for m, _ in METRICS]
            folds = " / ".join(f"{f['psnr']:.2f}" for f in r["fold_psnr"])
            worst = f"{r['worst_fold']['fold']} ({r['worst_fold']['psnr']:.2f})"
            secs = "" if r["train_seconds"] is None else f"{r['train_seconds']:.0f}"
            lines.append(f"| {r['name']} | " + " | ".join(cells) + f" | {folds} | {worst} | {secs} |")
        per_fold = ", ".join(f"fold {f['fold']}: {f['seconds']:.0f} s" for f in res["train_seconds_per_fold"])
        lines += ["", f"Train seconds per fold (all stages): {per_fold}.", ""]
    if len(s["learning_curve"]["sizes"]) > 1:
        curve = s["learning_curve"]
        lines += ["## Learning curve", "", "CV mean PSNR (dB) against the training pairs per fold.", "",
                  "![learning curve](learning_curve.png)", "",
                  "| row | " + " | ".join(f"n={n}" for n in curve["sizes"]) + " |",
                  "|---" * (len(curve["sizes"]) + 1) + "|"]
        for name, values in curve["psnr"].items():
            lines.append(f"| {name} | " + " | ".join("" if v is None else f"{v:.2f}" for v in values) + " |")
        lines.append("")
    return "\n".join(lines)


def plot_learning_curve(curve: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for name, values in curve["psnr"].items():
        points = [(n, v) for n, v in zip(curve["sizes"], values) if v is not None]
        ax.plot(*zip(*points), marker="o", label=name)
    ax.set_xlabel("training pairs per fold")
    ax.set_ylabel("CV mean PSNR (dB), held-out photos")
    ax.set_xticks(curve["sizes"])
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)


def num_select(select: float, n: int) -> int:
    """Pairs of the selection split out of n training pairs: N itself (N >= 1) or the fraction N of n
    (at least 1 when N > 0)."""
    if select >= 1:
        return int(select)
    return max(1, round(select * n)) if select > 0 else 0


def one_batch_at_most(n: int, cfg) -> list[str]:
    """The override that lets n training pairs fill one batch when they are fewer than
    train.batch_size (the small sizes of a learning curve), else none."""
    return [f"train.batch_size={n}"] if n < cfg.train.batch_size else []


def selection_split(names: list[str], k: int, where: str = "spread") -> tuple[list[str], list[str]]:
    """(trained, selecting) names: k of them select (none: all train and all validate). "spread":
    k names evenly spaced through the sorted list (name i*n/k + n/2k), so the split samples the
    whole pool rather than one end of it (with sorted names, neighbours are often alike: the last
    three FiveK training names of three folds were the same three hardest photos); "last": the last k."""
    if not k:
        return list(names), list(names)
    if where == "last":
        picks = set(range(len(names) - k, len(names)))
    else:
        picks = {int((i + 0.5) * len(names) / k) for i in range(k)}
    return ([n for i, n in enumerate(names) if i not in picks], [n for i, n in enumerate(names) if i in picks])


def parse_args(argv):
    p = argparse.ArgumentParser(description="K-fold cross-validation of the whole pipeline.")
    p.add_argument("--config", default="configs/demo.yaml")
    p.add_argument("--folds", type=int, default=4)
    p.add_argument("--data", default=None, help="pair folder or HF dataset (default: eval.cv_data, else "
                   "data.train and data.val together)")
    p.add_argument("--output_dir", default=None, help="default: {output_root}/{name}/cv")
    p.add_argument("--train_sizes", default="", help="e.g. 4,8,12: training pairs per fold (default: all)")
    p.add_argument("--select", type=float, default=None, help="last N training pairs (N >= 1), or that fraction "
                   "of them (0 < N < 1), become the selection split (default: eval.cv_select)")
    p.add_argument("--unpaired", default=None, help="'transductive' (the held-out inputs) or a folder of "
                   "unedited photos, for distill.unpaired")
    p.add_argument("--refit", default=None, choices=("true", "false"), help="after the selection split picked "
                   "each stage's step count, train it again on every training pair for that many steps "
                   "(default: eval.cv_refit)")
    p.add_argument("overrides", nargs="*", help="section.key=value, for every stage")
    return p.parse_intermixed_args(argv)


def main(argv=None) -> dict:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    try:
        cfg = load_config(args.config, args.overrides)
        sizes = [int(x) for x in args.train_sizes.split(",") if x.strip()] or [None]
        label, pool = open_pool(cfg, args.data or cfg.eval.cv_data)
        folds = cv_folds(list(pool), args.folds)
    except (ConfigError, DataError, ValueError) as exc:
        sys.exit(f"error: {exc}")
    fewest = min(len(train) for train, _ in folds)
    select = cfg.eval.cv_select if args.select is None else args.select
    refit = cfg.eval.cv_refit if args.refit is None else args.refit == "true"
    for n in sizes:
        if n is not None and not 0 < n <= fewest:
            sys.exit(f"error: --train_sizes {n}: the folds have {fewest} training pairs at least ({len(pool)} pairs, "
                     f"{args.folds} folds); choose sizes in 1..{fewest}")
        if not num_select(select, n or fewest) < (n or fewest):
            sys.exit(f"error: --select {select}: {n or fewest} training pairs leave none to train on; choose fewer")
    out = Path(args.output_dir) if args.output_dir else cfg.run_dir("cv")
    unpaired = {None: "none", "transductive": TRANSDUCTIVE}.get(args.unpaired, args.unpaired)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    jobs = [(j, n) for j in range(len(folds)) for n in sizes]
    results: dict[str, list[dict]] = {}

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns) as progress:
        task = progress.add_task("cross-validation", total=len(jobs))
        for j, n in jobs:
            train_names, test_names = folds[j]
            train_names = train_names[:n] if n else train_names
            size = len(train_names)
            fold_dir = out / f"fold-{j}" / f"n-{size:02d}"
            progress.update(task, description=f"cross-validation: fold {j + 1}/{len(folds)}, {size} pairs")
            result_file = fold_dir / "result.json"
            if result_file.is_file():
                progress.console.print(f"fold {j}, {size} pairs: scored already ({result_file})")
            else:
                progress.console.print(f"fold {j}, {size} training pairs, {len(test_names)} held out: {fold_dir}")
                k = num_select(select, size)
                fit, val = selection_split(train_names, k, cfg.eval.cv_select_from)
                data = fold_dir / "data"
                for split, names in (("train", fit), ("val", val), ("test", test_names)):
                    lay_out(data / split, names, pool)
                keep = ["train.keep_best=true", "prior.fit_on=train+val"] if k else []
                keep += one_batch_at_most(len(fit), cfg)
                fixed = [*args.overrides, "data.build_demo=false", f"experiment.output_root={fold_dir}"]
                if args.unpaired:
                    where = data / "test" / "input" if args.unpaired == "transductive" else args.unpaired
                    fixed.append(f"distill.unpaired={where}")
                do_refit = refit and k > 0
                fold_overrides = [*keep, *fixed, f"data.train={data / 'train'}", f"data.val={data / 'val'}",
                                  f"experiment.name={'select' if do_refit else 'run'}"]
                refit_overrides = []
                if do_refit:  # every training pair, the selection ones too; validation (logs only) on those
                    lay_out(data / "all", train_names, pool)
                    refit_overrides = [*fixed, f"data.train={data / 'all'}", f"data.val={data / 'val'}",
                                       "prior.fit_on=train", "experiment.name=run", *one_batch_at_most(size, cfg)]
                try:
                    fold_cfg = load_config(args.config, fold_overrides)
                    refit_cfg = load_config(args.config, refit_overrides) if do_refit else None
                except ConfigError as exc:
                    sys.exit(f"error: {exc}")
                manifests = run_stages(args.config, fold_overrides, fold_cfg, progress.console.print,
                                       refit=(refit_overrides, refit_cfg) if do_refit else None)
                if do_refit:
                    fold_cfg = refit_cfg  # the refitted models are the ones scored
                progress.console.print(f"  scoring {len(test_names)} held-out pairs at output resolution")
                t0 = time.time()
                rows = score_fold(fold_cfg, data / "test", device)
                atomic_write_json(result_file, {
                    "fold": j, "train_pairs": size, "train_names": fit, "val_names": val, "test_names": test_names,
                    "refit": bool(do_refit),
                    "stages": {k: {"train_seconds": m.get("train_seconds"), "wall_seconds": m.get("wall_seconds"),
                                   "selected_step": m.get("selected_step", m.get("metrics", {}).get("selected_step"))}
                               for k, m in manifests.items()},
                    "train_seconds": sum(m.get("train_seconds") or 0.0 for m in manifests.values()),
                    "eval_seconds": time.time() - t0, "rows": rows})
            results.setdefault(str(n or "all"), []).append(json.loads(result_file.read_text()))
            progress.advance(task)

    summary = {"command": "python -m eval.cv " + shlex.join(argv), "config": args.config,
               "data": {"source": label, "num_pairs": len(pool)}, "folds": len(folds), "select": select,
               "refit": refit, "unpaired": unpaired, "results": {k: aggregate(v) for k, v in results.items()}}
    names = list(dict.fromkeys(r["name"] for res in summary["results"].values() for r in res["rows"]))
    psnr_at = {k: {r["name"]: r["psnr"]["mean"] for r in res["rows"]} for k, res in summary["results"].items()}
    summary["learning_curve"] = {"sizes": [n for n in sizes if n], "psnr": {
        name: [psnr_at[str(n)].get(name) for n in sizes if n] for name in names}}
    atomic_write_json(out / "cv.json", summary)
    atomic_write_bytes(out / "cv.md", write_markdown(summary).encode())
    if len(summary["learning_curve"]["sizes"]) > 1:
        plot_learning_curve(summary["learning_curve"], out / "learning_curve.png")
    for name in names:
        last = summary["results"][str(sizes[-1] or "all")]["rows"]
        row = next((r for r in last if r["name"] == name), None)
        if row:
            print(f"{name}: PSNR {row['psnr']['mean']:.2f} ± {row['psnr']['sd']:.2f} dB over {row['num_photos']} "
                  f"held-out photos (worst fold {row['worst_fold']['fold']}: {row['worst_fold']['psnr']:.2f})")
    print(f"cross-validation: {out / 'cv.md'}")
    return summary


if __name__ == "__main__":
    main()
