"""One typed configuration tree for every stage, read from one YAML per experiment.

    cfg = load_config("configs/demo.yaml", ["teacher.num_steps=4", "train.mixed_precision=bf16"])

Every default lives here, once. An unknown or misspelt key is an error that names the key,
the file and the nearest valid key. Overrides on the command line are `section.key=value`
(values parsed as YAML, so `4`, `1e-4`, `true`, `[64, 128]` all work).
"""

from __future__ import annotations

import dataclasses
import difflib
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml


class ConfigError(ValueError):
    """A configuration problem, worded for the person who wrote the file."""


@dataclass
class ExperimentConfig:
    name: str = "demo"
    output_root: str = "runs"  # each stage writes to {output_root}/{name}/{stage}
    seed: int = 0


@dataclass
class DemoDataConfig:
    out_dir: str = "data/demo"  # where the embedded default data set is built
    long_side: int = 256
    variants_per_photo: int = 24
    val_variants_per_photo: int = 4


@dataclass
class DataConfig:
    train: str = "data/demo/train"  # folder with input/ and target/, or a HF dataset path / hub id
    val: str = "data/demo/val"
    input_column: str = "input_image"  # for HF datasets
    target_column: str = "edited_image"
    train_split: str = "train"
    val_split: str = "train"
    build_demo: bool = False  # build the embedded demo data set first if missing
    demo: DemoDataConfig = field(default_factory=DemoDataConfig)
    train_long_side: int = 256  # resize before cropping (0 = keep size)
    crop_size: int = 128  # training crop in pixels (0 = whole image)
    flip: bool = True
    val_long_side: int = 256  # working resolution for validation and eval
    size_multiple: int = 32  # working sizes are multiples of this (codec factor x network downsampling)
    max_pixels: int = 200_000_000
    cache_latents: bool = True  # encode the pairs once with a frozen codec
    augment_variants: int = 0  # input-side photometric variants per training pair (0 = none; core.demo)


@dataclass
class CodecConfig:
    kind: str = "pixel"  # pixel | sd-vae | taesd | tae
    factor: int = 4  # pixel codec: space-to-depth factor
    pretrained: str = ""  # hub id or local folder (sd-vae, taesd); tae: folder with *encoder*/*decoder* files
    subfolder: str = ""  # e.g. "vae" inside a full Stable Diffusion repo
    scaling_factor: float = 0.0  # 0 = take it from the model's config
    tiling: bool = True  # tiled encode/decode for large images (sd-vae)
    random_init: bool = False  # sd-vae: the architecture from `pretrained`'s config.json, random weights (no hub)


@dataclass
class PriorConfig:
    """The global colour curve the networks start from (core/prior.py)."""

    kind: str = "curve"  # curve: ridge cubic RGB polynomial fitted on the training pairs | none
    ridge: float = 1e-4  # pull toward the identity, per pixel
    # train | train+val: also fit on data.val when that is a selection split carved from the training
    # pairs (eval.cv --select), never when data.val is the evaluation split
    fit_on: str = "train"
    # exposure: fit the curve over the inputs re-exposed to a common level (core/prior.py; 4-fold CV
    # on FiveK +1.0 dB over plain least squares) | none: plain ridge least squares
    align: str = "exposure"


@dataclass
class FlowConfig:
    block_out_channels: list[int] = field(default_factory=lambda: [64, 128, 128])
    layers_per_block: int = 1
    norm_num_groups: int = 16
    noise_std: float = 0.0  # small noise on the interpolation path
    t_scale: float = 1000.0  # network timestep = t * t_scale


