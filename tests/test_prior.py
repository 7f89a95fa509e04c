"""The global colour prior: the closed-form floor every trained model starts from."""

import torch

from core.images import psnr_db
from core.prior import ColourPrior, monomials
from tests.conftest import REPO, tiny_overrides

CONFIG = str(REPO / "configs" / "demo.yaml")


def known_curve(x: torch.Tensor) -> torch.Tensor:
    """A tone and colour edit that is a cubic in R, G, B (so the prior can represent it): lifted
    shadows, a warm shift, a little cross-talk; it stays inside [0, 1] for x in [0, 1]."""
    r, g, b = x
    return torch.stack([0.05 + 0.85 * r + 0.4 * r * (1 - r) * (1 - r) + 0.05 * g * b,
                        0.03 + 0.9 * g + 0.3 * g * (1 - g) - 0.02 * r * b,
                        0.9 * b + 0.1 * b * b * (1 - g)]).clamp(0, 1)


def test_prior_fitted_to_a_known_curve_reproduces_it():
    g = torch.Generator().manual_seed(0)
    pairs = [(x, known_curve(x)) for x in (torch.rand(3, 48, 64, generator=g) for _ in range(3))]
    prior = ColourPrior.fit(pairs)
    test = torch.rand(3, 40, 40, generator=g)
    assert psnr_db(prior(test[None])[0], known_curve(test)) > 40


def exposed(x: torch.Tensor, gain: float) -> torch.Tensor:
    from core.images import linear_to_srgb, srgb_to_linear

    return linear_to_srgb(srgb_to_linear(x) * gain)


def test_exposure_aligned_fit_undoes_the_exposure_spread_of_the_inputs():
    """Three shots of the same scenes a bit under, at and over the mean exposure, one edit: plain least
    squares averages three curves into a flat one; the aligned fit recovers each shot's gain and
    the edit itself (for a photo at the mean exposure), and keeps the plain curve as its reference."""
    import math

    g = torch.Generator().manual_seed(1)
    scenes = [torch.rand(3, 40, 40, generator=g) * 0.6 for _ in range(3)]  # no clipping at +0.5 ln gain
    gains = [math.exp(-0.5), 1.0, math.exp(0.5)]
    pairs = [(exposed(x, k), known_curve(x)) for x, k in zip(scenes, gains)]
    plain = ColourPrior.fit(pairs)
    aligned = ColourPrior.fit(pairs, align="exposure")
    assert [round(math.log(k), 1) for k in aligned.gains] == [0.5, 0.0, -0.5]  # each shot's gain undone
    test = torch.rand(3, 40, 40, generator=g) * 0.6
    p_plain = psnr_db(plain(test[None])[0], known_curve(test))
    p_aligned = psnr_db(aligned(test[None])[0], known_curve(test))
    assert p_aligned > 40 and p_aligned > p_plain + 10, (p_aligned, p_plain)
    assert torch.equal(aligned.reference_curve().coeffs, plain.coeffs) and plain.reference_curve() is plain
    assert aligned.describe()["align"] == "exposure" and len(aligned.describe()["exposure_gains"]) == 3


def test_aligned_prior_round_trips_with_its_reference(tmp_path):
    from core.checkpoint import load_safetensors

    g = torch.Generator().manual_seed(2)
    pairs = [(exposed(x, k), known_curve(x)) for x, k in
             zip((torch.rand(3, 24, 24, generator=g) for _ in range(2)), (0.7, 1.3))]
    prior = ColourPrior.fit(pairs, align="exposure")
    prior.save_pretrained(tmp_path / "p")
    again = ColourPrior.from_pretrained(tmp_path / "p")
    assert again.align == "exposure" and torch.equal(again.coeffs, prior.coeffs)
    assert torch.equal(again.reference, prior.reference)
    tensors = load_safetensors(tmp_path / "p" / ColourPrior.weights_name)
    same = ColourPrior.from_tensors(tensors, prior.describe())
    assert torch.equal(same.reference_curve().coeffs, prior.reference)


