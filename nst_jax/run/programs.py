"""The compiled programs of a stylization, for a group of 1..N images of one shape.

Each program is a single-image function of :mod:`nst_jax.optimize` / :mod:`nst_jax.objective`
(``init_state``, ``run_chunk``, ``result_image``, ``style_transfer_loss``) put through
``jax.vmap`` over the rows a device holds (L-BFGS steps: one row after another; a single row
runs as itself, see :func:`_each_row`) and ``jax.shard_map`` over the ``"batch"`` axis of the
group's mesh (:mod:`nst_jax.run.sharding`). Per-image arrays — states, content features, per-image
style targets, histories — are split over the mesh; the weights, their prepared kernels and
shared style targets are replicated (``in_axes`` ``None``). Nothing crosses devices: every image is independent, so a
device whose images have all diverged leaves its step loop early.

``stylize`` runs a group of one on a one-device mesh through exactly these programs, so a
single image and a batch of one give the same result.

Static arguments (hashable): the loss and optimiser specs, whether the style targets are
shared, the mesh and the chunk length. The step program therefore compiles once per group
shape, not per image or per chunk (:func:`compile_count`). Programs compiled for a CPU mesh get
:data:`CPU_COMPILER_OPTIONS`; other platforms get XLA's defaults.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
from jax.sharding import Mesh, PartitionSpec as P

from nst_jax import imageops, kernels as kernels_lib
from nst_jax.run import sharding
from nst_jax.objective import (LossSpec, features_for, loss_key, style_grams,
                               style_transfer_loss)
from nst_jax.optimize import OptimSpec, RunState, init_state, result_image, run_chunk
from nst_jax.weights.container import VGGWeights

#: XLA's memory-optimised instruction order, for CPU only. The default CPU order computes the
#: recomputed (remat) forward passes early, so ``remat`` saved nothing and peak memory was ~2x
#: higher (BENCHMARKS.md); step time is unchanged. Unmeasured elsewhere, so not passed there.
CPU_COMPILER_OPTIONS = {"xla_cpu_scheduler_type": "CPU_SCHEDULER_TYPE_MEMORY_OPTIMIZED"}


def platform(mesh: Mesh) -> str:
    """The platform of the mesh's devices (``"cpu"``, ``"gpu"``, ``"tpu"``)."""
    return mesh.devices.flat[0].platform


def _compiled(static: tuple[str, ...], donate: tuple[int, ...] = ()):
    """``jax.jit`` with ``static`` names (and ``mesh``), one variant for CPU meshes and one for
    the rest."""
    static = (*static, "mesh")

    def wrap(fn: Callable) -> Callable:
        on_cpu = jax.jit(fn, static_argnames=static, donate_argnums=donate,
                         compiler_options=CPU_COMPILER_OPTIONS)
        elsewhere = jax.jit(fn, static_argnames=static, donate_argnums=donate)

        @functools.wraps(fn)
        def call(*args, mesh: Mesh, **kwargs):
            jitted = on_cpu if platform(mesh) == "cpu" else elsewhere
            return jitted(*args, mesh=mesh, **kwargs)

        call.cache_size = lambda: on_cpu._cache_size() + elsewhere._cache_size()
        call.lower = lambda *args, mesh, **kw: (
            on_cpu if platform(mesh) == "cpu" else elsewhere).lower(*args, mesh=mesh, **kw)
        return call

    return wrap


def _each_row(fn, in_axes: tuple, sequential: bool = False):
    """``fn`` over the rows a device holds: ``vmap(fn, in_axes)``, or one row after another
    (``lax.map``) when ``sequential``; a single row runs as itself.

    vmap turns every ``lax.cond`` with a per-row predicate into a ``select`` that runs both
    branches, and L-BFGS's zoom line search is made of them: an L-BFGS step of one image took
    1.5–1.9x as long vmapped, and 8 rows one after another beat their vmap by 6% on an H200
    and 2.5x on CPU, while Adam's steps gain from vmap (2x on the H200; BENCHMARKS.md).
    """
    def per_row(f, args, other=lambda sub: sub):  # f on each leaf with a row axis
        return [jax.tree.map(lambda ax, sub: other(sub) if ax is None else jax.tree.map(f, sub),
                             ax, x, is_leaf=lambda a: a is None) for ax, x in zip(in_axes, args)]

    def rows(*args):
        (n,) = set(jax.tree.leaves(per_row(lambda a: a.shape[0], args, lambda sub: None)))
        if n == 1:
            return jax.tree.map(lambda a: a[None], fn(*per_row(lambda a: a[0], args)))
        if sequential:
            return jax.lax.map(lambda i: fn(*per_row(lambda a: a[i], args)), jnp.arange(n))
        return jax.vmap(fn, in_axes=in_axes)(*args)

    return rows


