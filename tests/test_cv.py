"""Cross-validation (eval/cv.py): the folds, and the whole pipeline per fold on tiny settings."""

import json

import pytest

from eval.cv import cv_folds, selection_split
from tests.conftest import REPO, tiny_overrides

CONFIG = str(REPO / "configs" / "demo.yaml")
# tinier still: 4 trainings of each stage run here
FASTER = ["teacher.train_steps=2", "distill.train_steps=2", "distill.lambda_adv=0", "train.batch_size=1",
          "teacher.flow.block_out_channels=[8, 8]", "student.block_out_channels=[8, 8]", "data.val_long_side=32",
          "teacher.num_steps=1", "eval.teacher_steps=[1]"]


def test_cv_folds_are_deterministic_disjoint_and_cover_every_photo():
    names = [f"p{i:02d}" for i in range(10)]
    folds = cv_folds(list(reversed(names)), 3)  # the order given does not matter: names are sorted
    assert folds == cv_folds(names, 3)
    held_out = [name for _, test in folds for name in test]
    assert sorted(held_out) == names and len(held_out) == len(set(held_out))  # each held out exactly once
    assert [len(test) for _, test in folds] == [3, 3, 4]
    for train, test in folds:
        assert not set(train) & set(test) and sorted(train + test) == names
    assert folds[0][1] == ["p00", "p01", "p02"]  # contiguous chunks of the sorted names
    with pytest.raises(ValueError, match="--folds 11"):
        cv_folds(names, 11)


def test_the_selection_split_is_spread_through_the_sorted_names_and_disjoint():
    names = [f"p{i:02d}" for i in range(12)]
    fit, val = selection_split(names, 3)
    assert val == ["p02", "p06", "p10"]  # one from each third, not the three last (alike) names
    assert sorted(fit + val) == names and not set(fit) & set(val) and len(fit) == 9
    assert selection_split(names, 3, "last")[1] == ["p09", "p10", "p11"]
    assert selection_split(names, 0) == (names, names)  # no split: train on all, validate on all
    assert selection_split(names[:4], 1) == (["p00", "p01", "p03"], ["p02"])


@pytest.mark.slow  # 12 tiny trainings: about 30 s alone on 2 cores, more on a loaded machine
def test_cv_end_to_end_with_a_learning_curve_and_resume(tiny_data, tmp_path, monkeypatch):
    import eval.cv as cv

    pool = tmp_path / "pool"  # 8 of the tiny demo's pairs: 2 folds of 4 train / 4 held out
    for side in ("input", "target"):
        (pool / side).mkdir(parents=True)
        for f in sorted((tiny_data / "train" / side).iterdir())[:8]:
            (pool / side / f.name).symlink_to(f)
    out = tmp_path / "cv"
    argv = ["--config", CONFIG, "--folds", "2", "--data", str(pool), "--output_dir", str(out),
            "--train_sizes", "2,4", "--select", "1", *tiny_overrides(tiny_data, tmp_path / "ignored"),
            "lut.size=9", "lut.cnn_size=32", "lut.train_steps=2", "eval.students=[student]", *FASTER]
    summary = cv.main(argv)

    report = json.loads((out / "cv.json").read_text())
    assert report["data"]["num_pairs"] == 8 and report["unpaired"] == "none"
    held_out = sorted(f.stem for f in (pool / "input").iterdir())
    for size in ("2", "4"):
        rows = {r["name"]: r for r in report["results"][size]["rows"]}
        assert {"identity", "teacher K=1", "student", "3D LUT"} <= set(rows)
        for row in rows.values():  # one value per held-out photo, each photo once
            assert sorted(p["name"] for p in row["per_image"]) == held_out
            assert len(row["fold_psnr"]) == 2 and row["psnr"]["mean"] > 0
        assert rows["teacher K=1"]["train_seconds"] > 0
    assert report["learning_curve"]["sizes"] == [2, 4]
    assert (out / "learning_curve.png").stat().st_size > 1000
    assert "Learning curve" in (out / "cv.md").read_text() and "| identity |" in (out / "cv.md").read_text()
    manifest = out / "fold-1" / "n-04" / "run" / "teacher" / "model" / "manifest.json"
    assert json.loads(manifest.read_text())["train_pairs"] == 3  # --select 1: the 4th pair validates, untrained
    fold = json.loads((out / "fold-1" / "n-04" / "result.json").read_text())
    assert len(fold["val_names"]) == 1 and fold["val_names"][0] not in fold["train_names"]

    # a rerun trains nothing: a scored fold is kept, an unscored one is rescored from its saved models
    (out / "fold-0" / "n-02" / "result.json").unlink()

    def no_training(argv):
        raise AssertionError(f"retrained on resume: {argv}")

    for module in ("teacher.train", "distill.run", "lut.train"):
        monkeypatch.setattr(f"{module}.main", no_training)
    again = cv.main(argv)
    assert (out / "fold-0" / "n-02" / "result.json").is_file()
    assert again["results"]["4"] == summary["results"]["4"]
    psnr = lambda s: [r["psnr"]["mean"] for r in s["results"]["2"]["rows"]]  # noqa: E731
    assert psnr(again) == pytest.approx(psnr(summary), abs=1e-6)


def test_only_the_evaluated_stages_are_trained():
    """eval.students=[] eval.baselines=[]: the teacher alone (quick ablations); by default all three."""
    from core.config import load_config
    from eval.cv import stages_to_train

    modules = lambda over: [m for _, _, m in stages_to_train(load_config(CONFIG, over))]  # noqa: E731
    assert modules(["eval.students=[]", "eval.baselines=[]"]) == ["teacher.train"]
    assert modules(["eval.students=[student]"]) == ["teacher.train", "distill.run", "lut.train"]


def test_refit_trains_again_on_every_training_pair_for_the_selected_steps(tiny_data, tmp_path):
    """--refit true: the selection pass (3 pairs trained, 1 selecting) chooses the step count; the
    scored model is trained again from the start on all 4 training pairs for exactly that many steps."""
    import eval.cv as cv

    pool = tmp_path / "pool"
    for side in ("input", "target"):
        (pool / side).mkdir(parents=True)
        for f in sorted((tiny_data / "train" / side).iterdir())[:8]:
            (pool / side / f.name).symlink_to(f)
    out = tmp_path / "cv"
    cv.main(["--config", CONFIG, "--folds", "2", "--data", str(pool), "--output_dir", str(out), "--select", "1",
             "--refit", "true", *tiny_overrides(tiny_data, tmp_path / "ignored"), *FASTER,
             "teacher.train_steps=3", "train.validation_steps=1", "eval.students=[]", "eval.baselines=[]"])
    assert json.loads((out / "cv.json").read_text())["refit"] is True
    for fold in (0, 1):
        result = json.loads((out / f"fold-{fold}" / "n-04" / "result.json").read_text())
        assert result["refit"] is True
        step = result["stages"]["teacher"]["selected_step"]
        select = json.loads((out / f"fold-{fold}" / "n-04" / "select" / "teacher" / "model" / "manifest.json")
                            .read_text())
        refit = json.loads((out / f"fold-{fold}" / "n-04" / "run" / "teacher" / "model" / "manifest.json")
                           .read_text())
        assert select["train_pairs"] == 3 and select["metrics"]["selected_step"] == step
        assert refit["train_pairs"] == 4 and refit["step"] == step  # all four, for the kept number of steps
        assert sorted(p.stem for p in (out / f"fold-{fold}" / "n-04" / "data" / "all" / "input").iterdir()) == \
            sorted(result["train_names"] + result["val_names"])
