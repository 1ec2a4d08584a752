"""One image over several devices: its rows split over a mesh axis ``"space"``.

Each device holds a band of ``H / N`` rows of the image, of the optimiser state and of every
activation. The style-transfer loss is a function of sums over positions (Grams, content sums,
total variation, see :mod:`nst_jax.run.tiling`), so each device sums its band and the sums are
added across the axis; the convolutions need one row of each neighbour per 3×3 layer.

Two ways to get there are provided (``method``), measured in BENCHMARKS.md ("Large images"):

* ``"shard_map"`` (the default): :func:`jax.shard_map` over ``"space"``; before every 3×3
  convolution each band receives its neighbours' edge rows with :func:`jax.lax.ppermute` (the
  first and last band get zeros: the image's own padding); the 2×2 poolings stay inside bands
  (band heights are multiples of the deepest stride); the per-band statistics are
  :func:`jax.lax.psum`-ed; the TV term takes the next band's first row. Reverse mode
  differentiates through ``ppermute`` and ``psum`` (their transposes), so the backward pass
  exchanges gradient halos the same way. Nothing image-sized crosses devices.
* ``"spmd"``: the plain single-image loss under ``jit`` with the image, the state and the
  content targets ``NamedSharding(mesh, P("space"))``, left to XLA's SPMD partitioner (which
  inserts halo exchanges for the convolutions and all-reduces for the Grams). Plain XLA kernels
  (the CPU-tuned ones are custom VJPs that the partitioner cannot see into).

Meshes are 2-D, ``("batch", "space")`` (:func:`space_mesh`); one image uses a ``1 × N`` mesh.
A batch of large images would split images over ``"batch"`` (as :mod:`nst_jax.run.sharding`
does) and each image's rows over ``"space"``: the same band loss, ``vmap``-ed over the images a
device holds inside the ``shard_map``, summed over ``"space"`` only (see the report in
BENCHMARKS.md; not wired yet).
"""

from __future__ import annotations

import dataclasses
import functools
import re
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from nst_jax import kernels as kernels_lib, losses
from nst_jax.errors import NstError
from nst_jax.features import check_weights
from nst_jax.objective import LossSpec, Targets, check_spec, style_transfer_loss
from nst_jax.optimize import OptimSpec, RunState, init_state, result_image, run_chunk
from nst_jax.preprocessing import preprocess
from nst_jax.run.tiling import loss_from_stats
from nst_jax.vgg import all_layers, canonical_layer, conv3x3, min_side, pool2x2
from nst_jax.weights.container import VGGWeights

SPACE_AXIS = "space"
BATCH_AXIS = "batch"
METHODS = ("shard_map", "spmd")


def space_mesh(devices=None, *, batch: int = 1) -> Mesh:
    """A ``("batch", "space")`` mesh: ``batch`` rows of ``len(devices) / batch`` devices each
    (``batch=1``: one image's rows over every device)."""
    devices = list(jax.devices() if devices is None else devices)
    if batch < 1 or len(devices) % batch:
        raise NstError(f"{len(devices)} devices cannot form {batch} rows of a batch x space mesh")
    return Mesh(np.array(devices, dtype=object).reshape(batch, -1), (BATCH_AXIS, SPACE_AXIS))


def space_size(mesh: Mesh) -> int:
    return mesh.shape[SPACE_AXIS]


def check_divisible(hw: tuple[int, int], spec: LossSpec, mesh: Mesh) -> None:
    """Raises ``NstError`` unless the image's rows split into equal bands whose height is a
    multiple of the deepest layer's stride (so poolings stay inside bands)."""
    n, align = space_size(mesh), min_side(spec.all_layers)
    if hw[0] % (n * align):
        raise NstError(
            f"an image of {hw[0]} rows does not split over {n} devices: the rows must be a "
            f"multiple of {n * align} ({n} bands of a multiple of {align} rows, the deepest "
            f"layer's stride); resize or crop to {hw[0] // (n * align) * n * align} rows")


# --------------------------------------------------------------------------------------------
# shard_map: the band's features with halo exchange


def _neighbour_rows(x: jax.Array, n: int) -> tuple[jax.Array, jax.Array]:
    """The previous band's last row and the next band's first row (zeros past the image)."""
    down = [(i, i + 1) for i in range(n - 1)]
    up = [(i + 1, i) for i in range(n - 1)]
    above = jax.lax.ppermute(x[-1:], SPACE_AXIS, down)
    below = jax.lax.ppermute(x[:1], SPACE_AXIS, up)
    return above, below


