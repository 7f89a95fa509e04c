"""The hypir teacher on a tiny SD-layout folder: loading, training, saving, coefficients, errors."""

from __future__ import annotations

import json
import math
import os
import re
import time

import pytest
import torch
from safetensors.torch import save_file

from core.checkpoint import load_safetensors, save_safetensors
from core.config import HypirConfig
from teacher import hypir
from teacher.hypir import HypirError, HypirTeacher
from tests.conftest import REPO, tiny_overrides
from tests.hypir_fixtures import tiny_sd_folder


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models: a second thread costs more than it saves (10x on a busy 2-core machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def sd_folder(tmp_path_factory):
    return tiny_sd_folder(tmp_path_factory.mktemp("sd") / "sd-tiny")


def make(folder, num_steps=2, channels=4, **kwargs) -> HypirTeacher:
    cfg = HypirConfig(pretrained=str(folder), lora_rank=4, lora_alpha=4, **kwargs)
    return HypirTeacher.from_config(cfg, num_steps=num_steps, channels=channels)


def latents(seed=0, batch=2):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 4, 8, 8, generator=g), torch.randn(batch, 4, 8, 8, generator=g)


def perturb_lora(teacher, seed=1):
    """Non-zero lora_B, as after training, so that the adapters change the output."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in teacher.unet.named_parameters():
            if "lora_B" in name:
                p.copy_(0.1 * torch.randn(p.shape, generator=g))


def test_loads_frozen_base_with_fp32_lora(sd_folder):
    teacher = make(sd_folder)
    trainable = {n for n, p in teacher.named_parameters() if p.requires_grad}
    assert trainable and all(".lora_A." in n or ".lora_B." in n for n in trainable)
    assert all(p.dtype == torch.float32 for p in teacher.trainable_parameters())
    frozen = [n for n, p in teacher.named_parameters() if not p.requires_grad]
    assert any(n.endswith("conv_in.weight") for n in frozen)  # the base is there and frozen
    # the default targets include names this UNet lacks at some depths: they must not crash,
    # and attention, resnet and sampler convs all get adapters
    for target in ("to_q", "to_out.0", "conv1", "conv_shortcut", "proj_in", "ff.net.2"):
        assert any(f".{target}.lora_A." in n for n in trainable), target
    assert teacher.prompt_embeds.shape == (1, 77, 32)
    assert HypirTeacher.from_arch(json.loads(json.dumps(teacher.arch))).arch == teacher.arch
    # a bf16 base keeps its LoRA in fp32 and still gives a finite result
    low = HypirTeacher.from_arch({**teacher.arch, "base_dtype": "bf16"})
    assert next(low.unet.parameters()).dtype == torch.bfloat16
    assert all(p.dtype == torch.float32 for p in low.trainable_parameters())
    assert torch.isfinite(low.sample(latents()[0])).all()


def test_training_reaches_only_lora_and_lowers_the_loss(sd_folder):
    teacher = make(sd_folder)
    z_in, z_target = latents()
    loss, z_hat = teacher(z_in, z_target)
    assert torch.isfinite(loss) and z_hat.shape == z_in.shape
    loss.backward()
    for name, p in teacher.named_parameters():
        assert (p.grad is not None) == p.requires_grad, name
    assert any(p.grad.abs().sum() > 0 for p in teacher.trainable_parameters())

    opt = torch.optim.AdamW(teacher.trainable_parameters(), lr=1e-2)
    losses = []
    for _ in range(6):
        opt.zero_grad()
        loss, _ = teacher(z_in, z_target)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.9 * losses[0], losses


def test_saved_lora_reloads_to_identical_samples(sd_folder, tmp_path, monkeypatch):
    teacher = make(sd_folder)
    perturb_lora(teacher)
    z_in, _ = latents(3)
    file = tmp_path / "pytorch_lora_weights.safetensors"
    save_safetensors(teacher.trainable_state_dict(), file)

    fresh = HypirTeacher.from_arch(json.loads(json.dumps(teacher.arch)))
    assert not torch.equal(fresh.sample(z_in, num_steps=1), teacher.sample(z_in, num_steps=1))
    fresh = HypirTeacher.from_arch(json.loads(json.dumps(teacher.arch)))

    def no_text_encoder(*args):
        raise AssertionError("a saved teacher must load without the text encoder")

    monkeypatch.setattr(hypir, "encode_prompt", no_text_encoder)
    fresh.load_trainable_state_dict(load_safetensors(file))
    for k in (1, 2):
        assert torch.equal(fresh.sample(z_in, num_steps=k), teacher.sample(z_in, num_steps=k))
    assert fresh.function_evals() == 2 and fresh.function_evals(4) == 4

    # the project's own model folder (the protocol of core/models.py) takes the same path
    teacher.save_pretrained(tmp_path / "model", manifest={"codec": {"kind": "sd-vae"}})
    assert (tmp_path / "model" / "pytorch_lora_weights.safetensors").is_file()
    loaded = HypirTeacher.from_pretrained(tmp_path / "model")
    assert torch.equal(loaded.sample(z_in), teacher.sample(z_in))

    state = load_safetensors(file)
    state.pop(next(k for k in state if "lora_A" in k))
    with pytest.raises(HypirError, match="1 missing"):
        fresh.load_trainable_state_dict(state)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_one_step_is_the_closed_form_of_the_base_unet(tmp_path, prediction_type):
    from diffusers import DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    folder = tiny_sd_folder(tmp_path / "sd", prediction_type=prediction_type)
    teacher = make(folder)  # fresh LoRA: lora_B = 0, so the teacher is the base UNet
    base = UNet2DConditionModel.from_pretrained(folder, subfolder="unet")
    tok = CLIPTokenizer.from_pretrained(folder, subfolder="tokenizer")
    text = CLIPTextModel.from_pretrained(folder, subfolder="text_encoder")
    scheduler = DDPMScheduler.from_pretrained(folder, subfolder="scheduler")
    z_in, _ = latents(5)
    with torch.no_grad():
        ids = tok([""], padding="max_length", max_length=77, return_tensors="pt").input_ids
        emb = text(ids)[0].expand(2, -1, -1)

        def base_out(x, t):
            return base(x, torch.full((2,), t), encoder_hidden_states=emb).sample

        out = base_out(z_in, 200)
        # HYPIR's formula, by diffusers' own scheduler step
        expected = scheduler.step(out, 200, z_in).pred_original_sample
        close = {"atol": 1e-5, "rtol": 1e-5}
        torch.testing.assert_close(teacher.sample(z_in, num_steps=1), expected, **close)
        if prediction_type == "epsilon":  # and written out, then one DDIM step to t=100 and back
            abar = scheduler.alphas_cumprod.double()
            z0 = (z_in - math.sqrt(1 - abar[200]) * out) / math.sqrt(abar[200])
            torch.testing.assert_close(z0, expected, **close)
            x = math.sqrt(abar[100]) * z0 + math.sqrt(1 - abar[100]) * out
            eps = base_out(x.float(), 100)
            z0 = (x - math.sqrt(1 - abar[100]) * eps) / math.sqrt(abar[100])
            torch.testing.assert_close(teacher.sample(z_in, num_steps=2), z0.float(), **close)


def test_channel_mismatch_names_the_codec(sd_folder):
    with pytest.raises(HypirError, match=r"latents have 4 channels \(codec.kind: sd-vae\); "
                                         r"the configured codec gives 48"):
        make(sd_folder, channels=48)


def test_missing_pretrained_fails_fast_with_the_fix(tmp_path):
    start = time.time()
    with pytest.raises(HypirError, match="does not exist.*teacher.hypir.pretrained at a local"):
        make(tmp_path / "no-such-sd")
    assert time.time() - start < 5
    if os.environ.get("HF_HUB_OFFLINE") != "1":
        pytest.skip("the hub-id case needs HF_HUB_OFFLINE=1 (it would wait on the network)")
    start = time.time()
    with pytest.raises(HypirError, match="'no-such-org/no-such-sd'.*download it once with network"):
        make("no-such-org/no-such-sd")
    assert time.time() - start < 10


def test_released_lora_weights_are_the_starting_point(sd_folder, tmp_path):
    released = make(sd_folder)
    perturb_lora(released, seed=7)
    # HYPIR's own files name the adapter ('.lora_A.default.weight') and hold no prompt embedding
    state = {re.sub(r"\.(lora_[AB])\.", r".\1.default.", k): v.contiguous()
             for k, v in released.trainable_state_dict().items() if k != hypir.PROMPT_KEY}
    save_file(state, tmp_path / "hypir.safetensors")
    torch.save(state, tmp_path / "HYPIR_sd2.pth")
    z_in, _ = latents(9)
    assert not torch.equal(make(sd_folder).sample(z_in), released.sample(z_in))
    for name in ("hypir.safetensors", "HYPIR_sd2.pth"):
        started = make(sd_folder, lora_weights=str(tmp_path / name))
        assert torch.equal(started.sample(z_in), released.sample(z_in)), name

    kohya = "lora_unet_down_blocks_0.lora_down.weight"  # another naming: must be refused by name
    save_file({kohya: torch.zeros(4, 4)}, tmp_path / "kohya.safetensors")
    with pytest.raises(HypirError, match=f"1 unmatched keys.*{kohya}"):
        make(sd_folder, lora_weights=str(tmp_path / "kohya.safetensors"))


def test_hypir_teacher_trains_saves_resumes_and_reloads(tiny_data, tmp_path):
    """The tiny SD-layout UNet with LoRA through teacher/train.py: LoRA-only checkpoints, exact reload."""
    from diffusers import AutoencoderKL
    from safetensors.torch import load_file

    from core.models import load_model
    from teacher.train import main as train_teacher

    sd = tiny_sd_folder(tmp_path / "sd")
    AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 16),
                  down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                  layers_per_block=1, norm_num_groups=4, sample_size=32).save_pretrained(sd / "vae")
    args = ["--config", str(REPO / "configs" / "demo.yaml"), *tiny_overrides(tiny_data, tmp_path),
            "teacher.kind=hypir",
            f"teacher.hypir.pretrained={sd}", "teacher.hypir.lora_rank=4", "teacher.hypir.lora_alpha=4",
            "teacher.num_steps=1", "codec.kind=sd-vae", f"codec.pretrained={sd}", "codec.subfolder=vae",
            "train.ema_decay=0"]
    train_teacher(args)
    run = tmp_path / "demo" / "teacher"
    saved = load_file(run / "checkpoint-6" / "model.safetensors")
    assert saved and all("lora" in k for k in saved)  # the frozen 865M-parameter base is never copied
    assert (run / "model" / "pytorch_lora_weights.safetensors").is_file()
    teacher = load_model(run)
    assert teacher.manifest["class"] == "teacher.hypir:HypirTeacher" and teacher.codec is not None
    z = torch.randn(1, 4, 8, 8)
    again = load_model(run / "model")
    assert torch.equal(teacher.predict(z), again.predict(z))

    # resume from checkpoint-3 into a fresh folder: the LoRA weights come back exactly
    import shutil

    (tmp_path / "b").mkdir()
    shutil.copytree(run / "checkpoint-3", tmp_path / "b" / "checkpoint-3")
    train_teacher([*args, "--output_dir", str(tmp_path / "b"), "--resume_from_checkpoint", "latest"])
    resumed = load_file(tmp_path / "b" / "checkpoint-6" / "model.safetensors")
    assert all(torch.equal(saved[k], resumed[k]) for k in saved)
