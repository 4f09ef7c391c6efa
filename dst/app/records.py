"""The record a run logs every ``log_every_epochs`` epochs: what the interval's steps measured, the
evaluations, and what the masks, the algorithm and the model's kernel graph say about the run."""

from __future__ import annotations

import base64
import math

import jax
import numpy as np

import dst
from dst import metrics
from dst.masks import layer_counts


class Interval:
    """Per-step metrics of the epochs since the last record, and the run's cumulative training FLOPs.

    FLOPs of each step are the algorithm's own accounting (``algo.train_flops``) at the densities the
    masks have at the end of the step's epoch.
    """

    def __init__(self, flops: dict[str, float], layers: list[str], algo, cumulative_flops: float = 0.0):
        self.flops, self.layers, self.algo = flops, layers, algo
        self.f_dense = sum(flops.values())
        self.cumulative_flops = cumulative_flops
        self.steps: dict | None = None
        self.seconds = 0.0

    def add(self, m: dict, seconds: float, state, counts=None) -> None:
        if self.steps is None:
            self.steps = m
        else:
            self.steps = jax.tree_util.tree_map(lambda a, b: np.concatenate([a, b]), self.steps, m)
        self.seconds += seconds
        report = density_report(state.live, self.layers, counts)
        f_sparse = metrics.sparse_forward_flops(self.flops, report)
        f_backward = f_sparse
        if self.algo.trainable is not None:
            backward = dst.density_report(self.algo.trainable(state.algo_state, state.live), self.layers)
            f_backward = metrics.sparse_forward_flops(self.flops, backward)
        step = int(state.step)
        self.cumulative_flops += sum(metrics.train_step_flops(self.algo, t, f_sparse, self.f_dense, f_backward)
                                     for t in range(step - len(m["loss"]), step))

    def next(self) -> Interval:
        """The next interval, carrying the cumulative FLOPs."""
        return Interval(self.flops, self.layers, self.algo, self.cumulative_flops)

    def to_json(self) -> dict:
        """Exact JSON of the interval (per-step arrays byte for byte), for checkpoints."""
        return {"cumulative_flops": self.cumulative_flops, "seconds": self.seconds,
                "steps": None if self.steps is None else encode_arrays(self.steps)}

    def restored(self, saved: dict) -> Interval:
        """This interval's setup with the totals and per-step arrays of ``saved`` (:meth:`to_json`)."""
        out = Interval(self.flops, self.layers, self.algo, saved["cumulative_flops"])
        out.seconds = saved["seconds"]
        out.steps = None if saved["steps"] is None else decode_arrays(saved["steps"])
        return out


def encode_arrays(tree) -> dict:
    """Nested dicts of numpy arrays -> JSON-safe dicts that restore them exactly (dtype, shape, bytes)."""
    if isinstance(tree, dict):
        return {k: encode_arrays(v) for k, v in tree.items()}
    a = np.ascontiguousarray(tree)
    return {"__array__": base64.b64encode(a.tobytes()).decode("ascii"), "dtype": a.dtype.str, "shape": list(a.shape)}


def decode_arrays(tree):
    if "__array__" in tree:
        raw = base64.b64decode(tree["__array__"])
        return np.frombuffer(raw, np.dtype(tree["dtype"])).reshape(tree["shape"]).copy()
    return {k: decode_arrays(v) for k, v in tree.items()}


def density_report(masks, layers, counts=None) -> dict[str, float]:
    """:func:`dst.density_report`, with ``counts`` (``{layer: dst.train.stored.UnitCounts}``) read in the
    place of those layers' masks (born-sparse layers, never dense)."""
    if not counts:
        return dst.density_report(masks, layers)
    sizes = layer_counts(masks, [n for n in layers if n not in counts])
    sizes.update({n: (c.active, math.prod(c.shape)) for n, c in counts.items() if n in layers})
    active, size = sum(a for a, _ in sizes.values()), sum(s for _, s in sizes.values())
    return {"global": active / size if size else 1.0, **{n: a / s for n, (a, s) in sizes.items()}}


def record_for(epoch: int, state, interval: Interval, evaluations: dict, pairs, elapsed: float, counts=None) -> dict:
    """One ``metrics.jsonl`` record (see the README for every key). ``counts``: what born-sparse layers
    report in the place of their masks (:func:`dst.train.stored.record_view`); they keep no ITOP state."""
    steps, layers, algo = interval.steps, interval.layers, interval.algo
    step = int(state.step)
    record = {"step": step, "epoch": epoch,
              "train/loss": float(np.mean(steps["loss"])), "train/accuracy": float(np.mean(steps["accuracy"]))}
    for split, values in evaluations.items():
        record.update({f"{split}/{k}": float(v) for k, v in values.items() if not k.startswith("zero_fraction/")})
    # Activation sparsity (dst.train.evaluate.zero_fractions), measured on the test set.
    record.update({f"activations/{k}": float(v) for k, v in evaluations.get("test", {}).items()
                   if k.startswith("zero_fraction/")})
    report = density_report(state.live, layers, counts)
    record["sparsity/global"] = 1.0 - report["global"]
    record.update({f"sparsity/{n}": 1.0 - report[n] for n in layers})
    if state.ever_active is not None:
        record["itop_rate"] = metrics.itop_rate(state.ever_active, layers)
    record["drop_fraction"] = float(algo.drop_fraction_at(step)) if algo.drop_fraction_at else 0.0
    record.update(_topology(steps, layers))
    if algo.report is not None:
        record.update(algo.report(state.algo_state, state.live, **({"counts": counts} if counts else {})))
    dead = metrics.dead_units(state.live, pairs, counts)
    record["dead_units/total"] = sum(dead.values())
    record.update({f"dead_units/{n}": c for n, c in dead.items()})
    record["flops/train_relative"] = interval.cumulative_flops / (step * 3.0 * interval.f_dense)
    record["steps_per_sec"] = len(steps["loss"]) / interval.seconds
    record["time/elapsed"] = elapsed
    return record


def _topology(steps, layers) -> dict:
    """Update count and dropped/grown totals over the interval, overall and per sparse layer."""
    updates = int(np.sum(steps["updated"]))
    out = {"topology/updates": updates}
    for kind in ("dropped", "grown"):
        per_layer = {n: int(np.sum(steps[kind][n])) for n in layers}
        out[f"topology/{kind}"] = sum(per_layer.values())
        out[f"topology/{kind}_per_update"] = sum(per_layer.values()) / updates if updates else 0.0
        out.update({f"topology/{kind}/{n}": c for n, c in per_layer.items()})
    return out
