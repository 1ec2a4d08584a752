"""Reading the convolution trunk of a VGG-16/VGG-19 from an ONNX model.

ONNX models of VGG come from many exporters: tf2onnx exports of Keras ``VGG16``/``VGG19``
(with a tumour, flower or any other classification head on top), the ONNX model zoo's
``vgg16-7.onnx``/``vgg19-7.onnx`` (from MXNet/Gluon), and ``torch.onnx.export`` of torchvision's
models. What they share is the trunk: 13 (VGG-16) or 16 (VGG-19) ``Conv`` nodes with 3×3 kernels,
stride 1 and padding 1, a 2×2 pooling after each of the five blocks, and their kernels (OIHW) and
biases stored as initializers (or ``Constant`` nodes).

:func:`read_onnx` walks the graph's nodes in order (ONNX requires topological order), takes the
``Conv`` nodes with their kernels and biases, and matches their count and shapes to VGG-16 or
VGG-19. Everything after the last convolution (flatten, dense layers, softmax: the head) is
ignored. Batch-normalised VGGs are refused, since their convolutions alone are not the network.
ONNX does not record the input preprocessing; the caller names it (see
:func:`nst_jax.weights.convert.convert_weights`). The ``onnx`` package is an optional dependency
(``pip install 'nst-jax[onnx]'``), imported only here.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from nst_jax.errors import NstError, first_line
from nst_jax.vgg import NETWORK_NAMES, NETWORKS, conv_layers
from nst_jax.weights.container import require_network

Params = dict[str, dict[str, np.ndarray]]

_POOLS = ("MaxPool", "AveragePool")


def _load_model(path: Path, name: str):
    try:
        import onnx
        from onnx import numpy_helper
    except ImportError:
        raise NstError(f"reading {Path(name).name} needs the onnx package, which is not installed; "
                       "install it with: pip install 'nst-jax[onnx]'") from None
    if not path.is_file():
        raise NstError(f"{name} does not exist" if not path.exists() else f"{name} is not a file")
    try:
        model = onnx.load(os.fspath(path))
    except Exception as err:  # protobuf's DecodeError, OSError for external data, ...
        raise NstError(f"{name} is not a readable ONNX model ({first_line(err)})") from None
    return model, numpy_helper


def _attributes(node) -> dict[str, Any]:
    from onnx import helper

    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _to_array(tensor, numpy_helper, name: str, what: str) -> np.ndarray:
    """A stored tensor as an array; a damaged one (dims that do not match its data, an undefined
    or unknown type) is one ``NstError`` naming it, whether or not the graph uses it."""
    from onnx import TensorProto

    label = f"{what} {tensor.name[:60]!r}"
    if tensor.data_type in (TensorProto.UNDEFINED, TensorProto.STRING):
        kind = TensorProto.DataType.Name(tensor.data_type)
        raise NstError(f"{name} is damaged: the {label} has type {kind}, which holds no numbers")
    try:
        array = numpy_helper.to_array(tensor)
    except Exception as err:  # noqa: BLE001 - onnx raises ValueError, TypeError, KeyError, ...
        raise NstError(f"{name} is damaged: the {label} cannot be read "
                       f"({first_line(err)})") from None
    if array.shape != tuple(tensor.dims):
        raise NstError(f"{name} is damaged: the {label} declares dims {tuple(tensor.dims)} but "
                       f"holds {array.size} values")
    return array


def _constants(graph, numpy_helper, name: str) -> dict[str, np.ndarray]:
    """Every tensor whose value the file stores: initializers, Constant nodes, Identity of those."""
    values = {t.name: _to_array(t, numpy_helper, name, "initializer") for t in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant" and node.output:
            value = _attributes(node).get("value")
            if value is not None:
                values[node.output[0]] = _to_array(value, numpy_helper, name, "Constant node")
        elif node.op_type == "Identity" and node.input and node.input[0] in values:
            values[node.output[0]] = values[node.input[0]]
    return values


def _conv_problem(node, kernel: np.ndarray | None) -> str | None:
    """Why ``node`` is not a VGG convolution (3×3, stride 1, pad 1, no dilation or groups)."""
    if kernel is None:
        return "its kernel is computed, not stored in the file"
    if not np.issubdtype(kernel.dtype, np.floating):
        return f"its kernel has dtype {kernel.dtype}, not floating point"
    if kernel.ndim != 4 or kernel.shape[2:] != (3, 3):
        return f"its kernel has shape {kernel.shape}, not (C_out, C_in, 3, 3)"
    attrs = _attributes(node)
    if any(v != 1 for v in attrs.get("strides", [1, 1])):
        return f"stride {list(attrs['strides'])}"
    if any(v != 1 for v in attrs.get("dilations", [1, 1])):
        return f"dilation {list(attrs['dilations'])}"
    if attrs.get("group", 1) != 1:
        return f"group {attrs['group']}"
    auto_pad = attrs.get("auto_pad", b"NOTSET")
    auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else str(auto_pad)
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        return None
    if list(attrs.get("pads", [0, 0, 0, 0])) != [1, 1, 1, 1]:
        return f"padding {list(attrs.get('pads', [0, 0, 0, 0]))} instead of 1 on every side"
    return None


def _trunk(graph, values) -> tuple[list[tuple[str, np.ndarray, np.ndarray, int]], list[str]]:
    """``(convs, problems)``: ``(node name, OIHW kernel, bias, poolings before it)`` per Conv."""
    convs, problems, pools, batch_norm = [], [], 0, False
    for node in graph.node:
        if node.op_type in _POOLS:
            pools += 1
        elif node.op_type == "BatchNormalization" and convs:
            batch_norm = True
        elif node.op_type == "Conv":
            label = node.name or node.output[0]
            kernel = values.get(node.input[1]) if len(node.input) > 1 else None
            problem = _conv_problem(node, kernel)
            if problem:
                problems.append(f"Conv {label!r}: {problem}")
                continue
            bias = values.get(node.input[2]) if len(node.input) > 2 and node.input[2] else None
            if bias is None:
                bias = np.zeros(kernel.shape[:1], np.float32)
            if not np.issubdtype(bias.dtype, np.floating):
                problems.append(f"Conv {label!r}: its bias has dtype {bias.dtype}")
                continue
            convs.append((label, kernel, bias, pools))
    if batch_norm:
        problems.append("it has BatchNormalization layers (batch-norm VGG is not supported)")
    return convs, problems


def _match(convs, network: str) -> list[str]:
    """Problems fitting ``convs`` to ``network`` (count, shapes, pooling between blocks)."""
    blocks = NETWORKS[network]
    want = sum(len(b) for b in blocks)
    if len(convs) != want:
        return [f"{len(convs)} VGG-shaped convolutions, {NETWORK_NAMES[network]} has {want}"]
    problems, k, cin = [], 0, 3
    first_pools = convs[0][3]
    for b, block in enumerate(blocks):
        for i, cout in enumerate(block):
            label, kernel, bias, pools = convs[k]
            if kernel.shape[:2] != (cout, cin) or bias.shape != (cout,):
                problems.append(f"conv{b + 1}_{i + 1} (node {label!r}) has kernel {kernel.shape} "
                                f"and bias {bias.shape}, expected ({cout}, {cin}, 3, 3) and "
                                f"({cout},)")
            if pools - first_pools != b:
                problems.append(f"conv{b + 1}_{i + 1} (node {label!r}) follows "
                                f"{pools - first_pools} poolings, expected {b}")
            k, cin = k + 1, cout
    return problems


def read_onnx(
    path: str | os.PathLike, *, name: str | None = None, network: str | None = None
) -> Params:
    """The VGG trunk of an ONNX model as ``{"conv1_1": {"kernel": HWIO, "bias": (C,)}, ...}``.

    ``network`` requires VGG-16 or VGG-19; by default the one the file's convolutions fit.
    Raises ``NstError`` in one sentence when the file is not ONNX, holds no VGG-shaped trunk, or
    holds the other network than the one required.
    """
    path = Path(path)
    name = name or str(path)
    model, numpy_helper = _load_model(path, name)
    convs, problems = _trunk(model.graph, _constants(model.graph, numpy_helper, name))
    if not convs:
        detail = f" ({'; '.join(problems[:3])})" if problems else ""
        raise NstError(f"{name} has no VGG-shaped 3x3 convolutions{detail}; it is not a VGG model")
    fits = {n: _match(convs, n) for n in NETWORKS}
    ok = [n for n, p in fits.items() if not p]
    if network is not None and ok and network not in ok:
        require_network(ok[0], network, name)
    chosen = network or (ok[0] if ok else min(fits, key=lambda n: abs(
        len(convs) - sum(len(b) for b in NETWORKS[n]))))
    problems = problems + fits[chosen]
    if problems:
        raise NstError(f"{name} does not hold a {NETWORK_NAMES[chosen]} convolution trunk: "
                       + "; ".join(problems[:6]) + ("; ..." if len(problems) > 6 else ""))
    return {layer: {"kernel": np.ascontiguousarray(kernel.astype(np.float32).transpose(2, 3, 1, 0)),
                    "bias": bias.astype(np.float32).reshape(-1)}
            for layer, (_, kernel, bias, _) in zip(conv_layers(chosen), convs, strict=True)}
