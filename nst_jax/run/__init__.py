"""The run: one loop that optimises groups of images, and what feeds and reads it.

:mod:`~nst_jax.run.transfer` (``stylize``, ``stylize_batch``) → :mod:`~nst_jax.run.inputs`
(items, sizes, start images) → :mod:`~nst_jax.run.targets` → :mod:`~nst_jax.run.engine` (the
scale × chunk loop and its one observer) → :mod:`~nst_jax.run.programs` (the compiled
programs, over :mod:`~nst_jax.run.sharding`'s mesh) → :mod:`~nst_jax.run.results`;
:mod:`~nst_jax.run.memory` plans what fits before anything compiles.
"""
