"""Where and how the CLI's JAX programs run: device choice and the persistent compilation cache.

Devices (``--devices``, jcjohnson's ``-gpu``, crowsonkb's ``--devices``): a comma- or
space-separated list of ``PLATFORM``, ``PLATFORM:INDEX`` (``cpu:0``, ``gpu:1``, ``cuda:0``,
``tpu:0``) or a bare index into ``jax.devices()``. ``-gpu N`` means ``gpu:N`` and ``-gpu -1``
the CPU, as in jcjohnson/neural-style.

Compilation cache: XLA programs are saved to disk and reused by later runs with the same
shapes and settings (JAX's persistent compilation cache), which turns the 10-30 s of compiling
before the first step into a load. Default directory: ``<nst-jax cache>/jax-compile``
(``$NST_JAX_CACHE``, else ``$XDG_CACHE_HOME/nst-jax``, else ``~/.cache/nst-jax``).
``$NST_JAX_COMPILE_CACHE`` names another directory, or ``off`` disables it (as does
``--no-compile-cache``); a directory already configured for JAX itself
(``$JAX_COMPILATION_CACHE_DIR``) is left as it is.
"""

from __future__ import annotations

from pathlib import Path

from nst_jax.errors import NstError

ENV_COMPILE_CACHE = "NST_JAX_COMPILE_CACHE"
_OFF = ("off", "0", "no", "false", "none", "")


def parse_devices(spec: list[str] | str | None, gpu: str | None = None) -> list | None:
    """The ``jax.Device`` objects named by ``--devices`` / ``-gpu`` (``None``: JAX's default).

    Raises :class:`NstError` naming the device and listing the available ones when a name does
    not exist.
    """
    import jax

    if spec is not None and gpu is not None:
        raise NstError("give --devices or -gpu, not both")
    if gpu is not None:
        items = ["cpu" if g.strip() == "-1" else f"gpu:{g.strip()}" for g in gpu.split(",")]
    elif spec is None:
        return None
    else:
        text = spec if isinstance(spec, str) else ",".join(spec)
        items = [s.strip() for s in text.replace(" ", ",").split(",") if s.strip()]
    if not items:
        raise NstError("--devices needs at least one device, e.g. cpu:0 or gpu:0")
    devices = [_one_device(item, jax) for item in items]
    if len({d.platform for d in devices}) > 1:
        raise NstError(f"devices must all be of one kind, got {', '.join(items)}")
    return list(dict.fromkeys(devices))


def available() -> str:
    import jax

    extra = [] if jax.default_backend() == "cpu" else jax.devices("cpu")
    return ", ".join(device_name(d) for d in [*jax.devices(), *extra])


def _one_device(item: str, jax):
    platform, _, index = item.partition(":")
    if platform.isdigit() and not index:
        devices, platform, index = jax.devices(), "", platform
    else:
        try:
            devices = jax.devices(platform.lower())
        except RuntimeError:
            raise NstError(f"device {item!r} does not exist: no {platform!r} devices here "
                           f"(available: {available()})") from None
    if not index:
        return devices[0]
    if not index.isdigit():
        raise NstError(f"device {item!r}: expected PLATFORM:INDEX, e.g. cpu:0 or gpu:1")
    by_id = {d.id: d for d in devices}
    if int(index) in by_id and platform:
        return by_id[int(index)]
    if int(index) < len(devices):
        return devices[int(index)]
    raise NstError(f"device {item!r} does not exist (available: {available()})")


def device_name(device) -> str:
    return f"{device.platform}:{device.id}"


def enable_compile_cache(disabled: bool = False) -> Path | None:
    """Turns on JAX's persistent compilation cache for this process; returns its directory.

    ``None`` when disabled (flag or ``$NST_JAX_COMPILE_CACHE=off``), or when the directory
    cannot be created (stylization then just compiles as usual).
    """
    import os

    config = _jax_config()
    env = os.environ.get(ENV_COMPILE_CACHE)
    if disabled or (env is not None and env.strip().lower() in _OFF):
        return None
    current = config.jax_compilation_cache_dir
    if current:
        return Path(current)
    if env:
        path = Path(env).expanduser()
    else:
        from nst_jax.weights.store import cache_dir

        path = cache_dir() / "jax-compile"
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError:
        return None
    config.update("jax_compilation_cache_dir", str(path))
    # Every program of a run is worth keeping: the small ones add up to seconds too.
    config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    return path


def _jax_config():
    import jax

    return jax.config
