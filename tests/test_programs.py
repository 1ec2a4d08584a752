"""The engine's compiled programs: what a device holding a single row runs."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from nst_jax import programs, sharding
from nst_jax.config import get_preset
from nst_jax.objective import compute_targets


def test_a_single_row_keeps_the_line_search_conditionals(weights):
    """A one-row group runs the single-image L-BFGS step, not its vmap: vmap turns each
    ``lax.cond`` of the zoom line search into a ``select`` that computes both branches (1.5–2x
    the step time, BENCHMARKS.md). Lowering only; nothing is compiled."""
    config = get_preset("tiny").replace(optimizer="lbfgs", learning_rate=1.0)
    spec, optim = config.loss, config.optim
    mesh = sharding.batch_mesh(jax.devices()[:1])
    x = jnp.full((16, 16, 3), 0.5)
    one = jax.eval_shape(lambda: compute_targets(weights, x, x, spec))
    rows = {"content": jax.tree.map(lambda a: jax.ShapeDtypeStruct((1, *a.shape), a.dtype),
                                    one["content"]),
            "style": one["style"]}
    kw = dict(spec=spec, optim=optim, shared=True, mesh=mesh)
    state = programs.init.lower(jax.ShapeDtypeStruct((1, 16, 16, 3), jnp.float32), rows,
                                weights, **kw).out_info
    text = programs.chunk.lower(state, np.int32(1), rows, weights, chunk=2, **kw).as_text()
    assert "stablehlo.case" in text