def band_features(
    weights: VGGWeights, band: jax.Array, layers, spec: LossSpec, n: int,
    kernels: kernels_lib.Kernels = kernels_lib.XLA,
) -> dict[str, jax.Array]:
    """Features of one band of rows inside ``shard_map`` over ``"space"`` (``n`` bands): the
    whole image's features at this band's positions."""
    x = preprocess(band.astype(spec.jnp_dtype), weights.preprocessing)
    network = weights.network
    wanted = {canonical_layer(k, network): k for k in layers}
    order = all_layers(network)
    last = max(order.index(k) for k in wanted)
    prepared = kernels.tree or {}
    out = {}

    def block(params, x, names):
        acts = {}
        for name in names:
            if name.startswith("conv"):
                above, below = _neighbour_rows(x, n)
                p = params[name]
                x = conv3x3(jnp.concatenate([above, x, below]), p["kernel"], p["bias"],
                            prepared=prepared.get(name))[1:-1]
            elif name.startswith("relu"):
                x = jax.nn.relu(x)
            else:
                x = pool2x2(x, spec.pooling, kernels=kernels.kind)
            if name in wanted:
                acts[name] = x
        return x, acts

    names = order[: last + 1]
    for b in sorted({_block(k) for k in names}):
        mine = tuple(k for k in names if _block(k) == b)
        params = {k: weights.params[k] for k in mine if k.startswith("conv")}
        run = functools.partial(block, names=mine)
        if spec.remat:
            run = jax.checkpoint(run)
        x, acts = run(params, x)
        out.update({wanted[k]: v for k, v in acts.items()})
    return out


def _block(name: str) -> int:
    return int(next(ch for ch in name if ch.isdigit()))


def band_statistics(
    weights: VGGWeights, band: jax.Array, content: dict, spec: LossSpec, n: int,
    kernels: kernels_lib.Kernels = kernels_lib.XLA,
) -> dict[str, Any]:
    """This band's share of the global statistics (see :func:`~nst_jax.run.tiling.tile_statistics`),
    inside ``shard_map``."""
    feats = band_features(weights, band, spec.all_layers, spec, n, kernels)
    grams = {k: losses.gram_matrix(feats[k], normalization="none") for k in spec.style_layers}
    sse = {}
    for k in spec.content_layers:
        d = feats[k].astype(jnp.float32) - content[k].astype(jnp.float32)
        sse[k] = jnp.sum(d * d)
    conv = losses.get_convention(spec.convention)
    x = band.astype(jnp.float32) * conv.tv_scale
    _, below = _neighbour_rows(x, n)
    last_band = jax.lax.axis_index(SPACE_AXIS) == n - 1
    h = x.shape[0]
    # Pairs (i, i+1) based in this band; the image's last row has none.
    row_ok = (jnp.arange(h) < h - 1) | ~last_band
    dy = jnp.concatenate([x, below])[1:] - x
    dx = jnp.pad(x[:, 1:] - x[:, :-1], ((0, 0), (0, 1), (0, 0)))
    if conv.tv == "l1":
        t = jnp.where(row_ok[:, None], jnp.sum(jnp.abs(dy), -1), 0.0) + jnp.sum(jnp.abs(dx), -1)
    else:
        t = 0.5 * jnp.sum(dy * dy + dx * dx, -1)
        t = jnp.where(row_ok[:, None], t, 0.0).at[:, -1].set(0.0)
    return {"gram": grams, "content": sse, "tv": jnp.sum(t)}


# --------------------------------------------------------------------------------------------
# The loss of a sharded image


def image_sharding(mesh: Mesh, batched: bool = False) -> NamedSharding:
    """Rows over ``"space"`` (and a leading image axis over ``"batch"`` when ``batched``)."""
    return NamedSharding(mesh, P(BATCH_AXIS, SPACE_AXIS) if batched else P(SPACE_AXIS))