@dataclass
class HypirConfig:
    pretrained: str = "stabilityai/stable-diffusion-2-1-base"  # hub id or local folder
    unet_subfolder: str = "unet"
    lora_weights: str = ""  # released LoRA (safetensors) to start from
    lora_rank: int = 256
    lora_alpha: int = 256
    lora_targets: list[str] = field(default_factory=lambda: [
        "to_k", "to_q", "to_v", "to_out.0", "conv", "conv1", "conv2", "conv_shortcut",
        "conv_out", "proj_in", "proj_out", "ff.net.2", "ff.net.0.proj"])
    model_t: int = 200  # timestep the UNet sees; the input goes in with no noise added
    coeff_t: int = 200  # timestep whose scheduler coefficients turn eps into the result
    prompt: str = ""
    # real size: the frozen base's dtype, and the UNet built from `pretrained`'s unet/config.json with
    # random weights (seeded, no hub, no text encoder: the prompt embedding is zeros), e.g. configs/arch/sd21-base
    base_dtype: str = "fp32"  # fp32 | bf16 | fp16
    random_init: bool = False


@dataclass
class TeacherGANConfig:
    """HYPIR's adversarial term for stage one: a frozen OpenCLIP tower with trainable heads on the
    decoded one-step result (fake) and the decoded edit (real), conditioned on the input."""

    weight: float = 0.0  # HYPIR: 0.5
    loss: str = "ns"  # ns (BCE, real label 0.8 for these heads, as HYPIR) | hinge
    learning_rate: float = 1e-5
    warmup_steps: int = 0  # teacher steps before the term starts
    openclip_model: str = "convnext_base"  # HYPIR: convnext_xxlarge
    openclip_pretrained: str = ""  # a pretrained tag or a local checkpoint file; "" = random (tests only)
    openclip_image_size: int = 224
    head_channels: int = 64


@dataclass
class TeacherConfig:
    kind: str = "flow"  # flow | hypir
    num_steps: int = 8  # K: ODE / refinement steps at sampling time
    sampler: str = "euler"  # euler | heun
    # flow: M networks trained one after another (seeds experiment.seed + m), the ODE on their mean
    # velocity (teacher/flow.py); the student distils the ensemble into one network
    ensemble: int = 1
    train_steps: int = 1000
    learning_rate: float = 2e-4
    l1_weight: float = 0.0  # L1 on the decoded estimate of the result
    hist_weight: float = 0.0  # colour histogram: 1-D Wasserstein distance of each channel's values, per image
    ssim_weight: float = 0.0  # 1 - SSIM (11x11 Gaussian window) on the decoded estimate
    lpips_weight: float = 0.0  # LPIPS on the decoded estimate (needs its weights)
    # HYPIR's stage-one recipe: latent_weight 0, pixel_mse_weight 1, lpips_weight 5 (vgg), gan.weight 0.5
    latent_weight: float = 1.0  # the model's own latent loss (flow matching | latent MSE)
    pixel_mse_weight: float = 0.0  # MSE on the decoded estimate of the result
    lpips_net: str = "alex"  # alex | vgg (HYPIR)
    lpips_random_backbone: bool = False  # tests only: a RANDOM backbone, since offline there are no weights
    gan: TeacherGANConfig = field(default_factory=TeacherGANConfig)
    flow: FlowConfig = field(default_factory=FlowConfig)
    hypir: HypirConfig = field(default_factory=HypirConfig)


@dataclass
class StudentConfig:
    init: str = "slim"  # teacher (copy the teacher's network at fixed t) | slim
    t: float = 0.0  # the fixed t at which a teacher-initialised student is evaluated
    block_out_channels: list[int] = field(default_factory=lambda: [32, 64, 64])
    layers_per_block: int = 1
    norm_num_groups: int = 16


@dataclass
class DiscriminatorConfig:
    kind: str = "patchgan"  # patchgan | openclip | unet
    channels: int = 64
    num_layers: int = 3
    num_scales: int = 2
    openclip_model: str = "convnext_base"
    openclip_pretrained: str = ""  # a pretrained tag or a local checkpoint file
    openclip_image_size: int = 224


