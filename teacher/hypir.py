"""The `hypir` teacher: Stable Diffusion 2.1's UNet, frozen, with LoRA adapters (after HYPIR).

    eps   = unet(z_in, model_t, empty prompt)                      # z_in goes in as it is, no noise
    z_hat = (z_in - sqrt(1 - abar[coeff_t]) eps) / sqrt(abar[coeff_t])   # one step
    loss  = || z_hat - z_target ||^2                               # HYPIR's regression term
    K steps: a deterministic DDIM walk t_0 = model_t > t_1 > ... > t_{K-1} > 0; after each
    prediction (z0, eps) at t_i, x = sqrt(abar[t_{i+1}]) z0 + sqrt(1 - abar[t_{i+1}]) eps.

abar is the alphas_cumprod of SD 2.1's DDPMScheduler (read from `scheduler/` when present).
v-prediction UNets (SD 2.1-768) are converted with the same coefficients.

HYPIR's wavelet colour fix is deliberately absent: it keeps the input's low frequencies, which
is exactly the edit (exposure, white balance, tone) we learn.

Saved weights (`trainable_state_dict`): the LoRA tensors under peft's names plus
`prompt_embeds`, the fixed text embedding, so that a saved teacher loads without the text
encoder. Licences: SD 2.1 is CreativeML Open RAIL++-M; HYPIR's released LoRA is non-commercial.
"""

from __future__ import annotations

import math
import re
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from core.models import ModelFolder

PROMPT_KEY = "prompt_embeds"
LORA_WEIGHTS_NAME = "pytorch_lora_weights.safetensors"  # diffusers' name for LoRA weights
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
FIX = "download it once with network or point teacher.hypir.pretrained at a local folder"


class HypirError(ValueError):
    """A hypir teacher that cannot be built or loaded, with the path and the fix."""


def _local(pretrained: str) -> Path | None:
    """The folder `pretrained` names, or None for a hub id ('org/name')."""
    looks_local = pretrained.startswith(("/", ".", "~")) or pretrained.count("/") > 1
    if looks_local or Path(pretrained).exists():
        return Path(pretrained).expanduser().resolve()
    return None


def _load(what: str, fn, pretrained: str, subfolder: str, **kwargs):
    """Call `fn(pretrained, subfolder=...)`, turning any failure into an error that says the fix."""
    folder = _local(pretrained)
    if folder is not None and not folder.is_dir():  # fail before the hub client retries a path
        raise HypirError(f"cannot load the {what} for the hypir teacher: folder '{pretrained}' "
                         f"does not exist. Fix: {FIX}.")
    try:
        return fn(str(folder or pretrained), subfolder=subfolder, **kwargs)
    except Exception as exc:  # hub, file and config errors come in many types
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise HypirError(f"cannot load the {what} from '{pretrained}' (subfolder '{subfolder}'): "
                         f"{reason}. Fix: {FIX}.") from exc


def load_scheduler_terms(pretrained: str) -> tuple[list[float], str]:
    """(alphas_cumprod, 1000 floats; prediction_type) from `scheduler/`, else SD 2.1's."""
    from diffusers import DDPMScheduler

    try:
        where = str(_local(pretrained) or pretrained)
        sched = DDPMScheduler.from_pretrained(where, subfolder="scheduler")
    except (OSError, ValueError):  # no scheduler/ (e.g. a bare UNet folder): SD 2.1-base's
        warnings.warn(f"no scheduler/ in '{pretrained}': using SD 2.1-base's (scaled_linear "
                      "0.00085..0.012, epsilon prediction)", stacklevel=2)
        sched = DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                              num_train_timesteps=1000)
    return sched.alphas_cumprod.double().tolist(), sched.config.get("prediction_type", "epsilon")


@torch.no_grad()
def encode_prompt(pretrained: str, prompt: str = "") -> torch.Tensor:
    """The CLIP text embedding of `prompt`, (1, L, D) float32; the text encoder is freed after."""
    from transformers import CLIPTextModel, CLIPTokenizer

    tokenizer = _load("tokenizer", CLIPTokenizer.from_pretrained, pretrained, "tokenizer")
    encoder = _load("text encoder", CLIPTextModel.from_pretrained, pretrained, "text_encoder")
    length = min(tokenizer.model_max_length, encoder.config.max_position_embeddings)
    ids = tokenizer([prompt], padding="max_length", max_length=length, truncation=True,
                    return_tensors="pt").input_ids
    embeds = encoder.eval()(ids)[0].float().clone()
    del encoder
    return embeds