def spatial_loss(
    targets: Targets, weights: VGGWeights, spec: LossSpec, mesh: Mesh, hw: tuple[int, int], *,
    method: str = "shard_map", kernels: kernels_lib.Kernels = kernels_lib.XLA,
) -> Callable[[jax.Array], tuple[jax.Array, dict]]:
    """The loss of one ``hw`` image whose rows are split over ``mesh``'s ``"space"`` axis, as a
    function ``image -> (total, aux)`` equal to
    :func:`~nst_jax.objective.style_transfer_loss` (use it inside ``jit``; its gradient is
    sharded like the image). ``targets`` as from :func:`~nst_jax.objective.compute_targets`
    (place them with :func:`shard_targets`); ``kernels`` (:func:`nst_jax.kernels.prepare`) for
    the ``"shard_map"`` method (``"spmd"`` runs plain XLA)."""
    check_weights(weights)
    check_spec(spec)
    if method not in METHODS:
        raise NstError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    if spec.regions:
        raise NstError("spatial sharding does not support region masks yet")
    check_divisible(hw, spec, mesh)
    sharding = image_sharding(mesh)
    if method == "spmd":
        def loss(image):
            image = jax.lax.with_sharding_constraint(image, sharding)
            return style_transfer_loss(image, targets, weights, spec)

        return loss

    if spec.style_loss != "gram":
        raise NstError(f"the row split sums Gram matrices over the bands; the "
                       f"{spec.style_loss!r} style loss is not split yet (use method='spmd')")
    n = space_size(mesh)
    content_spec = {k: P(SPACE_AXIS) for k in spec.content_layers}

    def local(band, content, weights, style, kernels):
        stats = band_statistics(weights, band, content, spec, n, kernels)
        stats = jax.lax.psum(stats, SPACE_AXIS)
        return loss_from_stats(stats, style, spec, hw)

    mapped = jax.shard_map(
        local, mesh=mesh,
        in_specs=(P(SPACE_AXIS), content_spec, P(), P(), P()), out_specs=P())
    return lambda image: mapped(image, targets["content"], weights, targets["style"], kernels)


def shard_targets(targets: Targets, mesh: Mesh) -> Targets:
    """Content targets split by rows over ``"space"``; style Grams replicated."""
    rows, rep = NamedSharding(mesh, P(SPACE_AXIS)), NamedSharding(mesh, P())
    return {"content": {k: jax.device_put(v, rows) for k, v in targets["content"].items()},
            "style": {k: jax.device_put(v, rep) for k, v in targets["style"].items()}}


def replicate_weights(weights: VGGWeights, mesh: Mesh) -> VGGWeights:
    return jax.device_put(weights, NamedSharding(mesh, P()))


def state_shardings(state: RunState, mesh: Mesh) -> RunState:
    """Image-sized leaves (the iterate, Adam's moments, best/EMA images) over ``"space"``,
    scalars replicated."""
    rows, rep = image_sharding(mesh), NamedSharding(mesh, P())
    return jax.tree.map(lambda a: rows if jnp.ndim(a) == 3 else rep, state)


# --------------------------------------------------------------------------------------------
# The optimisation loop


@dataclasses.dataclass
class SpatialResult:
    """Outcome of :func:`stylize_spatial`: ``image`` (host, ``(H, W, 3)``), the per-step
    ``history`` (``{"total", "content", "style", "tv"}``) and the steps taken."""

    image: np.ndarray
    history: dict[str, np.ndarray]
    steps: int


def needed_weights(weights: VGGWeights, spec: LossSpec) -> VGGWeights:
    """``weights`` with only the conv layers the loss reaches (the rest would be replicated to
    every device for nothing)."""
    order = all_layers(weights.network)
    last = max(order.index(canonical_layer(k, weights.network)) for k in spec.all_layers)
    keep = {k for k in order[: last + 1] if k.startswith("conv")}
    return weights.replace(params={k: v for k, v in weights.params.items() if k in keep})


def spatial_chunk(
    spec: LossSpec, optim: OptimSpec, mesh: Mesh, hw: tuple[int, int], *, chunk: int,
    method: str = "shard_map",
) -> Callable:
    """The jitted ``(state, n, targets, weights) -> (state, history)`` of
    :func:`~nst_jax.optimize.run_chunk` on a row-sharded image: the state sharded by
    :func:`state_shardings` (donated), targets by :func:`shard_targets`, weights replicated."""
    rep = NamedSharding(mesh, P())

    def run(state, n, targets, weights, kernels):
        loss_fn = spatial_loss(targets, weights, spec, mesh, hw, method=method, kernels=kernels)
        return run_chunk(state, n, loss_fn, optim, chunk)

    template = jax.eval_shape(lambda: init_state(jnp.zeros((*hw, 3)), lambda x: (jnp.sum(x), {}),
                                                 optim))
    state_sh = state_shardings(template, mesh)
    return jax.jit(run, in_shardings=(state_sh, rep, None, None, None),
                   out_shardings=(state_sh, rep), donate_argnums=0)


