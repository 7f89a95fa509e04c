"""Model folders: safetensors + config + manifest, atomic, loadable in one call."""

import json
import pickle

import pytest
import torch

from core.checkpoint import CheckpointError, load_model_folder, load_torch_file, resolve_model_dir, save_model_folder


def test_model_folder_round_trip(tmp_path):
    tensors = {"w": torch.randn(3, 4), "b": torch.arange(5)}
    out = save_model_folder(tmp_path / "run" / "model", tensors, config={"kind": "x", "arch": {"n": 3}},
                            manifest={"step": 7, "metrics": {"psnr": 30.0}, "train_seconds": 1.5})
    loaded, config, manifest = load_model_folder(out)
    assert torch.equal(loaded["w"], tensors["w"]) and torch.equal(loaded["b"], tensors["b"])
    assert config == {"kind": "x", "arch": {"n": 3}}
    assert manifest["step"] == 7 and manifest["versions"]["torch"] and "created" in manifest
    assert resolve_model_dir(tmp_path / "run") == out  # a run folder resolves to its model/
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]  # no temporary leftovers


def test_overwrite_replaces_whole_folder(tmp_path):
    save_model_folder(tmp_path / "m", {"a": torch.zeros(1)}, config={"v": 1})
    save_model_folder(tmp_path / "m", {"a": torch.ones(1)}, config={"v": 2})
    loaded, config, _ = load_model_folder(tmp_path / "m")
    assert config == {"v": 2} and loaded["a"].item() == 1.0


def test_missing_and_damaged_folders_are_explained(tmp_path):
    with pytest.raises(CheckpointError, match="no model found"):
        resolve_model_dir(tmp_path)
    out = save_model_folder(tmp_path / "m", {"a": torch.zeros(2)}, config={})
    (out / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="damaged"):
        load_model_folder(out)
    (out / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        load_model_folder(out)
    assert json.loads((out / "manifest.json").read_text())["weights"] == "model.safetensors"


def test_pt_files_are_never_unpickled(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("executed",))

    torch.save({"x": Evil()}, tmp_path / "evil.pt")
    with pytest.raises(pickle.UnpicklingError):
        load_torch_file(tmp_path / "evil.pt")
    torch.save({"x": torch.ones(2)}, tmp_path / "ok.pt")
    assert torch.equal(load_torch_file(tmp_path / "ok.pt")["x"], torch.ones(2))
