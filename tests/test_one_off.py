"""One-off programs (dst.train.one_off): the fast compile settings for small models, the same results, and
staging into a caller's program when traced (create_train_state under eval_shape)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax

import dst
from dst.models import MLP
from dst.train import one_off


def build(x, mask):
    order = jnp.argsort(jnp.where(mask, -jnp.abs(x), jnp.inf), stable=True)   # copy, sort, compare
    return jnp.where(mask, x, 0.0)[order], jnp.cumsum(mask.astype(jnp.int32))


def test_small_and_large_settings_give_the_same_results_and_traced_arguments_stage_into_the_caller(monkeypatch):
    x = jax.random.normal(jax.random.key(0), (1000,))
    mask = jax.random.uniform(jax.random.key(1), (1000,)) < 0.3
    want = jax.jit(build)(x, mask)
    assert one_off.tree_elements((x, mask)) == 2000 < one_off.SMALL_MODEL_ELEMENTS
    for limit in (one_off.SMALL_MODEL_ELEMENTS, 0):            # fast settings, then XLA's defaults
        monkeypatch.setattr(one_off, "SMALL_MODEL_ELEMENTS", limit)
        for got, expected in zip(one_off.call(build, x, mask), want):
            np.testing.assert_array_equal(got, expected)
    shapes = jax.eval_shape(lambda x, m: one_off.call(build, x, m), x, mask)
    assert [s.shape for s in shapes] == [(1000,), (1000,)]


def test_a_train_state_can_be_shaped_without_being_built():
    model = MLP(hidden=(16,), num_classes=3)
    params = model.init(jax.random.key(0), jnp.zeros((1, 8)))["params"]
    masks = dst.init_masks(jax.random.key(1), params, dst.layer_densities(params, 0.5, "uniform"))
    tx, algo = optax.sgd(0.1), dst.algorithms.make("static")
    shaped = jax.eval_shape(lambda p: dst.create_train_state(jax.random.key(2), p, masks, tx, algo), params)
    built = dst.create_train_state(jax.random.key(2), params, masks, tx, algo)
    assert jax.tree_util.tree_structure(shaped) == jax.tree_util.tree_structure(built)
