"""K-fold cross-validation of the closed-form colour priors alone, over several fold orders, in seconds.

    python -m eval.prior_cv --config configs/fivek_sample.yaml --folds 4 --orders 8
    python -m eval.prior_cv --config configs/fivek_sample.yaml --data path/to/pairs --json prior_cv.json

No network is trained: for each way of fitting the curve (prior.align: none, plain ridge least
squares; exposure, the inputs' exposures aligned first; core/prior.py) and each fold order, the
curve is fitted on the training folds (all their pairs, as eval.cv fits it) at data.train_long_side
and scored on the held-out pairs at data.val_long_side (mean PSNR over every held-out photo). The
first order is eval.cv's (sorted names, contiguous chunks); the others are seeded random
permutations, so that a difference that holds on one split only shows up as the noise it is.
It answers "how much does the alignment buy on my pairs?" before any training.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np
import torch

from core.checkpoint import atomic_write_json
from core.config import ConfigError, load_config
from core.images import psnr_db
from core.latents import load_pair_tensors
from eval.cv import cv_folds, open_pool

ALIGNS = ("none", "exposure")


def fold_psnr(pairs: dict[str, tuple], train: list[str], test: list[str], align: str, ridge: float) -> dict:
    """{test name: PSNR of the curve fitted on `train`} (pairs: name -> (fit pair, eval pair))."""
    from core.prior import ColourPrior

    prior = ColourPrior.fit([pairs[n][0] for n in train], ridge=ridge, align=align)
    return {n: psnr_db(prior(pairs[n][1][0][None])[0], pairs[n][1][1]) for n in test}


def orders_of(names: list[str], k: int, extra: int, seed: int) -> list[list[tuple[list[str], list[str]]]]:
    """eval.cv's folds, then `extra` folds of seeded random permutations of the names."""
    names = sorted(names)
    rng = np.random.default_rng(seed)
    return [cv_folds(names, k)] + [cv_folds([names[i] for i in rng.permutation(len(names))], k, sort=False)
                                    for _ in range(extra)]


def run(cfg, data: str, k: int, extra: int, seed: int = 0) -> dict:
    label, pool = open_pool(cfg, data)
    d = cfg.data
    pairs = {}
    for name, (source, i) in pool.items():
        fit = load_pair_tensors(source, i, d.train_long_side, d.size_multiple)
        pairs[name] = (fit, fit if d.val_long_side == d.train_long_side
                       else load_pair_tensors(source, i, d.val_long_side, d.size_multiple))
    orders = orders_of(list(pairs), k, extra, seed)
    result = {"data": label, "folds": k, "orders": len(orders), "seed": seed, "rows": {}}
    for align in ALIGNS:
        means, per_fold = [], []
        for o, folds in enumerate(orders):
            scores = {}
            fold_means = []
            for train, test in folds:
                got = fold_psnr(pairs, train, test, align, cfg.prior.ridge)
                scores.update(got)
                fold_means.append(float(np.mean(list(got.values()))))
            means.append(float(np.mean(list(scores.values()))))
            per_fold.append(fold_means)
            print(f"prior.align={align}: order {o + 1}/{len(orders)} mean PSNR {means[-1]:.2f} dB", flush=True)
        result["rows"][align] = {"eval_cv_order": means[0], "eval_cv_folds": per_fold[0],
                                 "per_order": means, "all_folds": per_fold}
    return result


def table(result: dict) -> str:
    rows = result["rows"]
    base = np.array(rows["none"]["per_order"])
    lines = [f"{result['folds']}-fold CV of the colour prior on {result['data']}: the first fold order is "
             f"eval.cv's, then {result['orders'] - 1} seeded random orders. Mean PSNR dB over every held-out photo.",
             "", "| prior.align | eval.cv's order | its folds | other orders (mean ± sd, min) | "
             "vs none, orders better | folds above none |", "|---|---:|---|---|---|---:|"]
    for align, r in rows.items():
        other = np.array(r["per_order"][1:])
        spread = f"{other.mean():.2f} ± {other.std():.2f}, {other.min():.2f}" if len(other) else ""
        diff = np.array(r["per_order"]) - base
        above = sum(a > b for fa, fb in zip(r["all_folds"], rows["none"]["all_folds"]) for a, b in zip(fa, fb))
        total = sum(len(f) for f in r["all_folds"])
        lines.append(f"| {align} | {r['eval_cv_order']:.2f} | {' / '.join(f'{v:.2f}' for v in r['eval_cv_folds'])} "
                     f"| {spread} | {diff.mean():+.2f} dB, {int((diff > 0).sum())}/{len(diff)} | "
                     f"{above}/{total} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", required=True)
    ap.add_argument("--folds", type=int, default=4)
    ap.add_argument("--orders", type=int, default=8, help="random fold orders besides eval.cv's")
    ap.add_argument("--data", default=None, help="a paired folder or HF dataset (default: eval.cv_data, else "
                                                 "data.train and data.val)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default=None, help="also write the figures here")
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args(argv)
    try:
        cfg = load_config(args.config, args.overrides)
    except ConfigError as exc:
        sys.exit(f"error: {exc}")
    with torch.no_grad():  # not set_grad_enabled(False): main runs inside other processes' tests too
        result = run(cfg, args.data or cfg.eval.cv_data, args.folds, args.orders, args.seed)
    print(table(result))
    if args.json:
        atomic_write_json(args.json, result)
    return result


if __name__ == "__main__":
    main()