@dataclass
class DistillConfig:
    output_name: str = "student"  # run folder: {output_root}/{name}/{output_name}
    train_steps: int = 600
    learning_rate: float = 5e-4
    disc_learning_rate: float = 2e-4
    distill_loss: str = "mse"  # mse | pseudo_huber
    lambda_distill: float = 1.0
    lambda_adv: float = 0.05
    lambda_gt: float = 0.5  # student vs the professional edit
    gan_loss: str = "hinge"  # hinge | ns
    r1_gamma: float = 0.1
    adv_warmup_steps: int = 100
    cache_teacher: bool = True
    unpaired: str = ""  # folder of unedited photos: the student also learns the teacher's edit of them
    # the student's own train.keep_best_min_delta (< 0: the train section's). The student starts as the
    # teacher's network at one step, so its step 0 is already a good model: a later checkpoint must
    # beat it on the selection split by this margin before it replaces it
    keep_best_min_delta: float = -1.0
    discriminator: DiscriminatorConfig = field(default_factory=DiscriminatorConfig)


@dataclass
class EvalConfig:
    students: list[str] = field(default_factory=lambda: ["student"])  # student run folders to compare
    baselines: list[str] = field(default_factory=lambda: ["lut"])  # learned baseline run folders, if trained
    teacher_steps: list[int] = field(default_factory=lambda: [1, 2, 4, 8])
    # "N": the model run at NxN; "native": the eval photos through the submission path (working
    # size + transfer); "photo-N" / "photo-WxH": an image of that size through the submission path
    resolutions: list[str] = field(default_factory=lambda: ["512", "1024", "native", "photo-1024"])
    batch_sizes: list[int] = field(default_factory=lambda: [1, 4])
    warmup: int = 1
    repeats: int = 3
    max_seconds_per_measure: float = 20.0  # stop repeating a slow measurement after this long
    # how a model's working-size edit reaches full size: written into each model folder's manifest
    # when it is trained; eval and student.enhance read it from there
    transfer: str = "grid"  # grid | none
    transfer_grid: int = 32  # chosen on FiveK expert C (a perfect edit at 1/4 size, transferred back)
    quality_weight: float = 0.7
    efficiency_weight: float = 0.3
    psnr_floor_db: float = 10.0  # quality = clip((psnr - floor) / (ceil - floor), 0, 1)
    psnr_ceil_db: float = 40.0
    latency_ref_ms: float = 1000.0  # efficiency = ref / (ref + latency at the score resolution)
    score_resolution: str = "photo-1024"  # the path the quality figures were measured on, at 1 MP
    max_images: int = 0  # 0 = all validation pairs
    cv_data: str = ""  # eval.cv's pairs (folder or HF dataset); "" = data.train and data.val together
    # eval.cv's selection split: that fraction (or, >= 1, that many) of each fold's training pairs picks
    # the networks' best checkpoint instead of training them; 0 = none, the last checkpoint is kept
    cv_select: float = 0.25
    cv_select_from: str = "spread"  # spread (evenly through the sorted names) | last (the last ones)
    # then train each stage again on all of the fold's training pairs (the selection split too) for
    # the number of steps the selection pass kept: the split chooses how long, not what is learnt from
    cv_refit: bool = False


@dataclass
class TrainConfig:
    batch_size: int = 8
    gradient_accumulation_steps: int = 1
    mixed_precision: str = "no"  # no | fp16 | bf16
    # memory and speed, under the diffusers examples' flag names
    gradient_checkpointing: bool = False  # recompute activations in backward (teacher, student)
    allow_tf32: bool = False  # TF32 matmuls and convolutions on Ampere+ GPUs
    use_8bit_adam: bool = False  # bitsandbytes' AdamW8bit (CUDA, needs bitsandbytes)
    attention: str = "sdpa"  # sdpa (torch's scaled_dot_product_attention) | math (plain matmuls)
    max_grad_norm: float = 1.0
    weight_decay: float = 0.0
    adam_beta1: float = 0.9
    adam_beta2: float = 0.99
    lr_warmup_steps: int = 50
    lr_schedule: str = "cosine"  # cosine | constant
    ema_decay: float = 0.999  # 0 disables the EMA
    checkpointing_steps: int = 200
    checkpoints_total_limit: int = 3
    validation_steps: int = 200
    report_to: str = "tensorboard"  # tensorboard | wandb | none
    max_nonfinite_steps: int = 10  # stop after this many skipped steps in a row
    log_every: int = 10
    keep_best: bool = False  # keep the weights with the best validation PSNR (step 0, the prior, included)
    # a later checkpoint replaces the kept one only if its validation PSNR is at least this much higher
    # (early stopping's min_delta: with a few validation photos, a smaller gain is noise)
    keep_best_min_delta: float = 0.0


