"""The real-size path at tiny size: configs/hypir_sd21.yaml and configs/flow_sdxl_vae.yaml through the
same entry points with the architectures of configs/arch scaled down (core.arch), HYPIR's stage-one
loss, and the memory and speed options."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch

from core.config import ConfigError, TrainConfig, load_config
from tests.conftest import REPO


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models on a shared 2-core machine: a second thread costs more than it saves."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_arch_configs_are_the_true_sizes():
    """configs/arch holds SD 2.1-base's UNet (865.9M) and VAE (83.7M) and the SDXL VAE, no weights."""
    from diffusers import AutoencoderKL, UNet2DConditionModel

    arch = REPO / "configs" / "arch"
    assert not [p for p in arch.rglob("*") if p.suffix in (".safetensors", ".bin", ".pth", ".ckpt")]
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(str(arch / "sd21-base"),
                                                                                 subfolder="unet"))
        vae = AutoencoderKL.from_config(AutoencoderKL.load_config(str(arch / "sdxl-vae-fp16-fix")))
    assert round(sum(p.numel() for p in unet.parameters()) / 1e6, 1) == 865.9
    assert unet.config.cross_attention_dim == 1024 and vae.config.scaling_factor == 0.13025


def test_new_keys_are_real_config_keys():
    cfg = load_config(REPO / "configs" / "hypir_sd21.yaml")
    assert cfg.teacher.hypir.base_dtype == "bf16" and cfg.train.gradient_checkpointing
    assert (cfg.teacher.pixel_mse_weight, cfg.teacher.lpips_weight, cfg.teacher.gan.weight) == (1.0, 5.0, 0.5)
    assert cfg.teacher.learning_rate == 1e-5 and cfg.teacher.hypir.lora_rank == 256
    with pytest.raises(ConfigError, match="teacher.hypir.base_dtype='int8'"):
        load_config(None, ["teacher.hypir.base_dtype=int8"])
    assert load_config(None, ["train.mixed_precision=no"]).train.mixed_precision == "no"  # YAML's `no`


def test_diffusers_flag_names_set_the_train_keys():
    from core.cli import load_stage_config, stage_parser

    args = stage_parser("x").parse_intermixed_args(["--gradient_checkpointing", "--allow_tf32", "teacher.num_steps=2"])
    cfg = load_stage_config(args)
    assert cfg.train.gradient_checkpointing and cfg.train.allow_tf32 and not cfg.train.use_8bit_adam


def test_8bit_adam_without_bitsandbytes_says_how_to_get_it(monkeypatch):
    import builtins

    from core.trainer import make_optimizer

    real_import = builtins.__import__

    def no_bnb(name, *args, **kwargs):
        if name == "bitsandbytes":
            raise ImportError("no bitsandbytes")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_bnb)
    with pytest.raises(ImportError, match="pip install bitsandbytes"):
        make_optimizer([torch.nn.Parameter(torch.zeros(2))], 1e-3, TrainConfig(use_8bit_adam=True), 10)


def test_gradient_checkpointing_and_math_attention_keep_the_lora_gradients(tmp_path):
    """Same LoRA gradients with checkpointing and the plain attention kernel as without them."""
    from core.config import HypirConfig
    from core.perf import apply_speed_options
    from teacher.hypir import HypirTeacher
    from tests.hypir_fixtures import tiny_sd_folder

    folder = tiny_sd_folder(tmp_path / "sd")
    g = torch.Generator().manual_seed(0)
    z_in, z_tgt = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 4, 8, 8, generator=g)
    grads = []
    for ckpt, attention in ((False, "sdpa"), (True, "math")):
        torch.manual_seed(0)
        teacher = HypirTeacher.from_config(HypirConfig(pretrained=str(folder), lora_rank=4, lora_alpha=4), 1, 4)
        with torch.no_grad():  # non-zero lora_B, so that lora_A gets gradients too
            for name, p in teacher.unet.named_parameters():
                if "lora_B" in name:
                    p.fill_(0.01)
        apply_speed_options(TrainConfig(gradient_checkpointing=ckpt, attention=attention), teacher)
        assert teacher.unet.is_gradient_checkpointing == ckpt
        teacher.train()
        teacher(z_in, z_tgt)[0].backward()
        grads.append(torch.cat([p.grad.flatten() for p in teacher.trainable_parameters()]))
    assert grads[0].abs().sum() > 0
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-4, atol=1e-6)


