"""The memory guard: estimate a run's peak memory before compiling, compare it with what the
device has, and refuse in one sentence when it cannot fit.

The estimate (:func:`estimate_bytes`) is a model of what a compiled optimisation step keeps
alive, calibrated against measured peaks on CPU (``scripts/measure_memory.py``;
``tests/test_memory.py`` checks it stays within ±25% at two sizes):

* **activations**: every conv output up to the deepest loss layer, ``Σ_l C_l · H_l · W_l``
  elements (``H_l = H / 2^(block-1)``), kept for the backward pass together with the relu masks,
  pools and the gradient buffers: :data:`ACTIVATION_FACTOR` times that, in the activation dtype.
  With ``remat`` only block boundaries are kept plus one block's working set.
* **image-sized state**: the iterate, its gradient, the best, EMA and diverged images, Adam's two
  moments (L-BFGS: ``2 · memory`` history vectors and its line-search copies), float32.
* **targets**: content features, and the forward pass over each style image at its own size
  (a separate program: only the larger of the two phases counts).
* **weights**: the kernels prepared for the loop on CPU (flipped for the backward pass, cast,
  Winograd forms; nothing elsewhere), besides the parameters already loaded.
* **runtime**: a fixed allowance for XLA's compiler and workspace (:data:`RUNTIME_BYTES`).
* **process**: what the process holds already when the guard runs (:func:`process_bytes`: the
  interpreter, JAX's runtime, the loaded weights and images; about 340-380 MB on CPU), so the
  estimate is of the whole process's peak, the figure ``/usr/bin/time`` or a container reports.

Limits (:func:`available_bytes`): on CPU the host's ``MemAvailable`` (``/proc/meminfo``, else
``sysconf``); on a GPU/TPU ``bytes_limit - bytes_in_use`` of ``device.memory_stats()``. The
process's own memory is counted on both sides: the whole process may grow to what it holds plus
what is available.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from collections.abc import Iterator, Sequence

from nst_jax.errors import NstError
from nst_jax.kernels import kernels_for, winograd_layer
from nst_jax.vgg import NETWORKS, canonical_layer, conv_kernel_shape, conv_layers, layer_depth

#: Bytes kept per activation element for the backward pass, per element of all conv outputs
#: (conv output, relu output/mask, gradient buffers). Calibrated on CPU (scripts/measure_memory.py).
ACTIVATION_FACTOR = 2.6
#: Fixed allowance for XLA's compiler, runtime and convolution workspace, on top of what the
#: process holds before compiling (calibrated on CPU with the peak reset after start-up: for the
#: tiny preset at 128-512 px the estimate is 0.98-1.13x the measured growth with 220 MB; it was
#: 300 MB while the step programs held a second copy of the parameters, ~80 MB for VGG-19).
RUNTIME_BYTES = 220 << 20


class OutOfMemory(NstError):
    """The run does not fit in the device's memory (refused before, or failed while running);
    ``fit`` is the guard's :class:`Fit` when it refused before compiling."""

    def __init__(self, message: str, fit: "Fit | None" = None):
        super().__init__(message)
        self.fit = fit


@dataclasses.dataclass(frozen=True)
class Estimate:
    """Peak-memory estimate of one run, bytes per device (see the module docstring)."""

    activations: int
    state: int
    targets: int
    weights: int
    runtime: int
    #: Held by the process already when the guard runs (0 when not measured, e.g. with a limit).
    process: int = 0

    @property
    def run(self) -> int:
        """What the run adds to the process."""
        return self.activations + self.state + self.targets + self.weights + self.runtime

    @property
    def total(self) -> int:
        """The whole process's peak."""
        return self.run + self.process


def _conv_layers_through(layers: Sequence[str], network: str = "vgg19") -> list[str]:
    deepest = max(layer_depth(n, network) for n in layers)
    return [c for c in conv_layers(network) if layer_depth(c, network) <= deepest]


def _block(conv: str) -> int:
    return int(conv[len("conv"):].split("_")[0])