@dataclass
class LUTConfig:
    """The image-adaptive 3D LUT baseline (lut/train.py)."""

    num_basis: int = 3
    size: int = 33  # entries per colour axis
    cnn_size: int = 256  # the weight-predicting CNN sees the photo resized to cnn_size x cnn_size
    train_steps: int = 1000  # about 2 minutes on a 2-core CPU with the demo config
    learning_rate: float = 5e-3
    lambda_tv: float = 1e-4  # smoothness of the LUT (the paper's lambda_s)
    lambda_mono: float = 10.0  # monotonicity of the LUT (the paper's lambda_m)


@dataclass
class Config:
    experiment: ExperimentConfig = field(default_factory=ExperimentConfig)
    data: DataConfig = field(default_factory=DataConfig)
    codec: CodecConfig = field(default_factory=CodecConfig)
    prior: PriorConfig = field(default_factory=PriorConfig)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    student: StudentConfig = field(default_factory=StudentConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    lut: LUTConfig = field(default_factory=LUTConfig)

    def run_dir(self, stage: str) -> Path:
        return Path(self.experiment.output_root) / self.experiment.name / stage

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _coerce(value, tp, where: str):
    """Check and convert one YAML value to the annotated type `tp`."""
    origin = typing.get_origin(tp)
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        (item_tp,) = typing.get_args(tp)
        return [_coerce(v, item_tp, f"{where}[{i}]") for i, v in enumerate(value)]
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads "1e-4" (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if value is None:
            return ""
        if isinstance(value, bool):  # YAML 1.1 reads a bare `no` (train.mixed_precision=no) as false
            return "yes" if value else "no"
        if not isinstance(value, (str, int, float)):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return str(value)
    raise ConfigError(f"{where}: unsupported type {tp}")


def _merge(obj, data: dict, where: str, source: str):
    """Write the YAML mapping `data` into the dataclass `obj`, rejecting unknown keys."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: '{where}' must be a mapping, got {data!r}")
    hints = typing.get_type_hints(type(obj))
    names = [f.name for f in dataclasses.fields(obj)]
    for key, value in data.items():
        path = f"{where}.{key}" if where else str(key)
        if key not in names:
            near = difflib.get_close_matches(str(key), names, n=1)
            hint = f" Did you mean '{near[0]}'?" if near else f" Valid keys: {', '.join(names)}."
            raise ConfigError(f"{source}: unknown key '{path}'.{hint}")
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current):
            _merge(current, value, path, source)
        else:
            setattr(obj, key, _coerce(value, hints[key], f"{source}: {path}"))


def parse_override(text: str) -> dict:
    """'teacher.flow.noise_std=0.01' -> {'teacher': {'flow': {'noise_std': 0.01}}}."""
    if "=" not in text:
        raise ConfigError(f"override '{text}' is not of the form section.key=value")
    key, raw = text.split("=", 1)
    value = yaml.safe_load(raw) if raw != "" else ""
    tree: dict = {}
    node = tree
    parts = key.strip().split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value
    return tree


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Defaults, then the YAML file at `path`, then `section.key=value` overrides."""
    cfg = Config()
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path} (pass --config configs/demo.yaml)")
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
        _merge(cfg, data, "", str(path))
    for text in overrides or []:
        _merge(cfg, parse_override(text), "", f"override '{text}'")
    validate(cfg)
    return cfg


def config_from_dict(data: dict) -> Config:
    """Rebuild a Config from `Config.to_dict()` output (e.g. a saved run's config)."""
    cfg = Config()
    _merge(cfg, data, "", "saved config")
    return cfg


def validate(cfg: Config) -> None:
    choices = {
        "prior.kind": (cfg.prior.kind, ("curve", "none")),
        "prior.fit_on": (cfg.prior.fit_on, ("train", "train+val")),
        "prior.align": (cfg.prior.align, ("exposure", "none")),
        "codec.kind": (cfg.codec.kind, ("pixel", "sd-vae", "taesd", "tae")),
        "teacher.kind": (cfg.teacher.kind, ("flow", "hypir")),
        "teacher.sampler": (cfg.teacher.sampler, ("euler", "heun")),
        "student.init": (cfg.student.init, ("teacher", "slim")),
        "distill.distill_loss": (cfg.distill.distill_loss, ("mse", "pseudo_huber")),
        "distill.gan_loss": (cfg.distill.gan_loss, ("hinge", "ns")),
        "distill.discriminator.kind": (cfg.distill.discriminator.kind, ("patchgan", "openclip", "unet")),
        "train.mixed_precision": (cfg.train.mixed_precision, ("no", "fp16", "bf16")),
        "train.lr_schedule": (cfg.train.lr_schedule, ("cosine", "constant")),
        "train.report_to": (cfg.train.report_to, ("tensorboard", "wandb", "none", "all")),
        "eval.transfer": (cfg.eval.transfer, ("grid", "none")),
        "eval.cv_select_from": (cfg.eval.cv_select_from, ("spread", "last")),
        "teacher.hypir.base_dtype": (cfg.teacher.hypir.base_dtype, ("fp32", "bf16", "fp16")),
        "teacher.lpips_net": (cfg.teacher.lpips_net, ("alex", "vgg")),
        "teacher.gan.loss": (cfg.teacher.gan.loss, ("ns", "hinge")),
        "train.attention": (cfg.train.attention, ("sdpa", "math")),
    }
    for key, (value, allowed) in choices.items():
        if value not in allowed:
            raise ConfigError(f"{key}={value!r} is not one of {', '.join(allowed)}")
    if cfg.eval.score_resolution not in cfg.eval.resolutions:
        raise ConfigError(f"eval.score_resolution={cfg.eval.score_resolution!r} must be one of eval.resolutions "
                          f"{cfg.eval.resolutions}")
    if cfg.teacher.ensemble < 1 or (cfg.teacher.ensemble > 1 and cfg.teacher.kind != "flow"):
        raise ConfigError(f"teacher.ensemble={cfg.teacher.ensemble}: must be >= 1, and 1 unless teacher.kind is flow "
                          f"(it is {cfg.teacher.kind!r})")
    if cfg.teacher.num_steps < 1:
        raise ConfigError(f"teacher.num_steps={cfg.teacher.num_steps}: must be >= 1")
    if cfg.train.gradient_accumulation_steps < 1:
        raise ConfigError("train.gradient_accumulation_steps must be >= 1")
    if cfg.codec.kind == "pixel" and cfg.data.size_multiple % cfg.codec.factor:
        raise ConfigError(f"data.size_multiple={cfg.data.size_multiple} must be a multiple of codec.factor="
                          f"{cfg.codec.factor}")
    if cfg.codec.kind != "pixel" and not cfg.codec.pretrained:
        raise ConfigError(f"codec.kind={cfg.codec.kind} needs codec.pretrained (hub id or folder)")
    if cfg.lut.num_basis < 1 or cfg.lut.size < 2 or cfg.lut.cnn_size < 32:
        raise ConfigError(f"lut.num_basis={cfg.lut.num_basis}, lut.size={cfg.lut.size}, lut.cnn_size="
                          f"{cfg.lut.cnn_size}: need num_basis >= 1, size >= 2 and cnn_size >= 32")


def save_config(cfg: Config, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
