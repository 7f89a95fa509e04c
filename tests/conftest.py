"""Shared fixtures: a tiny demo data set and tiny model settings, so every stage runs in seconds."""

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
FIVEK = REPO.parent / "shared" / "data" / "fivek-expert-c"


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    from core.demo import build_demo_dataset

    out = tmp_path_factory.mktemp("demo") / "data"
    build_demo_dataset(out, seed=0, long_side=64, variants_per_photo=3, val_variants_per_photo=1)
    return out


def tiny_overrides(data: Path, root: Path) -> list[str]:
    """Overrides that shrink the demo config to seconds on a CPU."""
    return [
        f"data.train={data / 'train'}", f"data.val={data / 'val'}", "data.build_demo=false",
        "data.train_long_side=64", "data.crop_size=32", "data.val_long_side=64",
        f"experiment.output_root={root}",
        "teacher.flow.block_out_channels=[16, 16]", "teacher.flow.norm_num_groups=8",
        "teacher.num_steps=2", "teacher.train_steps=6",
        "student.block_out_channels=[16, 16]", "student.norm_num_groups=8",
        "distill.train_steps=6", "distill.adv_warmup_steps=2", "distill.discriminator.channels=16",
        "train.batch_size=2", "train.checkpointing_steps=3", "train.validation_steps=0",
        "train.lr_warmup_steps=2", "train.report_to=none", "train.log_every=1",
        "eval.teacher_steps=[1, 2]", "eval.resolutions=[\"64\", \"native\", \"photo-128\"]", "eval.batch_sizes=[1, 2]",
        "eval.repeats=1", "eval.warmup=0", "eval.score_resolution=photo-128", "eval.transfer_grid=4",
    ]