def _on_rows(fn, mesh: Mesh, in_axes: tuple, sequential: bool = False):
    """``fn`` on each device's rows (:func:`_each_row`); ``None`` axes are replicated inputs."""
    specs = jax.tree.map(lambda a: P() if a is None else P(sharding.BATCH_AXIS), in_axes,
                         is_leaf=lambda a: a is None)
    # check_vma=False: run_chunk's loop carries start from constants (replicated type) and
    # become per-device values; with no collectives in these programs the check buys nothing.
    return jax.shard_map(_each_row(fn, in_axes, sequential), mesh=mesh, in_specs=specs,
                         out_specs=P(sharding.BATCH_AXIS), check_vma=False)


def target_axes(targets: dict[str, Any], shared: bool) -> dict[str, Any]:
    """``in_axes`` of a targets pytree: per image (0), or replicated style targets (``None``)."""
    return {k: None if shared and k == "style" else 0 for k in targets}


def _axes(targets, shared: bool, swept: bool) -> tuple:
    """``in_axes`` of ``(targets, values)``: values per image in a sweep, else replicated."""
    return target_axes(targets, shared), 0 if swept else None


def _loss(targets, values, weights, spec, kernels=kernels_lib.XLA):
    return lambda x, key=None: style_transfer_loss(x, targets, weights, spec, values["loss"],
                                                   kernels=kernels, key=key)


@_compiled(("spec",))
def prepare(weights: VGGWeights, *, spec: LossSpec, mesh: Mesh) -> kernels_lib.Kernels:
    """The step programs' kernels for the mesh's platform (:func:`~nst_jax.kernels.kernels_for`)
    in the spec's dtype: on CPU cast, flipped and Winograd-transformed here, once, since XLA
    does not hoist loop invariants out of the step's ``while_loop``. The step programs
    (``init``, ``next_scale``, ``chunk``) take them; targets and results run plain XLA."""
    kind = kernels_lib.kernels_for(platform(mesh))
    return kernels_lib.prepare(weights.params, kind, spec.jnp_dtype)


@_compiled(("spec",))
def style_targets_of(weights: VGGWeights, style: jax.Array, *, spec: LossSpec, mesh: Mesh):
    """``{layer: (C_l, C_l)}`` Grams of one style image, on the mesh's (single) device."""
    del mesh  # selects the compiler options
    return style_grams(weights, style, spec)


@_compiled(("spec",))
def content_targets(contents: jax.Array, weights: VGGWeights, *, spec: LossSpec, mesh: Mesh):
    """``{layer: (B, H_l, W_l, C_l)}`` content features of a ``(B, H, W, 3)`` batch."""

    def one(x, w):
        feats = features_for(w, x, spec.content_layers, spec)
        return {k: jax.lax.stop_gradient(v) for k, v in feats.items()}

    return _on_rows(one, mesh, (0, None))(contents, weights)


@_compiled(("spec", "optim", "shared", "swept"))
def init(images, targets, values, weights, kernels, *, spec: LossSpec, optim: OptimSpec,
         shared: bool, swept: bool, mesh):
    """Fresh optimiser states at ``images`` ``(B, H, W, 3)``; ``kernels`` from :func:`prepare`."""
    def one(x, t, v, w, k):
        return init_state(x, _loss(t, v, w, spec, k), optim, v["optim"], key=loss_key(spec))

    axes = (0, *_axes(targets, shared, swept), None, None)
    return _on_rows(one, mesh, axes)(images, targets, values, weights, kernels)