def test_unknown_alignment_is_refused():
    import pytest

    with pytest.raises(ValueError, match="prior.align"):
        ColourPrior.fit([(torch.rand(3, 8, 8), torch.rand(3, 8, 8))], align="histogram")


def test_prior_starts_at_identity_and_keeps_its_shape():
    x = torch.rand(2, 3, 8, 9)
    assert torch.allclose(ColourPrior()(x), x, atol=1e-6)
    assert monomials(x).shape == (2, 20, 8, 9)


def test_prior_applies_in_bands_like_whole_and_the_c_pass_like_both(monkeypatch):
    import core.prior as prior_module
    from core import kernels

    prior = ColourPrior.fit([(torch.rand(3, 16, 16), torch.rand(3, 16, 16))])
    x = torch.rand(2, 3, 37, 23) * 1.2 - 0.1  # a little outside [0, 1]: the clamp too
    fast = prior(x)  # on the CPU: core.kernels.prior_planes when it is built
    xg = x.clone().requires_grad_()
    prior(xg).sum().backward()  # with autograd on an input: the matrix products, differentiable
    assert xg.grad is not None and xg.grad.abs().sum() > 0
    monkeypatch.setattr(kernels, "available", lambda: False)  # the matrix products
    whole = prior(x)
    monkeypatch.setattr(prior_module, "BAND_PIXELS", 50)  # two rows a band
    assert torch.allclose(prior(x), whole, atol=1e-6)
    assert torch.allclose(fast, whole, atol=1e-5) and fast.shape == whole.shape


def test_untrained_teacher_and_student_return_the_prior_exactly():
    """Zero-initialised outputs: at step 0 every network's edit is the curve's (pixel codec: lossless)."""
    from core.codecs import PixelCodec
    from core.models import LoadedModel
    from student import Student
    from teacher.flow import FlowTeacher

    prior = ColourPrior.fit([(x, known_curve(x)) for x in [torch.rand(3, 32, 32)]])
    codec = PixelCodec(8)
    x = torch.rand(1, 3, 32, 32)
    for net in (FlowTeacher(codec.channels, [16, 16], 1, 8, num_steps=2),
                Student(codec.channels, "slim", [16, 16], 1, 8)):
        out = LoadedModel(net.eval(), {}, codec, prior=prior)(x)
        assert torch.allclose(out, prior(x), atol=1e-5), net.kind


def test_training_starts_at_the_curve_and_keeps_the_best(tiny_data, tmp_path):
    """Step 0 validation equals the prior row (the exposure-aligned curve the networks start from);
    with keep_best a run that only gets worse (a huge learning rate) keeps step 0, so the saved
    teacher is the prior itself. The report also carries the plain least-squares curve."""
    from core.models import curve_model, load_model
    from eval.rows import load_models
    from teacher.train import main as train_teacher

    over = tiny_overrides(tiny_data, tmp_path)
    metrics = train_teacher(["--config", CONFIG, *over, "train.keep_best=true", "train.validation_steps=2",
                             "train.ema_decay=0", "teacher.learning_rate=3.0", "train.lr_warmup_steps=0"])
    assert metrics["selected_step"] == 0
    teacher = load_model(tmp_path / "demo" / "teacher")
    assert teacher.prior is not None and teacher.manifest["prior"]["kind"] == "curve"
    curve = curve_model(teacher.prior, torch.device("cpu"))
    from core.config import load_config
    from core.data import PairSource
    from core.latents import load_val_set

    cfg = load_config(CONFIG, over)
    val = load_val_set(PairSource.open(cfg.data.val), cfg.data.val_long_side, cfg.data.size_multiple, limit=8)
    curve_psnr = sum(psnr_db(curve(x[None])[0], y) for _, x, y in val) / len(val)
    assert abs(metrics["psnr"] - curve_psnr) < 1e-3
    rows, _ = load_models(cfg, "cpu")
    assert [r["name"] for r in rows][:3] == ["identity", "curve", "prior"]
    x = val[0][1][None]
    assert torch.equal(rows[2]["make_pipe"](None).prior(x), curve(x))  # the prior row is the teacher's floor
    assert torch.equal(rows[1]["make_pipe"](None).prior(x), ColourPrior(teacher.prior.reference)(x))


