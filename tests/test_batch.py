"""``stylize_batch`` and the slot layout: pairing, padding, per-shape groups, equality with
one-at-a-time ``stylize`` over 4 CPU devices, compile-once, no cross-device traffic, stop requests.

The device checks need ``JAX_NUM_CPU_DEVICES=4`` before JAX starts, so they run this file as a
script in a subprocess (``python tests/test_batch.py``), which prints one JSON report that the
tests below read. (That variable rather than ``XLA_FLAGS``, which is part of the compilation cache
key: so the subprocess loads the random weights' programs that the test session compiled.)
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest

from nst_jax.run import programs, sharding
from nst_jax.errors import NstError
from nst_jax.run.inputs import pair_indices
from nst_jax.run.transfer import compile_count, stylize_batch

pytestmark = pytest.mark.slow  # compile-heavy: not in the unit tier (-m "not slow")

# --------------------------------------------------------------------------------------------
# Pure host-side logic (in-process, one device)


def test_pair_indices_orders():
    assert pair_indices(3, 1, "broadcast") == [(0, 0), (1, 0), (2, 0)]
    assert pair_indices(2, 2, "zip") == [(0, 0), (1, 1)]
    # content-major: all styles of content 0 first
    assert pair_indices(2, 3, "product") == [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (1, 2)]


@pytest.mark.parametrize(
    "args,match",
    [
        ((3, 2, "broadcast"), "takes one style image, got 2"),
        ((3, 2, "zip"), "one style image per content image, got 2 style and 3 content"),
        ((3, 0, "product"), "at least one style"),
        ((3, 1, "diagonal"), "pairing must be one of broadcast, zip, product"),
    ],
)
def test_pair_indices_errors(args, match):
    with pytest.raises(NstError, match=match):
        pair_indices(*args)


def _fake_mesh(processes: list[int]):
    devices = np.array([types.SimpleNamespace(process_index=p) for p in processes], dtype=object)
    return types.SimpleNamespace(devices=devices)


def test_slot_layout_pads_to_device_multiple():
    layout = sharding.slot_layout(_fake_mesh([0, 0, 0, 0]), [6])
    assert (layout.per_device, layout.size) == (2, 8)
    assert layout.local_slots == tuple(range(8))
    assert sharding.padded_size(6, 4) == 8 and sharding.padded_size(0, 4) == 4


def test_slot_layout_puts_each_process_on_its_own_devices():
    # process 0 (this one) has devices 0, 1; process 1 has devices 2, 3; 3 and 1 images.
    layout = sharding.slot_layout(_fake_mesh([0, 0, 1, 1]), [3, 1])
    assert layout.per_device == 2  # ceil(3 / 2)
    assert layout.owners == (0, 0, 0, 0, 1, 1, 1, 1)
    assert layout.local_slots == (0, 1, 2, 3)
    # a process without images in the group still gets (padding) rows on its devices
    layout = sharding.slot_layout(_fake_mesh([0, 1]), [0, 5])
    assert layout.per_device == 5 and layout.local_slots == (0, 1, 2, 3, 4)


def test_explicit_pairs_are_checked():
    from nst_jax.config import get_preset

    img = np.zeros((8, 8, 3), np.float32)
    with pytest.raises(NstError, match=r"pairs \[\(0, 3\)\]"):
        stylize_batch([img], [img], get_preset("tiny"), None, pairing=[(0, 3)])


# --------------------------------------------------------------------------------------------
# Four CPU devices (subprocess)

STEPS = 6


def _device_checks() -> dict:
    """Runs in the subprocess with 4 CPU devices; returns numbers for the tests to judge."""
    import jax

    from nst_jax.config import get_preset
    from nst_jax.run.transfer import stylize
    from nst_jax.weights.container import random_weights

    report: dict = {"devices": jax.device_count()}
    rng = np.random.default_rng(0)
    # two aspect ratios → two shape groups (4 + 2 images) at size 32: never distorted
    shapes = [(30, 40), (40, 30), (30, 40), (60, 80), (40, 30), (15, 20)]
    contents = [rng.uniform(size=(*s, 3)).astype(np.float32) for s in shapes]
    styles = [rng.uniform(size=(32, 32, 3)).astype(np.float32),
              rng.uniform(size=(24, 36, 3)).astype(np.float32)]
    # A steady descent (lr 0.01): in an unstable run, with the loss going up and down, any float
    # rounding (batched convolutions sum in another order) grows from step to step.
    config = get_preset("tiny").replace(size=32, steps=STEPS, chunk_size=4, learning_rate=0.01)
    weights = random_weights(0)

    # Spy on the step to read the shardings and the compiled program of its first call.
    step = programs.chunk
    seen: list = []

    def spy(*args, **kw):
        if not seen:
            seen.append((jax.tree.map(
                lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=a.sharding)
                if isinstance(a, jax.Array) else a, args), kw))
        return step(*args, **kw)

    spy.cache_size = step.cache_size
    programs.chunk = spy
    before = compile_count()
    results = stylize_batch(contents, styles[0], config, weights)
    report["compiles_first_call"] = compile_count() - before
    stylize_batch(contents[::-1], styles[0], config, weights)
    report["compiles_second_call"] = compile_count() - before - report["compiles_first_call"]
    programs.chunk = step

    args, kw = seen[0]
    hlo = step.lower(*args, **kw).compile().as_text()
    report["collectives"] = [op for op in ("all-gather", "all-reduce", "collective-permute",
                                           "all-to-all", "reduce-scatter") if op in hlo]
    report["state_specs"] = sorted({tuple(a.sharding.spec) for a in jax.tree.leaves(args[0])})
    report["weight_specs"] = sorted({tuple(a.sharding.spec) for a in jax.tree.leaves(args[3:5])})
    report["state_rows"] = int(jax.tree.leaves(args[0])[0].shape[0])

    diffs, shapes_out, losses = [], [], []
    for content, res in zip(contents, results):
        ref = stylize(content, styles[0], config, weights)
        diffs.append(float(np.abs(ref.image - res.image).max()))
        shapes_out.append(list(res.image.shape))
        losses.append([ref.loss, res.loss, float(res.history["total"][0]),
                       len(res.history["total"]), res.steps])
    report["broadcast"] = {"diff": diffs, "shapes": shapes_out, "losses": losses}

    for pairing in ("zip", "product"):
        # two contents of one shape: one group, and zip and product share its programs
        cs, ss = contents[0:3:2], styles
        res = stylize_batch(cs, ss, config.replace(steps=3), weights, pairing=pairing)
        pairs = pair_indices(len(cs), len(ss), pairing)
        report[pairing] = {
            "n": len(res),
            "diff": [float(np.abs(stylize(cs[c], ss[s], config.replace(steps=3), weights).image
                                  - r.image).max()) for (c, s), r in zip(pairs, res)],
        }

    # A stop asked by the observer after the first chunk (one step: the first chunk of a shape
    # is timed) lands there, nothing queued behind it: the running group keeps its best images
    # so far, the group not started comes back unoptimised; both are marked interrupted.
    res = stylize_batch(contents, styles[0], config.replace(steps=12), weights,
                        on_chunk=lambda report: True)
    report["stopped"] = [[r.interrupted, r.steps, bool(np.isnan(r.loss))] for r in res]
    return report


@pytest.fixture(scope="module")
def device_report(weights):  # ``weights``: random_weights(0) compiled here, loaded there
    env = dict(os.environ, JAX_NUM_CPU_DEVICES="4", JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, str(Path(__file__).resolve())], env=env,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_batch_over_four_devices_matches_single_runs(device_report):
    assert device_report["devices"] == 4
    rep = device_report["broadcast"]
    assert max(rep["diff"]) < 1e-4, rep["diff"]
    # each image keeps its own aspect ratio at longest side 32
    assert rep["shapes"] == [[24, 32, 3], [32, 24, 3], [24, 32, 3], [24, 32, 3], [32, 24, 3],
                             [24, 32, 3]]
    for ref_loss, loss, first, n_hist, steps in rep["losses"]:
        assert loss == pytest.approx(ref_loss, rel=1e-4)
        assert n_hist == steps == STEPS and loss < first  # own history, loss went down


def test_pairings_match_single_runs(device_report):
    assert device_report["zip"]["n"] == 2 and device_report["product"]["n"] == 4
    assert max(device_report["zip"]["diff"] + device_report["product"]["diff"]) < 1e-4


def test_step_compiles_once_per_shape_group(device_report):
    assert device_report["compiles_first_call"] == 2  # two shape groups, 2 chunks of steps each
    assert device_report["compiles_second_call"] == 0  # same groups again: nothing new


def test_batch_axis_is_sharded_without_cross_device_traffic(device_report):
    assert device_report["state_specs"] == [["batch"]]  # every leaf of every image's state
    assert device_report["weight_specs"] == [[]]  # values and weights replicated
    assert device_report["state_rows"] % 4 == 0  # padded to the device count
    assert device_report["collectives"] == []


def test_stop_request_marks_results_interrupted(device_report):
    stopped = device_report["stopped"]
    assert all(interrupted for interrupted, _, _ in stopped)
    ran = [steps for _, steps, _ in stopped]
    assert set(ran) == {0, 1}  # first group: its first chunk (1 step); second: not started
    assert all(nan == (steps == 0) for _, steps, nan in stopped)


if __name__ == "__main__":
    print(json.dumps(_device_checks()))
