"""One model-folder protocol for every stage's model, and one loader that opens any of them.

    model = load_model("runs/demo/student", device)   # a run folder or its model/; any kind
    out = model(x)              # (B, 3, h, w) in [0, 1] at the working size -> (B, 3, h, w) in [0, 1]
    pipe = model.pipeline()     # a photo of any size -> the edited photo (working copy + transfer)
    z_out = model.predict(z_in) # latent models: the network's inference in the codec's space
    k4 = model.with_steps(4)    # a teacher at another K, same weights

A model folder (written by the class's `save_pretrained(directory, manifest)`):
    config.json     {"kind", "arch"}: what `cls.from_arch(arch)` needs to rebuild the network
    *.safetensors   its trained weights
    manifest.json   {"kind", "class": "teacher.flow:FlowTeacher", "codec": {...} or null,
                     "working_long_side", "size_multiple", "transfer": {"mode", "grid"},
                     then the stage's own figures (step, metrics, train_seconds, ...)}
`core` imports no stage: the loader imports the class the manifest names, as diffusers'
`model_index.json` names a pipeline's classes.

The protocol a model class follows (an nn.Module, usually with `ModelFolder` as a mixin):
    kind: str                      "flow", "hypir", "student", "lut", ...
    space: str                     "latent" (runs between codec.encode and decode) or "image"
    arch: dict                     constructor arguments, JSON-safe
    infer(x, num_steps=None)       inference in its space; num_steps for multi-step models
    function_evals(num_steps=None) network evaluations per image
    full_resolution_pipeline(device)   optional: the model's own path for a photo of any size
                                   (the LUT edits every original pixel; it needs no transfer)
"""

from __future__ import annotations

import dataclasses
import importlib
import time
from pathlib import Path

import torch

from core.checkpoint import (
    MANIFEST_NAME,
    WEIGHTS_NAME,
    CheckpointError,
    load_model_folder,
    read_json,
    resolve_model_dir,
    save_model_folder,
)
from core.nets import fast_group_norms


def serving_manifest(cfg, codec: dict | None) -> dict:
    """How a trained model is run, recorded once in its manifest: the codec (None for image-space
    models), the working size and size multiple, and the full-resolution transfer."""
    return {"codec": codec, "working_long_side": cfg.data.val_long_side, "size_multiple": cfg.data.size_multiple,
            "transfer": {"mode": cfg.eval.transfer, "grid": cfg.eval.transfer_grid}}


def class_path(cls: type) -> str:
    """'package.module:Class', what `import_class` reads back."""
    if cls.__module__ == "__main__":
        raise CheckpointError(f"{cls.__qualname__} is defined in a script (__main__); a model folder must name "
                              "an importable class: define it in a package module")
    return f"{cls.__module__}:{cls.__qualname__}"


def import_class(path: str, folder: Path) -> type:
    module, _, name = path.partition(":")
    try:
        obj = importlib.import_module(module)
        for part in name.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as exc:
        raise CheckpointError(f"{folder / MANIFEST_NAME} names the class {path!r}, which cannot be imported "
                              f"({exc}). Fix: install the project (pip install -e .) or run from the repository "
                              "root; the folder may come from a newer version") from exc
    return obj


class ModelFolder:
    """`save_pretrained` / `from_pretrained` of the protocol, for a class with `kind` and `arch`.

    The weights are `trainable_state_dict()` (the whole state dict unless the class says less,
    e.g. the hypir teacher's LoRA adapters), saved as `weights_name`.
    """

    kind: str
    arch: dict
    weights_name = WEIGHTS_NAME

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        return self.state_dict()

    def load_trainable_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.load_state_dict(state)

    def save_pretrained(self, directory: str | Path, manifest: dict | None = None, prior=None) -> Path:
        """Write the model folder; `manifest` holds `serving_manifest(cfg, codec)` and the stage's figures.
        `prior`: the colour prior (core.prior.ColourPrior) the model learnt the residual over, saved with it."""
        config = {"kind": self.kind, "arch": self.arch}
        full = {"kind": self.kind, "class": class_path(type(self)), **(manifest or {})}
        extra = None
        if prior is not None:
            full["prior"] = prior.describe()
            extra = {prior.weights_name: prior.state_dict()}
        return save_model_folder(directory, self.trainable_state_dict(), config=config, manifest=full,
                                 weights_name=self.weights_name, extra=extra)

    @classmethod
    def from_arch(cls, arch: dict):
        return cls(**arch)

    @classmethod
    def from_pretrained(cls, path: str | Path):
        """The model in eval mode, from a run folder (holding model/) or the model folder."""
        folder = resolve_model_dir(path)
        tensors, config, _ = load_model_folder(folder)
        if config.get("kind") != cls.kind:
            raise CheckpointError(f"{folder} holds a {config.get('kind')!r} model, not a {cls.kind!r} one "
                                  f"({cls.__qualname__}): pass a folder of that kind, or open any model "
                                  "folder with core.models.load_model")
        model = cls.from_arch(config["arch"])
        model.load_trainable_state_dict(tensors)
        return model.eval()


