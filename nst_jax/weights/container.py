"""VGG-16/VGG-19 weights as parameters: the container that binds them to their network and
preprocessing, seeded random weights, and the structure checks every loaded tree goes through.

The nst-jax weight file is :mod:`nst_jax.weights.file`; conversion from the published layouts is
:mod:`nst_jax.weights.convert`; where default weights are found, :mod:`nst_jax.weights.store`.

Parameters are ``{"conv1_1": {"kernel": (3, 3, 3, 64), "bias": (64,)}, ...}``: HWIO kernels and
``(C_out,)`` biases, float32, with exactly the layers of :func:`nst_jax.vgg.conv_layers` of their
network; :func:`check_params` names every way a tree differs from that.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from nst_jax import preprocessing as prep_lib
from nst_jax.errors import NstError
from nst_jax.vgg import NETWORK_NAMES, VGG, check_network, conv_layers

Params = dict[str, dict[str, jax.Array]]


@flax.struct.dataclass
class VGGWeights:
    """VGG parameters plus the network and preprocessing they belong to (a pytree).

    ``params`` is ``{"conv1_1": {"kernel": (3, 3, 3, 64), "bias": (64,)}, ...}`` (HWIO kernels,
    float32). ``preprocessing`` and ``label`` are static (hashable) pytree metadata, so passing a
    ``VGGWeights`` through ``jit`` keeps the encoding bound to the arrays. ``pretrained`` is False
    for random weights, which every user-facing output must say. ``network`` (``"vgg16"`` or
    ``"vgg19"``, static) decides the architecture the parameters are run through.
    """

    params: Params
    preprocessing: prep_lib.Preprocessing = flax.struct.field(pytree_node=False)
    label: str = flax.struct.field(pytree_node=False, default="")
    pretrained: bool = flax.struct.field(pytree_node=False, default=True)
    network: str = flax.struct.field(pytree_node=False, default="vgg19")


@functools.lru_cache(maxsize=None)
def expected_shapes(network: str = "vgg19") -> dict[str, dict[str, tuple[int, ...]]]:
    """``{layer: {"kernel": shape, "bias": shape}}`` from ``jax.eval_shape`` of ``VGG.init``."""
    module = VGG(network=check_network(network))
    abstract = jax.eval_shape(
        lambda: module.init(jax.random.key(0), jnp.zeros((32, 32, 3)), layers=("pool5",)))
    return {layer: {k: tuple(v.shape) for k, v in leaves.items()}
            for layer, leaves in abstract["params"].items()}


def random_weights(
    seed: int = 0, preprocessing: prep_lib.Preprocessing = prep_lib.KERAS, network: str = "vgg19",
) -> VGGWeights:
    """A seeded random-weight VGG (He init, ``N(0, 2 / (9 C_in))``, so activations stay O(1)).

    Random weights give stylization that matches colours and fine texture but none of a
    pretrained network's structure; it is for tests and for trying the tool without downloads.
    The values come from NumPy's PCG64 generator, the same on every platform and, unlike
    ``jax.random``, without a compiled program per layer shape in every fresh process.
    """
    rng = np.random.default_rng(seed)

    def he(shape: tuple[int, ...]) -> np.ndarray:
        return rng.standard_normal(shape, np.float32) * np.float32(np.sqrt(2.0 / (9 * shape[2])))

    params = {name: {"kernel": jnp.asarray(he(leaves["kernel"])),
                     "bias": jnp.asarray(np.zeros(leaves["bias"], np.float32))}
              for name, leaves in expected_shapes(network).items()}
    label = f"RANDOM {NETWORK_NAMES[network]} weights (seed {seed}), not pretrained"
    return VGGWeights(params=params, preprocessing=preprocessing, label=label, pretrained=False,
                      network=network)


# --------------------------------------------------------------------------- structure checks


def param_problems(
    params: Mapping[str, Mapping[str, Any]], *, network: str = "vgg19",
    source_names: Mapping[str, str] | None = None,
) -> list[str]:
    """Every way ``params`` differs from :func:`expected_shapes` of ``network``, one phrase each.

    Reports missing and unexpected layers, missing and unexpected entries inside a layer, shapes
    that differ from the HWIO/``(C,)`` shapes of ``VGG.init`` and dtypes other than float32.
    ``source_names`` maps a layer to the name it has in the source file (e.g. ``block1_conv1``),
    which is added in parentheses so the user can find it.
    """

    def name(layer: str) -> str:
        if source_names and layer in source_names:
            return f"{layer} ({source_names[layer]})"
        return layer

    expected = expected_shapes(network)
    problems = []
    missing = [name(layer) for layer in expected if layer not in params]
    if missing:
        problems.append("missing layer" + ("s " if len(missing) > 1 else " ") + ", ".join(missing))
    extra = [repr(layer) for layer in params if layer not in expected]
    if extra:
        problems.append("unexpected layer" + ("s " if len(extra) > 1 else " ") + ", ".join(extra))
    for layer, shapes in expected.items():
        if layer not in params:
            continue
        leaves = params[layer]
        if not isinstance(leaves, Mapping):
            problems.append(f"{name(layer)} is not a group of kernel and bias")
            continue
        for leaf, shape in shapes.items():
            if leaf not in leaves:
                problems.append(f"{name(layer)} has no {leaf}")
                continue
            value = leaves[leaf]
            got_shape = tuple(np.shape(value))
            if got_shape != shape:
                problems.append(f"{name(layer)} {leaf} has shape {got_shape}, expected {shape}")
            dtype = value.dtype if hasattr(value, "dtype") else np.asarray(value).dtype
            if dtype != np.float32:
                problems.append(f"{name(layer)} {leaf} has dtype {dtype}, expected float32")
        for leaf in leaves:
            if leaf not in shapes:
                problems.append(f"{name(layer)} has unexpected entry {leaf!r}")
    return problems


def infer_network(params: Mapping[str, Any]) -> str:
    """``"vgg16"`` when ``params`` has VGG-16's last layer and none of VGG-19's own layers
    (``conv3_4``, ``conv4_4``, ``conv5_4``), else ``"vgg19"`` (problems are then named against it)."""
    own19 = set(conv_layers("vgg19")) - set(conv_layers("vgg16"))
    if "conv5_3" in params and not own19 & set(params):
        return "vgg16"
    return "vgg19"


def nonfinite_problems(params: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """``"conv1_1 kernel holds 3 NaN or infinite values"`` for every array that is not finite."""
    problems = []
    for layer, leaves in params.items():
        if not isinstance(leaves, Mapping):
            continue
        for leaf, value in leaves.items():
            if value is None or not hasattr(value, "dtype"):
                continue
            a = np.asarray(value)
            if a.dtype.kind != "f" or a.strides == (0,) * a.ndim:  # stand-ins of read_dataset
                continue
            bad = a.size - int(np.count_nonzero(np.isfinite(a)))
            if bad:
                problems.append(f"{layer} {leaf} holds {bad} NaN or infinite values")
    return problems


def check_params(
    params: Mapping[str, Mapping[str, Any]], *, network: str | None = None,
    what: str = "parameters", source_names: Mapping[str, str] | None = None,
) -> str:
    """Raises ``NstError`` naming every problem :func:`param_problems` finds; returns the network.

    ``params`` must be ``{"conv1_1": {"kernel": (3, 3, 3, 64) float32, "bias": (64,) float32},
    ...}`` with exactly the layers of :func:`nst_jax.vgg.conv_layers` of ``network`` (``None``:
    whichever of VGG-16 and VGG-19 it fits best, :func:`infer_network`).
    """
    network = network or infer_network(params)
    problems = param_problems(params, network=network, source_names=source_names)
    if problems:
        raise NstError(f"{what} do not fit {NETWORK_NAMES[network]}: " + "; ".join(problems))
    problems = nonfinite_problems(params)
    if problems:
        raise NstError(f"{what} are not usable: " + "; ".join(problems))
    return network


def require_network(found: str, required: str | None, what: str) -> None:
    """Raises ``NstError`` when ``required`` names a network other than ``found``."""
    if required is not None and check_network(required) != found:
        need = NETWORK_NAMES[required]
        raise NstError(f"{what} holds {NETWORK_NAMES[found]} weights, but {need} is required "
                       f"here; use {need} weights or drop the requirement")