def test_keep_best_min_delta_keeps_the_prior_unless_a_checkpoint_beats_it_by_the_margin(tiny_data, tmp_path):
    """A run whose validation improves keeps a later step with min_delta 0, and step 0 (the curve)
    when the margin is more than the run gained."""
    from teacher.train import main as train_teacher

    common = ["train.keep_best=true", "train.validation_steps=2", "train.ema_decay=0", "train.lr_warmup_steps=0",
              "teacher.learning_rate=2e-3", "teacher.train_steps=8", "prior.kind=none"]  # from identity: room to gain
    plain = train_teacher(["--config", CONFIG, *tiny_overrides(tiny_data, tmp_path / "a"), *common])
    assert plain["selected_step"] > 0
    strict = train_teacher(["--config", CONFIG, *tiny_overrides(tiny_data, tmp_path / "b"), *common,
                            "train.keep_best_min_delta=100"])
    assert strict["selected_step"] == 0


def test_the_students_own_margin_applies_to_the_student_only(tiny_data, tmp_path):
    """distill.keep_best_min_delta is the student's margin and wins over train.keep_best_min_delta: the
    teacher (train's margin 0) keeps a later step; a student with its own margin 0 under train's 100
    keeps a later step too; with its own margin 100 it keeps its start (step 0: the teacher's network
    at one step); the student's saved config records the margin used."""
    from core.config import load_config
    from distill.run import main as distill
    from teacher.train import main as train_teacher

    over = [*tiny_overrides(tiny_data, tmp_path), "train.keep_best=true", "train.validation_steps=2",
            "train.ema_decay=0", "train.lr_warmup_steps=0", "teacher.learning_rate=2e-3", "teacher.train_steps=8",
            "prior.kind=none", "student.init=teacher", "distill.train_steps=8", "distill.learning_rate=2e-3"]
    assert train_teacher(["--config", CONFIG, *over])["selected_step"] > 0
    moved = distill(["--config", CONFIG, *over, "distill.output_name=a", "train.keep_best_min_delta=100",
                     "distill.keep_best_min_delta=0"])  # the student's 0 wins over the train section's 100
    assert moved["selected_step"] > 0
    kept = distill(["--config", CONFIG, *over, "distill.output_name=b", "distill.keep_best_min_delta=100"])
    assert kept["selected_step"] == 0
    saved = load_config(tmp_path / "demo" / "b" / "config.yaml")
    assert saved.train.keep_best_min_delta == 100 and saved.distill.keep_best_min_delta == 100


def test_selection_warns_when_the_choice_is_below_identity_or_the_curve():
    from core.config import EvalConfig
    from eval.score import score_rows

    def row(name, kind, psnr, ms):
        return {"name": name, "kind": kind, "quality": {"mean": {"psnr": psnr}},
                "throughput": {"photo-1024": {"p50_ms": ms}}}

    rows = [row("identity", "baseline", 20.0, 1.0), row("curve", "baseline", 22.0, 500.0),
            row("student", "student", 19.0, 5.0)]
    sel = score_rows(rows, EvalConfig())
    assert sel["chosen"] == "student"
    text = " ".join(sel["warnings"])
    assert "The chosen model 'student' is below the unedited input" in text and "colour curve" in text
    good = score_rows([row("identity", "baseline", 20.0, 1.0), row("curve", "baseline", 22.0, 5.0),
                       row("student", "student", 25.0, 5.0)], EvalConfig())
    assert good["chosen"] == "student" and good["warnings"] == []