def random_unet(config: dict, pretrained: str, seed: int = 0):
    """The true-size UNet of `config` with RANDOM weights, the same on every call (the seed is
    fixed, so a saved teacher, which holds only its LoRA, rebuilds the same base)."""
    from diffusers import UNet2DConditionModel

    warnings.warn(f"teacher.hypir.random_init: the UNet from '{pretrained}' has RANDOM weights and the "
                  "prompt embedding is zeros (no text encoder): for memory and speed checks only",
                  stacklevel=3)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return UNet2DConditionModel.from_config(config)


def read_lora_file(path: str | Path) -> dict[str, torch.Tensor]:
    """LoRA tensors from a .safetensors file, or a .pt/.pth (HYPIR's release) read with
    `weights_only` (no pickled code runs)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise HypirError(f"teacher.hypir.lora_weights: file '{path}' not found. Fix: give the path "
                         "of a LoRA .safetensors (or HYPIR's .pth) file, or leave it empty.")
    if path.suffix in (".pt", ".pth", ".bin"):
        from core.checkpoint import load_torch_file

        return dict(load_torch_file(path))
    from core.checkpoint import load_safetensors

    return load_safetensors(path)


def normalise_lora_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """peft names without the adapter name: 'unet.x.lora_A.default.weight' -> 'x.lora_A.weight'."""
    out = {}
    for key, value in state.items():
        for prefix in ("module.", "unet.", "base_model.model."):
            key = key.removeprefix(prefix)
        out[re.sub(r"\.(lora_[AB])\.[^.]+\.(weight|bias)$", r".\1.\2", key)] = value
    return out


class HypirTeacher(ModelFolder, nn.Module):
    kind, space = "hypir", "latent"  # the model-folder protocol (core/models.py); weights: the LoRA alone
    weights_name = LORA_WEIGHTS_NAME
    sampler = "ddim"

    def __init__(self, unet, alphas_cumprod: list[float], prediction_type: str, arch: dict,
                 prompt_embeds: torch.Tensor | None = None):
        """Wrap a loaded `UNet2DConditionModel`: freeze it and add fp32 LoRA adapters per `arch`."""
        super().__init__()
        from peft import LoraConfig

        self.arch = dict(arch)
        self.channels, self.num_steps = arch["channels"], arch["num_steps"]
        self.model_t, self.coeff_t = arch["model_t"], arch["coeff_t"]
        if prediction_type not in ("epsilon", "v_prediction", "sample"):
            raise HypirError(f"scheduler prediction_type={prediction_type!r} in "
                             f"'{arch['pretrained']}' is not supported (epsilon, v_prediction, "
                             "sample)")
        for name in ("model_t", "coeff_t"):
            if not 0 <= arch[name] < len(alphas_cumprod):
                raise HypirError(f"teacher.hypir.{name}={arch[name]}: must be in "
                                 f"[0, {len(alphas_cumprod)})")
        self.alphas_cumprod, self.prediction_type = alphas_cumprod, prediction_type
        self.base_dtype = DTYPES[arch.get("base_dtype", "fp32")]
        if next(unet.parameters()).dtype != self.base_dtype:
            unet = unet.to(self.base_dtype)
        self.unet = unet.requires_grad_(False)
        # "gaussian" (as HYPIR): lora_A random, lora_B = 0, so training starts from the base UNet
        lora = LoraConfig(r=arch["lora_rank"], lora_alpha=arch["lora_alpha"],
                          target_modules=list(arch["lora_targets"]), init_lora_weights="gaussian")
        try:
            self.unet.add_adapter(lora)  # peft matches names by suffix; absent names are skipped
        except ValueError as exc:
            raise HypirError(f"teacher.hypir.lora_targets={arch['lora_targets']}: {exc}. Fix: "
                             "name modules of the UNet (to_q to_v conv1 ...)") from exc
        for p in self.trainable_parameters():
            p.data = p.data.float()  # LoRA trains in fp32 whatever the base runs in
        self.register_buffer(PROMPT_KEY, prompt_embeds, persistent=False)

    # building ---------------------------------------------------------------------------------

    @classmethod
    def from_config(cls, hcfg, num_steps: int, channels: int) -> HypirTeacher:
        """Load SD's UNet (hub id or folder `hcfg.pretrained`), encode the prompt once, add LoRA;
        start from `hcfg.lora_weights` when set. `channels`: the codec's latent channels."""
        folder = _local(hcfg.pretrained)  # absolute, so that arch works from any folder
        pretrained = str(folder) if folder is not None and folder.is_dir() else hcfg.pretrained
        arch = {"pretrained": pretrained, "unet_subfolder": hcfg.unet_subfolder,
                "lora_rank": hcfg.lora_rank, "lora_alpha": hcfg.lora_alpha,
                "lora_targets": list(hcfg.lora_targets), "model_t": hcfg.model_t,
                "coeff_t": hcfg.coeff_t, "num_steps": num_steps, "prompt": hcfg.prompt,
                "channels": channels, "base_dtype": hcfg.base_dtype, "random_init": hcfg.random_init}
        teacher = cls.from_arch(arch)  # checks the folder and the channels before the text encoder
        if not hcfg.random_init:
            teacher.prompt_embeds = encode_prompt(pretrained, hcfg.prompt)
        if hcfg.lora_weights:
            source = f"teacher.hypir.lora_weights '{hcfg.lora_weights}'"
            teacher.load_trainable_state_dict(read_lora_file(hcfg.lora_weights), source=source)
        return teacher

    @classmethod
    def from_arch(cls, arch: dict, prompt_embeds: torch.Tensor | None = None) -> HypirTeacher:
        """Rebuild from `arch` (fresh LoRA); the prompt embedding comes from the saved weights or,
        if never loaded, is encoded from the pretrained folder on first use."""
        from diffusers import UNet2DConditionModel

        if arch.get("base_dtype", "fp32") not in DTYPES:
            raise HypirError(f"teacher.hypir.base_dtype={arch['base_dtype']!r}: "
                             "use fp32, fp16 or bf16")
        pretrained, sub = arch["pretrained"], arch["unet_subfolder"]
        config = _load("UNet config", UNet2DConditionModel.load_config, pretrained, sub)
        need, have = config["in_channels"], arch["channels"]
        if need != have:
            raise HypirError(f"the hypir teacher needs a codec whose latents have {need} channels "
                             f"(codec.kind: sd-vae); the configured codec gives {have}")
        if arch.get("random_init"):
            unet = random_unet(config, pretrained)
            if prompt_embeds is None:
                prompt_embeds = torch.zeros(1, 77, config["cross_attention_dim"])
        else:
            unet = _load("UNet", UNet2DConditionModel.from_pretrained, pretrained, sub,
                         torch_dtype=DTYPES[arch.get("base_dtype", "fp32")])
        return cls(unet, *load_scheduler_terms(pretrained), arch, prompt_embeds)

    # the model --------------------------------------------------------------------------------

    def _embeds(self, batch: int) -> torch.Tensor:
        if self.prompt_embeds is None:  # built by from_arch and never loaded: encode once now
            embeds = encode_prompt(self.arch["pretrained"], self.arch["prompt"])
            self.prompt_embeds = embeds.to(next(self.unet.parameters()).device)
        return self.prompt_embeds.to(self.base_dtype).expand(batch, -1, -1)

    def predict(self, x: torch.Tensor, model_t: int, coeff_t: int):
        """x (B, C, h, w) -> (z0, eps), float32: the UNet at `model_t`, converted at `coeff_t`."""
        t = torch.full((x.shape[0],), model_t, device=x.device, dtype=torch.long)
        emb = self._embeds(x.shape[0])
        out = self.unet(x.to(self.base_dtype), t, encoder_hidden_states=emb).sample.float()
        a, s = math.sqrt(self.alphas_cumprod[coeff_t]), math.sqrt(1 - self.alphas_cumprod[coeff_t])
        x = x.float()
        if self.prediction_type == "v_prediction":  # v = a eps - s x0
            return a * x - s * out, s * x + a * out
        if self.prediction_type == "sample":
            return out, (x - a * out) / s
        return (x - s * out) / a, out  # z0 = (x - sqrt(1 - abar) eps) / sqrt(abar)

    def timesteps(self, num_steps: int) -> list[int]:
        """The K model timesteps of the walk, model_t first, evenly spaced down towards 0."""
        if not 1 <= num_steps <= max(1, self.model_t):
            raise HypirError(f"num_steps={num_steps}: the hypir teacher walks from model_t="
                             f"{self.model_t} to 0, so it takes 1 to {max(1, self.model_t)} steps")
        return [round(self.model_t * (num_steps - i) / num_steps) for i in range(num_steps)]

    def forward(self, z_in: torch.Tensor, z_target: torch.Tensor):
        """z_in, z_target (B, C, h, w) -> (MSE loss, the one-step result z_hat (B, C, h, w))."""
        z_hat, _ = self.predict(z_in, self.model_t, self.coeff_t)
        return F.mse_loss(z_hat, z_target.float()), z_hat  # || z_hat - z_target ||^2

    @torch.no_grad()
    def sample(self, z_in: torch.Tensor, num_steps: int | None = None,
               sampler: str | None = None) -> torch.Tensor:
        """Deterministic K-step result (B, C, h, w) float32 from the input latents z_in."""
        if sampler not in (None, "ddim", "euler"):
            raise HypirError(f"sampler={sampler!r}: the hypir teacher samples with its DDIM walk "
                             "(use euler/ddim; heun is for the flow teacher)")
        steps = self.timesteps(num_steps or self.num_steps)
        z0, eps = self.predict(z_in, steps[0], self.coeff_t)
        for t in steps[1:]:  # re-noise with the predicted eps to t, predict again
            a = self.alphas_cumprod[t]
            z0, eps = self.predict(math.sqrt(a) * z0 + math.sqrt(1 - a) * eps, t, t)
        return z0

    infer = sample  # the protocol's inference: latents -> latents in K steps

    def function_evals(self, num_steps: int | None = None) -> int:
        return num_steps or self.num_steps

    # weights ----------------------------------------------------------------------------------

    def trainable_parameters(self):
        return [p for p in self.unet.parameters() if p.requires_grad]

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """The LoRA tensors (peft names, no adapter name) and the fixed prompt embedding."""
        from peft import get_peft_model_state_dict

        state = dict(get_peft_model_state_dict(self.unet))
        state[PROMPT_KEY] = self._embeds(1)[:1].float()
        return state

    def load_trainable_state_dict(self, state: dict[str, torch.Tensor],
                                  source: str = "the saved teacher") -> None:
        """Load every LoRA tensor (peft names with or without adapter name) and, if present,
        the prompt embedding; any missing, unexpected or misshapen key is an error."""
        from peft import get_peft_model_state_dict, set_peft_model_state_dict

        state = dict(state)
        embeds = state.pop(PROMPT_KEY, None)
        lora = normalise_lora_keys(state)
        expected = {k: v.shape for k, v in get_peft_model_state_dict(self.unet).items()}
        missing, unexpected = sorted(set(expected) - set(lora)), sorted(set(lora) - set(expected))
        wrong = [f"{k} {tuple(lora[k].shape)} vs {tuple(expected[k])}"
                 for k in sorted(set(lora) & set(expected)) if lora[k].shape != expected[k]]
        if missing or unexpected or wrong:
            def show(keys):
                return ", ".join(keys[:5]) + (f" (+{len(keys) - 5} more)" if len(keys) > 5 else "")
            raise HypirError(
                f"{source} does not match this teacher's LoRA (rank {self.arch['lora_rank']}, "
                f"targets {' '.join(self.arch['lora_targets'])}): {len(unexpected)} unmatched keys "
                f"[{show(unexpected)}]; {len(missing)} missing [{show(missing)}]; {len(wrong)} "
                f"wrong shapes [{show(wrong)}]. "
                "Fix: set teacher.hypir.lora_rank and lora_targets to those the weights were "
                "trained with; keys must be peft-style '...lora_A.weight' (adapter name optional).")
        result = set_peft_model_state_dict(self.unet, lora)
        if getattr(result, "unexpected_keys", None):
            raise HypirError(f"{source}: peft did not place {result.unexpected_keys[:5]}")
        if embeds is not None:
            self.prompt_embeds = embeds.float().to(next(self.unet.parameters()).device)
