"""Edit many photo files fast: decode and encode in threads, overlapped with the compute.

    stats = enhance_files(pipe, plan(photos, root, out_dir), workers=2, batch_size=2)
    print(format_summary(stats))     # photos/s and ms per part (decode, working copy, model, transfer, encode)

`pipe` is a photo pipeline (core.pipeline.EditPipeline, or a model's own full-resolution one such
as the LUT's) with `edit_batch` for uint8 photos. 8-bit photos stay uint8 from decode to encode;
16-bit ones take the float reference path. PIL and torch release the GIL, so the threads'
decoding and encoding run beside the compute. Used by `student.enhance` and `eval.bench_enhance`.
"""

from __future__ import annotations

import os
import time
import warnings
from collections import defaultdict, deque
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

from core.checkpoint import atomic_path
from core.images import ImageError, jpeg_with_metadata, load_draft, load_photo, read_meta, save_image
from core.pipeline import photo_tensor

PARTS = ("decode", "working_copy", "model", "transfer", "encode")
_warned: set[str] = set()


def _warn_once(kind: str, text: str) -> None:
    """One warning per kind ("decode", "encode") and process, not one per photo."""
    if kind not in _warned:
        _warned.add(kind)
        warnings.warn(text + " (said once; later photos likewise)", stacklevel=3)


def plan(inputs: list[Path], root: Path, out_dir: Path) -> list[tuple[Path, Path]]:
    """(source, output) pairs: the output mirrors the source's path below `root` (a single photo
    given as --input lands in out_dir by its name)."""
    return [(src, out_dir / (src.relative_to(root) if root.is_dir() else src.name)) for src in inputs]


def shard(items: list, rank: int, world: int) -> list:
    """This process's share of the sorted list: every world-th item from `rank` (balanced when
    the photos of one shoot have similar sizes; each item belongs to exactly one rank)."""
    return items[rank::world]


def resolve_io(io: str, device: torch.device | str = "cpu") -> tuple[str, str]:
    """(decoder, encoder) of JPEGs for --io. auto: torchvision decodes where it imports (on a GPU, on
    the GPU; on the CPU libjpeg-turbo straight into a tensor: the same pixels as PIL's, ~60-80 ms
    sooner at 24 MP, no tobytes copy); it encodes on a GPU only (no copy of the photo to the host,
    chroma 4:2:0); on the CPU PIL encodes, with 4:4:4 chroma at quality >= 90 (save_image).
    torchvision: both by torchvision on any device; pil: both by PIL."""
    if io == "pil":
        return "pil", "pil"
    if io == "torchvision":
        return "torchvision", "torchvision"
    try:
        import torchvision.io  # noqa: F401
    except ImportError:
        return "pil", "pil"
    return "torchvision", "torchvision" if torch.device(device).type == "cuda" else "pil"


def _read(src: Path, io: str, device: torch.device, draft_side: int):
    """(pixels, meta, working copy or None, ms): uint8 (H, W, 3) numpy, or (3, H, W) uint8 on the
    device from torchvision's decoder (RGB and grey JPEGs, --io torchvision; an HWC view on the CPU),
    or float32 for 16-bit files."""
    t0 = time.perf_counter()
    if io == "torchvision" and src.suffix.lower() in (".jpg", ".jpeg"):
        import torchvision.io as tio

        meta = read_meta(src)
        if meta.mode in ("RGB", "L"):  # CMYK and the rare others: PIL's conversion, as the float path
            try:
                data = tio.read_file(str(src))
                px = tio.decode_jpeg(data, mode=tio.ImageReadMode.RGB, device=device, apply_exif_orientation=True)
                if px.device.type == "cpu" and not px.permute(1, 2, 0).is_contiguous():
                    px = px.permute(1, 2, 0).contiguous().permute(2, 0, 1)  # turned by EXIF: HWC for the kernels
                lo = load_draft(src, draft_side) if draft_side else None
                return px, meta, lo, (time.perf_counter() - t0) * 1e3
            except RuntimeError as exc:  # a JPEG nvjpeg/libjpeg in torchvision cannot take: PIL decodes it
                _warn_once("decode", f"core/batch.py: torchvision could not decode {src} ({exc}); "
                           "PIL decodes it instead")
    px, meta = load_photo(src)
    lo = load_draft(src, draft_side) if draft_side and px.dtype == np.uint8 else None
    return px, meta, lo, (time.perf_counter() - t0) * 1e3


