"""Validation of settings, shared by the frozen specs (one sentence per problem, ``NstError``)."""

from __future__ import annotations

import contextlib
import numbers
from typing import Any, Iterable

import numpy as np

from nst_jax.errors import NstError


def plain(v: Any) -> Any:
    """NumPy and concrete JAX scalars become Python numbers/strings and lists become tuples,
    recursively, so a spec built from NumPy values or JSON lists is still hashable."""
    if isinstance(v, np.generic):
        return v.item()
    if getattr(v, "shape", None) == () and hasattr(v, "item") and type(v).__module__.startswith(
            ("jax", "jaxlib")):  # a concrete JAX scalar such as jnp.int32(3)
        with contextlib.suppress(Exception):  # a tracer stays as it is, and is refused later
            return v.item()
    if isinstance(v, (list, tuple)):
        return tuple(plain(x) for x in v)
    return v


def plain_fields(spec: Any) -> None:
    """Applies :func:`plain` to every field of a frozen dataclass, in place (``__post_init__``)."""
    for name in spec.__dataclass_fields__:
        object.__setattr__(spec, name, plain(getattr(spec, name)))


def is_real(v: Any) -> bool:
    """A real number: Python or NumPy (``np.float32(1.0)``), not a bool."""
    return isinstance(v, numbers.Real) and not isinstance(v, bool)


def check_int(v: Any, name: str, *, minimum: int) -> None:
    if isinstance(v, bool) or not isinstance(v, int) or v < minimum:
        raise NstError(f"{name} must be an integer >= {minimum}, got {v!r}")


def check_positive(v: Any, name: str) -> None:
    if not (is_real(v) and 0 < v < float("inf")):
        raise NstError(f"{name} must be a positive number, got {v!r}")


def check_nonnegative(v: Any, name: str) -> None:
    if not (is_real(v) and 0 <= v < float("inf")):
        raise NstError(f"{name} must be a finite number >= 0, got {v!r}")


def check_unit(v: Any, name: str) -> None:
    """``v`` in ``[0, 1)`` (decay rates)."""
    if not (is_real(v) and 0 <= v < 1):
        raise NstError(f"{name} must be in [0, 1), got {v!r}")


def check_choice(v: Any, name: str, choices: Iterable[str]) -> None:
    choices = tuple(choices)
    if v not in choices:
        raise NstError(f"{name} must be one of {', '.join(choices)}, got {v!r}")
