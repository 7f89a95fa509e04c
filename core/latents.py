"""Latent caching: with a frozen codec the training pairs are encoded once, not every step.

Each pair is resized to the training long side, encoded (and its mirror image too, so a flip
is a lookup rather than a re-encode) and stored as safetensors under
`{cache_dir}/{codec.cache_key}/{content_key}-{H}x{W}.safetensors`: the key covers the files'
content, the codec and its weights, and the size, so a changed photo or codec is re-encoded.
Random crops are then taken in latent space, aligned to the codec grid.
"""

from __future__ import annotations

from pathlib import Path

import torch

from core.checkpoint import load_safetensors, save_safetensors
from core.codecs import Codec
from core.data import PairSource, fit_long_side
from core.images import resize


def load_pair_tensors(source: PairSource, i: int, long_side: int, factor: int):
    """Pair i resized to `long_side` (0 = as is) and rounded to the factor: two (3, H, W) in [0, 1]."""
    inp, tgt = source.load(i)
    h, w = inp.shape[:2]
    h2, w2 = fit_long_side(h, w, long_side or max(h, w), factor)
    if (h2, w2) != (h, w):
        inp, tgt = resize(inp, (w2, h2)), resize(tgt, (w2, h2))
    to_t = lambda a: torch.from_numpy(a).permute(2, 0, 1).contiguous().float()  # noqa: E731
    return to_t(inp), to_t(tgt)


@torch.no_grad()
def encode(codec: Codec, x: torch.Tensor) -> torch.Tensor:
    """(3, H, W) in [0, 1] -> (C, H/f, W/f) latents, on the CPU."""
    device = next(codec.parameters(), torch.empty(0)).device
    return codec.encode(x[None].to(device)).float().cpu()[0]


class LatentPairDataset(torch.utils.data.Dataset):
    """Cached latents of the training pairs with seeded latent-space crops and flips.

    Item: {"z_in": (C, h, w), "z_target": (C, h, w), "index": i}; h = crop_size / factor.
    """

    def __init__(self, source: PairSource, codec: Codec, *, long_side: int, crop_size: int, flip: bool,
                 seed: int, cache_dir: str | Path | None, show_progress: bool = True):
        self.source, self.codec, self.flip, self.seed = source, codec, flip, seed
        self.long_side = long_side
        self.crop = crop_size // codec.factor if crop_size else 0
        self.epoch = 0
        self.keys = ["z_in", "z_target"]  # every key is cropped and flipped together
        self.items: list[dict[str, torch.Tensor]] = []
        folder = Path(cache_dir) / codec.cache_key if cache_dir else None
        from rich.progress import track

        for i in track(range(len(source)), description="encoding pairs", disable=not show_progress):
            self.items.append(self._cached(i, folder, long_side))

    def _cached(self, i: int, folder: Path | None, long_side: int) -> dict[str, torch.Tensor]:
        path = None
        if folder is not None:
            path = folder / f"{self.source.content_key(i)}-{long_side}-f{int(self.flip)}.safetensors"
            if path.is_file():
                return load_safetensors(path)
        x_in, x_tgt = load_pair_tensors(self.source, i, long_side, self.codec.factor)
        item = {"z_in": encode(self.codec, x_in), "z_target": encode(self.codec, x_tgt)}
        if self.flip:
            item["z_in_flip"] = encode(self.codec, x_in.flip(-1))
            item["z_target_flip"] = encode(self.codec, x_tgt.flip(-1))
        if path is not None:
            save_safetensors(item, path)
        return item

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.items)

    @torch.no_grad()
    def add_target(self, key: str, fn, cache_dir: str | Path | None, cache_key: str,
                   show_progress: bool = True) -> None:
        """Add `key` = fn(z_in[None])[0] to every item (and its mirror), cached per item.

        Used for the teacher's outputs: each item is its own file, so an interrupted build
        resumes where it stopped.
        """
        from rich.progress import track

        folder = Path(cache_dir) / cache_key if cache_dir else None
        for i in track(range(len(self.items)), description=f"computing {key}", disable=not show_progress):
            path = folder / f"{self.source.content_key(i)}-{self.long_side}-f{int(self.flip)}.safetensors" \
                if folder else None
            if path is not None and path.is_file():
                self.items[i].update(load_safetensors(path))
                continue
            out = {key: fn(self.items[i]["z_in"][None])[0].float().cpu()}
            if self.flip:
                out[f"{key}_flip"] = fn(self.items[i]["z_in_flip"][None])[0].float().cpu()
            if path is not None:
                save_safetensors(out, path)
            self.items[i].update(out)
        self.keys.append(key)

    def __getitem__(self, i: int) -> dict:
        g = torch.Generator().manual_seed(hash((self.seed, self.epoch, i)) & 0x7FFF_FFFF_FFFF)
        item = self.items[i]
        flipped = self.flip and bool(torch.randint(0, 2, (1,), generator=g))
        out = {k: item[f"{k}_flip" if flipped else k] for k in self.keys}
        if self.crop:
            h, w = out["z_in"].shape[-2:]
            ch, cw = min(self.crop, h), min(self.crop, w)
            top = int(torch.randint(0, h - ch + 1, (1,), generator=g))
            left = int(torch.randint(0, w - cw + 1, (1,), generator=g))
            out = {k: v[:, top:top + ch, left:left + cw] for k, v in out.items()}
        return {**out, "index": i}


def load_val_set(source: PairSource, long_side: int, factor: int, limit: int = 0):
    """Validation pairs at the working resolution: list of (name, input (3,H,W), target (3,H,W))."""
    n = len(source) if not limit else min(limit, len(source))
    return [(source.names[i], *load_pair_tensors(source, i, long_side, factor)) for i in range(n)]
