"""Checkpoints of a run (orbax-checkpoint): the train state, and what the run needs to continue its
clock and its logs, so that a resumed run ends exactly where an uninterrupted one would.

A checkpoint ``<directory>/<epoch>/`` holds two items:

* ``state``: every array of the :class:`~dst.train.TrainState` (params, live flags, model state, optimizer
  and algorithm state, ever-active weights, counts, step, the step key) and the data-order key;
* ``meta``: JSON the caller fills (the epoch, the records logged so far, running totals) plus a
  fingerprint of the settings the state depends on (model, data set, algorithm, sparsity), checked
  before any array is read, so a checkpoint of another run is refused in one sentence instead of
  half-restored.

Writes are atomic (orbax writes a temporary folder and renames it), so a run killed while saving
leaves the previous checkpoint as the latest; the last ``keep`` checkpoints are kept.

In a run of several processes (``jax.distributed``) every process calls the same methods, but only
process 0 touches the directory: it saves a host copy of the state (replicated: every process holds a
whole one) and reads the checkpoints, and the others get what it read (:mod:`dst.train.distributed`),
so the other hosts need not see the run directory. The files are the same as a one-process run's, so
either kind of run resumes the other's checkpoints.
"""

from __future__ import annotations

import io
import pathlib

import jax
import numpy as np
import orbax.checkpoint as ocp

from dst.train import distributed
from dst.train.state import TrainState


class CheckpointError(ValueError):
    """A checkpoint cannot be used: unreadable, or written by a run with other settings."""


def _saveable(state: TrainState) -> dict:
    """The state as a plain dict of arrays (typed PRNG keys become their raw data)."""
    return {**state._asdict(), "rng": jax.random.key_data(state.rng)}


def _from_saveable(tree: dict, like: TrainState) -> TrainState:
    rng = jax.random.wrap_key_data(tree["rng"], impl=jax.random.key_impl(like.rng))
    return TrainState(**{**tree, "rng": rng})


class RunCheckpoints:
    """The checkpoints of one run directory: ``save`` after an epoch, ``restore`` the latest."""

    def __init__(self, directory, keep: int = 2):
        self.directory = pathlib.Path(directory).absolute()
        self.keep = keep
        self._manager = None

    @property
    def manager(self) -> ocp.CheckpointManager:
        if self._manager is None:   # created on first use: a run that never saves writes no folder
            several = _several()
            if several:    # process 0 alone reads and writes (the others never call the manager)
                self.directory.mkdir(parents=True, exist_ok=True)
            alone = ocp.options.MultiprocessingOptions(primary_host=0, active_processes={0})
            options = ocp.CheckpointManagerOptions(max_to_keep=self.keep, create=not several,
                                                   enable_async_checkpointing=False,
                                                   **({"multiprocessing_options": alone} if several else {}))
            self._manager = ocp.CheckpointManager(self.directory, options=options)
        return self._manager

    def latest(self) -> int | None:
        """The epoch of the latest complete checkpoint, or None."""
        return distributed.from_primary(self._latest)

    def _latest(self) -> int | None:
        if not self.directory.is_dir():
            return None
        return self.manager.latest_step()

    def path(self, epoch: int) -> pathlib.Path:
        return self.directory / str(epoch)

    def save(self, epoch: int, state: TrainState, data_key, meta: dict) -> pathlib.Path:
        tree = {"state": _saveable(state), "data_key": jax.random.key_data(data_key)}
        if _several():
            tree = jax.device_get(tree)     # replicated: this process's copy of every array
            if not distributed.is_primary():
                return self.path(epoch)
        self.manager.save(epoch, args=ocp.args.Composite(state=ocp.args.StandardSave(tree),
                                                         meta=ocp.args.JsonSave(meta)), force=True)
        self.manager.wait_until_finished()
        return self.path(epoch)

    def read_meta(self, epoch: int) -> dict:
        return distributed.from_primary(lambda: self._read_meta(epoch))

    def _read_meta(self, epoch: int) -> dict:
        try:
            return self.manager.restore(epoch, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
        except Exception as err:  # orbax raises many kinds; any of them means this file cannot be used
            raise CheckpointError(f"{self.path(epoch)} cannot be read ({_first_line(err)}); it was left as "
                                  f"it is: delete it, or set trainer.resume=false to start over.") from None

    def restore(self, epoch: int, like: TrainState, like_key, expect: dict):
        """``(state, data_key, meta)`` of the checkpoint at ``epoch``. ``like`` and ``like_key`` are a
        freshly initialised state and data key of the same run (structure, shapes, dtypes);
        ``expect`` is the fingerprint the checkpoint must carry (``meta["fingerprint"]``)."""
        meta = self.read_meta(epoch)
        found = meta.get("fingerprint", {})
        for key, value in expect.items():
            if key in found and found[key] != value:   # a field added since the checkpoint was written: not checked
                raise CheckpointError(
                    f"{self.path(epoch)} was written with {key}={found.get(key)!r}, not {value!r}; it was left "
                    f"as it is: use another hydra.run.dir, or set trainer.resume=false to start over.")
        like_tree = {"state": _saveable(like), "data_key": jax.random.key_data(like_key)}
        if _several():
            tree = self._restore_on_primary(epoch, like_tree)
        else:
            tree = self._restore(epoch, jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, like_tree))
        # Uncommitted, as a fresh key: it goes along with the state wherever the state is placed.
        data_key = jax.random.wrap_key_data(np.asarray(tree["data_key"]), impl=jax.random.key_impl(like_key))
        return _from_saveable(tree["state"], like), data_key, meta

    def _restore(self, epoch: int, target) -> dict:
        try:
            return self.manager.restore(epoch, args=ocp.args.Composite(state=ocp.args.StandardRestore(target)))["state"]
        except Exception as err:
            raise CheckpointError(f"{self.path(epoch)} cannot be restored ({_first_line(err)}); it was left "
                                  f"as it is: delete it, or set trainer.resume=false to start over.") from None

    def _restore_on_primary(self, epoch: int, like_tree) -> dict:
        """Process 0 reads the arrays as host arrays and gives them to every process, which puts them
        where ``like_tree``'s arrays are (replicated over every process's devices)."""
        leaves, treedef = jax.tree_util.tree_flatten(like_tree)
        host = {}

        def read():
            target = treedef.unflatten([np.zeros(a.shape, a.dtype) for a in leaves])
            host["leaves"] = jax.tree_util.tree_leaves(self._restore(epoch, target))
            buf = io.BytesIO()
            np.savez(buf, *host["leaves"])
            host["bytes"] = buf.getvalue()
            return len(host["bytes"])

        distributed.from_primary(read)     # a CheckpointError on process 0 is raised on every process
        data = np.load(io.BytesIO(distributed.broadcast_bytes(host.get("bytes", b""))))
        arrays = [data[f"arr_{i}"] for i in range(len(leaves))]
        placed = [jax.device_put(a, like.sharding) for a, like in zip(arrays, leaves)]
        return treedef.unflatten(placed)

    def close(self) -> None:
        if self._manager is not None:
            self._manager.close()
            self._manager = None


def _several() -> bool:
    return jax.process_count() > 1


def _first_line(err: Exception) -> str:
    text = str(err).strip()
    return (text.splitlines()[0] if text else type(err).__name__)[:300]
