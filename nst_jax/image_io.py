"""Image files in and out: the only module that reads or writes pictures.

Images in memory are float32 NumPy arrays of shape ``(H, W, 3)`` with RGB values in ``[0, 1]``.
Every user-facing failure (missing, unreadable, corrupt or oversized files; unwritable
destinations) is raised as :class:`~nst_jax.errors.NstError` with one sentence naming the file.
Writes are atomic: the bytes go to a temporary file in the destination's directory, are fsynced
and then renamed over the destination, so a crash never leaves a half-written file behind.
"""

from __future__ import annotations

import contextlib
import io
import os
import warnings
from pathlib import Path
from typing import Union

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError, features

from nst_jax.errors import NstError
from nst_jax.files import atomic_write_bytes, check_destination

PathLike = Union[str, "os.PathLike[str]"]

# Largest image (width * height) that load_image will decode: the same number as Pillow's own
# hard decompression-bomb limit (2 * Image.MAX_IMAGE_PIXELS), about 179 megapixels, i.e. ~2 GB as
# float32 RGB. A module constant so callers (and tests) can lower it.
MAX_PIXELS = 178_956_970

# Output format by file extension; JPEG and WebP are written at quality 95.
_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP", ".bmp": "BMP",
            ".tif": "TIFF", ".tiff": "TIFF", ".ppm": "PPM"}
SUPPORTED_EXTENSIONS = tuple(sorted(_FORMATS))
_SAVE_OPTIONS = {"JPEG": {"quality": 95}, "WEBP": {"quality": 95}}

_SAMPLES_DIR = Path(__file__).resolve().parent / "samples"
_SAMPLE_FILES = {"chelsea": "chelsea.jpg", "strokes": "strokes.jpg", "hubble": "hubble.jpg",
                 "astronaut": "astronaut.jpg", "rocket": "rocket.jpg", "mosaic": "mosaic.jpg",
                 "coffee": "coffee.jpg", "ihc": "ihc.jpg"}
# Names accepted by sample_path(); see nst_jax/samples/SOURCES.md for origins and licences.
SAMPLES = tuple(_SAMPLE_FILES)
SAMPLE_CONTENT = "chelsea"
SAMPLE_STYLES = ("strokes", "hubble", "mosaic")


# --------------------------------------------------------------------------------------------
# Reading


def load_image(
    path: PathLike, *, max_size: int | None = None, reduce_to: int | None = None
) -> np.ndarray:
    """Reads an image file as float32 RGB of shape ``(H, W, 3)`` with values in ``[0, 1]``.

    The EXIF orientation tag is applied. Grayscale, palette, CMYK and other modes become RGB;
    transparency (RGBA, LA, palette or tRNS) is composited over white; 16-bit grayscale is scaled
    by 1/65535 so its full range is kept. With ``max_size``, the image is resized (Lanczos) so its
    longest side equals ``max_size`` exactly, up or down, keeping the aspect ratio (the
    ``-image_size`` rule of jcjohnson/neural-style). With ``reduce_to``, a much larger image is
    decoded at reduced size (JPEG's DCT scaling, else an integer box reduction of the 8-bit
    pixels) while its longest side stays at least ``2 * reduce_to``, so a 13000×13000 file needed
    at 512 px never exists in memory as float32 at full size.

    Raises:
      NstError: the file is missing, a directory, unreadable, not an image, truncated or corrupt,
        has zero size, or has more than ``MAX_PIXELS`` pixels.
    """
    for v in (reduce_to, max_size):
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
            raise NstError(f"the image size must be a positive number of pixels, got {v!r}")
    p = Path(path)
    with _reading(p) as fail:
        rgb = _decode(p, reduce_to, fail)
    if max_size is not None:
        from nst_jax.imageops import resize_longest  # imageops resizes through this module

        rgb = resize_longest(rgb, max_size)
    return rgb


@contextlib.contextmanager
def _reading(p: Path):
    """Checks that ``p`` is a non-empty file, and turns Pillow's errors while reading it into
    one ``NstError`` sentence; yields ``fail(problem) -> NstError``."""

    def fail(problem: str) -> NstError:
        return NstError(f"cannot read image {str(p)!r}: {problem}")

    if p.is_dir():
        raise fail("it is a directory, not an image file")
    if not p.exists():
        raise fail("no such file")
    try:
        if p.stat().st_size == 0:
            raise fail("the file is empty (0 bytes)")
        with warnings.catch_warnings():
            # Pillow warns above its soft limit; the limit enforced here is MAX_PIXELS.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            yield fail
    except NstError:
        raise
    except Image.DecompressionBombError as e:
        raise fail(f"it exceeds Pillow's decompression-bomb limit ({e})") from e
    except PermissionError as e:
        raise fail("permission denied") from e
    except UnidentifiedImageError as e:
        raise fail("not a recognised image file") from e
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        raise fail(f"the file is truncated or corrupt ({e})") from e


