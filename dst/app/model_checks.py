"""Checks of a run's settings against the model it builds, before anything compiles: the model takes the
data, ``sparsity.dense_layers`` leaves a layer sparse, the structure divides some layer, and a storage
backend has a layer to store and an algorithm it can run. Each raises one :class:`ConfigError` sentence."""

from __future__ import annotations

import math
import re
from typing import Any

import jax
import jax.numpy as jnp

import dst
from dst.app.validate import ConfigError
from dst.app.validate import structure_of
from dst.distributions import epsilon_densities
from dst.graph import kernel_graph
from dst.masks import named_leaves
from dst.structures import matrix_shape
from dst.structures import undivided_layers
from dst.train import stored
from dst.train.apply import model_state_shapes


def check_model_takes_data(cfg, model, shape):
    """Trace the model's init on one example (shapes only): a model that cannot take the data fails
    here in one sentence rather than in the middle of compilation."""
    shape = tuple(shape)
    try:
        params, _ = model_state_shapes(model, jnp.zeros((1,) + shape, jnp.float32))
    except Exception as err:  # whatever the model raises on a wrong input shape
        what = cfg["model"].get("_target_") or cfg["model"]["name"]
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        if reason.startswith("model."):   # a bad model option the module checks itself
            raise ConfigError(reason) from None
        raise ConfigError(f"model {what} cannot take dataset.name={cfg['dataset']['name']} inputs of shape "
                          f"{shape}: {reason}") from None
    return params


def output_kernel(model, example_shape) -> str:
    """The kernel the forward pass uses last (the classifier), read from an abstract trace."""
    sample = jnp.zeros((1,) + tuple(example_shape), jnp.float32)
    params, state = model_state_shapes(model, sample)
    state = jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), state)
    apply_fn = dst.flax_apply(model)
    forward = lambda p: apply_fn(p, state, sample, False, None)[0]
    return kernel_graph(forward, params, dst.sparsifiable_layers(params)).order[-1]


def check_dense_layers(sp: dict, params) -> None:
    patterns = sp.get("dense_layers") or []
    for p in patterns:
        try:
            re.compile(p)
        except re.error as err:
            raise ConfigError(f"sparsity.dense_layers entry {p!r} is not a regular expression: {err}.") from None
    if sp["sparsity"] == 0:
        return
    if not dst.sparsifiable_layers(params, dense_layers=patterns):
        layers = dst.sparsifiable_layers(params)
        raise ConfigError(f"sparsity.dense_layers={list(patterns)} leave no layer sparse; the model's "
                          f"sparsifiable layers are {', '.join(layers)}.")


def check_structure_fits(sp: dict, params, say) -> tuple[Any, dict]:
    """The structure, and the sparse layers it leaves dense (named on the console), or :class:`ConfigError`
    when a block is larger than a layer or the structure divides no layer."""
    structure = structure_of(sp)
    if structure.name == "unstructured" or (sp["sparsity"] == 0 and "levels" not in sp):
        return structure, {}
    layers = dst.sparsifiable_layers(params, dense_layers=sp.get("dense_layers") or ())
    shapes = {n: matrix_shape(tuple(leaf.shape)) for n, leaf in named_leaves(params).items() if n in layers}
    if structure.name == "block":
        rows, cols = sp["block"]
        for name, (r, n_out) in shapes.items():
            if rows > r or cols > n_out:
                raise ConfigError(f"sparsity.block={[rows, cols]} is larger than layer {name} ({r} x {n_out} in its "
                                  f"matrix view); use a smaller block or add the layer to sparsity.dense_layers.")
    undivided = undivided_layers(params, structure, layers)
    setting = {"n_m": f"n_m={sp.get('n_m')}", "block": f"block={sp.get('block')}"}.get(structure.name, structure.name)
    if len(undivided) == len(layers):
        reasons = "; ".join(f"{n}: {why}" for n, why in undivided.items())
        raise ConfigError(f"sparsity.{setting} divides none of the sparse layers ({reasons}); pick one that "
                          f"divides some of them.")
    for name, why in undivided.items():
        say(f"sparsity: {structure.label} leaves {name} dense: {why}.")
    return structure, undivided


def check_backend_fits(sp: dict, algo, params) -> None:
    """A sparse backend needs an algorithm whose counts fit a fixed capacity and a fully connected sparse
    layer to store."""
    backend = sp.get("backend") or "masked"
    if backend in ("masked", "dense", "auto"):   # auto: see auto_fallback
        return
    try:
        stored.check_algorithm(algo, backend, f"sparsity.algorithm={sp['algorithm']}")
    except ValueError as err:
        raise ConfigError(str(err)) from None
    layers = dst.sparsifiable_layers(params, dense_layers=sp.get("dense_layers") or ())
    storable = (2,) if algo.trainable is not None else (2, 4)     # a backward set: fully connected layers
    if not any(len(leaf.shape) in storable for n, leaf in named_leaves(params).items() if n in layers):
        raise ConfigError(f"sparsity.backend={backend} stores fully connected layers and convolutions, and this model "
                          "has no sparse one it can store; use sparsity.backend=masked.")


def check_epsilon(sp: dict, algo, params, say) -> None:
    """``sparsity.epsilon`` fixes each sparse layer's count at ``eps (n_in + n_out)`` (SET's Erdos-Renyi
    graph): it needs an algorithm that keeps the counts it starts from; the global sparsity it gives is
    said on the console (``sparsity.sparsity`` is then not used for the masks)."""
    eps = sp.get("epsilon")
    if eps is None:
        return
    name = sp["algorithm"]
    if algo.counts != "keep" or algo.prune_at_init is not None or algo.trainable is not None or name == "dense":
        raise ConfigError(f"sparsity.epsilon fixes each layer's count at eps (n_in + n_out), and "
                          f"sparsity.algorithm={name} sets its own counts; use sparsity.sparsity with "
                          "sparsity.distribution=er instead.")
    densities = epsilon_densities(params, eps, dense_layers=sp.get("dense_layers") or ())
    leaves = named_leaves(params)
    sizes = {n: math.prod(leaves[n].shape) for n in dst.sparsifiable_layers(params)}
    active = sum(densities.get(n, 1.0) * size for n, size in sizes.items())
    say(f"sparsity: er with epsilon={eps}: about {active:,.0f} weights, global sparsity "
        f"{1 - active / sum(sizes.values()):.4f} (sparsity.sparsity={sp['sparsity']} is not used for the masks).")
