"""Optimising one image: optax Adam or L-BFGS, run in compiled chunks of steps.

The single-image functions here are pure and unbatched; :mod:`nst_jax.run.programs` ``vmap``s the same
:func:`run_chunk` over many images. One call of :func:`run_chunk` runs up to ``chunk`` steps in a
``lax.while_loop`` (no host round-trip per step), with the number of steps a traced argument so
that every chunk length reuses one compiled program per image shape.

Per step, with ``f`` the objective of :mod:`nst_jax.objective`:

* Adam: ``x ← clip(x + adam(∇f(x)), 0, 1)`` — pixels stay in range (the TF tutorial's clip).
* L-BFGS (optax, zoom line search): minimises ``f(clip(x, 0, 1))`` over an unconstrained ``x``,
  so the line search and curvature pairs see one smooth-where-it-matters, consistent function;
  the image reported is always ``clip(x, 0, 1)``. The value and gradient at the current point come
  from the line search's state, so an iteration costs one evaluation when the first trial step is
  accepted.

A stochastic loss (the ``"sw"`` style loss's random directions) takes a PRNG ``key`` keyword:
when :func:`init_state` is given a ``key``, the state carries it and every step splits it,
calling ``loss_fn(x, key=subkey)``, so a run is reproducible and the loss stays pure. Without a
key the loss is called as ``loss_fn(x)``, as before.

The state keeps the best image seen (lowest total loss, as the seed does) and stops on the first
non-finite loss or gradient, keeping the best image and the iterate that diverged.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax
import optax.tree_utils as otu

from nst_jax.checks import check_choice, check_int, check_positive, check_unit, plain_fields
from nst_jax.errors import NstError

LossFn = Callable[[jax.Array], tuple[jax.Array, dict[str, Any]]]
HISTORY_KEYS = ("total", "content", "style", "tv")
OPTIMIZERS = ("adam", "lbfgs")
#: Which image a run reports: lowest loss seen, the final iterate, or the moving average.
OUTPUT_ITERATES = ("best", "last", "ema")


@dataclasses.dataclass(frozen=True)
class OptimSpec:
    """Static optimiser settings (hashable; part of the compiled program's identity).

    ``optimizer`` is ``"adam"`` (``learning_rate``, ``adam_b1``, ``adam_b2``, ``adam_eps``) or
    ``"lbfgs"`` (``lbfgs_memory`` curvature pairs; ``learning_rate`` 1 lets the zoom line search
    pick every step). ``ema_decay`` > 0 keeps an exponential moving average of the iterate,
    ``x̄ ← d x̄ + (1 - d) x`` (iterate averaging). ``output_iterate`` picks the image
    :func:`result_image` reports: ``"best"`` (lowest loss seen), ``"last"`` (the final iterate)
    or ``"ema"`` (the average; needs ``ema_decay`` > 0); ``None``: ``"ema"`` when
    ``ema_decay`` > 0, else ``"best"`` (see :attr:`reported`).
    """

    optimizer: str = "adam"
    learning_rate: float = 0.02
    adam_b1: float = 0.99
    adam_b2: float = 0.999
    adam_eps: float = 0.1
    lbfgs_memory: int = 20
    ema_decay: float = 0.0
    output_iterate: str | None = None

    def __post_init__(self):
        plain_fields(self)
        if self.optimizer not in OPTIMIZERS:
            raise NstError(f"optimizer must be 'adam' or 'lbfgs', got {self.optimizer!r}")
        check_int(self.lbfgs_memory, "L-BFGS memory", minimum=1)
        check_positive(self.learning_rate, "learning rate")
        check_positive(self.adam_eps, "adam eps")
        check_unit(self.adam_b1, "adam b1")
        check_unit(self.adam_b2, "adam b2")
        check_unit(self.ema_decay, "EMA decay")
        if self.output_iterate is not None:
            check_choice(self.output_iterate, "output iterate", OUTPUT_ITERATES)
        if self.output_iterate == "ema" and self.ema_decay == 0:
            raise NstError("output iterate 'ema' needs an EMA decay > 0 (e.g. --ema-decay 0.95)")

    def structure(self) -> "OptimSpec":
        """The spec with its traced values (:class:`OptimValues`) replaced by placeholders that
        keep only what changes a compiled program: the optimiser, its memory, whether L-BFGS's
        line search picks every step (learning rate 1), whether an average is kept and which
        image is reported. Two specs that differ only in values share every program."""
        keep = (self.optimizer == "lbfgs" and self.learning_rate == 1.0)
        return dataclasses.replace(
            self, learning_rate=1.0 if keep else 0.5, adam_b1=0.5, adam_b2=0.5, adam_eps=0.5,
            ema_decay=0.5 if self.ema_decay > 0 else 0.0, output_iterate=self.reported)

    def values(self) -> "OptimValues":
        """The settings that enter the compiled programs as arrays (float32 scalars)."""
        return OptimValues(*(jnp.asarray(getattr(self, f), jnp.float32) for f in OptimValues._fields))

    @property
    def reported(self) -> str:
        """``output_iterate`` resolved: ``"best"``, ``"last"`` or ``"ema"``."""
        if self.output_iterate is not None:
            return self.output_iterate
        return "ema" if self.ema_decay > 0 else "best"


class OptimValues(NamedTuple):
    """An :class:`OptimSpec`'s numbers as traced arrays: a new value reuses the programs, and a
    sweep ``vmap``s over them (as optax's ``inject_hyperparams`` passes hyper-parameters)."""

    learning_rate: jax.Array
    adam_b1: jax.Array
    adam_b2: jax.Array
    adam_eps: jax.Array
    ema_decay: jax.Array


def make_optimizer(spec: OptimSpec, values: OptimValues | None = None,
                   ) -> optax.GradientTransformationExtraArgs:
    """optax Adam with the hyper-parameters ``values`` (default: the spec's), or L-BFGS with a
    zoom line search."""
    v = spec.values() if values is None else values
    if spec.optimizer == "adam":
        return optax.adam(v.learning_rate, b1=v.adam_b1, b2=v.adam_b2, eps=v.adam_eps)
    if spec.optimizer == "lbfgs":
        lr = None if spec.learning_rate == 1.0 else v.learning_rate
        linesearch = optax.scale_by_zoom_linesearch(max_linesearch_steps=20,
                                                    initial_guess_strategy="one")
        return optax.lbfgs(learning_rate=lr, memory_size=spec.lbfgs_memory, linesearch=linesearch)
    raise ValueError(f"unknown optimizer {spec.optimizer!r}")


class RunState(NamedTuple):
    """Optimisation state of one image (a pytree; every leaf gains a batch axis under vmap)."""

    image: jax.Array  # (H, W, 3) float32, the iterate x
    opt_state: Any
    best_image: jax.Array  # (H, W, 3), clip(x) with the lowest total loss so far
    best_loss: jax.Array  # () float32
    ema_image: jax.Array  # (H, W, 3), averaged iterate (equals image when ema_decay == 0)
    step: jax.Array  # () int32, steps taken
    diverged: jax.Array  # () bool
    diverged_image: jax.Array  # (H, W, 3), the iterate whose loss or gradient was not finite
    key: Any = None  # (2,) uint32 PRNG key of a stochastic loss, split every step; None: none


def objective_for(loss_fn: LossFn, spec: OptimSpec) -> LossFn:
    """The function the optimiser minimises (L-BFGS sees the image through ``clip``)."""
    if spec.optimizer == "lbfgs":
        return lambda x: loss_fn(jnp.clip(x, 0.0, 1.0))
    return loss_fn


def init_state(image: jax.Array, loss_fn: LossFn, spec: OptimSpec,
               values: OptimValues | None = None, *, key: jax.Array | None = None) -> RunState:
    """Fresh state at ``image`` (``(H, W, 3)`` in ``[0, 1]``); ``values`` as in
    :func:`make_optimizer`.

    ``key``: a PRNG key for a stochastic ``loss_fn``, which is then called as
    ``loss_fn(x, key=k)`` with a fresh ``k`` split off every step (L-BFGS refuses one: its line
    search needs one deterministic function).
    """
    if key is not None and spec.optimizer == "lbfgs":
        raise NstError("L-BFGS needs a deterministic loss; a stochastic one (the 'sw' style "
                       "loss) runs with Adam")
    image = image.astype(jnp.float32)
    opt = make_optimizer(spec, values)
    opt_state = opt.init(image)
    if spec.optimizer == "lbfgs":
        f = objective_for(loss_fn, spec)
        value, grad = jax.value_and_grad(lambda x: f(x)[0])(image)
        opt_state = otu.tree_set(opt_state, value=value, grad=grad)
    # Strong types throughout, so the state a chunk returns has exactly the input's types and
    # the chunk program compiles once.
    opt_state = jax.tree.map(lambda a: jnp.asarray(a, dtype=jnp.asarray(a).dtype), opt_state)
    return RunState(image=image, opt_state=opt_state, best_image=image,
                    best_loss=jnp.asarray(jnp.inf, jnp.float32), ema_image=image,
                    step=jnp.zeros((), jnp.int32), diverged=jnp.zeros((), bool),
                    diverged_image=jnp.zeros_like(image), key=key)


def _all_finite(tree) -> jax.Array:
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]))