def _write(dst: Path, out, meta, io: str, quality: int = 95) -> float:
    t0 = time.perf_counter()
    if isinstance(out, torch.Tensor):  # (3, H, W) uint8 from the torchvision path
        if io == "torchvision" and dst.suffix.lower() in (".jpg", ".jpeg"):
            import torchvision.io as tio

            try:
                jpeg = bytes(tio.encode_jpeg(out, quality=quality).cpu().numpy().tobytes())
            except RuntimeError as exc:
                _warn_once("encode", f"core/batch.py: torchvision could not encode {dst} ({exc}); "
                           "PIL encodes it instead")
            else:
                dst.parent.mkdir(parents=True, exist_ok=True)
                with atomic_path(dst) as tmp:
                    tmp.write_bytes(jpeg_with_metadata(jpeg, meta.icc_profile, meta.exif))
                    os.chmod(tmp, 0o644)  # as save_image's files (mkstemp makes it private)
                return (time.perf_counter() - t0) * 1e3
        out = out.permute(1, 2, 0).cpu().numpy()
    deep = meta.bit_depth > 8 and dst.suffix.lower() in (".png", ".tif", ".tiff")
    save_image(dst, out, meta, quality=quality, bit_depth=16 if deep else 8)
    return (time.perf_counter() - t0) * 1e3


class Buffers:
    """Output photos' memory, reused from batch to batch: a fresh 24 MP buffer is page-faulted in
    as it is written (about 20 ms a photo on 2 cores, more than the transfer itself). A buffer goes
    back (`give`) once its photo is encoded; at most `keep` wait for reuse."""

    def __init__(self, keep: int):
        self.keep, self.free = keep, deque()

    @staticmethod
    def _key(t: torch.Tensor) -> tuple:
        return tuple(t.shape), t.stride(), t.dtype, t.device

    def take(self, like: torch.Tensor) -> torch.Tensor:
        """An uninitialised tensor like `like`: same shape, strides (an HWC view stays one), device."""
        key = self._key(like)
        for i, (k, buf) in enumerate(self.free):
            if k == key:
                del self.free[i]
                return buf
        return torch.empty_like(like)

    def give(self, buf: torch.Tensor) -> None:
        self.free.append((self._key(buf), buf))
        while len(self.free) > self.keep:
            self.free.popleft()


def _edit(pipe, batch: list, parts: dict, buffers: Buffers) -> list:
    """Edit a batch of decoded photos of one size and kind; returns the outputs in order: uint8
    (3, H, W) tensors from `buffers` for 8-bit photos (never stacked: views of each decoded photo
    go in), float32 (H, W, 3) arrays for 16-bit ones."""
    px = [b[0] for b in batch]
    if isinstance(px[0], np.ndarray) and px[0].dtype != np.uint8:  # 16-bit photos: the float reference path
        outs = [pipe(p) for p in px]
    else:
        x = px if isinstance(px[0], torch.Tensor) else [photo_tensor(p)[0] for p in px]  # HWC views
        lo = [b[2] for b in batch]
        lo_t = None
        if all(a is not None for a in lo) and len({a.shape for a in lo}) == 1:
            lo_t = torch.from_numpy(np.stack(lo)).permute(0, 3, 1, 2).float().div_(255)
        outs = pipe.edit_batch(x, lo_t, out=[buffers.take(t) for t in x])
    t = pipe.timings
    parts["working_copy"] += t.get("resize_ms", 0.0)
    parts["model"] += t.get("encode_ms", 0.0) + t.get("model_ms", 0.0) + t.get("decode_ms", 0.0)
    parts["transfer"] += t.get("transfer_ms", 0.0)
    return outs


PIL_BLOCKS_PER_WORKER = 8  # a 24 MP photo is 6 of PIL's 16 MB blocks (its RGB is 4 bytes a pixel)


@contextmanager
def pil_block_cache(workers: int):
    """Let PIL keep freed image memory for the next photo (Image.core.set_blocks_max, Pillow's own
    knob, also PILLOW_BLOCKS_MAX): each encode's Image.fromarray otherwise pages in 96 MB afresh at
    24 MP (77 -> 43 ms). At most PIL_BLOCKS_PER_WORKER * workers blocks of 16 MB stay cached during
    the run; the setting is restored (and the cache freed) after it."""
    from PIL import Image

    before = Image.core.get_blocks_max()
    Image.core.set_blocks_max(max(before, PIL_BLOCKS_PER_WORKER * max(1, workers)))
    try:
        yield
    finally:
        Image.core.set_blocks_max(before)


