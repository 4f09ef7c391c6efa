"""The optimizer's per-weight moments, found in any optax state by their shape."""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp


def map_param_trees(fn: Callable, opt_state, params):
    """Replace every subtree of ``opt_state`` shaped like ``params`` by ``fn(subtree)``.

    This reaches the per-weight moments of any optax optimizer (SGD's trace, Adam's mu and nu, states
    nested in ``chain``, ``inject_hyperparams`` or ``masked``) without knowing its state classes.
    """
    params_def = jax.tree_util.tree_structure(params)
    leaf_shapes = [x.shape for x in jax.tree_util.tree_leaves(params)]

    def param_like(node):
        if jax.tree_util.tree_structure(node) != params_def:
            return False
        return [getattr(x, "shape", None) for x in jax.tree_util.tree_leaves(node)] == leaf_shapes

    return jax.tree_util.tree_map(lambda node: fn(node) if param_like(node) else node, opt_state,
                                  is_leaf=param_like)


def map_param_like(fn: Callable, opt_state, params, *rest):
    """Apply ``fn(leaf, *rest_leaves)`` to every subtree of ``opt_state`` shaped like ``params``
    (:func:`map_param_trees`, leaf by leaf)."""
    return map_param_trees(lambda node: jax.tree_util.tree_map(fn, node, *rest), opt_state, params)


def reset_moments(opt_state, params, reset):
    """Zero every optimizer moment at the positions where ``reset`` (bool pytree) is True."""
    return map_param_like(lambda m, r: jnp.where(r, jnp.zeros_like(m), m), opt_state, params, reset)
