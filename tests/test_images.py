"""core.images on real files written to tmp_path: formats, bit depths, modes, metadata, errors."""

import warnings

import numpy as np
import pytest
import tifffile
from PIL import Image, ImageCms, ImageFile, ImageOps

from core.images import (
    ImageError,
    load_image,
    read_size,
    resize,
    save_image,
    to_numpy,
    to_tensor,
    verify_image,
)

SRGB_ICC = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


def photo(h=40, w=60) -> np.ndarray:
    """(h, w, 3) uint8: smooth gradients plus a white block in the top-left corner."""
    y, x = np.mgrid[0:h, 0:w]
    a = np.stack([x * 255 // (w - 1), y * 255 // (h - 1), np.full_like(x, 90)], -1)
    a[: h // 4, : w // 4] = 255
    return a.astype(np.uint8)


def exif_bytes(orientation=6, make="TestCam") -> bytes:
    exif = Image.Exif()
    exif[0x0112], exif[271] = orientation, make
    return exif.tobytes()


@pytest.mark.parametrize("suffix,tol", [(".jpg", 0.03), (".png", 0.0), (".tif", 0.0),
                                        (".webp", 0.03)])
def test_round_trip_every_format(tmp_path, suffix, tol):
    rgb = photo() / 255.0
    save_image(tmp_path / f"a{suffix}", rgb)
    back, meta = load_image(tmp_path / f"a{suffix}")
    assert back.shape == (40, 60, 3) and back.dtype == np.float32
    assert meta.size == (60, 40) and meta.bit_depth == 8
    assert np.abs(back - rgb).mean() <= tol + 1e-6
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"a{suffix}"]  # no temp file left


def test_16bit_png_grey_keeps_precision(tmp_path):
    levels = np.arange(0, 4000, dtype=np.uint16).reshape(40, 100) * 7  # not multiples of 257
    Image.fromarray(levels).save(tmp_path / "deep.png")
    rgb, meta = load_image(tmp_path / "deep.png")
    assert meta.bit_depth == 16 and meta.mode.startswith("I;16")
    assert len(np.unique(rgb[..., 0])) == 4000  # an 8-bit read would give ~109 levels
    assert np.array_equal(np.round(rgb[..., 1] * 65535).astype(np.uint16), levels)


@pytest.mark.parametrize("writer", ["tifffile", "tifffile-big-endian-zlib", "save_image-png",
                                    "save_image-tif"])
def test_16bit_rgb_keeps_precision(tmp_path, writer):
    rng = np.random.default_rng(0)
    deep = rng.integers(0, 65536, (12, 17, 3)).astype(np.uint16)
    if writer.startswith("tifffile"):
        path = tmp_path / "deep.tif"
        big = writer.endswith("zlib")
        tifffile.imwrite(path, deep, photometric="rgb", byteorder=">" if big else "<",
                         compression="zlib" if big else None)
    else:
        path = tmp_path / ("deep.png" if writer.endswith("png") else "deep.tif")
        save_image(path, deep / 65535.0, bit_depth=16)
    rgb, meta = load_image(path)
    assert meta.bit_depth == 16
    assert np.array_equal(np.round(rgb * 65535).astype(np.uint16), deep)
    if writer == "save_image-png":  # an independent reader (PIL, 8-bit) sees the high bytes
        assert np.array_equal(np.asarray(Image.open(path)), (deep >> 8).astype(np.uint8))


def test_cmyk_jpeg_gives_plausible_rgb(tmp_path):
    im = Image.new("CMYK", (32, 16), (0, 255, 255, 0))  # red
    im.paste((255, 255, 0, 0), (16, 0, 32, 16))  # blue
    im.save(tmp_path / "cmyk.jpg", quality=95)
    assert Image.open(tmp_path / "cmyk.jpg").info.get("adobe")  # Adobe's inverted CMYK
    rgb, meta = load_image(tmp_path / "cmyk.jpg")
    assert meta.mode == "CMYK" and rgb.shape == (16, 32, 3)
    assert np.allclose(rgb[8, 4], [1, 0, 0], atol=0.1)
    assert np.allclose(rgb[8, 28], [0, 0, 1], atol=0.1)


@pytest.mark.parametrize("mode", ["RGBA", "LA", "P", "L", "1"])
def test_colour_modes_become_rgb(tmp_path, mode):
    src = Image.fromarray(photo())
    im = src.convert(mode)
    im.save(tmp_path / "m.png")
    rgb, meta = load_image(tmp_path / "m.png")
    assert meta.mode == mode and rgb.shape == (40, 60, 3)
    expected = np.asarray(im.convert("RGB")) / 255.0  # alpha is dropped, colour kept
    assert np.allclose(rgb, expected, atol=1e-6)


def test_alpha_is_dropped_not_composited(tmp_path):
    a = np.zeros((4, 4, 4), np.uint8)
    a[..., 0] = 200  # red-ish, fully transparent
    Image.fromarray(a, "RGBA").save(tmp_path / "clear.png")
    rgb, _ = load_image(tmp_path / "clear.png")
    assert np.allclose(rgb[0, 0], [200 / 255, 0, 0])


@pytest.mark.parametrize("orientation,stored", [(6, 1), (8, -1)])
def test_exif_rotated_jpeg_comes_back_upright(tmp_path, orientation, stored):
    upright = photo()  # (40, 60): white block top-left
    Image.fromarray(np.rot90(upright, stored).copy()).save(
        tmp_path / "r.jpg", exif=exif_bytes(orientation), quality=95)
    rgb, meta = load_image(tmp_path / "r.jpg")
    assert rgb.shape == (40, 60, 3) and meta.size == (60, 40)
    assert np.abs(rgb - upright / 255.0).mean() < 0.02
    assert read_size(tmp_path / "r.jpg") == (60, 40) == verify_image(tmp_path / "r.jpg")


def test_every_orientation_matches_pil(tmp_path):
    for orientation in range(1, 9):
        Image.fromarray(photo(5, 7)).save(tmp_path / "o.png", exif=exif_bytes(orientation))
        rgb, _ = load_image(tmp_path / "o.png")
        expected = np.asarray(ImageOps.exif_transpose(Image.open(tmp_path / "o.png"))) / 255.0
        assert rgb.shape == expected.shape and np.allclose(rgb, expected), orientation


@pytest.mark.parametrize("suffix,bit_depth", [(".jpg", 8), (".png", 8), (".tif", 8),
                                              (".webp", 8), (".png", 16), (".tif", 16)])
def test_icc_and_exif_are_kept_with_orientation_reset(tmp_path, suffix, bit_depth):
    Image.fromarray(np.rot90(photo(), 1).copy()).save(
        tmp_path / "in.jpg", exif=exif_bytes(6, "TestCam"), icc_profile=SRGB_ICC)
    rgb, meta = load_image(tmp_path / "in.jpg")
    assert meta.icc_profile == SRGB_ICC
    out = tmp_path / "out" / f"edited{suffix}"
    save_image(out, rgb, meta, bit_depth=bit_depth)
    saved = Image.open(out)
    assert saved.info.get("icc_profile") == SRGB_ICC
    exif = saved.getexif()
    assert exif.get(271) == "TestCam"
    assert exif.get(0x0112, 1) == 1  # pixels are upright now: no viewer may rotate them again
    back, back_meta = load_image(out)
    assert back.shape == (40, 60, 3) and back_meta.size == (60, 40)


def test_pixel_limit_is_a_clear_error(tmp_path, monkeypatch):
    Image.fromarray(photo(20, 10)).save(tmp_path / "big.png")
    with pytest.raises(ImageError, match=r"big\.png.*above the limit of 100 pixels"):
        load_image(tmp_path / "big.png", max_pixels=100)
    # PIL's own decompression-bomb check never fires first, not even as a warning
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        rgb, _ = load_image(tmp_path / "big.png", max_pixels=1000)
    assert rgb.shape == (20, 10, 3) and Image.MAX_IMAGE_PIXELS == 10


def test_empty_and_truncated_files_name_the_file(tmp_path, monkeypatch):
    (tmp_path / "empty.jpg").write_bytes(b"")
    with pytest.raises(ImageError, match=r"empty\.jpg: file is empty \(0 bytes\)"):
        load_image(tmp_path / "empty.jpg")
    noise = np.random.default_rng(0).integers(0, 256, (128, 128, 3)).astype(np.uint8)
    Image.fromarray(noise).save(tmp_path / "full.jpg")
    data = (tmp_path / "full.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)  # someone else's setting
    for check in (load_image, verify_image):
        with pytest.raises(ImageError, match=r"cut\.jpg: cannot decode.*truncated or corrupt"):
            check(tmp_path / "cut.jpg")
    (tmp_path / "junk.png").write_bytes(b"not an image at all")
    with pytest.raises(ImageError, match=r"junk\.png: not a recognised image"):
        load_image(tmp_path / "junk.png")


def test_save_never_overwrites_the_input(tmp_path):
    Image.fromarray(photo()).save(tmp_path / "in.png")
    before = (tmp_path / "in.png").read_bytes()
    rgb, meta = load_image(tmp_path / "in.png")
    (tmp_path / "sub").mkdir()
    for target in (tmp_path / "in.png", tmp_path / "sub" / ".." / "in.png"):
        with pytest.raises(ImageError, match="refusing to overwrite the input"):
            save_image(target, rgb * 0, meta)
    assert (tmp_path / "in.png").read_bytes() == before
    with pytest.raises(ImageError, match="bit_depth=16 is not possible for JPEG"):
        save_image(tmp_path / "deep.jpg", rgb, bit_depth=16)
    assert not (tmp_path / "deep.jpg").exists()


def test_tensor_helpers_and_resize():
    rgb = photo() / np.float32(255)
    t = to_tensor(rgb)
    assert t.shape == (3, 40, 60) and np.array_equal(to_numpy(t), rgb)
    small = resize(rgb, (30, 20))  # (w, h)
    assert small.shape == (20, 30, 3) and small.min() >= 0 and small.max() <= 1
    assert abs(small.mean() - rgb.mean()) < 0.01  # antialiased: the average tone is kept
    flat = np.full((33, 47, 3), 0.25, np.float32)
    assert np.allclose(resize(flat, (100, 70)), 0.25, atol=1e-6)