def device_clock(device: torch.device) -> float:
    """time.perf_counter() after the device has finished its queued work (CUDA runs asynchronously)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


@dataclasses.dataclass
class LoadedModel:
    """A model ready to edit working-size images, whatever its kind. `net`: the model class's
    instance; `codec`: the latent space it works in (None for image-space models); `manifest`:
    its manifest.json (kind, class, codec, working_long_side, size_multiple, transfer, figures)."""

    net: torch.nn.Module
    manifest: dict
    codec: torch.nn.Module | None = None
    device: torch.device = torch.device("cpu")
    num_steps: int | None = None  # None: the model's own default K
    latent_fn: object = None  # replaces net.infer on latents (a compiled or exported path)
    prior: torch.nn.Module | None = None  # the colour prior applied before the codec (core.prior)
    timings: dict = dataclasses.field(default_factory=dict)  # ms of the last __call__'s parts
    clamps_output = True  # __call__ returns images in [0, 1] (EditPipeline need not clamp them again)

    def __post_init__(self):
        if torch.device(self.device).type == "cpu":  # the channels_last GroupNorms of the UNets in one C call each
            fast_group_norms(self.net)

    @property
    def kind(self) -> str:
        return self.manifest.get("kind") or self.net.kind

    @property
    def working_long_side(self) -> int:
        return int(self.manifest["working_long_side"])

    @property
    def size_multiple(self) -> int:
        return int(self.manifest["size_multiple"])

    @property
    def transfer(self) -> str:
        return self.manifest["transfer"]["mode"]

    @property
    def transfer_grid(self) -> int:
        return int(self.manifest["transfer"]["grid"])

    @property
    def full_resolution(self) -> bool:
        """True when the model has its own path for a photo of any size (no working copy, no transfer)."""
        return hasattr(self.net, "full_resolution_pipeline")

    def function_evals(self) -> int:
        return self.net.function_evals(self.num_steps)

    def with_steps(self, num_steps: int) -> LoadedModel:
        """The same model (same weights, no copy) sampled with `num_steps` steps."""
        return dataclasses.replace(self, num_steps=num_steps, timings={})

    def with_latent_fn(self, fn) -> LoadedModel:
        """The same model with `fn(z_in) -> z_out` in place of the network (e.g. the student's bf16,
        torch.compile or ONNX Runtime path); the image still goes through this model's codec."""
        return dataclasses.replace(self, latent_fn=fn, timings={})

    def predict(self, z_in: torch.Tensor) -> torch.Tensor:
        """Latents (B, C, h, w) -> the model's latents (B, C, h, w): one call of its inference
        (the teacher's K-step sample, the student's forward pass). For distillation and eval."""
        if self.codec is None:
            raise CheckpointError(f"{self.kind} model works on images, not latents: call it on images")
        if self.latent_fn is not None:
            return self.latent_fn(z_in)
        return self.net.infer(z_in, self.num_steps)

    @torch.no_grad()
    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, h, w) in [0, 1] at the working size -> the edit, (B, 3, h, w) float in [0, 1], on
        `device`. The one place where an image goes into the codec and comes back out."""
        x = x.to(self.device)
        t0 = device_clock(self.device)
        if self.codec is None:
            out = self.net.infer(x, self.num_steps)
            self.timings = {"encode_ms": 0.0, "model_ms": (device_clock(self.device) - t0) * 1e3, "decode_ms": 0.0}
            return out.float().clamp(0, 1)
        z = self.codec.encode(x if self.prior is None else self.prior(x))
        t1 = device_clock(self.device)
        z = self.predict(z)
        t2 = device_clock(self.device)
        out = self.codec.decode(z).float().clamp_(0, 1)  # decode's own fresh tensor: clamped in place
        self.timings = {"encode_ms": (t1 - t0) * 1e3, "model_ms": (t2 - t1) * 1e3,
                        "decode_ms": (device_clock(self.device) - t2) * 1e3}
        return out

    def pipeline(self, long_side: int | None = None, transfer: str | None = None, grid: int | None = None):
        """A photo (H, W, 3) in [0, 1] of any size -> the edited photo, same size: the working copy
        at `long_side`, this model, the full-resolution transfer. Unset arguments come from the
        manifest. A model with its own full-resolution path (the LUT) returns that instead."""
        if self.full_resolution:
            return self.net.full_resolution_pipeline(self.device)
        from core.pipeline import EditPipeline

        return EditPipeline(self, long_side or self.working_long_side, transfer or self.transfer,
                            grid or self.transfer_grid, self.device, self.size_multiple)


def load_model(path: str | Path, device: str | torch.device = "cpu") -> LoadedModel:
    """Open any model folder (a run folder holding model/, or the model folder) on `device`:
    the class its manifest names, in eval mode, with its codec built from the manifest."""
    from core.codecs import build_codec
    from core.config import CodecConfig

    folder = resolve_model_dir(path)
    manifest = read_json(folder / MANIFEST_NAME)
    if "class" not in manifest:
        raise CheckpointError(f"{folder / MANIFEST_NAME} names no model class: the folder was written before "
                              "model folders named their class. Fix: re-run the stage that wrote it")
    cls = import_class(manifest["class"], folder)
    device = torch.device(device)
    net = cls.from_pretrained(folder).to(device)
    codec = manifest.get("codec")
    if cls.space == "latent":
        if not codec:
            raise CheckpointError(f"{folder / MANIFEST_NAME}: a latent model's manifest must name its codec "
                                  "(\"codec\": {\"kind\": ...}); re-run the stage that wrote it")
        codec = build_codec(CodecConfig(**codec)).to(device)
    else:
        codec = None
    prior = load_prior(folder, manifest, device)
    return LoadedModel(net=net, manifest=manifest, codec=codec, device=device, prior=prior)


def load_prior(folder: Path, manifest: dict, device: torch.device):
    """The colour prior saved beside a model (manifest "prior"), or None."""
    entry = manifest.get("prior")
    if not entry:
        return None
    from core.checkpoint import load_safetensors

    cls = import_class(entry["class"], folder)
    return cls.from_tensors(load_safetensors(folder / entry["weights"]), entry).to(device)


def curve_model(prior, device: torch.device) -> LoadedModel:
    """The colour prior as a model of its own: the curve row of every report."""
    manifest = {"kind": prior.kind, "class": class_path(type(prior)), "codec": None, "prior": prior.describe()}
    return LoadedModel(net=prior, manifest=manifest, device=device)
