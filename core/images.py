"""Photo I/O: load any JPEG/PNG/TIFF/WebP as float RGB, save it back with its metadata.

    rgb, meta = load_image("in/a.jpg")      # (H, W, 3) float32 in [0, 1], EXIF orientation applied
    save_image("out/a.jpg", rgb, meta)      # same ICC profile and EXIF (orientation reset to 1)
    px, meta = load_photo("in/a.png")       # uint8 for 8-bit files (the fast path), else float; alpha kept
    small = load_draft("in/a.jpg", 512)     # a JPEG decoded at 1/2..1/8 scale in the DCT domain (or None)

Choices, in one place:
- Pixels are returned as encoded in the file (sRGB for untagged files); no colour management,
  except CMYK, which is turned into sRGB. `meta.icc_profile` always describes the returned pixels
  and is written back by `save_image`, so an Adobe RGB or Display P3 photo stays correct.
- Alpha: the colour channels are kept as they are, not composited. `load_image` drops alpha;
  `load_photo` keeps an 8-bit file's alpha in `meta.alpha` and `save_image` writes it back
  (PNG, TIFF, WebP; a JPEG has none).
- 16-bit files keep their 16-bit precision: grey through PIL's I;16 modes, RGB(A) by decoding
  PIL's 16-bit raw modes twice (high byte, then low byte), since PIL itself keeps only 8 bits.
- Mode I is read as 16-bit (0..65535), mode F as [0, 1]; both are clipped.
- `resize` is torch bicubic with antialias=True (PIL's BICUBIC filter), clipped to [0, 1].
"""

from __future__ import annotations

import io
import os
import struct
import sys
import threading
import uuid
import warnings
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageCms, ImageFile, UnidentifiedImageError, features

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".tif", ".tiff", ".webp"}
DEFAULT_MAX_PIXELS = 200_000_000
FORMATS = {".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG", ".tif": "TIFF", ".tiff": "TIFF",
           ".webp": "WEBP"}
ORIENTATION = 0x0112
# TIFF tags that describe the file's own pixel layout: never copied into another file's EXIF.
_LAYOUT_TAGS = {254, 255, 256, 257, 258, 259, 262, 273, 277, 278, 279, 284, 317, 320, 322, 323,
                324, 325, 338, 339, 340, 341, 530, 531, 532, 700, 33723, 34377, 34675}
_OPEN_LOCK = threading.Lock()  # we switch PIL's global Image.MAX_IMAGE_PIXELS around each open


class ImageError(ValueError):
    """A photo that cannot be read or written: "path: what went wrong: the fix"."""

    def __init__(self, path, what: str | None = None, fix: str | None = None):
        super().__init__(str(path) if what is None else f"{path}: {what}: {fix}")
        self.path, self.what, self.fix = str(path), what or "", fix or ""


@dataclass
class ImageMeta:
    path: str
    format: str  # PIL's name: JPEG, PNG, TIFF, WEBP
    mode: str  # PIL mode of the file (RGB, RGBA, I;16, CMYK, ...)
    bit_depth: int  # bits per channel in the file (8, 16, 32)
    size: tuple[int, int]  # (w, h) after EXIF orientation
    icc_profile: bytes | None  # describes the pixels load_image returns
    exif: bytes | None  # orientation reset to 1, ready to write
    alpha: np.ndarray | None = None  # (H, W) uint8, oriented; only from load_photo on 8-bit files


def _open(src: str | Path | bytes, name: str, max_pixels: int) -> Image.Image:
    """Open the header; raise ImageError for empty, unknown or too-large files."""
    if isinstance(src, (bytes, bytearray, memoryview)):
        empty, fp = len(src) == 0, io.BytesIO(src)
    else:
        try:
            empty, fp = os.path.getsize(src) == 0, src
        except OSError as e:
            raise ImageError(name, f"cannot read the file ({e.strerror})", "check the path") from e
    if empty:
        raise ImageError(name, "file is empty (0 bytes)", "re-export or remove it")
    with _OPEN_LOCK:
        old = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = None  # PIL's bomb check is replaced by our clearer limit below
        try:
            im = Image.open(fp)
        except UnidentifiedImageError as e:
            raise ImageError(name, "not a recognised image",
                             "convert it to JPEG/PNG/TIFF/WebP or remove it") from e
        except Exception as e:  # a known format whose header is cut or damaged
            raise ImageError(name, f"cannot decode: the file is truncated or corrupt ({e})",
                             "re-export it or remove it") from e
        finally:
            Image.MAX_IMAGE_PIXELS = old
    w, h = im.size
    if w * h > max_pixels:
        im.close()
        raise ImageError(name, f"{w}x{h} = {w * h:,} pixels is above the limit of {max_pixels:,} "
                         "pixels (max_pixels)", "downscale it or raise max_pixels")
    return im


