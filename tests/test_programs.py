"""The engine's compiled programs: how a device runs its rows (one, or several under L-BFGS)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nst_jax.run import programs, sharding
from nst_jax.config import get_preset
from nst_jax.objective import compute_targets

pytestmark = pytest.mark.slow  # compile-heavy: not in the unit tier (-m "not slow")


@pytest.mark.parametrize("rows", [1, 2])
def test_lbfgs_rows_keep_the_line_search_conditionals(weights, rows):
    """L-BFGS rows run the single-image step (one row as itself, several one after another),
    not its vmap: vmap turns each ``lax.cond`` of the zoom line search into a ``select`` that
    computes both branches (1.5–2.5x the step time, BENCHMARKS.md). Lowering only."""
    config = get_preset("tiny").replace(optimizer="lbfgs", learning_rate=1.0)
    spec, optim = config.loss.structure(), config.optim.structure()
    values = {"loss": config.loss.values(), "optim": config.optim.values()}
    mesh = sharding.batch_mesh(jax.devices()[:1])
    x = jnp.full((16, 16, 3), 0.5)
    one = jax.eval_shape(lambda: compute_targets(weights, x, x, spec))
    per_row = {"content": jax.tree.map(lambda a: jax.ShapeDtypeStruct((rows, *a.shape), a.dtype),
                                       one["content"]),
               "style": one["style"]}
    kw = dict(spec=spec, optim=optim, shared=True, swept=False, mesh=mesh)
    kernels = programs.prepare(weights, spec=spec, mesh=mesh)
    state = programs.init.lower(jax.ShapeDtypeStruct((rows, 16, 16, 3), jnp.float32), per_row,
                                values, weights, kernels, **kw).out_info
    text = programs.chunk.lower(state, np.int32(1), per_row, values, weights, kernels, max_steps=2,
                                **kw).as_text()
    assert "stablehlo.case" in text


def test_lbfgs_rows_one_after_another_equal_single_runs(weights):
    """Two L-BFGS rows on one device (``lax.map``) give each row's one-row result."""
    config = get_preset("tiny").replace(optimizer="lbfgs", learning_rate=1.0,  # one conv: cheap
                                        content_layers=("relu1_1",), style_layers=("relu1_1",))
    kw = dict(spec=config.loss, optim=config.optim, shared=True, swept=False,
              mesh=sharding.batch_mesh(jax.devices()[:1]))
    values = {"loss": config.loss.values(), "optim": config.optim.values()}
    rng = np.random.default_rng(3)
    images = jnp.asarray(rng.random((2, 16, 16, 3), dtype=np.float32))
    style = compute_targets(weights, images[0], images[1], config.loss)["style"]
    kernels = programs.prepare(weights, spec=config.loss, mesh=kw["mesh"])

    def run(rows):
        targets = {"content": programs.content_targets(rows, weights, spec=config.loss,
                                                       mesh=kw["mesh"]), "style": style}
        state = programs.init(rows, targets, values, weights, kernels, **kw)
        state, hist = programs.chunk(state, np.int32(2), targets, values, weights, kernels,
                                     max_steps=2, **kw)
        return np.asarray(state.image), np.asarray(hist["total"])

    both = run(images)
    for i in range(2):
        one = run(images[i:i + 1])
        np.testing.assert_allclose(both[1][i], one[1][0], rtol=1e-5)
        np.testing.assert_allclose(both[0][i], one[0][0], atol=1e-5)
