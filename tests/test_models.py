"""The model-folder protocol (core/models.py): one loader for every kind, settings from the manifest."""

import json

import numpy as np
import pytest
import torch

from core.checkpoint import CheckpointError
from core.models import LoadedModel, load_model
from lut import AdaptiveLUT
from student import Student
from teacher.flow import FlowTeacher

PIXEL = {"kind": "pixel", "factor": 2}
SERVING = {"working_long_side": 32, "size_multiple": 8, "transfer": {"mode": "grid", "grid": 4}}


def tiny_student() -> Student:
    torch.manual_seed(0)
    student = Student(12, "slim", (8, 8), 1, 4)
    with torch.no_grad():  # a student that edits (a fresh one is the identity)
        student.net.conv_out.weight.normal_(0, 0.1)
    return student


def test_every_kind_saves_its_class_and_loads_through_one_loader(tmp_path):
    models = {"flow": FlowTeacher(12, (8, 8), 1, 4, num_steps=3), "student": tiny_student(),
              "lut": AdaptiveLUT(num_basis=2, size=5, cnn_size=32)}
    for kind, net in models.items():
        codec = None if kind == "lut" else PIXEL
        net.save_pretrained(tmp_path / kind, manifest={"codec": codec, **SERVING, "step": 1})
        manifest = json.loads((tmp_path / kind / "manifest.json").read_text())
        assert manifest["kind"] == kind and manifest["class"] == f"{type(net).__module__}:{type(net).__name__}"
        loaded = load_model(tmp_path / kind)
        assert type(loaded.net) is type(net) and not loaded.net.training
        assert (loaded.codec is None) == (kind == "lut") and loaded.full_resolution == (kind == "lut")
        x = torch.rand(2, 3, 16, 24)
        out = loaded(x)  # the same call for every kind: working-size images in and out
        assert out.shape == x.shape and out.min() >= 0 and out.max() <= 1
        assert set(loaded.timings) == {"encode_ms", "model_ms", "decode_ms"}


def test_the_image_call_is_encode_predict_decode(tmp_path):
    tiny_student().save_pretrained(tmp_path / "s", manifest={"codec": PIXEL, **SERVING})
    model = load_model(tmp_path / "s")
    x = torch.rand(1, 3, 16, 16)
    z = model.codec.encode(x)
    with torch.no_grad():
        expected = model.codec.decode(model.predict(z)).clamp(0, 1)
    assert torch.equal(model(x), expected) and (expected - x).abs().max() > 1e-3


def test_with_steps_is_the_same_weights_at_another_k(tmp_path):
    torch.manual_seed(0)
    FlowTeacher(12, (8, 8), 1, 4, num_steps=4).save_pretrained(tmp_path / "t", manifest={"codec": PIXEL, **SERVING})
    teacher = load_model(tmp_path / "t")
    k1 = teacher.with_steps(1)
    assert k1.net is teacher.net and k1.function_evals() == 1 and teacher.function_evals() == 4
    z = torch.randn(1, 12, 8, 8)
    assert torch.equal(k1.predict(z), teacher.net.sample(z, num_steps=1))


def test_pipeline_settings_come_from_the_manifest(tmp_path):
    tiny_student().save_pretrained(tmp_path / "s", manifest={"codec": PIXEL, **SERVING})
    model = load_model(tmp_path / "s")
    pipe = model.pipeline()
    assert (pipe.long_side, pipe.multiple, pipe.transfer, pipe.grid) == (32, 8, "grid", 4)
    rgb = np.random.default_rng(0).random((50, 70, 3), dtype=np.float32)
    assert pipe(rgb).shape == (50, 70, 3) and pipe.working_copy(rgb).shape == (16, 32, 3)
    assert pipe.timings["model_ms"] > 0
    other = model.pipeline(64, "none", 8)  # explicit arguments win
    assert (other.long_side, other.transfer, other.grid) == (64, "none", 8)


def test_a_latent_fn_replaces_the_network_not_the_codec(tmp_path):
    tiny_student().save_pretrained(tmp_path / "s", manifest={"codec": PIXEL, **SERVING})
    model = load_model(tmp_path / "s").with_latent_fn(lambda z: z)  # e.g. a compiled path; identity here
    x = torch.rand(1, 3, 16, 16)
    assert torch.allclose(model(x), x, atol=1e-6)


def test_folders_the_loader_cannot_open_say_why(tmp_path):
    from core.checkpoint import save_model_folder

    save_model_folder(tmp_path / "old", {"w": torch.zeros(1)}, config={"kind": "student", "arch": {}}, manifest={})
    with pytest.raises(CheckpointError, match="names no model class.*re-run the stage"):
        load_model(tmp_path / "old")
    save_model_folder(tmp_path / "gone", {"w": torch.zeros(1)}, config={"kind": "x", "arch": {}},
                      manifest={"class": "nowhere.module:Model"})
    with pytest.raises(CheckpointError, match="nowhere.module:Model.*pip install -e"):
        load_model(tmp_path / "gone")
    tiny_student().save_pretrained(tmp_path / "s", manifest={**SERVING})  # no codec recorded
    with pytest.raises(CheckpointError, match="must name its codec"):
        load_model(tmp_path / "s")


def test_a_model_in_memory_runs_the_same_call(tmp_path):
    """What the training stages validate with: no folder, the same image-level call."""
    from core.codecs import build_codec
    from core.config import CodecConfig

    student = tiny_student()
    model = LoadedModel(student, {}, build_codec(CodecConfig(**PIXEL)))
    student.save_pretrained(tmp_path / "s", manifest={"codec": PIXEL, **SERVING})
    x = torch.rand(1, 3, 16, 16)
    assert torch.equal(model(x), load_model(tmp_path / "s")(x))
