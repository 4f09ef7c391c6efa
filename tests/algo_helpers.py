"""Helpers shared by the algorithm tests: build any registered algorithm with a short schedule and run
it through the real jitted train step on a tiny MLP."""

import functools
import inspect

import jax
import jax.numpy as jnp
import optax
import pytest

import dst
from dst.models import MLP

SPARSITY = 0.8
HPARAMS = dict(update_every=2, end_step=1000, drop_fraction=0.3, sparsity=SPARSITY, backward_sparsity=0.6,
               batches=2, levels=2)
# Where each algorithm starts: most at SPARSITY; these from another density (0.0: dense).
INITIAL_SPARSITY = {"dense": 0.0, "gmp": 0.0, "snip": 0.0, "grasp": 0.0, "granet": 0.5, "imp": 0.0}
# What each algorithm promises about its active counts.
PER_LAYER_CONSTANT = {"dense", "static", "set", "rigl", "mest", "topkast", "snip", "grasp", "imp"}
TOTAL_CONSTANT = {"snfs"}
SHRINKING = {"gmp", "granet"}
WITHIN_BUDGET = {"srigl"}      # each layer at most its initial count (ablation shares it as a floored fan-in)
# Algorithms defined on a structure start from masks that have it.
STRUCTURE = {"srigl": dst.structures.fan_in()}


# `make test` runs the per-algorithm variants of a test for algorithms whose states differ in kind (none,
# RigL's, Top-KAST's dense storage and backward set, GMP's schedule); `make test-slow` (and .ci/run) runs
# the rest, so every algorithm is still checked by every test. SNIP's one-shot masks are checked in
# `make test` by the rule tests and where the model has state (BatchNorm, tests/test_conv_runs.py).
FAST_ALGORITHMS = ("static", "rigl", "topkast", "gmp")


def every_algorithm(names=None, fast=FAST_ALGORITHMS):
    """``names`` (default: every registered algorithm) as parameters, those outside ``fast`` marked slow."""
    names = dst.algorithms.names() if names is None else names
    return [per_algorithm(n, slow=n not in fast) for n in names]


def per_algorithm(*values, slow=False):
    """A test case whose first value names an algorithm. Under pytest-xdist (``--dist loadgroup``) the
    cases of one algorithm share a worker, where its programs are already traced (tests share jitted
    steps through caches) or compiled (the worker's persistent compilation cache)."""
    marks = [pytest.mark.xdist_group(f"algorithm-{values[0]}")] + ([pytest.mark.slow] if slow else [])
    return pytest.param(*values, marks=marks)


def make_algorithm(name, **overrides):
    """``dst.algorithms.make(name)`` with a fast schedule, passing only what the factory takes."""
    accepted = inspect.signature(dst.algorithms.factory(name)).parameters
    kwargs = {k: v for k, v in {**HPARAMS, **overrides}.items() if k in accepted}
    return dst.algorithms.make(name, **kwargs)


@functools.cache   # jax arrays are immutable: every test may share them
def tiny_problem(seed=0, n=256, dim=64):
    model = MLP(hidden=(32, 16), num_classes=10)
    params = model.init(jax.random.key(seed), jnp.zeros((1, dim)))["params"]
    x = jax.random.normal(jax.random.key(seed + 1), (n, dim))
    y = (jnp.sum(x[:, :5], axis=1) > 0).astype(jnp.int32) + 2 * (x[:, 5] > 0)
    return model, params, x, y


def masks_for(params, sparsity, structure=None, seed=1):
    """ERK masks at ``sparsity``, or uniform ones kept by ``structure`` (the stored-run equivalence problems)."""
    if structure is None:
        return dst.init_masks(jax.random.key(seed), params, dst.layer_densities(params, sparsity, "erk"))
    densities = dst.structures.structured_densities(params, sparsity, "uniform", structure)
    return dst.init_masks(jax.random.key(seed), params, densities, structure=structure)


def initial_masks(name, params, sparsity=SPARSITY, seed=0):
    start = INITIAL_SPARSITY.get(name, sparsity)
    if start == 0:
        return jax.tree_util.tree_map(lambda p: jnp.ones(p.shape, bool), params)
    structure = STRUCTURE.get(name)
    if structure is not None:
        densities = dst.structures.structured_densities(params, start, "erk", structure)
        return dst.init_masks(jax.random.key(seed), params, densities, structure=structure)
    densities = dst.layer_densities(params, start, "erk")
    return dst.init_masks(jax.random.key(seed), params, densities)


def start_state(name, optimizer="sgd_momentum", key=0, **overrides):
    """(model, x, y, algo, tx, state) as the trainer builds them, one-shot pruning included."""
    model, params, x, y = tiny_problem()
    algo = make_algorithm(name, **overrides)
    tx = OPTIMIZERS[optimizer]()
    masks = dst.train.prune_at_init(algo, jax.random.key(key), params, initial_masks(name, params),
                                    dst.flax_apply(model), x, y, 32)
    state = dst.create_train_state(jax.random.key(key), params, masks, tx, algo)
    return model, x, y, algo, tx, state


OPTIMIZERS = {
    "sgd_momentum": lambda: optax.sgd(0.05, momentum=0.9),
    "adam": lambda: optax.adam(1e-2),
    "adamw": lambda: optax.adamw(1e-2, weight_decay=1e-2),
}
