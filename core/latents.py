"""Latent caching: with a frozen codec the training pairs are encoded once, not every step.

Each pair is resized to the training long side, encoded (and its mirror image too, so a flip
is a lookup rather than a re-encode) and stored as safetensors under
`{cache_dir}/{codec.cache_key}/{content_key}-{H}x{W}.safetensors`: the key covers the files'
content, the codec and its weights, and the size, so a changed photo or codec is re-encoded.
Random crops are then taken in latent space, aligned to the codec grid.

With a colour prior (core.prior) the inputs are encoded as prior(x): the networks learn the
residual over it. With `variants` > 0 each input is also encoded in that many photometric
variants (core.demo.photometric_variant: exposure, white balance, clipped highlights, noise,
JPEG), the target unchanged: one of them, or the original, is drawn per step.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import torch

from core.checkpoint import load_safetensors, save_safetensors
from core.codecs import Codec
from core.data import PairSource, fit_long_side
from core.images import resize, to_tensor


def load_pair_tensors(source: PairSource, i: int, long_side: int, multiple: int):
    """Pair i resized to `long_side` (0 = as is), sides rounded down to `multiple`: two (3, H, W) in [0, 1]."""
    inp, tgt = source.load(i)
    h, w = inp.shape[:2]
    h2, w2 = fit_long_side(h, w, long_side or max(h, w), multiple)
    if (h2, w2) != (h, w):
        inp, tgt = resize(inp, (w2, h2)), resize(tgt, (w2, h2))
    return to_tensor(inp), to_tensor(tgt)


@torch.no_grad()
def encode(codec: Codec, x: torch.Tensor) -> torch.Tensor:
    """(3, H, W) in [0, 1] -> (C, H/f, W/f) latents, on the CPU."""
    device = next(codec.parameters(), torch.empty(0)).device
    return codec.encode(x[None].to(device)).float().cpu()[0]


class LatentPairDataset(torch.utils.data.Dataset):
    """Cached latents of the training pairs with seeded latent-space crops and flips.

    Item: {"z_in": (C, h, w), "z_target": (C, h, w), "has_target": 1. or 0., "index": i}; h =
    crop_size / factor. `paired=False` (unedited photos, for distillation): the source's target is
    the input itself and `has_target` is 0, so losses against the edit leave the item out.
    """

    def __init__(self, source: PairSource, codec: Codec, *, long_side: int, crop_size: int, flip: bool,
                 seed: int, cache_dir: str | Path | None, multiple: int, show_progress: bool = True,
                 prior: torch.nn.Module | None = None, variants: int = 0, paired: bool = True):
        self.source, self.codec, self.flip, self.seed = source, codec, flip, seed
        self.long_side, self.multiple = long_side, multiple
        self.prior, self.variants, self.paired = prior, variants, paired
        digest = hashlib.sha1(b"none" if prior is None else prior.coeffs.cpu().numpy().tobytes()).hexdigest()[:10]
        self.tag = f"p{digest}-a{variants}"
        self.crop = crop_size // codec.factor if crop_size else 0
        self.epoch = 0
        self.keys = ["z_in", "z_target"]  # every key is cropped and flipped together
        self.items: list[dict[str, torch.Tensor]] = []
        folder = Path(cache_dir) / codec.cache_key if cache_dir else None
        self.stems = [source.content_key(i) for i in range(len(source))]  # one cache file per item
        from rich.progress import track

        for i in track(range(len(source)), description="encoding pairs", disable=not show_progress):
            self.items.append(self._cached(i, folder, long_side))

    def _cache_path(self, folder: Path | None, i: int) -> Path | None:
        if folder is None:
            return None
        return folder / (f"{self.stems[i]}-{self.long_side}-m{self.multiple}-f{int(self.flip)}-"
                         f"{self.tag}.safetensors")

    def _input(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.prior is None else self.prior(x[None])[0]

    def _cached(self, i: int, folder: Path | None, long_side: int) -> dict[str, torch.Tensor]:
        path = self._cache_path(folder, i)
        if path is not None and path.is_file():
            item = load_safetensors(path)
        else:
            from core.demo import photometric_variant

            x_in, x_tgt = load_pair_tensors(self.source, i, long_side, self.multiple)
            images = {"z_in": x_in, "z_target": x_tgt}
            rng = np.random.default_rng([self.seed, i])
            for v in range(1, self.variants + 1):  # the target stays: the edit is the same whatever the camera did
                images[f"z_in_v{v}"] = photometric_variant(x_in, rng)
            item = {}
            for key, x in images.items():
                x = x if key == "z_target" else self._input(x)
                item[key] = encode(self.codec, x)
                if self.flip:
                    item[f"{key}_flip"] = encode(self.codec, x.flip(-1))
            if path is not None:
                save_safetensors(item, path)
        item["has_target"] = torch.tensor(float(self.paired))
        return item

    def extend(self, other: LatentPairDataset) -> None:
        """Append another dataset's items (e.g. unpaired photos) to this one's."""
        self.items += other.items
        self.stems += other.stems

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.items)

    @torch.no_grad()
    def add_target(self, key: str, fn, cache_dir: str | Path | None, cache_key: str,
                   show_progress: bool = True, batch_size: int = 16) -> None:
        """Add `key` = fn(z_in) to every item (and its mirror), cached per item.

        Used for the teacher's outputs. Items of the same size go through `fn` together, in
        batches; each item is its own file, so an interrupted build resumes where it stopped.
        """
        from rich.progress import Progress

        folder = Path(cache_dir) / cache_key if cache_dir else None
        todo = []
        for i in range(len(self.items)):
            path = self._cache_path(folder, i)
            if path is not None and path.is_file():
                self.items[i].update(load_safetensors(path))
            else:
                todo.append(i)
        names = [k for k in self.items[0] if k.startswith("z_in")] if self.items else []
        by_shape: dict[tuple, list[int]] = {}
        for i in todo:
            by_shape.setdefault(tuple(self.items[i]["z_in"].shape), []).append(i)
        with Progress(disable=not show_progress) as progress:
            task = progress.add_task(f"computing {key}", total=len(todo))
            for group in by_shape.values():
                for start in range(0, len(group), batch_size):
                    ids = group[start:start + batch_size]
                    outs = {}
                    for name in names:
                        z = torch.stack([self.items[i][name] for i in ids])
                        outs[name.replace("z_in", key)] = fn(z).float().cpu()
                    for j, i in enumerate(ids):
                        out = {k: v[j].clone() for k, v in outs.items()}
                        path = self._cache_path(folder, i)
                        if path is not None:
                            save_safetensors(out, path)
                        self.items[i].update(out)
                    progress.advance(task, len(ids))
        self.keys.append(key)

    def __getitem__(self, i: int) -> dict:
        g = torch.Generator().manual_seed(hash((self.seed, self.epoch, i)) & 0x7FFF_FFFF_FFFF)
        item = self.items[i]
        flipped = self.flip and bool(torch.randint(0, 2, (1,), generator=g))
        v = int(torch.randint(0, self.variants + 1, (1,), generator=g)) if self.variants else 0
        # inputs, and what was computed from them (the teacher's outputs), come in variants; the target not
        names = {k: k + (f"_v{v}" if v and k != "z_target" else "") + ("_flip" if flipped else "") for k in self.keys}
        out = {k: item[name] for k, name in names.items()}
        if self.crop:
            h, w = out["z_in"].shape[-2:]
            ch, cw = min(self.crop, h), min(self.crop, w)
            top = int(torch.randint(0, h - ch + 1, (1,), generator=g))
            left = int(torch.randint(0, w - cw + 1, (1,), generator=g))
            out = {k: v[:, top:top + ch, left:left + cw] for k, v in out.items()}
        return {**out, "has_target": item["has_target"], "index": i}


def load_val_set(source: PairSource, long_side: int, multiple: int, limit: int = 0):
    """Validation pairs at the working resolution: list of (name, input (3,H,W), target (3,H,W))."""
    n = len(source) if not limit else min(limit, len(source))
    return [(source.names[i], *load_pair_tensors(source, i, long_side, multiple)) for i in range(n)]
