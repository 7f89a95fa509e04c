"""Config: one typed tree, YAML in, unknown keys named, overrides on the command line."""

import pytest

from core.config import ConfigError, config_from_dict, load_config


def test_demo_config_loads():
    cfg = load_config("configs/demo.yaml")
    assert cfg.codec.kind == "pixel" and cfg.teacher.kind == "flow"
    assert cfg.run_dir("teacher").as_posix() == "runs/demo/teacher"


def test_misspelt_key_is_named_with_a_suggestion(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("teacher:\n  num_stpes: 4\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    msg = str(err.value)
    assert "teacher.num_stpes" in msg and "num_steps" in msg and str(path) in msg


def test_unknown_section_and_wrong_type(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("trainer:\n  batch_size: 4\n")
    with pytest.raises(ConfigError, match="'trainer'.*train"):
        load_config(path)
    with pytest.raises(ConfigError, match="expected an integer"):
        load_config(None, ["train.batch_size=four"])


def test_overrides_are_typed_and_nested():
    cfg = load_config("configs/demo.yaml", ["teacher.num_steps=4", "teacher.flow.block_out_channels=[8, 16]",
                                            "train.mixed_precision=bf16", "distill.lambda_adv=0",
                                            "teacher.learning_rate=1e-4"])
    assert cfg.teacher.learning_rate == 1e-4
    assert cfg.teacher.num_steps == 4
    assert cfg.teacher.flow.block_out_channels == [8, 16]
    assert cfg.train.mixed_precision == "bf16"
    assert cfg.distill.lambda_adv == 0.0 and isinstance(cfg.distill.lambda_adv, float)


def test_choices_are_checked():
    with pytest.raises(ConfigError, match="codec.kind"):
        load_config(None, ["codec.kind=jpeg"])
    with pytest.raises(ConfigError, match="codec.pretrained"):
        load_config(None, ["codec.kind=sd-vae"])


def test_round_trip_through_dict():
    cfg = load_config("configs/demo.yaml", ["teacher.num_steps=3"])
    assert config_from_dict(cfg.to_dict()) == cfg