def test_augmented_variants_keep_the_target(tiny_data, tmp_path):
    from core.codecs import PixelCodec
    from core.data import PairSource
    from core.latents import LatentPairDataset

    src = PairSource.open(tiny_data / "train")
    kw = dict(long_side=64, crop_size=0, flip=True, seed=0, cache_dir=tmp_path, multiple=32, show_progress=False)
    plain = LatentPairDataset(src, PixelCodec(8), **kw)
    aug = LatentPairDataset(src, PixelCodec(8), variants=2, **kw)
    item = aug.items[0]
    assert {"z_in_v1", "z_in_v2_flip"} <= set(item)
    assert torch.equal(item["z_target"], plain.items[0]["z_target"])
    assert not torch.equal(item["z_in_v1"], item["z_in"])
    again = LatentPairDataset(src, PixelCodec(8), variants=2, **{**kw, "cache_dir": None})
    assert torch.equal(again.items[0]["z_in_v2"], item["z_in_v2"])  # seeded: the cache is not needed
    drawn = set()
    for epoch in range(12):
        aug.set_epoch(epoch)
        drawn.add(tuple(aug[0]["z_in"].flatten()[:4].tolist()))
    assert len(drawn) > 2  # the variants (and flips) are drawn across epochs


def test_unpaired_distillation_runs_end_to_end(tiny_data, tmp_path):
    from core.models import load_model
    from distill.run import main as distill
    from teacher.train import main as train_teacher

    over = tiny_overrides(tiny_data, tmp_path)
    train_teacher(["--config", CONFIG, *over])
    unpaired = tiny_data / "val" / "input"
    metrics = distill(["--config", CONFIG, *over, f"distill.unpaired={unpaired}"])
    student = load_model(tmp_path / "demo" / "student")
    assert metrics["psnr"] > 0 and student.manifest["unpaired"] == str(unpaired)
    n_paired = len(list((tiny_data / "train" / "input").iterdir()))
    assert student.manifest["train_pairs"] == n_paired + len(list(unpaired.iterdir()))
    assert student.prior is not None  # the student works over the teacher's prior


