"""How a run's data reaches the compiled step: :class:`DeviceFeed` keeps the whole data set on the device
(an epoch is one compiled call), :class:`StreamFeed` streams image files from the host in chunks of
steps (data that does not fit). :func:`dst.app.run.train` drives either through the same three calls."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from dst.data import image_folder
from dst.train.stored import model_params


def epoch_seed(key) -> int:
    """A host integer seed for the input pipeline, from the epoch's key (so resume replays the order)."""
    return int(jax.random.bits(key, (), jnp.uint32)) % (2**31 - 1)


class DeviceFeed:
    """Train and evaluation arrays on the device (replicated over data-parallel devices)."""

    def __init__(self, plan, run):
        data = plan.data
        place = jnp.asarray if plan.parallel is None else plan.parallel.replicate
        self.x, self.y = place(data.train_x), place(data.train_y)
        self.splits = {"test": (place(data.test_x), place(data.test_y))}
        if len(data.val_y):
            self.splits["val"] = (place(data.val_x), place(data.val_y))
        self.fns, self.evaluator = run.epoch_fns, run.evaluate

    def compile(self, state, key) -> None:
        self.compiled = {n: fn.lower(state, self.x, self.y, key).compile() for n, fn in self.fns.items()}

    def epoch(self, state, key, steps: int):
        return self.compiled[steps](state, self.x, self.y, key)

    def evaluate(self, state) -> dict:
        params = model_params(state)
        return {name: self.evaluator(params, state.model_state, *xy) for name, xy in self.splits.items()}


class StreamFeed:
    """Image files decoded and augmented on the host by grain, fed as chunks of ``dataset.chunk_steps``
    steps to a :class:`dst.train.stream.StreamEpoch`; evaluation streams the ``val/`` images."""

    def __init__(self, plan, run):
        ds, trainer = plan.cfg["dataset"], plan.cfg["trainer"]
        self.data, self.batch_size = plan.data, trainer["batch_size"]
        self.chunk, self.threads = min(ds["chunk_steps"], plan.steps_per_epoch), ds["workers"]
        (self.epoch_fn,) = run.epoch_fns.values()
        self.evaluator = run.evaluate
        self.parallel = plan.parallel

    def compile(self, state, key) -> None:
        self.epoch_fn.compile(state, (self.chunk, self.batch_size, *self.data.example_shape))

    def epoch(self, state, key, steps: int):
        # Each host decodes only its rows of every batch; with one host that is the whole batch.
        shard = (0, 1) if self.parallel is None else self.parallel.host_shard
        chunks = image_folder.train_chunks(self.data, epoch_seed(key), self.batch_size, steps,
                                           min(self.chunk, steps), self.threads, shard=shard)
        if self.parallel is not None:
            chunks = map(self.parallel.global_chunk, chunks)
        return self.epoch_fn(state, chunks)

    def evaluate(self, state) -> dict:
        # Several processes: each decodes its rows of every batch, and the batch is made of theirs.
        shard = (0, 1) if self.parallel is None else self.parallel.host_shard
        batches = image_folder.eval_batches(self.data, self.evaluator.batch_size, self.threads, shard=shard)
        if shard[1] > 1:
            batches = map(self.parallel.global_batch, batches)
        return {"test": self.evaluator(model_params(state), state.model_state, batches)}


def first_examples(data, seed: int, count: int, threads: int):
    """``(x, y)``: ``count`` augmented training examples of the epoch ``seed`` orders (for one-shot
    pruning at initialisation on streamed data)."""
    xs, ys = next(image_folder.train_chunks(data, seed, count, 1, 1, threads))
    return np.asarray(xs[0]), np.asarray(ys[0])


def make_feed(plan, run):
    return StreamFeed(plan, run) if plan.data.name == image_folder.NAME else DeviceFeed(plan, run)