def _load(im: Image.Image, name: str) -> None:
    """Force the full decode so that truncated files fail here, not later."""
    ImageFile.LOAD_TRUNCATED_IMAGES = False  # a truncated photo is an error, never grey pixels
    try:
        im.load()
    except MemoryError:
        raise  # not the file's fault
    except Exception as e:
        raise ImageError(name, f"cannot decode: the file is truncated or corrupt ({e})",
                         "re-export it or remove it") from e


def _exif(im: Image.Image) -> tuple[int, bytes | None]:
    """(orientation, EXIF bytes with orientation 1); unreadable EXIF counts as none."""
    try:
        exif = im.getexif()
        orientation = int(exif.get(ORIENTATION, 1))
        for tag in _LAYOUT_TAGS & set(exif):
            del exif[tag]
        if ORIENTATION in exif:
            exif[ORIENTATION] = 1
        return (orientation if 1 <= orientation <= 8 else 1), (exif.tobytes() if exif else None)
    except (OSError, ValueError, KeyError, TypeError, SyntaxError, struct.error):
        return 1, None  # broken EXIF: keep the photo, lose the metadata


def _raw16(im: Image.Image) -> str | None:
    """The raw mode swapped to the other byte order if PIL reads 16-bit RGB(A) as 8-bit."""
    modes = {t.args if isinstance(t.args, str) else
             (t.args[0] if isinstance(t.args, tuple) and t.args else None) for t in im.tile}
    raw = modes.pop() if len(modes) == 1 else None
    if not (isinstance(raw, str) and raw.startswith(("RGB;16", "RGBA;16")) and raw[-1] in "BLN"):
        return None
    order = raw[-1] if raw[-1] != "N" else ("L" if sys.byteorder == "little" else "B")
    return raw[:-1] + ("B" if order == "L" else "L")


def _low_bytes(src, name: str, max_pixels: int, swapped: str) -> np.ndarray:
    """Decode again with the byte order swapped: PIL then keeps the low byte of each sample."""
    im = _open(src, name, max_pixels)
    try:
        im.tile = [t._replace(args=swapped if isinstance(t.args, str) else (swapped, *t.args[1:]))
                   for t in im.tile]
        _load(im, name)
        return np.asarray(im)
    finally:
        im.close()


def _to_float(im: Image.Image, low: np.ndarray | None, name: str
              ) -> tuple[np.ndarray, bytes | None]:
    """(H, W, 3) float32 in [0, 1] and the ICC profile that describes it."""
    icc = im.info.get("icc_profile") or None
    mode = im.mode
    if low is not None:
        a = (np.asarray(im)[..., :3].astype(np.uint16) << 8 | low[..., :3]) / np.float32(65535)
    elif mode.startswith("I;16"):
        a = np.asarray(im).astype(np.float32) / 65535
    elif mode == "I":
        a = np.clip(np.asarray(im), 0, 65535).astype(np.float32) / 65535
    elif mode == "F":
        a = np.clip(np.nan_to_num(np.asarray(im, dtype=np.float32)), 0, 1)
    elif mode in ("L", "RGB"):
        a = np.asarray(im).astype(np.float32) / 255
    elif mode in ("1", "LA", "La"):
        a = np.asarray(im.convert("L")).astype(np.float32) / 255
    elif mode in ("P", "PA", "RGBA", "RGBa", "RGBX"):
        a = np.asarray(im.convert("RGBA"))[..., :3].astype(np.float32) / 255
    elif mode == "CMYK":
        rgb = None
        if icc:  # the embedded CMYK profile gives real colours; PIL's formula is a rough guess
            try:
                rgb = ImageCms.profileToProfile(im, ImageCms.ImageCmsProfile(io.BytesIO(icc)),
                                                ImageCms.createProfile("sRGB"), outputMode="RGB")
            except (OSError, ValueError, ImageCms.PyCMSError):
                rgb = None  # a broken profile: fall back to PIL's formula
        icc = _srgb_icc() if rgb is not None else None
        a = np.asarray(rgb if rgb is not None else im.convert("RGB")).astype(np.float32) / 255
    else:
        try:
            a = np.asarray(im.convert("RGB")).astype(np.float32) / 255
        except Exception as e:
            raise ImageError(name, f"colour mode {mode} is not supported",
                             "convert it to an RGB JPEG/PNG/TIFF") from e
        icc = None  # the profile was for another colour space
    if a.ndim == 2:
        a = np.repeat(a[..., None], 3, axis=2)
    return np.ascontiguousarray(a, dtype=np.float32), icc