@_compiled(("spec", "optim", "shared", "swept", "hw", "carry"))
def next_scale(states, targets, values, weights, kernels, *, spec, optim, shared, swept, mesh,
               hw, carry: bool):
    """States at size ``hw`` started from the previous scale's reported images; ``carry`` keeps
    Adam's moments (resized, see :func:`rescale_opt_state`)."""

    def one(s, t, v, w, k):
        old_hw = s.image.shape[:2]
        new = init_state(imageops.resize(result_image(s, optim), hw), _loss(t, v, w, spec, k),
                         optim, v["optim"], key=s.key)
        if carry:
            new = new._replace(opt_state=rescale_opt_state(s.opt_state, hw, old_hw))
        return new

    axes = (0, *_axes(targets, shared, swept), None, None)
    return _on_rows(one, mesh, axes)(states, targets, values, weights, kernels)


@_compiled(("spec", "optim", "shared", "swept", "max_steps"), donate=(0,))
def chunk(states, n, targets, values, weights, kernels, *, spec, optim, shared, swept, mesh,
          max_steps: int):
    """``run_chunk`` on every image: ``min(n, max_steps)`` steps each; histories
    ``(B, max_steps)`` and whether each image has diverged ``(B,)``."""

    def one(s, t, v, w, k, n):
        s, hist = run_chunk(s, n, _loss(t, v, w, spec, k), optim, max_steps, v["optim"])
        return s, {**hist, "diverged": s.diverged}

    axes = (0, *_axes(targets, shared, swept), None, None, None)
    sequential = optim.optimizer == "lbfgs"  # see _each_row
    return _on_rows(one, mesh, axes, sequential)(states, targets, values, weights, kernels, n)


@_compiled(("optim",))
def reported(states, *, optim: OptimSpec, mesh: Mesh):
    """The image each state would report now (:func:`~nst_jax.optimize.result_image`)."""
    return _on_rows(lambda s: result_image(s, optim), mesh, (0,))(states)


@_compiled(("spec", "shared", "swept"))
def evaluate(images, targets, values, weights, *, spec: LossSpec, shared: bool, swept: bool,
             mesh: Mesh):
    """``(total, aux)`` of :func:`~nst_jax.objective.style_transfer_loss` per image."""
    one = lambda x, t, v, w: _loss(t, v, w, spec)(x)  # noqa: E731
    axes = (0, *_axes(targets, shared, swept), None)
    return _on_rows(one, mesh, axes)(images, targets, values, weights)


def finish_one(s: RunState, loss: Callable, optim: OptimSpec) -> dict:
    """One image's :func:`finish` with ``loss(image) -> (total, aux)``: the reported image (the
    final iterate when, under ``"best"``, it is lower than every earlier one) and its terms, the
    final iterate's loss and the loss at the diverged iterate."""
    last = jnp.clip(s.image, 0.0, 1.0)
    last_loss, _ = loss(last)
    wins = (optim.reported == "best") & ~s.diverged & (last_loss < s.best_loss)
    image = jnp.where(wins, last, result_image(s, optim))
    total, aux = loss(image)
    _, bad = loss(jnp.clip(s.diverged_image, 0.0, 1.0))
    return {"image": image, "loss": total, "terms": aux, "bad": bad, "last_loss": last_loss,
            "last_wins": wins, "steps": s.step, "diverged": s.diverged}


@_compiled(("spec", "optim", "shared", "swept"))
def finish(states, targets, values, weights, *, spec, optim, shared, swept, mesh):
    """Per image: the reported image and its loss terms, the final iterate's loss, and the
    terms at the diverged iterate.

    No step evaluates the final iterate (each step evaluates the image it starts from), so
    under ``"best"`` it competes here: ``last_wins`` when it is lower than every earlier one.
    """

    def one(s, t, v, w):
        return finish_one(s, _loss(t, v, w, spec), optim)

    axes = (0, *_axes(targets, shared, swept), None)
    return _on_rows(one, mesh, axes)(states, targets, values, weights)


def rescale_opt_state(opt_state, shape_hw: tuple[int, int], old_hw: tuple[int, int]):
    """Carries Adam's moment estimates to a new image size (bilinear, so ``ν`` stays >= 0).

    Leaves shaped like the image (``(H, W, 3)``) are resized; scalars (the step count) are kept,
    as crowsonkb/style-transfer-pytorch does between scales.
    """

    def f(a):
        if a.ndim == 3 and tuple(a.shape[:2]) == tuple(old_hw):
            return jax.image.resize(a, (*shape_hw, a.shape[-1]), "linear")
        return a

    return jax.tree.map(f, opt_state)


def compile_count() -> int:
    """Number of distinct compiled step programs so far (one per group shape and settings)."""
    return chunk.cache_size()