def _decode(p: Path, reduce_to: int | None, fail) -> np.ndarray:
    """Pillow's decode of ``p`` (size-checked, reduced, EXIF-oriented) as float RGB."""
    with Image.open(p) as im:
        width, height = im.size
        if width == 0 or height == 0:
            raise fail(f"the image has zero size ({width}x{height} pixels)")
        if width * height > MAX_PIXELS:
            raise fail(
                f"{width}x{height} pixels exceeds the limit of {MAX_PIXELS:,} pixels "
                "(possible decompression bomb)"
            )
        if reduce_to is not None and im.format == "JPEG":
            factor = max(width, height) // (2 * reduce_to)
            if factor >= 2:
                im.draft(im.mode, (-(-width // factor), -(-height // factor)))
        im.load()  # full decode now, so truncation is detected here
        if reduce_to is not None:
            im = _reduce(im, reduce_to)
        return _to_float_rgb(_exif_transpose(im))


def _reduce(im: Image.Image, reduce_to: int) -> Image.Image:
    """Box-reduces ``im`` by the largest integer factor that keeps its longest side
    ``>= 2 * reduce_to`` (the later Lanczos resize then still antialiases)."""
    factor = max(im.size) // (2 * reduce_to)
    if factor < 2:
        return im
    try:
        small = im.reduce(factor)
    except (ValueError, NotImplementedError):  # modes reduce() lacks ("1", "P"): go via RGB(A)
        small = im.convert("RGBA" if _has_alpha(im) else "RGB").reduce(factor)
    small.info.update(im.info)
    with contextlib.suppress(Exception):
        small.getexif().update(im.getexif())  # keeps the EXIF orientation for the transpose
    return small


def _has_alpha(im: Image.Image) -> bool:
    return im.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in im.info


def _exif_transpose(im: Image.Image) -> Image.Image:
    try:
        out = ImageOps.exif_transpose(im)
    except (ValueError, TypeError, KeyError, SyntaxError, OSError):
        return im  # a malformed EXIF block should not stop the image from loading
    return im if out is None else out


def _to_float_rgb(im: Image.Image) -> np.ndarray:
    mode = im.mode
    if mode.startswith("I;16") or mode in ("I", "F"):
        gray = np.asarray(im).astype(np.float64)
        gray = np.nan_to_num(gray, nan=0.0, posinf=0.0, neginf=0.0)
        peak = float(gray.max()) if gray.size else 0.0
        if mode.startswith("I;16"):
            scale = 65535.0
        elif mode == "F":
            # Float data is taken as [0, 1]; larger values mean an 8- or 16-bit scale was used.
            scale = 1.0 if peak <= 1.0 else 255.0 if peak <= 255.0 else 65535.0 if peak <= 65535.0 else peak
        else:
            # Pillow keeps 16-bit data in 32-bit "I" images; genuine 32-bit data uses the int range.
            scale = 65535.0 if peak <= 65535.0 else float(2**31 - 1)
        gray = np.clip(gray / scale, 0.0, 1.0).astype(np.float32)
        return np.repeat(gray[..., None], 3, axis=-1)
    if _has_alpha(im):
        if mode == "P":
            im = im.convert("RGBA")  # a palette's transparency index becomes alpha
        rgba = np.asarray(im.convert("RGBA"), dtype=np.float32) / 255.0
        rgb, alpha = rgba[..., :3], rgba[..., 3:]
        return (rgb * alpha + (1.0 - alpha)).astype(np.float32)
    if mode != "RGB":
        im = im.convert("RGB")
    return np.asarray(im, dtype=np.float32) / np.float32(255.0)


def is_complete_image(path: PathLike) -> bool:
    """True when ``path`` is a non-empty image file that decodes without error (cheap check that
    a resumed batch can trust an existing output)."""
    p = Path(path)
    try:
        with _reading(p), Image.open(p) as im:
            im.load()
        return True
    except Exception:  # noqa: BLE001 - any failure means "not a finished output"
        return False


def load_mask(path: PathLike, shape_hw: tuple[int, int] | None = None) -> np.ndarray:
    """A region mask: the image's luminance as float32 ``(H, W)`` in ``[0, 1]`` (white = in).

    With ``shape_hw``, a mask of another size (after its EXIF orientation) is refused from its
    header, before any pixel is decoded: a small PNG may inflate to gigabytes.
    """
    if shape_hw is not None:
        p = Path(path)
        with _reading(p), Image.open(p) as im:
            w, h = im.size
            with contextlib.suppress(Exception):
                if im.getexif().get(0x0112) in (5, 6, 7, 8):  # rotated by 90 degrees
                    w, h = h, w
        if (h, w) != tuple(shape_hw):
            raise NstError(f"mask {str(path)!r} is {w}x{h} but the content image is "
                           f"{shape_hw[1]}x{shape_hw[0]}; masks must match the content size")
    rgb = load_image(path)
    return (rgb @ np.array([0.299, 0.587, 0.114], np.float32)).astype(np.float32)


# --------------------------------------------------------------------------------------------
# Resizing


def resize_image(img: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resizes a float image ``(H, W)`` or ``(H, W, C)`` to ``size = (h, w)`` with Lanczos.

    Each channel is resampled in 32-bit float (Pillow mode ``F``), so no 8-bit quantisation
    happens; when shrinking, the filter widens with the scale factor (antialiasing). Lanczos
    can overshoot slightly near sharp edges; values are not clipped.
    """
    arr = np.asarray(img, dtype=np.float32)
    h, w = int(size[0]), int(size[1])
    if h < 1 or w < 1:
        raise ValueError(f"target size must be positive, got {size}")
    if arr.ndim not in (2, 3):
        raise ValueError(f"expected an (H, W) or (H, W, C) image, got shape {arr.shape}")
    if arr.shape[:2] == (h, w):
        return arr.copy()
    planes = arr[..., None] if arr.ndim == 2 else arr

    def resized(plane: np.ndarray) -> np.ndarray:
        image = Image.fromarray(np.ascontiguousarray(plane))
        return np.asarray(image.resize((w, h), Image.Resampling.LANCZOS))

    out = np.stack([resized(planes[..., c]) for c in range(planes.shape[-1])], axis=-1)
    return out[..., 0] if arr.ndim == 2 else out


# --------------------------------------------------------------------------------------------
# Writing


def check_output_path(path: PathLike) -> str:
    """Checks up-front that an image can be written to ``path``; creates nothing.

    Returns the Pillow format name chosen from the extension (e.g. ``"PNG"``).

    Raises:
      NstError: unknown extension, the path is an existing directory, its directory is missing,
        or that directory is not writable.
    """
    p = Path(path)
    fmt = _FORMATS.get(p.suffix.lower())
    if fmt is None:
        got = f"extension {p.suffix!r}" if p.suffix else "no extension"
        raise NstError(
            f"cannot write image {str(p)!r}: {got} is not a supported image format "
            f"(use one of {', '.join(SUPPORTED_EXTENSIONS)})"
        )
    if fmt == "WEBP" and not features.check("webp"):
        raise NstError(f"cannot write image {str(p)!r}: this Pillow build has no WebP support")
    check_destination(p, "image")
    return fmt


def save_image(path: PathLike, img: np.ndarray) -> None:
    """Writes a float image in ``[0, 1]`` of shape ``(H, W, 3)`` (or ``(H, W)`` gray) atomically.

    Values are clipped to ``[0, 1]`` (NaN becomes 0) and rounded to 8 bits. The format follows
    the extension (see ``SUPPORTED_EXTENSIONS``); JPEG and WebP use quality 95.

    Raises:
      NstError: as :func:`check_output_path`, or when the write itself fails; the destination is
        then left as it was and no temporary file remains.
    """
    fmt = check_output_path(path)
    arr = np.asarray(img, dtype=np.float32)
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if not (arr.ndim == 2 or (arr.ndim == 3 and arr.shape[-1] == 3)) or 0 in arr.shape:
        raise ValueError(f"expected a non-empty (H, W, 3) or (H, W) image, got shape {arr.shape}")
    u8 = _to_u8(arr)
    buf = io.BytesIO()
    try:
        Image.fromarray(u8).save(buf, format=fmt, **_SAVE_OPTIONS.get(fmt, {}))
    except (OSError, ValueError) as e:
        raise NstError(f"cannot write image {str(path)!r}: encoding as {fmt} failed ({e})") from e
    atomic_write_bytes(path, buf.getvalue(), what="image")


# --------------------------------------------------------------------------------------------
# Bundled samples


def sample_path(name: str) -> Path:
    """Path of a bundled sample image by name (one of ``SAMPLES``, extension optional)."""
    key = Path(name).stem if Path(name).suffix else name
    if key not in _SAMPLE_FILES:
        raise NstError(f"unknown sample image {name!r}; available samples: {', '.join(SAMPLES)}")
    return _SAMPLES_DIR / _SAMPLE_FILES[key]


# --------------------------------------------------------------------------------------------
# In memory and header-only (the web studio)


def image_size(path: PathLike) -> tuple[int, int]:
    """``(width, height)`` of an image file, read from its header only (nothing is decoded).

    Lets a caller refuse a huge picture (e.g. a small PNG that inflates to gigapixels) before
    :func:`load_image` decodes it.

    Raises:
      NstError: as :func:`load_image` for a missing, empty or unrecognised file.
    """
    p = Path(path)
    with _reading(p), Image.open(p) as im:
        return int(im.size[0]), int(im.size[1])


def encode_png(img: np.ndarray) -> bytes:
    """PNG bytes of a float image in ``[0, 1]``, ``(H, W, 3)``: clipped, NaN as 0, 8 bits."""
    arr = np.asarray(img, dtype=np.float32)
    if arr.ndim != 3 or arr.shape[-1] != 3 or 0 in arr.shape:
        raise ValueError(f"expected a non-empty (H, W, 3) image, got shape {arr.shape}")
    buf = io.BytesIO()
    Image.fromarray(_to_u8(arr)).save(buf, format="PNG")
    return buf.getvalue()


def _to_u8(arr: np.ndarray) -> np.ndarray:
    """Clipped to ``[0, 1]`` (NaN as 0) and rounded to 8 bits."""
    return np.round(np.clip(np.nan_to_num(arr, nan=0.0), 0.0, 1.0) * 255.0).astype(np.uint8)