def _step(state: RunState, loss_fn: LossFn, spec: OptimSpec, values: OptimValues | None):
    """One optimiser step; returns ``(new_state, loss, terms)`` (terms NaN for L-BFGS)."""
    opt = make_optimizer(spec, values)
    new_key = state.key
    if state.key is not None:
        new_key, sub = jax.random.split(state.key)
        loss_fn = _with_key(loss_fn, sub)
    f = objective_for(loss_fn, spec)
    x = state.image
    nan = jnp.asarray(jnp.nan, jnp.float32)
    if spec.optimizer == "lbfgs":
        loss = otu.tree_get(state.opt_state, "value")
        grad = otu.tree_get(state.opt_state, "grad")
        terms = {"content": nan, "style": nan, "tv": nan}
        updates, new_opt = opt.update(grad, state.opt_state, x, value=loss, grad=grad,
                                      value_fn=lambda y: f(y)[0])
        new_x = x + updates
    else:
        (loss, aux), grad = jax.value_and_grad(f, has_aux=True)(x)
        terms = {k: aux[k] for k in ("content", "style", "tv")}
        updates, new_opt = opt.update(grad, state.opt_state, x)
        new_x = jnp.clip(x + updates, 0.0, 1.0)
    ok = jnp.isfinite(loss) & _all_finite(grad)
    if spec.optimizer == "lbfgs":
        # The next point's value/grad (computed by the line search) must be finite too.
        ok = ok & _all_finite(new_x) & jnp.isfinite(otu.tree_get(new_opt, "value"))
    better = ok & (loss < state.best_loss)
    shown = jnp.clip(x, 0.0, 1.0)
    keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(ok, a, b), new, old)  # noqa: E731
    new_x = keep(new_x, x)
    d = (spec.values() if values is None else values).ema_decay
    ema = d * state.ema_image + (1.0 - d) * jnp.clip(new_x, 0.0, 1.0) if spec.ema_decay > 0 else new_x
    new_state = RunState(
        image=new_x,
        opt_state=keep(new_opt, state.opt_state),
        best_image=jnp.where(better, shown, state.best_image),
        best_loss=jnp.where(better, loss, state.best_loss),
        ema_image=keep(ema, state.ema_image),
        step=state.step + ok.astype(jnp.int32),
        diverged=~ok,
        diverged_image=jnp.where(ok, state.diverged_image, x),
        key=new_key,
    )
    return new_state, loss, terms