def spatial_init(
    image: np.ndarray | jax.Array, targets: Targets, weights: VGGWeights, spec: LossSpec,
    optim: OptimSpec, mesh: Mesh, *, method: str = "shard_map",
) -> RunState:
    """:func:`~nst_jax.optimize.init_state` at ``image`` with every image-sized leaf split over
    ``"space"`` (L-BFGS evaluates the loss once, sharded)."""
    hw = tuple(np.shape(image)[:2])
    template = jax.eval_shape(lambda: init_state(jnp.zeros((*hw, 3)), lambda x: (jnp.sum(x), {}),
                                                 optim))
    init = jax.jit(lambda x, t, w: init_state(
        x, spatial_loss(t, w, spec, mesh, hw, method=method), optim),
        out_shardings=state_shardings(template, mesh))
    return init(jax.device_put(jnp.asarray(image, jnp.float32), image_sharding(mesh)),
                targets, weights)


def stylize_spatial(
    content: np.ndarray, targets: Targets, weights: VGGWeights, spec: LossSpec,
    optim: OptimSpec, mesh: Mesh, *, steps: int, chunk: int = 20, method: str = "shard_map",
    init: np.ndarray | None = None,
) -> SpatialResult:
    """Runs ``steps`` optimiser steps (Adam or L-BFGS, :mod:`nst_jax.optimize`) on one image
    whose rows, optimiser state and activations are split over ``mesh``'s ``"space"`` axis.

    ``targets`` as from :func:`~nst_jax.objective.compute_targets` at the image's size (or
    :func:`~nst_jax.run.tiling.tiled_targets` when even that does not fit one device).
    """
    hw = tuple(np.shape(content)[:2])
    platform = mesh.devices.flat[0].platform
    weights = replicate_weights(needed_weights(weights, spec), mesh)
    # The CPU-tuned kernels, prepared once here (plain XLA off CPU).
    kernels = replicate_weights(kernels_lib.prepare(
        weights.params, kernels_lib.kernels_for(platform), spec.jnp_dtype), mesh)
    targets = shard_targets(targets, mesh)
    step = spatial_chunk(spec, optim, mesh, hw, chunk=chunk, method=method)
    state = spatial_init(content if init is None else init, targets, weights, spec, optim, mesh,
                         method=method)
    history: dict[str, list] = {}
    done = 0
    while done < steps:
        state, hist = step(state, jnp.int32(min(chunk, steps - done)), targets, weights, kernels)
        hist = jax.device_get(hist)
        ran = ~np.isnan(hist["total"])
        for k, v in hist.items():
            history.setdefault(k, []).append(v[ran])
        done += min(chunk, steps - done)
        if bool(state.diverged):
            break
    image = np.asarray(jax.device_get(result_image(state, optim)))
    return SpatialResult(image=image,
                         history={k: np.concatenate(v) for k, v in history.items()},
                         steps=int(state.step))


# --------------------------------------------------------------------------------------------
# What a compiled program holds and moves (for the measurements and tests)


def compiled_bytes(compiled) -> dict[str, int]:
    """XLA's per-device ``memory_analysis`` of a compiled program: temporaries, arguments,
    outputs, aliased (donated) bytes, and ``total`` = the first three less the aliases."""
    m = compiled.memory_analysis()
    total = (m.temp_size_in_bytes + m.argument_size_in_bytes + m.output_size_in_bytes
             - m.alias_size_in_bytes)
    return {"temp": m.temp_size_in_bytes, "arguments": m.argument_size_in_bytes,
            "outputs": m.output_size_in_bytes, "alias": m.alias_size_in_bytes, "total": total}


def hlo_collectives(text: str) -> dict[str, int]:
    """Counts of the collectives in optimised HLO text (``compiled.as_text()``) and the element
    count of the largest all-gather's result."""
    def count(op):
        return len(re.findall(rf" {op}(-start)?\(", text))

    gathers = []
    for line in text.splitlines():
        if re.search(r" all-gather(-start)?\(", line):
            shape = re.search(r"= \(?[a-z0-9]+\[([0-9,]*)\]", line)
            if shape:
                gathers.append(int(np.prod([int(d) for d in shape.group(1).split(",") if d])))
    return {"all_gather": len(gathers), "largest_all_gather_elements": max(gathers, default=0),
            "collective_permute": count("collective-permute"), "all_reduce": count("all-reduce")}
