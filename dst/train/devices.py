"""Data parallelism over the devices with ``jax.sharding``: a one-axis mesh named ``data``; each
batch is split over it, while params, masks, optimizer and algorithm state are replicated. XLA's SPMD
partitioner then reduces the gradients over the devices, so every device computes the same mask
update from the same key and the same reduced gradient: the masks stay identical everywhere.

Several processes (hosts, or GPUs: :mod:`dst.train.distributed`, which ``dst-train`` starts when the
launcher's environment or its settings say so): ``jax.devices()`` then spans every process and the
same mesh code shards the batch over all of them; each process feeds its own rows (:meth:`global_chunk`).
"""

from __future__ import annotations

import jax
import numpy as np
from jax.sharding import Mesh
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec


class DataParallel:
    """The mesh of ``devices`` (default: ``jax.devices()``, which is every local device in one process
    and every host's devices after ``jax.distributed.initialize()``) and the placements the trainer needs."""

    def __init__(self, devices=None):
        self.devices = list(devices if devices is not None else jax.devices())
        self.mesh = Mesh(self.devices, ("data",))
        self.batch = NamedSharding(self.mesh, PartitionSpec("data"))
        self.replicated = NamedSharding(self.mesh, PartitionSpec())
        self.chunk = NamedSharding(self.mesh, PartitionSpec(None, "data"))    # (steps, batch, ...)
        self.host_shard = self._host_block()

    @property
    def count(self) -> int:
        return len(self.devices)

    def replicate(self, tree):
        """Put every array of ``tree`` on every device (the state, the data held on the devices). With
        several processes each passes the same values (same seed, same data)."""
        if jax.process_count() == 1:
            return jax.device_put(tree, self.replicated)
        # A jax array on one local device does not become a global array by device_put (its shards come
        # out wrong): go through the host; typed PRNG keys through their raw data.
        def put(leaf):
            if isinstance(leaf, jax.Array) and jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
                data = jax.device_put(np.asarray(jax.random.key_data(leaf)), self.replicated)
                return jax.random.wrap_key_data(data, impl=jax.random.key_impl(leaf))
            return jax.device_put(np.asarray(leaf), self.replicated)

        return jax.tree_util.tree_map(put, tree)

    def _host_block(self) -> tuple[int, int]:
        """``(i, hosts)``: this host's block of every batch. The mesh splits a batch over its devices in
        order, so a host's rows are the block where its devices sit (their hosts must be contiguous)."""
        local = set(jax.local_devices())
        where = [i for i, d in enumerate(self.devices) if d in local]
        if where != list(range(where[0], where[0] + len(where))):
            raise ValueError("each host's devices must be contiguous in the mesh to feed it its own rows.")
        return where[0] // len(where), len(self.devices) // len(where)

    def global_chunk(self, local):
        """The global ``(k, B, ...)`` arrays of a chunk of steps from this host's ``(k, B / hosts, ...)``
        rows (see ``image_folder.train_chunks``'s ``shard``), split over the devices along the batch."""
        hosts = self.host_shard[1]

        def assemble(a):
            shape = (a.shape[0], a.shape[1] * hosts, *a.shape[2:])
            return jax.make_array_from_process_local_data(self.chunk, a, shape)

        return jax.tree_util.tree_map(assemble, local)

    def global_batch(self, local):
        """The global ``(B, ...)`` arrays of a batch from this host's ``(B / hosts, ...)`` rows (see
        ``image_folder.eval_batches``'s ``shard``), split over the devices."""
        hosts = self.host_shard[1]

        def assemble(a):
            a = np.asarray(a)
            return jax.make_array_from_process_local_data(self.batch, a, (a.shape[0] * hosts, *a.shape[1:]))

        return jax.tree_util.tree_map(assemble, tuple(local))

    def check_batch(self, batch_size: int) -> str | None:
        """A sentence when ``batch_size`` cannot be split evenly over the devices, else None."""
        if batch_size % self.count:
            return (f"trainer.batch_size must be divisible by the {self.count} devices the run uses; got "
                    f"{batch_size} (use a multiple of {self.count}).")
        return None