def _with_key(loss_fn: LossFn, key: jax.Array) -> LossFn:
    return lambda x: loss_fn(x, key=key)


def run_chunk(
    state: RunState, n: jax.Array, loss_fn: LossFn, spec: OptimSpec, chunk: int,
    values: OptimValues | None = None,
) -> tuple[RunState, dict[str, jax.Array]]:
    """Runs ``min(n, chunk)`` steps, stopping early on divergence (``values`` as in
    :func:`make_optimizer`).

    Returns the new state and ``{"total", "content", "style", "tv"}`` histories of shape
    ``(chunk,)``, NaN where no step ran (and for the terms under L-BFGS, whose line search
    returns no breakdown; the caller evaluates the terms at the end).
    """
    hist0 = {k: jnp.full((chunk,), jnp.nan, jnp.float32) for k in HISTORY_KEYS}
    n = jnp.minimum(n, chunk)

    def cond(carry):
        i, s, _ = carry
        return (i < n) & ~s.diverged

    def body(carry):
        i, s, hist = carry
        s, loss, terms = _step(s, loss_fn, spec, values)
        hist = dict(hist, total=hist["total"].at[i].set(loss))
        for k, v in terms.items():
            hist[k] = hist[k].at[i].set(v)
        return i + 1, s, hist

    _, state, hist = jax.lax.while_loop(cond, body, (jnp.zeros((), jnp.int32), state, hist0))
    return state, hist


def result_image(state: RunState, spec: OptimSpec) -> jax.Array:
    """The image to report (``spec.reported``): the best iterate seen, the last one, or the
    averaged one.

    Before any step has run (``best_loss`` is inf) the best iterate is the current one.
    """
    output = spec.reported
    if output == "ema":
        return jnp.clip(state.ema_image, 0.0, 1.0)
    if output == "last":
        return jnp.clip(state.image, 0.0, 1.0)
    return jnp.where(jnp.isfinite(state.best_loss), state.best_image, jnp.clip(state.image, 0, 1))
