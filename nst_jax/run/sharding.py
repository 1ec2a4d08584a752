"""The batch axis over devices and hosts: one mesh, named shardings, slot layout, start-up.

Everything :mod:`nst_jax.run.engine` needs to place a batch of images on every device of every
process, and nothing else:

* **One mesh.** :func:`batch_mesh` is a 1-D :class:`jax.sharding.Mesh` over ``jax.devices()`` —
  all devices of all processes — with the axis ``"batch"``. Per-image arrays (images, optimiser
  states, content targets, per-image Grams, loss histories) are ``NamedSharding(mesh,
  P("batch"))``; the VGG weights and shared style targets are ``NamedSharding(mesh, P())``
  (replicated). No ``pmap`` and no per-device Python loops: one jitted program runs on the mesh.
* **Slots.** A global batch has ``k`` rows per device (``size = k * n_devices``); row ``s`` lives
  on device ``s // k`` and so belongs to that device's process. :func:`slot_layout` picks the
  smallest ``k`` that lets every process put *its own* images on *its own* devices, so a process
  only ever loads, uploads, downloads and writes its own images. Free rows are padding (copies of
  one of the process's images, or zeros where it has none) and are dropped afterwards.
* **Assembling and reading back.** :func:`put_rows` builds a global array from process-local rows
  with :func:`jax.make_array_from_callback` (the callback is only asked for addressable shards);
  :func:`local_rows` reads the rows of the addressable shards. :func:`replicate` places a pytree
  (e.g. :class:`~nst_jax.weights.VGGWeights`) on every device.
* **Hosts.** :func:`initialize` starts :func:`jax.distributed.initialize` from flags or the
  environment (``NST_JAX_COORDINATOR``, ``NST_JAX_NUM_PROCESSES``, ``NST_JAX_PROCESS_ID``), with
  gloo cross-process collectives on CPU. The only cross-process traffic is small host metadata
  (:func:`allgather`: image shapes per process, stop requests) and barriers; the stylization
  itself needs no collectives, since every image is optimised independently.
"""

from __future__ import annotations

import collections
import dataclasses
import math
from typing import Any, Mapping, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from nst_jax.errors import NstError

BATCH_AXIS = "batch"


# --------------------------------------------------------------------------------------------
# Multi-host start-up


def initialize(
    coordinator: str | None = None, num_processes: int | None = None, process_id: int | None = None
) -> bool:
    """Joins a multi-process run through :func:`jax.distributed.initialize`, if one is asked for.

    ``coordinator`` is ``HOST:PORT`` of process 0. With no coordinator and at most one process
    this does nothing and returns False (a single-process run). Must run before anything touches
    a JAX device. On CPU the cross-process collectives use gloo.

    Raises:
      NstError: a coordinator without a process count or id (or the reverse), bad numbers, or a
        failed connection.
    """
    if coordinator is None and (num_processes or 1) <= 1:
        return False
    if coordinator is None or num_processes is None or process_id is None:
        raise NstError("a multi-process run needs all of a coordinator (HOST:PORT), the number "
                       "of processes and this process's id")
    if num_processes < 1 or not 0 <= process_id < num_processes:
        raise NstError(f"process id must be in [0, {num_processes}) for {num_processes} "
                       f"processes, got {process_id}")
    if ":" not in coordinator:
        raise NstError(f"the coordinator must be HOST:PORT, got {coordinator!r}")
    # Before any backend exists: the CPU client only gets cross-process collectives this way.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    try:
        jax.distributed.initialize(coordinator, num_processes=num_processes, process_id=process_id)
    except Exception as e:  # connection and timeout errors come as several runtime types
        raise NstError(f"cannot join the multi-process run at {coordinator}: {e}") from e
    return True


def allgather(x: np.ndarray) -> np.ndarray:
    """``x`` from every process stacked on a new leading axis ``(n_processes, ...)``.

    Every process must call it with the same shape and dtype; with one process it is ``x[None]``.
    """
    x = np.asarray(x)
    if jax.process_count() == 1:
        return x[None]
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.process_allgather(x, tiled=False))


def any_process(flag: bool) -> bool:
    """True in every process when ``flag`` is true in any (an agreement point in multi-process)."""
    if jax.process_count() == 1:
        return bool(flag)
    return bool(allgather(np.array([int(bool(flag))], np.int32)).any())


