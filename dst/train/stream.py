"""Epochs fed from the host in chunks of steps, for data that does not fit on the device.

A chunk is ``(images[k, B, ...], labels[k, B])``: ``k`` batches that one compiled call trains on (a
``lax.scan``, or the quiet path's segments, exactly as an on-device epoch runs its batches), so the host
pays one dispatch per chunk rather than per step. Dispatch is asynchronous: while the device trains on
a chunk, the host's input pipeline (e.g. :func:`dst.data.image_folder.train_chunks`, which prefetches)
decodes the next one.
"""

from __future__ import annotations

from collections.abc import Callable
from collections.abc import Iterable

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec

from dst.train.epoch import LOOPS
from dst.train.epoch import host_loop
from dst.train.epoch import run_steps
from dst.train.epoch import settle_last
from dst.train.epoch import split_batch
from dst.train.step import TrainStep


class StreamEpoch:
    """``(state, chunks) -> (state, metrics)``: one epoch over an iterable of host chunks, with metrics
    stacked per step as an on-device epoch returns them.

    ``loop="host"`` runs one jitted step per batch instead of a compiled chunk (conv nets on CPU: see
    :class:`dst.train.epoch.HostLoopEpoch`). ``batch_sharding`` splits each batch over devices.
    """

    def __init__(self, step: TrainStep | Callable, loop: str = "scan", batch_sharding=None):
        if loop not in LOOPS:
            raise ValueError(f"loop must be one of {', '.join(LOOPS)}; got {loop!r}.")
        self.loop = loop

        def chunk(state, xs, ys):
            return run_steps(step, state, lambda i: split_batch(xs[i], ys[i], sharding=batch_sharding), xs.shape[0])

        full = step.full if isinstance(step, TrainStep) else step
        self.chunk = jax.jit(chunk)
        self.one_step = jax.jit(lambda state, x, y: full(state, split_batch(x, y, sharding=batch_sharding)))
        self.settle = jax.jit(settle_last)
        self.compiled = {}     # (function, input shape) -> executable compiled ahead by compile()
        # Compiled for the shardings the feed's global arrays arrive in (chunks split along the batch).
        self.sharding = batch_sharding
        self.chunk_sharding = None if batch_sharding is None else NamedSharding(
            batch_sharding.mesh, PartitionSpec(None, *batch_sharding.spec))

    def compile(self, state, chunk_shape: tuple[int, ...], label_dtype=jnp.int32) -> None:
        """Compile for chunks of ``chunk_shape`` = ``(k, B, *example)`` float32 images (a shorter last
        chunk compiles once more when it comes)."""
        xs = jax.ShapeDtypeStruct(chunk_shape, jnp.float32, sharding=self.chunk_sharding)
        ys = jax.ShapeDtypeStruct(chunk_shape[:2], label_dtype, sharding=self.chunk_sharding)
        if self.loop == "scan":
            self.compiled["chunk", chunk_shape] = self.chunk.lower(state, xs, ys).compile()
        else:
            x = jax.ShapeDtypeStruct(chunk_shape[1:], jnp.float32, sharding=self.sharding)
            y = jax.ShapeDtypeStruct(chunk_shape[1:2], label_dtype, sharding=self.sharding)
            self.compiled["step", chunk_shape[1:]] = self.one_step.lower(state, x, y).compile()

    def _fn(self, name, shape):
        return self.compiled.get((name, shape)) or (self.chunk if name == "chunk" else self.one_step)

    def __call__(self, state, chunks: Iterable):
        parts = []
        for xs, ys in chunks:
            if self.loop == "scan":
                state, metrics = self._fn("chunk", xs.shape)(state, xs, ys)
                parts.append(metrics)
            else:
                # Indexing (not iterating) keeps each step's batch split over the devices, on every host.
                rows = ((xs[i], ys[i]) for i in range(xs.shape[0]))
                state, metrics = host_loop(self._fn("step", xs.shape[1:]), self.settle, state, rows)
                parts.append(metrics)
        if not parts:
            raise ValueError("the epoch's input stream gave no chunks.")
        return state, jax.tree_util.tree_map(lambda *p: jnp.concatenate(p), *parts)