def test_step_zero_model_reproduces_the_curve_at_full_resolution(monkeypatch):
    """The full-size path applies the prior's tone curves to every pixel and carries the rest (the
    cubic's cross-channel part and the network's residual) through the grid: an untrained model's
    photo is the curve row's within a few levels, ten times closer (in squared error) than the grid
    alone gets; uint8 (C kernel, 16-bit or float, and PyTorch bands) within one level of float."""
    import numpy as np

    from core import kernels
    from core.codecs import PixelCodec
    from core.models import LoadedModel
    from core.pipeline import EditPipeline
    from student import Student

    g = torch.Generator().manual_seed(1)
    prior = ColourPrior.fit([(x, known_curve(x)) for x in [torch.rand(3, 32, 32, generator=g)]])
    model = LoadedModel(Student(PixelCodec(8).channels, "slim", [16, 16], 1, 8).eval(), {}, PixelCodec(8),
                        prior=prior)
    pipe = EditPipeline(model, long_side=32, transfer="grid", grid=4, multiple=16)
    # a smooth photo with fine texture: at 96x128 the working copy (32x24 -> 32x32 multiple) loses detail
    yy, xx = torch.meshgrid(torch.linspace(0, 1, 96), torch.linspace(0, 1, 128), indexing="ij")
    photo = torch.stack([xx, yy, (xx * yy) ** 0.5]) * 0.8 + 0.2 * torch.rand(3, 96, 128, generator=g)
    curve = prior(photo[None])[0].permute(1, 2, 0).numpy()
    rgb = photo.permute(1, 2, 0).numpy().astype(np.float32)
    out = pipe(rgb)
    assert np.abs(out - curve).max() < 4 / 255  # measured 2.8 levels at most, 58.6 dB
    without = EditPipeline(model, long_side=32, transfer="grid", grid=4, multiple=16)
    without.pre = None  # no curves first: the grid alone approximates the cubic, for contrast
    assert ((without(rgb) - curve) ** 2).mean() > 5 * ((out - curve) ** 2).mean()  # measured 48.8 dB
    u8 = (photo * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    ref = np.round(pipe(u8.astype(np.float32) / 255) * 255)
    paths = [pipe(u8)]
    if kernels.available():
        monkeypatch.setattr(kernels, "fixed_point_ok", lambda grid: False)
        paths.append(pipe(u8))
    monkeypatch.setenv("ESTATE_EDIT_KERNELS", "0")
    assert not kernels.available()
    paths.append(pipe(u8))
    for got in paths:
        assert np.abs(got.astype(np.float32) - ref).max() <= 1


def test_curve_pipeline_on_uint8_matches_its_float_path():
    import numpy as np

    g = torch.Generator().manual_seed(3)
    prior = ColourPrior.fit([(x, known_curve(x)) for x in [torch.rand(3, 32, 32, generator=g)]])
    pipe = prior.full_resolution_pipeline()
    u8 = (torch.rand(45, 61, 3, generator=g) * 255).round().to(torch.uint8).numpy()
    ref = np.round(pipe(u8.astype(np.float32) / 255) * 255)
    out = pipe(u8)
    assert out.dtype == np.uint8 and out.shape == u8.shape
    assert np.abs(out.astype(np.float32) - ref).max() <= 1
    assert np.abs(out.astype(np.float32) - u8).max() > 5  # the curve is applied, not the identity


def test_prior_cv_scores_both_fits_over_several_fold_orders(tiny_data, tmp_path, capsys):
    """eval.prior_cv: eval.cv's folds first (its held-out names exactly), then random orders; every
    photo scored once per order; the table names both fits."""
    import json

    from eval.cv import cv_folds
    from eval.prior_cv import main, orders_of

    names = [f"p{i:02d}" for i in range(10)]
    orders = orders_of(names, 3, 2, seed=0)
    assert orders[0] == cv_folds(names, 3) and len(orders) == 3
    for folds in orders:
        held = [n for _, test in folds for n in test]
        assert sorted(held) == names and all(not set(tr) & set(te) for tr, te in folds)
    assert orders[1] != orders[0] and orders_of(names, 3, 2, seed=0) == orders

    out = tmp_path / "p.json"
    result = main(["--config", CONFIG, "--folds", "2", "--orders", "1", "--json", str(out),
                   *tiny_overrides(tiny_data, tmp_path)])
    assert set(result["rows"]) == {"none", "exposure"} and json.loads(out.read_text())["orders"] == 2
    for row in result["rows"].values():
        assert len(row["per_order"]) == 2 and all(10 < v < 60 for v in row["per_order"])
    printed = capsys.readouterr().out
    assert "| none |" in printed and "| exposure |" in printed


def test_tone_curves_are_the_prior_on_the_grey_axis():
    """ToneCurves: each channel through the cubic's restriction to grey (v, v, v); on grey pixels it is
    the prior itself, elsewhere each channel depends on its own value only; the kernel's level-scaled
    coefficients describe the same curves."""
    g = torch.Generator().manual_seed(8)
    prior = ColourPrior.fit([(x, known_curve(x)) for x in [torch.rand(3, 32, 32, generator=g)]])
    curves = prior.tone_curves()
    grey = torch.linspace(0, 1, 50).view(1, 1, 1, 50).expand(1, 3, 1, 50)
    assert torch.allclose(curves(grey), prior(grey), atol=1e-5)
    x = torch.rand(1, 3, 8, 8, generator=g)
    moved = x.clone()
    moved[:, 1:] = torch.rand(1, 2, 8, 8, generator=g)  # other channels change, red's curve does not
    assert torch.allclose(curves(x)[:, 0], curves(moved)[:, 0])
    assert not torch.allclose(prior(x)[:, 0], prior(moved)[:, 0])  # the cubic mixes channels
    k = curves.kernel_args()["curves"].double()
    v = torch.arange(256, dtype=torch.float64)[:, None]
    on_levels = (k[0] + k[1] * v + k[2] * v ** 2 + k[3] * v ** 3).clamp(0, 255)
    grey_levels = torch.arange(256.0).view(1, 1, 1, 256).expand(1, 3, 1, 256) / 255
    assert torch.allclose(on_levels.T.float(), curves(grey_levels)[0, :, 0] * 255, atol=1e-3)
    # the C pass (no autograd, on the CPU) is the PyTorch formula
    with torch.no_grad():
        fast = curves(x)
    x.requires_grad_()
    assert torch.allclose(fast, curves(x).detach(), atol=1e-6) and not torch.equal(fast, x.detach())
