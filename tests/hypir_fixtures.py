"""A tiny Stable-Diffusion-layout folder (unet/, text_encoder/, tokenizer/, scheduler/) for tests.

    from tests.hypir_fixtures import tiny_sd_folder
    folder = tiny_sd_folder(tmp_path / "sd")
    cfg = HypirConfig(pretrained=str(folder), lora_rank=4, lora_alpha=4)   # codec: 4 channels

Random weights, 4 latent channels, a few MB, built in about a second; nothing touches the hub.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

TEXT_DIM = 32


def _write_tokenizer(folder: Path) -> None:
    """A minimal CLIP BPE vocabulary, in the vocab.json + merges.txt files SD ships."""
    folder.mkdir(parents=True, exist_ok=True)
    words = ["<|startoftext|>", "<|endoftext|>", "a", "a</w>", "h", "o", "u", "s", "e", "e</w>",
             "ho", "hou", "hous", "house</w>", "!"]
    (folder / "vocab.json").write_text(json.dumps({w: i for i, w in enumerate(words)}))
    (folder / "merges.txt").write_text("#version: 0.2\nh o\nho u\nhou s\nhous e</w>\n")
    (folder / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "CLIPTokenizer", "model_max_length": 77, "pad_token": "!"}))


def tiny_sd_folder(path: str | Path, prediction_type: str = "epsilon", seed: int = 0) -> Path:
    """Write a tiny randomly initialised SD 2.1-style folder at `path` and return it."""
    from diffusers import DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    path = Path(path)
    torch.manual_seed(seed)
    UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, block_out_channels=(32, 64),
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=TEXT_DIM,
        attention_head_dim=8, norm_num_groups=8,
    ).save_pretrained(path / "unet")
    CLIPTextModel(CLIPTextConfig(
        hidden_size=TEXT_DIM, num_hidden_layers=2, num_attention_heads=2, intermediate_size=37,
        vocab_size=1000, max_position_embeddings=77, bos_token_id=0, eos_token_id=1,
        pad_token_id=14,
    )).save_pretrained(path / "text_encoder")
    _write_tokenizer(path / "tokenizer")
    DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                  num_train_timesteps=1000, clip_sample=False, prediction_type=prediction_type,
                  ).save_pretrained(path / "scheduler")
    return path