def test_hypir_recipe_terms_and_the_discriminator_phase(tmp_path):
    """decoded MSE + LPIPS(vgg, random backbone: offline there are no weights) + GAN with a frozen
    OpenCLIP tower: each term is logged, and the discriminator's phase trains its heads only."""
    from core.arch import write_tiny
    from core.codecs import PixelCodec
    from teacher.flow import FlowTeacher
    from teacher.losses import TeacherLoss

    arch = write_tiny(tmp_path / "arch")
    cfg = load_config(REPO / "configs" / "hypir_sd21.yaml", [
        "teacher.lpips_random_backbone=true", f"teacher.gan.openclip_model={arch / 'openclip-tiny.json'}",
        "teacher.gan.openclip_pretrained=", "teacher.gan.openclip_image_size=32", "teacher.gan.head_channels=8"])
    codec = PixelCodec(4)
    torch.manual_seed(0)
    model = FlowTeacher(48, [16, 16], 1, 8)
    accelerator = SimpleNamespace(device=torch.device("cpu"), prepare=lambda *objs: objs)
    with pytest.warns(UserWarning, match="RANDOM"):
        losses = TeacherLoss(cfg, model, "flow", codec, accelerator, total_steps=4)
    teacher_phase = SimpleNamespace(name="teacher")
    phases = losses.phases(teacher_phase)
    assert phases[0] is teacher_phase and phases[1].name == "disc"
    batch = {"z_in": codec.encode(torch.rand(2, 3, 32, 32)), "z_target": codec.encode(torch.rand(2, 3, 32, 32))}
    loss, parts = losses.loss_fn(batch, step=0)
    assert {"loss_flow", "loss_pixel_mse", "loss_lpips", "loss_gan"} <= set(parts)
    expected = 1.0 * parts["loss_pixel_mse"] + 5.0 * parts["loss_lpips"] + 0.5 * parts["loss_gan"]  # latent 0
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    loss.backward()
    assert all(p.grad is None for p in losses.disc.parameters())  # the GAN term trains the teacher only
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())
    d_loss, d_parts = phases[1].loss_fn(batch, step=0)
    d_loss.backward()
    trained = {id(p) for p in losses.disc.trainable_parameters() if p.grad is not None}
    assert trained and not any(p.grad is not None for p in losses.disc.visual.parameters())


def test_flow_sdxl_vae_trains_2_steps_at_tiny_size(tmp_path):
    """configs/flow_sdxl_vae.yaml through teacher/train.py with the SDXL VAE's architecture scaled down."""
    from scripts.real_size import main

    results = main(["--out", str(tmp_path), "--tiny", "--parts", "flow", "--flow-size", "64"])
    part = results["parts"]["flow teacher (SDXL VAE)"]
    assert part["steps"] == 2 and part["s_per_step"] > 0 and part["trainable_params"] > 0
    manifest = json.loads((tmp_path / "flow_sdxl_vae" / "teacher" / "model" / "manifest.json").read_text())
    assert manifest["step"] == 2 and manifest["codec"]["kind"] == "sd-vae" and manifest["codec"]["random_init"]


@pytest.mark.slow
def test_smoke_real_at_tiny_size(tmp_path):
    """`make smoke-real` scaled down: 2 hypir teacher steps (HYPIR's recipe, LoRA, checkpointing,
    bf16 base), 2 distillation steps, an eval of one photo; the figures are written."""
    from scripts.real_size import main

    results = main(["--out", str(tmp_path), "--tiny", "--size", "64"])
    teacher = results["parts"]["hypir teacher"]
    assert teacher["steps"] == 2 and teacher["trainable_params"] > 0 and teacher["base_params"] > 0
    assert results["parts"]["distill (hypir teacher)"]["steps"] == 2
    assert all(e["peak_mem_mib"] > 100 for e in results["parts"].values())
    report = json.loads((tmp_path / "hypir_sd21" / "eval" / "report.json").read_text())
    assert report  # the eval ran on the one photo
    assert "| hypir teacher |" in (tmp_path / "real_size.md").read_text()
