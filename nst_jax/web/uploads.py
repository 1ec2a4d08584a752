"""A job request's images: multipart fields and files, read as a stream within the limits,
then decoded with :mod:`nst_jax.image_io`'s checks.

Uploaded bytes go to ``uploads/<random id>.upload`` (never to a name from the request) and are
deleted by the caller once decoded; a picture's size is checked on its header before decoding,
and it is decoded at reduced size (:func:`nst_jax.image_io.load_image`'s ``reduce_to``). The
whole request is counted as it streams, whatever its framing (a chunked request declares no
length), and its number of parts is bounded.
"""

from __future__ import annotations

import functools
import secrets
import urllib.parse
from pathlib import Path

import numpy as np

from nst_jax import image_io, imageops
from nst_jax.errors import NstError
from nst_jax.web import forms
from nst_jax.web.forms import FormError, Limits

#: Longest accepted text field (knobs, sample names, the session id), in bytes.
FIELD_BYTES = 4096
#: Most parts (text fields and files) in one job request; the page sends about 20.
MAX_PARTS = 64
#: Pictures decoded at once over all requests (each may take ~200 MB while it decodes).
DECODE_SLOTS = 2


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
        self.received = 0  # bytes of all parts so far
        self.parts = 0

    def count(self, n: int) -> None:
        """Adds ``n`` streamed bytes; refuses the request once it passes the whole-request cap."""
        self.received += n
        limit = self.limits.max_request_bytes
        if self.received > limit:
            raise TooLarge(f"the request is larger than {human_bytes(limit)} "
                           f"({human_bytes(self.limits.max_upload_bytes)} per image)")

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
        form.parts += 1
        if form.parts > MAX_PARTS:
            raise TooLarge(f"the request has more than {MAX_PARTS} fields")
        name = part.name or ""
        if part.filename is None:
            form.add_field(name, await _read_field(part, name, form))
            continue
        if name not in ("content", "style"):
            raise FormError(f"unexpected file field {name[:40]!r}")
        path, size = await _save_upload(part, uploads, form, name)
        if size:  # an empty file input sends an empty part
            form.add_image(name, ("file", (path, part.filename)))


async def read_urlencoded(request, form: Form) -> None:
    """Reads a URL-encoded job request (samples only, no files) into ``form``, bounded as it
    streams to :data:`MAX_PARTS` fields of :data:`FIELD_BYTES` each."""
    limit, data = MAX_PARTS * (FIELD_BYTES + 64), bytearray()
    async for chunk in request.content.iter_chunked(1 << 16):
        data += chunk
        if len(data) > limit:
            raise TooLarge(f"the request is larger than {human_bytes(limit)} without any image")
    try:
        fields = urllib.parse.parse_qsl(data.decode("utf-8"), max_num_fields=MAX_PARTS)
    except UnicodeDecodeError:
        raise FormError("the request is not UTF-8 text") from None
    except ValueError:
        raise TooLarge(f"the request has more than {MAX_PARTS} fields") from None
    for name, value in fields:
        form.add_field(name, value)


async def _read_field(part, name: str, form: Form) -> str:
    data = b""
    while chunk := await part.read_chunk(1024):
        form.count(len(chunk))
        data += chunk
        if len(data) > FIELD_BYTES:
            raise FormError(f"the field {name[:40]!r} is too long")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise FormError(f"the field {name[:40]!r} is not UTF-8 text") from None


async def _save_upload(part, uploads: Path, form: Form, role: str) -> tuple[Path, int]:
    """Streams one file part to ``uploads/<random>`` (never its own name), bounded in size."""
    limit = form.limits.max_upload_bytes
    path = uploads / f"{secrets.token_hex(16)}.upload"
    form.written.append(path)
    size = 0
    with open(path, "xb") as f:  # a new file: never through a link or onto another file
        while chunk := await part.read_chunk(1 << 16):
            form.count(len(chunk))
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
        # Decoded at reduced size: never more than twice the largest output is kept.
        image = image_io.load_image(path, reduce_to=limits.max_size)
    except TooLarge:
        raise
    except NstError as e:
        problem = str(e).split(": ", 1)[-1]
        raise FormError(f"the {what} {shown} cannot be used: {problem}") from None
    # Keep queued jobs small: nothing bigger than twice the largest output is ever needed.
    cap = 2 * limits.max_size
    if max(image.shape[:2]) > cap:
        image = imageops.resize_longest(image, cap)
    return image