def _srgb_icc() -> bytes:
    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


def orient(a: np.ndarray, orientation: int) -> np.ndarray:
    """Apply an EXIF orientation (1-8) to an (H, W, C) array, as PIL's exif_transpose does."""
    ops = {2: lambda x: x[:, ::-1], 3: lambda x: x[::-1, ::-1], 4: lambda x: x[::-1],
           5: lambda x: x.swapaxes(0, 1), 6: lambda x: np.rot90(x, -1),
           7: lambda x: np.rot90(x, 2).swapaxes(0, 1), 8: lambda x: np.rot90(x, 1)}
    return np.ascontiguousarray(ops[orientation](a)) if orientation in ops else a


_ALPHA_MODES = ("RGBA", "RGBa", "LA", "La", "PA")


def _to_uint8(im: Image.Image, name: str) -> tuple[np.ndarray, bytes | None, np.ndarray | None]:
    """An 8-bit image as (H, W, 3) uint8, its ICC profile and its alpha (H, W) uint8 or None."""
    alpha = None
    if im.mode in _ALPHA_MODES or (im.mode == "P" and "transparency" in im.info):
        rgba = np.asarray(im.convert("RGBA"))
        return np.ascontiguousarray(rgba[..., :3]), im.info.get("icc_profile") or None, rgba[..., 3].copy()
    if im.mode == "RGB":
        return np.asarray(im), im.info.get("icc_profile") or None, alpha
    if im.mode in ("L", "1", "P"):
        return np.asarray(im.convert("RGB")), im.info.get("icc_profile") or None, alpha
    rgb, icc = _to_float(im, None, name)  # CMYK and other modes: the float conversion, then rounded
    return np.round(rgb * 255).astype(np.uint8), icc, alpha


def _decode(src, name: str, max_pixels: int, as_uint8: bool = False) -> tuple[np.ndarray, ImageMeta]:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Metadata Warning")  # odd TIFF tags
        im = _open(src, name, max_pixels)
        try:
            swapped = _raw16(im)  # read the tile before load() clears it
            _load(im, name)
            low = _low_bytes(src, name, max_pixels, swapped) if swapped else None
            depth = 16 if low is not None or im.mode.startswith("I;16") else (
                32 if im.mode in ("I", "F") else 8)
            alpha = None
            if as_uint8 and depth == 8:
                rgb, icc, alpha = _to_uint8(im, name)
            else:
                rgb, icc = _to_float(im, low, name)
            orientation, exif = _exif(im)
            fmt, mode = im.format or "", im.mode
        finally:
            im.close()
    rgb = orient(rgb, orientation)
    alpha = None if alpha is None else orient(alpha, orientation)
    size = (rgb.shape[1], rgb.shape[0])
    return rgb, ImageMeta(name, fmt, mode, depth, size, icc, exif, alpha)


