"""Tests for nst_jax.image_io: mode conversion, resizing, atomic saving, errors, samples."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from nst_jax import image_io
from nst_jax.errors import NstError
from nst_jax.image_io import (
    SAMPLES,
    atomic_write_bytes,
    check_output_path,
    load_image,
    resize_image,
    sample_path,
    save_image,
)


def _write(tmp_path: Path, name: str, im: Image.Image, **kw) -> Path:
    path = tmp_path / name
    im.save(path, **kw)
    return path


def _check_rgb(img: np.ndarray, hw: tuple[int, int]) -> None:
    assert img.dtype == np.float32
    assert img.shape == (*hw, 3)
    assert img.min() >= 0.0 and img.max() <= 1.0


# ---------------------------------------------------------------------------------------------
# Mode conversion


def test_grayscale_l_becomes_equal_rgb(tmp_path):
    path = _write(tmp_path, "g.png", Image.new("L", (5, 3), 128))
    img = load_image(path)
    _check_rgb(img, (3, 5))
    np.testing.assert_allclose(img, 128 / 255, atol=1e-6)


def test_la_alpha_composited_over_white(tmp_path):
    im = Image.new("LA", (2, 1))
    im.putpixel((0, 0), (0, 0))  # black, fully transparent -> white
    im.putpixel((1, 0), (51, 255))  # opaque gray
    img = load_image(_write(tmp_path, "la.png", im))
    np.testing.assert_allclose(img[0, 0], [1, 1, 1], atol=1e-6)
    np.testing.assert_allclose(img[0, 1], [51 / 255] * 3, atol=1e-6)


def test_rgba_half_alpha_composited_over_white(tmp_path):
    im = Image.new("RGBA", (1, 1), (255, 0, 0, 128))
    img = load_image(_write(tmp_path, "rgba.png", im))
    a = 128 / 255
    np.testing.assert_allclose(img[0, 0], [1.0, 1 - a, 1 - a], atol=1e-6)


def test_palette_with_transparency(tmp_path):
    im = Image.new("P", (2, 1))
    im.putpalette([0, 0, 0, 0, 0, 255] + [0] * (3 * 254))  # 0: black, 1: blue
    im.putpixel((0, 0), 0)
    im.putpixel((1, 0), 1)
    path = _write(tmp_path, "p.png", im, transparency=0)
    assert Image.open(path).mode == "P"
    img = load_image(path)
    np.testing.assert_allclose(img[0, 0], [1, 1, 1], atol=1e-6)  # transparent index -> white
    np.testing.assert_allclose(img[0, 1], [0, 0, 1], atol=1e-6)


def test_palette_without_transparency(tmp_path):
    im = Image.new("P", (1, 1))
    im.putpalette([10, 20, 30] + [0] * 765)
    img = load_image(_write(tmp_path, "p.gif", im))
    np.testing.assert_allclose(img[0, 0], np.array([10, 20, 30]) / 255, atol=1e-6)


def test_cmyk(tmp_path):
    path = _write(tmp_path, "c.tif", Image.new("CMYK", (2, 2), (255, 0, 0, 0)))
    assert Image.open(path).mode == "CMYK"
    img = load_image(path)
    np.testing.assert_allclose(img[0, 0], [0, 1, 1], atol=1e-6)  # pure cyan


def test_16bit_gray_keeps_its_range(tmp_path):
    values = np.array([[0, 1000, 30000, 65535]], dtype=np.uint16)
    path = _write(tmp_path, "g16.png", Image.fromarray(values))
    assert Image.open(path).mode.startswith("I;16")
    img = load_image(path)
    np.testing.assert_allclose(img[0, :, 0], values[0] / 65535, atol=1e-6)
    assert 0.4 < img[0, 2, 0] < 0.5  # 30000 is not saturated to 1
    np.testing.assert_array_equal(img[..., 0], img[..., 2])


def test_32bit_int_and_float_modes(tmp_path):
    ints = np.array([[0, 32768, 65535]], dtype=np.int32)
    path_i = _write(tmp_path, "i.tif", Image.fromarray(ints))
    assert Image.open(path_i).mode == "I"
    np.testing.assert_allclose(load_image(path_i)[0, :, 1], ints[0] / 65535, atol=1e-6)
    floats = np.array([[0.0, 0.25, 1.0]], dtype=np.float32)
    path_f = _write(tmp_path, "f.tif", Image.fromarray(floats))
    assert Image.open(path_f).mode == "F"
    np.testing.assert_allclose(load_image(path_f)[0, :, 0], floats[0], atol=1e-6)


def test_exif_orientation_6_rotates(tmp_path):
    # Stored 4 wide x 2 high, red marker at the stored top-left; orientation 6 means "rotate 90
    # degrees clockwise to display", so it shows 2 wide x 4 high with the marker at the top-right.
    im = Image.new("RGB", (4, 2), (0, 0, 255))
    im.putpixel((0, 0), (255, 0, 0))
    exif = Image.Exif()
    exif[0x0112] = 6
    path = _write(tmp_path, "rot.png", im, exif=exif)
    img = load_image(path)
    _check_rgb(img, (4, 2))
    np.testing.assert_allclose(img[0, 1], [1, 0, 0], atol=1e-6)
    np.testing.assert_allclose(img[0, 0], [0, 0, 1], atol=1e-6)
    assert np.isclose(img[..., 0], 1.0).sum() == 1


# ---------------------------------------------------------------------------------------------
# Resizing


def test_fit_longest_rounds_halves_up_exactly():
    from nst_jax.imageops import fit_longest

    assert fit_longest((20, 40), 10) == (5, 10)
    assert fit_longest((40, 20), 80) == (80, 40)  # enlarges too
    assert fit_longest((1000, 1), 10) == (10, 1)  # at least 1 px
    assert fit_longest((3, 3), 7) == (7, 7)
    assert fit_longest((300, 451), 256) == (170, 256)
    assert fit_longest((3, 4), 2) == (2, 2)  # 1.5 rounds up
    assert fit_longest((5, 10), 5) == (3, 5)  # and so does 2.5 (round() gave 2)


@pytest.mark.parametrize("max_size, want", [(10, (5, 10)), (64, (32, 64))])
def test_load_with_max_size(tmp_path, max_size, want):
    path = _write(tmp_path, "r.png", Image.new("RGB", (40, 20), (255, 128, 0)))
    img = load_image(path, max_size=max_size)
    _check_rgb(img, want)
    np.testing.assert_allclose(img[..., 1], 128 / 255, atol=1e-4)


def test_load_rejects_bad_max_size(tmp_path):
    path = _write(tmp_path, "r.png", Image.new("RGB", (4, 2)))
    with pytest.raises(NstError, match="positive"):
        load_image(path, max_size=0)


def test_resize_image_float_and_smooth():
    flat = np.full((10, 20, 3), 0.123456, np.float32)
    out = resize_image(flat, (7, 13))
    assert out.shape == (7, 13, 3) and out.dtype == np.float32
    np.testing.assert_allclose(out, 0.123456, atol=1e-5)  # no 8-bit quantisation
    ramp = np.tile(np.linspace(0, 1, 64, dtype=np.float32), (8, 1))
    small = resize_image(ramp, (4, 16))
    assert small.shape == (4, 16)
    assert np.all(np.diff(small[2]) > 0)  # a ramp stays monotonic


@pytest.mark.parametrize("hw", [(17, 23), (24, 32), (90, 120)])  # shrink, both ways, enlarge
def test_host_resize_equals_the_jax_resize(hw):
    """Input preparation resizes on the host; the compiled programs use jax.image.resize (the
    next scale of a multi-scale run): the same antialiased Lanczos-3, to float rounding."""
    from nst_jax import imageops

    rng = np.random.default_rng(3)
    img = rng.uniform(size=(45, 60, 3)).astype(np.float32)  # noise: every frequency
    host = imageops.resize_host(img, hw)
    assert host.shape == (*hw, 3) and host.dtype == np.float32 and 0 <= host.min() <= host.max() <= 1
    np.testing.assert_allclose(host, np.asarray(imageops.resize(img, hw)), rtol=0, atol=2e-5)
    assert imageops.resize_longest(img, 30).shape == (23, 30, 3)  # 22.5 rounds up


# ---------------------------------------------------------------------------------------------
# Saving


def test_round_trip_png_exact(tmp_path):
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (6, 9, 3)).astype(np.float32) / 255
    save_image(tmp_path / "a.png", img)
    np.testing.assert_allclose(load_image(tmp_path / "a.png"), img, atol=1e-6)


@pytest.mark.parametrize("ext", [".jpg", ".jpeg", ".webp", ".bmp", ".tiff"])
def test_round_trip_other_formats(tmp_path, ext):
    img = np.zeros((16, 24, 3), np.float32)
    img[:, :12] = [0.9, 0.2, 0.1]
    img[:, 12:] = [0.1, 0.3, 0.8]
    save_image(tmp_path / f"a{ext}", img)
    back = load_image(tmp_path / f"a{ext}")
    assert back.shape == img.shape
    assert np.abs(back - img).mean() < 0.03


def test_save_clips_and_rounds(tmp_path):
    img = np.array([[[-1.0, 0.5, 2.0], [np.nan, 1 / 255 * 0.6, 1.0]]], np.float32)
    save_image(tmp_path / "c.png", img)
    u8 = np.asarray(Image.open(tmp_path / "c.png"))
    np.testing.assert_array_equal(u8, [[[0, 128, 255], [0, 1, 255]]])


def test_unknown_extension_lists_supported(tmp_path):
    with pytest.raises(NstError, match=r"\.xyz.*\.png") as e:
        save_image(tmp_path / "out.xyz", np.zeros((2, 2, 3)))
    assert str(tmp_path / "out.xyz") in str(e.value)
    with pytest.raises(NstError, match="no extension"):
        check_output_path(tmp_path / "out")


def test_save_errors_name_the_path(tmp_path, monkeypatch):
    (tmp_path / "dir.png").mkdir()
    with pytest.raises(NstError, match="existing directory"):
        save_image(tmp_path / "dir.png", np.zeros((2, 2, 3)))
    with pytest.raises(NstError, match="does not exist"):
        save_image(tmp_path / "nope" / "a.png", np.zeros((2, 2, 3)))
    assert not (tmp_path / "nope").exists()
    monkeypatch.setattr(image_io.os, "access", lambda *a, **k: False)
    with pytest.raises(NstError, match="no permission") as e:
        save_image(tmp_path / "a.png", np.zeros((2, 2, 3)))
    assert "a.png" in str(e.value)


def test_check_output_path_creates_nothing(tmp_path):
    assert check_output_path(tmp_path / "x.JPG") == "JPEG"
    assert os.listdir(tmp_path) == []


def _spy_leftovers(directory: Path) -> list[str]:
    return sorted(n for n in os.listdir(directory) if n.endswith(".tmp"))


@pytest.mark.parametrize("where", ["replace", "fsync"])
def test_failed_write_leaves_no_file_and_no_temp(tmp_path, monkeypatch, where):
    def boom(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(image_io.os, where, boom)
    with pytest.raises(NstError, match="No space left") as e:
        save_image(tmp_path / "out.png", np.zeros((4, 4, 3)))
    assert "out.png" in str(e.value)
    assert os.listdir(tmp_path) == []


def test_failed_write_keeps_existing_file(tmp_path, monkeypatch):
    target = tmp_path / "out.png"
    save_image(target, np.ones((4, 4, 3)))
    before = target.read_bytes()

    def boom(*a, **k):
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(image_io.os, "replace", boom)
    with pytest.raises(NstError, match="Input/output error"):
        save_image(target, np.zeros((8, 8, 3)))
    assert target.read_bytes() == before
    assert _spy_leftovers(tmp_path) == []


def test_interrupt_during_write_cleans_up(tmp_path, monkeypatch):
    def interrupt(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(image_io.os, "fsync", interrupt)
    with pytest.raises(KeyboardInterrupt):
        atomic_write_bytes(tmp_path / "log.json", b"{}")
    assert os.listdir(tmp_path) == []


def test_atomic_write_bytes_replaces_and_keeps_mode(tmp_path):
    target = tmp_path / "log.json"
    atomic_write_bytes(target, b"first")
    os.chmod(target, 0o640)
    atomic_write_bytes(target, b"second")
    assert target.read_bytes() == b"second"
    assert (target.stat().st_mode & 0o777) == 0o640
    assert os.listdir(tmp_path) == ["log.json"]
    with pytest.raises(NstError, match="existing directory"):
        atomic_write_bytes(tmp_path, b"x")


# ---------------------------------------------------------------------------------------------
# Reading errors


def test_missing_file(tmp_path):
    with pytest.raises(NstError, match="no such file") as e:
        load_image(tmp_path / "missing.jpg")
    assert "missing.jpg" in str(e.value)


def test_directory(tmp_path):
    with pytest.raises(NstError, match="directory"):
        load_image(tmp_path)


def test_not_an_image(tmp_path):
    path = tmp_path / "notes.png"
    path.write_text("hello, not a picture\n")
    with pytest.raises(NstError, match="not a recognised image") as e:
        load_image(path)
    assert "notes.png" in str(e.value)


def test_empty_file(tmp_path):
    path = tmp_path / "empty.jpg"
    path.write_bytes(b"")
    with pytest.raises(NstError, match="empty"):
        load_image(path)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_truncated_image(tmp_path, fmt):
    rng = np.random.default_rng(0)
    im = Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8))
    path = tmp_path / f"cut.{fmt.lower()}"
    im.save(path, format=fmt)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(NstError, match="truncated or corrupt") as e:
        load_image(path)
    assert path.name in str(e.value)


def test_zero_size_image(tmp_path, monkeypatch):
    # Pillow refuses to identify real zero-size files, so feed load_image a zero-size image.
    path = _write(tmp_path, "z.png", Image.new("RGB", (1, 1)))
    monkeypatch.setattr(image_io.Image, "open", lambda p: Image.new("RGB", (0, 5)))
    with pytest.raises(NstError, match="zero size"):
        load_image(path)


def test_decompression_bomb(tmp_path, monkeypatch):
    path = _write(tmp_path, "big.png", Image.new("RGB", (20, 20)))
    monkeypatch.setattr(image_io, "MAX_PIXELS", 100)
    with pytest.raises(NstError, match=r"20x20 pixels exceeds the limit of 100 pixels") as e:
        load_image(path)
    assert "big.png" in str(e.value)


def test_pillow_decompression_bomb_error(tmp_path, monkeypatch):
    path = _write(tmp_path, "big.png", Image.new("RGB", (20, 20)))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 50)  # Pillow raises above 2x this
    with pytest.raises(NstError, match="decompression-bomb limit"):
        load_image(path)


def test_permission_denied(tmp_path, monkeypatch):
    path = _write(tmp_path, "secret.png", Image.new("RGB", (2, 2)))

    def denied(p):
        raise PermissionError(errno.EACCES, "Permission denied", str(p))

    monkeypatch.setattr(image_io.Image, "open", denied)  # tests often run as root
    with pytest.raises(NstError, match="permission denied") as e:
        load_image(path)
    assert "secret.png" in str(e.value)


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root ignores file modes")
def test_permission_denied_real(tmp_path):
    path = _write(tmp_path, "secret.png", Image.new("RGB", (2, 2)))
    os.chmod(path, 0)
    with pytest.raises(NstError, match="permission denied"):
        load_image(path)


# ---------------------------------------------------------------------------------------------
# Samples


def test_samples_load_small_and_documented():
    sources = (Path(image_io.__file__).parent / "samples" / "SOURCES.md").read_text()
    assert set(SAMPLES) >= {image_io.SAMPLE_CONTENT, *image_io.SAMPLE_STYLES}
    for name in SAMPLES:
        path = sample_path(name)
        assert path.stat().st_size < 200_000
        assert f"`{path.name}`" in sources
        img = load_image(path)
        assert max(img.shape[:2]) <= 256 and min(img.shape[:2]) >= 64
        assert img.std() > 0.05  # a real picture, not a flat fill
    assert sample_path("chelsea.jpg") == sample_path("chelsea")


def test_unknown_sample():
    with pytest.raises(NstError, match="available samples: chelsea"):
        sample_path("mona_lisa")