def enhance_files(pipe, jobs: list[tuple[Path, Path]], workers: int = 2, batch_size: int = 1,
                  io: str = "auto", draft_side: int = 0, device: torch.device | str = "cpu") -> dict:
    """Edit every (source, output) pair with decode and encode overlapped with the compute.

    `workers` threads decode ahead (at most workers + batch_size photos in memory) and encode
    behind; consecutive photos of one size are batched; `io`: the JPEG codecs (resolve_io).
    Returns {"done", "failed": [lines], "seconds", "photos_per_s", "parts_ms": summed ms of decode,
    working_copy, model, transfer, encode (decode and encode ran in the threads, beside the compute)}.
    """
    device = torch.device(device)
    decoder, encoder = resolve_io(io, device)
    parts: dict[str, float] = defaultdict(float)
    failed: list[str] = []
    done = 0
    start = time.perf_counter()
    buffers = Buffers(max(1, workers) + batch_size)  # the photos in flight: the next batch reuses them
    with pil_block_cache(workers), ThreadPoolExecutor(max(1, workers)) as pool:
        todo = deque(jobs)
        reads: deque = deque()
        writes: deque = deque()

        def refill():
            while todo and len(reads) < max(1, workers) + batch_size:
                src, dst = todo.popleft()
                reads.append((src, dst, pool.submit(_read, src, decoder, device, draft_side)))

        def finish_writes(limit: int):
            nonlocal done
            while len(writes) > limit:
                dst, fut, out = writes.popleft()
                try:
                    parts["encode"] += fut.result()
                    done += 1
                except (ImageError, OSError, RuntimeError, ValueError) as exc:
                    failed.append(f"{dst}: {exc}")
                if isinstance(out, torch.Tensor):
                    buffers.give(out)  # written (or failed): its memory takes a later photo

        def take():
            src, dst, fut = reads.popleft()
            refill()
            try:
                px, meta, lo, ms = fut.result()
            except (ImageError, OSError, RuntimeError, ValueError) as exc:
                failed.append(f"{src}: {exc}")
                return None
            parts["decode"] += ms
            return px, meta, lo, dst

        refill()
        while reads:
            first = take()
            if first is None:
                continue
            batch = [first]
            kind = lambda b: (tuple(b[0].shape), str(b[0].dtype), isinstance(b[0], torch.Tensor))  # noqa: E731
            while len(batch) < batch_size and reads and batch[0][0].dtype in (np.uint8, torch.uint8):
                nxt = take()
                if nxt is None:
                    continue
                if kind(nxt) != kind(batch[0]):
                    reads.appendleft((None, nxt[3], _Done(nxt)))  # edit it next, in its own batch
                    break
                batch.append(nxt)
            try:
                outs = _edit(pipe, batch, parts, buffers)
            except (RuntimeError, ValueError) as exc:
                failed += [f"{b[3]}: {exc}" for b in batch]
                continue
            for b, out in zip(batch, outs):
                writes.append((b[3], pool.submit(_write, b[3], out, b[1], encoder), out))
            finish_writes(max(1, workers))  # bounds the finished photos waiting in memory
        finish_writes(0)
    seconds = time.perf_counter() - start
    return {"done": done, "failed": failed, "seconds": seconds, "photos_per_s": done / max(seconds, 1e-9),
            "parts_ms": {k: parts[k] for k in PARTS}}


class _Done:
    """A decoded photo put back in the queue, looking like the future of its read."""

    def __init__(self, item):
        self.item = item

    def result(self):
        px, meta, lo, _ = self.item
        return px, meta, lo, 0.0


def format_summary(stats: dict) -> str:
    n = max(1, stats["done"])
    parts = ", ".join(f"{k} {v / n:.0f} ms" for k, v in stats["parts_ms"].items())
    return (f"{stats['done']} photo(s) in {stats['seconds']:.1f} s: {stats['photos_per_s']:.2f} photos/s "
            f"(per photo: {parts}; decode and encode overlapped with the rest)")