def barrier(name: str) -> None:
    """Waits until every process reaches the barrier ``name`` (no-op with one process)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def gather_counts(keys: Sequence[tuple[tuple[int, int], ...]]) -> dict[tuple, tuple[int, ...]]:
    """How many of each key every process holds: ``{key: (count in process 0, 1, ...)}``.

    ``keys`` are this process's keys: an image's ``(h, w)`` at every scale (all of one length).
    The answer is the same in every process, so all of them can form the same groups.
    """
    local = collections.Counter(tuple(tuple(int(v) for v in hw) for hw in k) for k in keys)
    n_proc = jax.process_count()
    if n_proc == 1:
        return {k: (c,) for k, c in local.items()}
    width = 2 * len(next(iter(local))) if local else 0
    width = int(allgather(np.array([width], np.int32)).max())
    rows = np.array([[*np.ravel(k), c] for k, c in sorted(local.items())], np.int32)
    m = int(allgather(np.array([len(rows)], np.int32)).max())
    padded = np.full((max(m, 1), width + 1), -1, np.int32)
    padded[: len(rows)] = rows.reshape(-1, width + 1)
    table = allgather(padded)
    counts: dict[tuple, list[int]] = {}
    for p in range(n_proc):
        for row in table[p]:
            if row[-1] >= 0:
                key = tuple(zip(row[:-1:2].tolist(), row[1:-1:2].tolist()))
                counts.setdefault(key, [0] * n_proc)[p] += int(row[-1])
    return {k: tuple(v) for k, v in counts.items()}


# --------------------------------------------------------------------------------------------
# Mesh, shardings and slots


def batch_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A 1-D mesh with axis ``"batch"`` over ``devices`` (default: all devices of all processes)."""
    devices = list(jax.devices() if devices is None else devices)
    if not devices:
        raise ValueError("a mesh needs at least one device")
    return Mesh(np.array(devices, dtype=object), (BATCH_AXIS,))


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading axis split over the mesh's ``"batch"`` axis."""
    return NamedSharding(mesh, P(BATCH_AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
    """A full copy on every device of the mesh."""
    return NamedSharding(mesh, P())


def padded_size(n: int, num_devices: int) -> int:
    """``n`` rounded up to a multiple of ``num_devices`` (at least one row per device)."""
    return max(1, math.ceil(n / num_devices)) * num_devices


@dataclasses.dataclass(frozen=True)
class SlotLayout:
    """Where the rows of one global batch live.

    Attributes:
      per_device: ``k``, rows per device.
      owners: the process index of each of the ``k * n_devices`` rows.
    """

    per_device: int
    owners: tuple[int, ...]

    @property
    def size(self) -> int:
        return len(self.owners)

    @property
    def local_slots(self) -> tuple[int, ...]:
        """This process's rows, ascending."""
        me = jax.process_index()
        return tuple(s for s, p in enumerate(self.owners) if p == me)


def slot_layout(mesh: Mesh, counts: Sequence[int]) -> SlotLayout:
    """The smallest layout that gives process ``p`` at least ``counts[p]`` rows on its own devices.

    With one process this is ``padded_size(counts[0], n_devices)`` rows; with several, ``k`` is
    the largest ``ceil(counts[p] / local_devices[p])`` over the processes.
    """
    devices = list(mesh.devices.flat)
    per_process = collections.Counter(d.process_index for d in devices)
    need = [
        math.ceil(c / per_process[p]) if per_process[p] else (math.inf if c else 0)
        for p, c in enumerate(counts)
    ]
    k = max([1, *need])
    if k == math.inf:
        raise ValueError("a process holds images but has no device in the mesh")
    owners = tuple(d.process_index for d in devices for _ in range(k))
    return SlotLayout(per_device=int(k), owners=owners)


def put_rows(rows: Mapping[int, Any], layout: SlotLayout, mesh: Mesh) -> Any:
    """A global batch-sharded pytree from this process's rows ``{slot: pytree of arrays}``.

    ``rows`` must hold every slot in ``layout.local_slots`` (padding included), each with the same
    structure and shapes; a leaf of shape ``S`` becomes a global ``(layout.size, *S)`` array.
    """
    local = layout.local_slots
    missing = [s for s in local if s not in rows]
    if missing:
        raise ValueError(f"no rows given for local slots {missing}")
    if not local:
        raise ValueError("this process has no device in the mesh")
    sharding = batch_sharding(mesh)
    template = rows[local[0]]
    leaves = [jax.tree.leaves(rows[s]) for s in local]
    treedef = jax.tree.structure(template)
    out = []
    for i, leaf in enumerate(jax.tree.leaves(template)):
        by_slot = {s: np.asarray(leaves[j][i]) for j, s in enumerate(local)}
        shape = (layout.size, *np.shape(leaf))

        def callback(index, by_slot=by_slot):
            slots = range(*index[0].indices(layout.size))
            return np.stack([by_slot[s] for s in slots])

        out.append(jax.make_array_from_callback(shape, sharding, callback))
    return jax.tree.unflatten(treedef, out)


def local_rows(tree: Any) -> dict[int, Any]:
    """``{slot: pytree of NumPy rows}``: the rows of a batch-sharded pytree held by this process."""
    leaves, treedef = jax.tree.flatten(tree)
    per_leaf = []
    for leaf in leaves:
        rows: dict[int, np.ndarray] = {}
        for shard in leaf.addressable_shards:
            start = shard.index[0].start or 0
            data = np.asarray(shard.data)
            for j in range(data.shape[0]):
                rows.setdefault(start + j, data[j])
        per_leaf.append(rows)
    slots = sorted(per_leaf[0]) if per_leaf else []
    return {s: jax.tree.unflatten(treedef, [r[s] for r in per_leaf]) for s in slots}


def replicate(tree: Any, mesh: Mesh) -> Any:
    """``tree`` with every array leaf copied to every device of ``mesh`` (already there: kept).

    Every process must pass the same values (e.g. weights read from the same file, or random
    weights from the same seed).
    """
    sharding = replicated(mesh)

    def put(leaf):
        if isinstance(leaf, jax.Array) and leaf.sharding.is_equivalent_to(sharding, leaf.ndim):
            return leaf
        host = np.asarray(leaf.addressable_data(0) if isinstance(leaf, jax.Array) else leaf)
        return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])

    return jax.tree.map(put, tree)


def local_copy(tree: Any) -> Any:
    """``tree`` with each array spread over several devices replaced by this process's first copy.

    Lets replicated weights feed single-device computations (per-image preprocessing).
    """

    def one(leaf):
        if isinstance(leaf, jax.Array) and len(leaf.sharding.device_set) > 1:
            return leaf.addressable_data(0)
        return leaf

    return jax.tree.map(one, tree)
