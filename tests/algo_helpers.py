"""Helpers shared by the algorithm tests: build any registered algorithm with a short schedule and run
it through the real jitted train step on a tiny MLP."""

import inspect

import jax
import jax.numpy as jnp
import optax

import dst
from dst.models import MLP

SCHEDULE = dict(update_every=2, end_step=1000, drop_fraction=0.3)


def make_algorithm(name, **overrides):
    """``dst.algorithms.make(name)`` with a fast schedule where the factory takes one."""
    factory = dst.algorithms.registry.factory(name)
    accepted = inspect.signature(factory).parameters
    kwargs = {k: v for k, v in {**SCHEDULE, **overrides}.items() if k in accepted}
    return dst.algorithms.make(name, **kwargs)


def tiny_problem(seed=0, n=256, dim=64):
    model = MLP(hidden=(32, 16), num_classes=10)
    params = model.init(jax.random.key(seed), jnp.zeros((1, dim)))["params"]
    x = jax.random.normal(jax.random.key(seed + 1), (n, dim))
    y = (jnp.sum(x[:, :5], axis=1) > 0).astype(jnp.int32) + 2 * (x[:, 5] > 0)
    return model, params, x, y


def initial_masks(name, params, sparsity=0.8, seed=0):
    if name == "dense":
        return jax.tree_util.tree_map(lambda p: jnp.ones(p.shape, bool), params)
    densities = dst.layer_densities(params, sparsity, "erk")
    return dst.init_masks(jax.random.key(seed), params, densities)


OPTIMIZERS = {
    "sgd_momentum": lambda: optax.sgd(0.05, momentum=0.9),
    "adam": lambda: optax.adam(1e-2),
    "adamw": lambda: optax.adamw(1e-2, weight_decay=1e-2),
}
