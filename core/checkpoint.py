"""Self-describing model folders: safetensors weights, a JSON config and a JSON manifest.

    save_model_folder(dir, {"model": state_dict}, config={...}, manifest={...})
    tensors, config, manifest = load_model_folder(dir)

Writes are atomic (temporary file, then rename), so a killed process never leaves half a
file under the real name. Nothing a user hands in is unpickled: weights are safetensors,
and `load_torch_file` is `torch.load(..., weights_only=True)` for the rare unavoidable `.pt`.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import shutil
import tempfile
import time
import zipfile
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"
MANIFEST_NAME = "manifest.json"


class CheckpointError(ValueError):
    """A model folder that cannot be read, with the path and the fix."""


@contextlib.contextmanager
def atomic_path(path: str | Path):
    """A temporary file beside `path` to write; renamed onto `path` when the block ends, removed
    if it raises. The one atomic write: bytes, JSON, safetensors and ZIPs all go through it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def atomic_write_zip(path: str | Path, files: list[tuple[Path, str]], extra: dict[str, bytes] | None = None,
                     compress: bool = True) -> Path:
    """A ZIP of `files` ((file, name in the archive)) plus `extra` ({name: bytes}), written
    atomically and readable by all (it is meant to be handed on). compress=False stores the
    files as they are (PNG and JPEG are compressed already)."""
    method = zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED
    with atomic_path(path) as tmp:
        with zipfile.ZipFile(tmp, "w", method) as z:
            for src, name in files:
                z.write(src, arcname=name)
            for name, data in (extra or {}).items():
                z.writestr(name, data)
        os.chmod(tmp, 0o644)  # mkstemp makes it private
    return Path(path)


def atomic_write_json(path: str | Path, obj) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n").encode())


def save_safetensors(tensors: dict[str, torch.Tensor], path: str | Path, metadata: dict | None = None) -> None:
    """Atomic safetensors write; tensors are made contiguous and moved to the CPU."""
    clean = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    with atomic_path(path) as tmp:
        save_file(clean, str(tmp), metadata={k: str(v) for k, v in (metadata or {}).items()})


def load_safetensors(path: str | Path, device: str = "cpu") -> dict[str, torch.Tensor]:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"weights file not found: {path}")
    try:
        return load_file(str(path), device=device)
    except Exception as exc:  # safetensors raises its own error types
        raise CheckpointError(f"cannot read {path}: {exc}. The file is damaged; re-run the stage "
                              "that wrote it.") from exc


def load_torch_file(path: str | Path):
    """Load a `.pt` file without executing pickled code (tensors and plain containers only)."""
    return torch.load(path, map_location="cpu", weights_only=True)


def versions() -> dict:
    import importlib.metadata as md

    out = {"python": platform.python_version()}
    for name in ("torch", "diffusers", "peft", "accelerate", "safetensors"):
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            out[name] = None
    return out


def save_model_folder(directory: str | Path, tensors: dict[str, torch.Tensor], *, config: dict,
                      manifest: dict | None = None, weights_name: str = WEIGHTS_NAME,
                      extra: dict[str, dict[str, torch.Tensor]] | None = None) -> Path:
    """Write weights, config and manifest into `directory`, replacing it whole when complete.
    `extra`: more safetensors files by name (e.g. the colour prior a model was trained over)."""
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=directory.parent, prefix=f".{directory.name}.tmp"))
    try:
        save_safetensors(tensors, tmp / weights_name)
        for name, more in (extra or {}).items():
            save_safetensors(more, tmp / name)
        atomic_write_json(tmp / CONFIG_NAME, config)
        full = {"created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "versions": versions(),
                "weights": weights_name, **(manifest or {})}
        atomic_write_json(tmp / MANIFEST_NAME, full)
        if directory.exists():
            old = directory.with_name(f".{directory.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(directory, old)
            os.replace(tmp, directory)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, directory)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return directory


def read_json(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path} not found: is {path.parent} a model folder written by this "
                              "project (it holds config.json, manifest.json and safetensors)?")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path} is not valid JSON ({exc}); re-run the stage that wrote it") from exc


def load_model_folder(directory: str | Path, weights_name: str | None = None):
    """Return (tensors, config, manifest) of a folder written by `save_model_folder`."""
    directory = Path(directory)
    config = read_json(directory / CONFIG_NAME)
    manifest = read_json(directory / MANIFEST_NAME)
    tensors = load_safetensors(directory / (weights_name or manifest.get("weights", WEIGHTS_NAME)))
    return tensors, config, manifest


def resolve_model_dir(path: str | Path) -> Path:
    """Accept a run folder (holding `model/`) or the model folder itself."""
    path = Path(path)
    if (path / MANIFEST_NAME).is_file():
        return path
    if (path / "model" / MANIFEST_NAME).is_file():
        return path / "model"
    raise CheckpointError(f"no model found at {path}: expected {path}/model/{MANIFEST_NAME} "
                          "(train the stage first, or pass the run folder it wrote)")