def _elements(conv: str, hw: tuple[int, int], network: str) -> int:
    """``C_l H_l W_l`` of one conv layer's output at input size ``hw``."""
    s = 2 ** (_block(conv) - 1)
    return conv_kernel_shape(conv, network)[-1] * (hw[0] // s) * (hw[1] // s)


def activation_elements(hw: tuple[int, int], layers: Sequence[str], network: str = "vgg19") -> int:
    """``Σ_l C_l H_l W_l`` over the conv layers up to the deepest of ``layers`` at ``hw``."""
    return sum(_elements(c, hw, network) for c in _conv_layers_through(layers, network))


def _largest_block_elements(hw: tuple[int, int], layers: Sequence[str], network: str) -> int:
    per_block: dict[int, int] = {}
    for conv in _conv_layers_through(layers, network):
        per_block[_block(conv)] = per_block.get(_block(conv), 0) + _elements(conv, hw, network)
    return max(per_block.values())


def prepared_weight_bytes(
    layers: Sequence[str], dtype_bytes: int, cpu: bool, network: str = "vgg19"
) -> int:
    """Bytes of :func:`nst_jax.kernels.prepare_kernels` for every layer (it prepares them all).

    Off CPU nothing is prepared. On CPU: the flipped kernel, a cast copy unless float32, and
    the Winograd transform of layers with many channels (F(4×4), 36/9-sized, in float32;
    F(2×2), 16/9-sized, otherwise).
    """
    if not cpu:
        return 0
    total = 0
    for conv in conv_layers(network):
        kh, kw, cin, cout = conv_kernel_shape(conv, network)
        copies = 1 + (dtype_bytes != 4)
        total += kh * kw * cin * cout * dtype_bytes * copies
        if winograd_layer(cin, cout, "float32" if dtype_bytes == 4 else "bfloat16"):
            total += (36 if dtype_bytes == 4 else 16) * cin * cout * dtype_bytes
    return total


def estimate_bytes(
    content_hw: tuple[int, int], style_hws: Sequence[tuple[int, int]], *,
    content_layers: Sequence[str], style_layers: Sequence[str], dtype: str = "float32",
    remat: bool = False, optimizer: str = "adam", lbfgs_memory: int = 20, batch: int = 1,
    cpu: bool = True, network: str = "vgg19",
) -> Estimate:
    """Peak memory of a run at ``content_hw`` (the optimised size) with styles at ``style_hws``.

    ``batch`` images run at once on one device (``stylize_batch``: images per device);
    ``network`` is the weights' (``"vgg16"`` or ``"vgg19"``).
    """
    layers = tuple(canonical_layer(n, network) for n in (*content_layers, *style_layers))
    blocks = NETWORKS[network]
    b = 2 if dtype == "bfloat16" else 4
    pixels = content_hw[0] * content_hw[1]
    if remat:
        kept = sum(  # the block boundaries: each block's last conv
            _elements(c, content_hw, network) for c in _conv_layers_through(layers, network)
            if c == f"conv{_block(c)}_{len(blocks[_block(c) - 1])}"
        )
        largest = _largest_block_elements(content_hw, layers, network)
        act = ACTIVATION_FACTOR * b * largest + b * kept
    else:
        act = ACTIVATION_FACTOR * b * activation_elements(content_hw, layers, network)
    image_vectors = 7 + (2 * lbfgs_memory + 4 if optimizer == "lbfgs" else 2)
    state = image_vectors * 3 * 4 * pixels
    content_feats = b * sum(_elements(_as_conv(n, network), content_hw, network)
                            for n in content_layers)
    grams = sum(conv_kernel_shape(_as_conv(n, network), network)[-1] ** 2 for n in style_layers) * 4
    per_image = act + state + content_feats + grams
    # Targets: forward-only passes (no backward buffers), one style image at a time.
    forward = max(b * activation_elements(hw, layers, network) for hw in [*style_hws, content_hw])
    return Estimate(
        activations=int(batch * act), state=int(batch * (state + content_feats + grams)),
        targets=int(max(0, forward - batch * per_image)),
        weights=prepared_weight_bytes(layers, b, cpu, network), runtime=RUNTIME_BYTES,
    )


def _as_conv(name: str, network: str = "vgg19") -> str:
    n = canonical_layer(name, network)
    if n.startswith("pool"):
        b = int(n[len("pool"):])
        return f"conv{b}_{len(NETWORKS[network][b - 1])}"
    return n.replace("relu", "conv")


def available_bytes(device=None) -> tuple[int | None, str]:
    """``(bytes, what)``: memory the run may still use on ``device`` (default: the first)."""
    import jax

    device = device or jax.devices()[0]
    if device.platform != "cpu":
        stats = {}
        with contextlib.suppress(Exception):
            stats = device.memory_stats() or {}
        if "bytes_limit" in stats:
            free = int(stats["bytes_limit"]) - int(stats.get("bytes_in_use", 0))
            return free, f"free memory of {device.device_kind}"
        return None, device.device_kind
    return host_available_bytes(), "available host RAM"


def process_bytes(device=None) -> int:
    """What this process holds already on ``device`` (default: the first): its resident set on
    CPU (``/proc/self/statm``), ``bytes_in_use`` on a GPU/TPU; 0 when unknown."""
    import jax

    device = device or jax.devices()[0]
    if device.platform != "cpu":
        with contextlib.suppress(Exception):
            return int((device.memory_stats() or {}).get("bytes_in_use", 0))
        return 0
    with contextlib.suppress(OSError, ValueError, IndexError, AttributeError):
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    return 0


def host_available_bytes() -> int | None:
    """``MemAvailable`` of ``/proc/meminfo`` (what can be allocated without swapping), else the
    free physical pages, capped by a container's cgroup limit; None when nothing is known."""
    free = None
    with contextlib.suppress(OSError, ValueError):
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    free = int(line.split()[1]) * 1024
    if free is None:
        with contextlib.suppress(ValueError, OSError, AttributeError):
            free = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    room = _cgroup_room()
    if room is not None:
        free = room if free is None else min(free, room)
    return free


def _cgroup_room() -> int | None:
    # cgroup v2, then v1: the limit minus what the group uses (a container's OOM killer acts
    # on this, whatever the host has free).
    for limit_file, usage_file in (
        ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
        ("/sys/fs/cgroup/memory/memory.limit_in_bytes",
         "/sys/fs/cgroup/memory/memory.usage_in_bytes"),
    ):
        with contextlib.suppress(OSError, ValueError):
            with open(limit_file) as f:
                limit = f.read().strip()
            if limit == "max" or int(limit) >= 1 << 60:
                return None
            with open(usage_file) as f:
                return max(0, int(limit) - int(f.read().strip()))
    return None


def gib(n: float) -> str:
    return f"{n / (1 << 30):.1f} GiB"


@dataclasses.dataclass(frozen=True)
class Fit:
    """What the guard found, as data (the apps word it in their own terms).

    Attributes:
      estimate: the run's :class:`Estimate` per device.
      limit: bytes the run may add (``None``: unknown, not checked); ``where``: which device
        and what was read (e.g. ``"cpu:0, available host RAM"``).
      hw: the content's final ``(h, w)``; ``batch``: images per device.
      bfloat16, remat: whether the run would fit with that change alone.
      batch_fits: the most images per device that fit (when a smaller batch would).
      size_fits: the longest side that fits (``None``: none smaller than the run's does).
    """

    estimate: Estimate
    limit: int | None
    where: str
    hw: tuple[int, int]
    batch: int = 1
    bfloat16: bool = False
    remat: bool = False
    batch_fits: int | None = None
    size_fits: int | None = None

    @property
    def fits(self) -> bool:
        return self.limit is None or self.estimate.run <= self.limit

    def ways(self, words: dict[str, str]) -> list[str]:
        """What would fit, each in ``words``' terms: keys ``"bfloat16"``, ``"remat"``,
        ``"batch"`` and ``"size"`` (the last two formatted with ``n``)."""
        ways = [words[k] for k, ok in (("bfloat16", self.bfloat16), ("remat", self.remat)) if ok]
        ways += [words[k].format(n=n) for k, n in (("batch", self.batch_fits),
                                                   ("size", self.size_fits)) if n]
        return ways

    def sentence(self) -> str:
        """One sentence in library terms (config fields), for callers of the API."""
        ways = self.ways({"bfloat16": "dtype='bfloat16'", "remat": "remat=True",
                          "batch": "at most {n} images per device", "size": "size={n} or less"})
        return (f"this run needs about {gib(self.estimate.total)} per device at "
                f"{self.hw[1]}x{self.hw[0]} px but {self.where} has "
                f"{gib((self.limit or 0) + self.estimate.process)}; "
                + (f"it would fit with {' or '.join(ways)}" if ways else "nothing smaller fits"))


def check_fits(
    content_hw: tuple[int, int], style_hws: Sequence[tuple[int, int]], config, *,
    devices: Sequence | None = None, batch: int = 1, limit: int | None = None,
    network: str = "vgg19",
) -> Fit:
    """The :class:`Fit` of the run of ``config`` (a :class:`~nst_jax.config.StyleConfig`) on
    ``devices`` (this process's devices of the run's mesh; default JAX's first); raises
    :class:`OutOfMemory` carrying it when the run cannot fit.

    Devices that share host memory (CPU devices) split what the host has. ``limit`` overrides
    the available memory per device (tests).
    """
    import jax

    devices = list(devices or jax.devices()[:1])
    cpu = kernels_for(devices[0].platform) == "cpu"

    def estimate_of(hw, shws, **changes) -> Estimate:
        kw = dict(content_layers=config.content_layers, style_layers=config.style_layers,
                  dtype=config.dtype, remat=config.remat, optimizer=config.optimizer,
                  lbfgs_memory=config.lbfgs_memory, batch=batch, cpu=cpu, network=network)
        return estimate_bytes(hw, shws, **{**kw, **changes})

    def est(hw, shws, **changes) -> int:
        return estimate_of(hw, shws, **changes).total

    estimate = estimate_of(content_hw, style_hws)
    where = "the given limit"
    if limit is None:
        found = [(available_bytes(d), d) for d in devices]
        (limit, what), device = min(found, key=lambda f: f[0][0] if f[0][0] is not None else 1 << 62)
        where = f"{device.platform}:{device.id} ({what})"
        if limit is None:
            return Fit(estimate, None, where, tuple(content_hw), batch)
        if cpu:
            limit //= len(devices)
        estimate = dataclasses.replace(estimate, process=process_bytes(device) // len(devices))
    fit = Fit(estimate, limit, where, tuple(content_hw), batch)
    if fit.fits:
        return fit
    fit = dataclasses.replace(
        fit, bfloat16=config.dtype != "bfloat16" and est(content_hw, style_hws, dtype="bfloat16") <= limit,
        remat=not config.remat and est(content_hw, style_hws, remat=True) <= limit,
        batch_fits=(_largest_batch(est, content_hw, style_hws, limit, batch)
                    if batch > 1 and est(content_hw, style_hws, batch=1) <= limit else None),
        size_fits=_largest_size(est, content_hw, style_hws, limit))
    raise OutOfMemory(fit.sentence(), fit)


def check_items(items, config, network: str, mesh) -> Fit | None:
    """:func:`check_fits` for a run of :class:`~nst_jax.run.inputs.Item` s on ``mesh``: the
    largest group of one final shape, its rows per device, this process's devices."""
    import jax

    from nst_jax.imageops import fit_longest
    from nst_jax.run.inputs import style_side

    if not items:
        return None
    big = max(items, key=lambda it: it.shapes[-1][0] * it.shapes[-1][1])
    hw = big.shapes[-1]
    styles = [fit_longest(s.shape[:2], style_side(max(hw), f))
              for s, f in zip(big.styles, big.style_scales)]
    n = sum(it.shapes == big.shapes for it in items)
    devices = [d for d in mesh.devices.flat if d.process_index == jax.process_index()]
    return check_fits(hw, styles, config, batch=-(-n // mesh.devices.size), devices=devices,
                      network=network)


def _largest_size(est, hw, style_hws, limit) -> int | None:
    longest = max(hw)

    def fits(side: int) -> bool:
        f = side / longest
        return est(_scaled(hw, f), [_scaled(s, f) for s in style_hws]) <= limit

    lo, hi = 8, longest
    if not fits(lo):
        return None
    while lo < hi:  # the estimate grows with the size: bisect the longest side
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid - 1)
    return lo if lo < longest else None


def _largest_batch(est, hw, style_hws, limit, batch) -> int:
    n = batch
    while n > 1 and est(hw, style_hws, batch=n) > limit:
        n -= 1
    return n


def _scaled(hw, f: float) -> tuple[int, int]:
    return max(1, round(hw[0] * f)), max(1, round(hw[1] * f))


@contextlib.contextmanager
def oom_as_error(where: str) -> Iterator[None]:
    """An XLA ``RESOURCE_EXHAUSTED`` (or a host ``MemoryError``) inside becomes one
    :class:`OutOfMemory` sentence instead of a traceback."""
    try:
        yield
    except MemoryError:
        raise OutOfMemory(
            f"ran out of host memory while {where}; try dtype bfloat16, remat or a smaller size"
        ) from None
    except Exception as err:  # noqa: BLE001 - only XLA's out-of-memory is translated
        if "RESOURCE_EXHAUSTED" not in str(err) and "Out of memory" not in str(err):
            raise
        first = str(err).strip().splitlines()[0][:200]
        raise OutOfMemory(
            f"the device ran out of memory while {where} ({first}); try dtype bfloat16, remat, "
            "a smaller size or fewer images per device"
        ) from None