def load_photo(path: str | Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[np.ndarray, ImageMeta]:
    """The photo path's reader: an 8-bit file as (H, W, 3) uint8 (no float copy; alpha, if any, in
    `meta.alpha`), a 16- or 32-bit file as load_image reads it (float32 in [0, 1], alpha dropped).
    EXIF orientation applied."""
    return _decode(str(path), str(path), max_pixels, as_uint8=True)


def load_draft(path: str | Path, long_side: int, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray | None:
    """A JPEG decoded in the DCT domain at the smallest of 1/2, 1/4, 1/8 scale whose long side is
    still at least `long_side`: (h, w, 3) uint8, EXIF orientation applied; a fraction of a full
    decode's cost, for the working copy. None for other formats (and CMYK JPEGs): decode fully."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Metadata Warning")
        im = _open(str(path), str(path), max_pixels)
        try:
            if im.format != "JPEG" or im.mode not in ("RGB", "L"):
                return None
            w, h = im.size
            scale = min(1.0, long_side / max(w, h))
            im.draft("RGB", (max(1, int(np.ceil(w * scale))), max(1, int(np.ceil(h * scale)))))
            _load(im, str(path))
            orientation, _ = _exif(im)
            small = np.asarray(im.convert("RGB"))
        finally:
            im.close()
    return orient(small, orientation)


def load_image(path: str | Path, max_pixels: int = DEFAULT_MAX_PIXELS
               ) -> tuple[np.ndarray, ImageMeta]:
    """Read a photo as (H, W, 3) float32 in [0, 1], EXIF orientation applied, plus its metadata."""
    return _decode(str(path), str(path), max_pixels)


def decode_image(data: bytes, name: str, max_pixels: int = DEFAULT_MAX_PIXELS
                 ) -> tuple[np.ndarray, ImageMeta]:
    """Like load_image for a file's bytes (e.g. a dataset row); `name` goes in errors."""
    return _decode(bytes(data), name, max_pixels)


def verify_image(src: str | Path | bytes, name: str | None = None,
                 max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[int, int]:
    """Fully decode a file or its bytes (no float conversion); return (w, h) after orientation."""
    name = name or str(src)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Metadata Warning")
        im = _open(src if isinstance(src, (bytes, bytearray)) else str(src), name, max_pixels)
        try:
            _load(im, name)
            orientation, _ = _exif(im)
            w, h = im.size
        finally:
            im.close()
    return (h, w) if orientation >= 5 else (w, h)


def read_size(path: str | Path) -> tuple[int, int]:
    """(w, h) after EXIF orientation, from the header only (cheap)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Metadata Warning")
        im = _open(str(path), str(path), sys.maxsize)
        try:
            orientation, _ = _exif(im)
            w, h = im.size
        finally:
            im.close()
    return (h, w) if orientation >= 5 else (w, h)


def list_photos(path: str | Path, flag: str = "--input") -> list[Path]:
    """The photo itself, or the photos in the folder (sorted by name, hidden files skipped)."""
    return find_photos(path, flag=flag)[0]


def find_photos(path: str | Path, recursive: bool = False, flag: str = "--input") -> tuple[list[Path], list[Path]]:
    """(photos, skipped): the photo itself, or the folder's photos sorted by path (with `recursive`,
    those of every subfolder too), and the other files found (not photos by their suffix).
    Hidden files and folders are left out of both."""
    path = Path(path)
    if path.is_file():
        return [path], []
    if not path.is_dir():
        raise SystemExit(f"error: {flag} {path} does not exist: pass a photo or a folder of photos")
    files = sorted(p for p in (path.rglob("*") if recursive else path.iterdir())
                   if p.is_file() and not any(part.startswith(".") for part in p.relative_to(path).parts))
    return ([p for p in files if p.suffix.lower() in IMAGE_SUFFIXES],
            [p for p in files if p.suffix.lower() not in IMAGE_SUFFIXES])


def jpeg_with_metadata(jpeg: bytes, icc: bytes | None, exif: bytes | None) -> bytes:
    """Insert EXIF (APP1) and an ICC profile (APP2 chunks) into an encoded JPEG that has none, e.g.
    one from torchvision.io.encode_jpeg; after its JFIF segment, as encoders place them."""
    def segment(marker: bytes, payload: bytes) -> bytes:
        return marker + struct.pack(">H", len(payload) + 2) + payload

    segments = b""
    if exif:
        payload = exif if exif.startswith(b"Exif\x00\x00") else b"Exif\x00\x00" + exif
        if len(payload) <= 65533:  # a segment holds 64 KiB; as save_image, keep the photo
            segments += segment(b"\xff\xe1", payload)
    if icc:
        chunks = [icc[i:i + 65519] for i in range(0, len(icc), 65519)]
        for n, chunk in enumerate(chunks, 1):
            segments += segment(b"\xff\xe2", b"ICC_PROFILE\x00" + bytes([n, len(chunks)]) + chunk)
    at = 2 + (2 + int.from_bytes(jpeg[4:6], "big") if jpeg[2:4] == b"\xff\xe0" else 0)
    return jpeg[:at] + segments + jpeg[at:]


def read_meta(path: str | Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> ImageMeta:
    """A photo's metadata from its header, without decoding the pixels (for decoders other than
    PIL's, e.g. torchvision.io.decode_jpeg on a GPU). `size` is after EXIF orientation."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Metadata Warning")
        im = _open(str(path), str(path), max_pixels)
        try:
            orientation, exif = _exif(im)
            w, h = im.size
            return ImageMeta(str(path), im.format or "", im.mode, 8, (h, w) if orientation >= 5 else (w, h),
                             im.info.get("icc_profile") or None, exif)
        finally:
            im.close()


def _png16(f, u16: np.ndarray, icc: bytes | None, exif: bytes | None) -> None:
    """Write an RGB 16-bit PNG by hand: PIL cannot write one."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data)
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    h, w, _ = u16.shape
    rows = u16.astype(">u2").view(np.uint8).reshape(h, w * 6)
    sub = rows.copy()
    sub[:, 6:] -= rows[:, :-6]  # PNG "Sub" filter (type 1): smaller files, wraps mod 256
    data = np.concatenate([np.ones((h, 1), np.uint8), sub], axis=1).tobytes()
    out = [b"\x89PNG\r\n\x1a\n", chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0))]
    if icc:
        out.append(chunk(b"iCCP", b"ICC Profile\x00\x00" + zlib.compress(icc)))
    if exif:
        out.append(chunk(b"eXIf", exif[6:] if exif.startswith(b"Exif\x00\x00") else exif))
    idat = zlib.compress(data, 3)
    step = 1 << 20  # several IDAT chunks, as encoders do; one chunk must stay under 2 GiB
    out += [chunk(b"IDAT", idat[i:i + step]) for i in range(0, len(idat), step)]
    out.append(chunk(b"IEND", b""))
    f.write(b"".join(out))


def _tiff16(f, u16: np.ndarray, icc: bytes | None, exif: bytes | None) -> None:
    """Write an RGB 16-bit TIFF with tifffile; keeps the ICC profile and EXIF's main text tags."""
    try:
        import tifffile
    except ImportError as e:
        raise ImageError("16-bit TIFF", "needs the tifffile package",
                         "pip install tifffile, or save with bit_depth=8") from e
    tags = []
    if exif:
        info = Image.Exif()
        info.load(exif)
        for tag in (271, 272, 306, 315, 33432):  # Make, Model, DateTime, Artist, Copyright
            if isinstance(info.get(tag), str):
                tags.append((tag, "s", 0, info[tag], True))
    tifffile.imwrite(f, u16, photometric="rgb", compression="zlib", predictor=True,
                     iccprofile=icc, metadata=None, extratags=tags)


def save_image(path: str | Path, rgb: np.ndarray, meta: ImageMeta | None = None,
               quality: int = 95, bit_depth: int = 8) -> None:
    """Write (H, W, 3) float in [0, 1] (clipped), or uint8, to JPEG/PNG/TIFF/WebP, by the suffix.

    With `meta`, the input's ICC profile and EXIF (orientation 1) are written too. bit_depth=16
    works for .png and .tif (16-bit TIFF keeps the ICC profile and EXIF's camera, date, artist and
    copyright, not the full EXIF). Atomic: a temporary file in the same folder, then os.replace.
    Never overwrites the input file `meta.path`. `meta.alpha` (from load_photo) is written back as
    the alpha channel of an 8-bit PNG, TIFF or WebP.
    """
    path = Path(path)
    fmt = FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise ImageError(path, f"unknown suffix {path.suffix!r}", "use .jpg, .png, .tif or .webp")
    if meta is not None and _same_file(path, Path(meta.path)):
        raise ImageError(path, "refusing to overwrite the input photo", "write to another folder")
    if bit_depth not in (8, 16) or (bit_depth == 16 and fmt not in ("PNG", "TIFF")):
        raise ImageError(path, f"bit_depth={bit_depth} is not possible for {fmt}",
                         "use bit_depth=8, or 16 with .png or .tif")
    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ImageError(path, f"expected an (H, W, 3) array, got shape {rgb.shape}",
                         "pass one RGB image")
    u8 = rgb if rgb.dtype == np.uint8 and bit_depth == 8 else None
    if u8 is None:
        rgb = np.clip(np.nan_to_num(rgb.astype(np.float32) / (255 if rgb.dtype == np.uint8 else 1)), 0, 1)
    icc, exif = (meta.icc_profile, meta.exif) if meta is not None else (None, None)
    alpha = getattr(meta, "alpha", None)
    if alpha is not None and (alpha.shape != rgb.shape[:2] or fmt == "JPEG"):
        alpha = None  # another size (the caller resized) or a format without alpha
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(tmp, "xb") as f:
            if bit_depth == 16:
                u16 = np.round(rgb * 65535).astype(np.uint16)
                (_png16 if fmt == "PNG" else _tiff16)(f, u16, icc, exif)
            else:
                u8 = np.round(rgb * 255).astype(np.uint8) if u8 is None else u8
                _save8(f, u8, fmt, quality, icc, exif, path, alpha)
        os.replace(tmp, path)
    except ImageError:
        raise
    except Exception as e:
        raise ImageError(path, f"cannot write the photo ({e})", "check the folder and the "
                         "format's limits (WebP: at most 16383 px a side)") from e
    finally:
        tmp.unlink(missing_ok=True)


def _save8(f, u8: np.ndarray, fmt: str, quality: int, icc, exif, path: Path,
           alpha: np.ndarray | None = None) -> None:
    kw: dict = {"format": fmt}
    if icc:
        kw["icc_profile"] = icc
    if exif:
        kw["exif"] = exif
    if fmt == "JPEG":
        kw.update(quality=quality, subsampling=0 if quality >= 90 else 2)  # 4:4:4 keeps colour
        if exif and len(exif) > 65533:  # a JPEG segment holds 64 KiB; keep the photo, drop EXIF
            warnings.warn(f"{path}: EXIF is {len(exif)} bytes, too long for JPEG: not written", stacklevel=2)
            del kw["exif"]
    elif fmt == "WEBP":
        kw["quality"] = quality
    elif fmt == "TIFF" and features.check("libtiff"):
        kw["compression"] = "tiff_adobe_deflate"
    im = Image.fromarray(u8, "RGB")
    if alpha is not None:
        im.putalpha(Image.fromarray(alpha, "L"))
    im.save(f, **kw)


def _same_file(a: Path, b: Path) -> bool:
    if a.resolve() == b.resolve():
        return True
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


def to_tensor(rgb: np.ndarray, view: bool = False) -> torch.Tensor:
    """(H, W, 3) array -> (3, H, W) float32 tensor (values as they are: uint8 stays 0..255).

    view=False: a packed (3, H, W) copy. view=True: the array's own memory where it is float32
    (channels-last strides, no copy): what a full-resolution photo wants, 24 MP being 288 MB.
    """
    if view:
        return torch.from_numpy(np.ascontiguousarray(rgb, dtype=np.float32)).permute(2, 0, 1)
    return torch.from_numpy(np.ascontiguousarray(np.asarray(rgb, np.float32).transpose(2, 0, 1)))


def to_numpy(t: torch.Tensor) -> np.ndarray:
    """(3, H, W) tensor -> (H, W, 3) float32 array."""
    return np.ascontiguousarray(t.detach().float().cpu().permute(1, 2, 0).numpy())


PSNR_CAP_DB = 100.0  # identical images have infinite PSNR: reported as 100 dB so that means stay finite


def srgb_to_linear(x):
    """sRGB in [0, 1] -> linear light (IEC 61966-2-1); a torch tensor or a numpy array."""
    where = torch.where if torch.is_tensor(x) else np.where
    return where(x <= 0.04045, x / 12.92, ((x + 0.055) / 1.055) ** 2.4)


def linear_to_srgb(x):
    """Linear light -> sRGB, clipped to [0, 1]; a torch tensor or a numpy array."""
    if torch.is_tensor(x):
        x = x.clamp(0, 1)
        return torch.where(x <= 0.0031308, 12.92 * x, 1.055 * x.clamp_min(1e-12) ** (1 / 2.4) - 0.055)
    x = np.clip(x, 0.0, 1.0)
    return np.where(x <= 0.0031308, 12.92 * x, 1.055 * x ** (1 / 2.4) - 0.055)


def psnr_db(pred: torch.Tensor, target: torch.Tensor) -> float:
    """PSNR in dB (data range 1) of (3, H, W) or (B, 3, H, W) images in [0, 1]: the mean over a
    batch of each image's PSNR, capped at PSNR_CAP_DB. torchmetrics' formula, 10 log10(1 / MSE)."""
    from torchmetrics.functional.image import peak_signal_noise_ratio

    pred, target = (pred[None], target[None]) if pred.ndim == 3 else (pred, target)
    per_image = peak_signal_noise_ratio(pred.float(), target.float().to(pred.device), data_range=1.0,
                                        dim=(1, 2, 3), reduction="none")
    return float(per_image.clamp(max=PSNR_CAP_DB).mean())


def resize(rgb: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(H, W, 3) float in [0, 1] -> (h, w, 3) for size=(w, h); antialiased bicubic, clipped."""
    w, h = size
    if (h, w) == rgb.shape[:2]:
        return np.asarray(rgb, np.float32)
    x = to_tensor(rgb)[None]
    y = F.interpolate(x, size=(h, w), mode="bicubic", antialias=True, align_corners=False)
    return to_numpy(y[0].clamp_(0, 1))
