"""A job request's images: multipart fields and files, read as a stream within the limits,
then decoded with :mod:`nst_jax.image_io`'s checks.

Uploaded bytes go to ``uploads/<random id>.upload`` (never to a name from the request) and are
deleted by the caller once decoded; a picture's size is checked on its header before decoding.
"""

from __future__ import annotations

import functools
import secrets
from pathlib import Path

import numpy as np

from nst_jax import image_io
from nst_jax.errors import NstError
from nst_jax.web import forms
from nst_jax.web.forms import FormError, Limits

#: Longest accepted text field (knobs, sample names, the session id), in bytes.
FIELD_BYTES = 4096


class TooLarge(FormError):
    """An upload over the limits (HTTP 413)."""


def human_bytes(n: int) -> str:
    return f"{n / 2**20:.0f} MB" if n >= 2**20 else f"{n / 1024:.0f} KB"


@functools.lru_cache(maxsize=None)
def sample_image(name: str) -> np.ndarray:
    """A bundled sample, decoded once (read-only)."""
    image = image_io.load_image(image_io.sample_path(name))
    image.setflags(write=False)
    return image


class Form:
    """What a job request carried: knob fields, and image sources ``("sample", name)`` or
    ``("file", (path, filename))``."""

    def __init__(self, limits: Limits):
        self.limits = limits
        self.fields: dict[str, str] = {}
        self.content: tuple[str, object] | None = None
        self.styles: list[tuple[str, object]] = []
        self.written: list[Path] = []

    def add_field(self, name: str, value: str) -> None:
        if len(value) > FIELD_BYTES:
            raise FormError(f"the field {name[:40]!r} is too long")
        if name in ("content_sample", "style_sample"):
            if value:
                role = name.removesuffix("_sample")
                self.add_image(role, ("sample", forms.check_sample(value, image_io.SAMPLES)))
        else:
            self.fields[name] = value

    def add_image(self, role: str, source: tuple[str, object]) -> None:
        if role == "content":
            if self.content is not None:
                raise FormError("give one content image")
            self.content = source
        else:
            if len(self.styles) >= self.limits.max_styles:
                raise FormError(f"at most {self.limits.max_styles} style images per job")
            self.styles.append(source)


async def read_multipart(request, form: Form, uploads: Path) -> None:
    """Reads a multipart job request into ``form``, streaming files to ``uploads/<random>``."""
    reader = await request.multipart()
    while (part := await reader.next()) is not None:
        name = part.name or ""
        if part.filename is None:
            form.add_field(name, await _read_field(part, name))
            continue
        if name not in ("content", "style"):
            raise FormError(f"unexpected file field {name[:40]!r}")
        path, size = await _save_upload(part, uploads, form.limits.max_upload_bytes, form.written, name)
        if size:  # an empty file input sends an empty part
            form.add_image(name, ("file", (path, part.filename)))


async def _read_field(part, name: str) -> str:
    data = b""
    while chunk := await part.read_chunk(1024):
        data += chunk
        if len(data) > FIELD_BYTES:
            raise FormError(f"the field {name[:40]!r} is too long")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise FormError(f"the field {name[:40]!r} is not UTF-8 text") from None


async def _save_upload(part, uploads: Path, limit: int, written: list[Path], role: str) -> tuple[Path, int]:
    """Streams one file part to ``uploads/<random>`` (never its own name), bounded in size."""
    path = uploads / f"{secrets.token_hex(16)}.upload"
    written.append(path)
    size = 0
    with open(path, "wb") as f:
        while chunk := await part.read_chunk(1 << 16):
            size += len(chunk)
            if size > limit:
                raise TooLarge(f"the {role} image {part.filename[:60]!r} is larger than "
                               f"{human_bytes(limit)}")
            f.write(chunk)
    return path, size


def decode_all(items, limits: Limits) -> list[np.ndarray]:
    """The pictures of ``[(what, source)]``, checked against ``limits`` (blocking: run it in a
    thread)."""
    return [_decode(what, src, limits) for what, src in items]


def _decode(what: str, src, limits: Limits) -> np.ndarray:
    kind, value = src
    if kind == "sample":
        return sample_image(value)
    path, filename = value
    shown = repr(filename[:60])
    try:
        width, height = image_io.image_size(path)
        if width * height > limits.max_pixels:
            raise TooLarge(f"the {what} {shown} is {width}x{height} pixels; at most "
                           f"{limits.max_pixels / 1e6:g} megapixels")
        image = image_io.load_image(path)
    except TooLarge:
        raise
    except NstError as e:
        problem = str(e).split(": ", 1)[-1]
        raise FormError(f"the {what} {shown} cannot be used: {problem}") from None
    # Keep queued jobs small: nothing bigger than twice the largest output is ever needed.
    cap = 2 * limits.max_size
    if max(image.shape[:2]) > cap:
        hw = image_io.fit_longest_side(image.shape[:2], cap)
        image = np.clip(image_io.resize_image(image, hw), 0.0, 1.0)
    return image
