"""Prune-and-regrow from storage (dst.train.stored_update) makes the dense update's decisions.

A small layer (36 inputs, 23 outputs; csr with padding slots past its active weights, and fan-in and
2:4 layers on csr and condensed) is updated twice:
once by the algorithm's dense per-layer update on the dense view with the dense gradient
``x^T @ dy``, once from storage with the grow score formed in blocks of output units of every width
from the whole layer down to one unit (the last block overlapping the one before). The stored result,
expanded, must equal the dense one exactly: masks, values, which weights were grown. Ties are built in:
inputs that are zero for the whole batch give exactly-zero gradients (RigL's growth must break them by
the priorities of the dense positions), and weights of equal magnitude tie in the drop.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import dst
from dst import backends
from dst import structures
from dst.train import stored
from dst.train import stored_update

N_IN, N_OUT, BATCH = 36, 23, 5


def layer(seed=0, density=0.3, structure=None):
    k_w, k_m, k_x, k_dy = jax.random.split(jax.random.key(seed), 4)
    w = jax.random.normal(k_w, (N_IN, N_OUT))
    # Half the rows hold one small magnitude: more weights tie at the drop threshold than are dropped.
    w = jnp.where(jnp.arange(N_IN)[:, None] % 2 == 0, 0.01 * jnp.sign(w), w)
    if structure is None:
        mask = jax.random.uniform(k_m, (N_IN, N_OUT)) < density
    else:
        n_active = round(structure.round_density((N_IN, N_OUT), density) * N_IN * N_OUT)
        mask = structure.init_mask(k_m, (N_IN, N_OUT), n_active)
    x = jax.random.normal(k_x, (BATCH, N_IN))
    x = jnp.where(jnp.arange(N_IN) % 4 == 1, 0.0, x)                 # zero inputs: zero gradients tie
    dy = jax.random.normal(k_dy, (BATCH, N_OUT))
    return jnp.where(mask, w, 0.0), mask, x, dy


ALGORITHMS = {
    "rigl": dict(name="rigl"),
    "set": dict(name="set"),
    "set_sign_split": dict(name="set", sign_split=True),
    "mest": dict(name="mest", grad_weight=0.5),
}
# (structure, backend, padding slots): csr may hold fewer weights than its capacity; condensed never.
LAYOUTS = {
    "unstructured-csr": (None, "csr", 9),
    "fan_in-csr": (structures.fan_in(), "csr", 0),
    "fan_in-condensed": (structures.fan_in(), "condensed", 0),
    "2:4-condensed": (structures.n_m(2, 4), "condensed", 0),
}
BLOCKS = [stored_update.GROW_BLOCK, 3 * N_IN, N_IN]    # the whole layer; 3 units (23 = 7 x 3 + 2); one unit
# `make test` takes RigL and MEST (whose drop reads the gradient) on csr in overlapping blocks, and RigL on
# condensed fan-in in one-unit blocks; `make test-slow` the rest.
FAST = {("rigl", "unstructured-csr", 3 * N_IN), ("mest", "unstructured-csr", 3 * N_IN),
        ("rigl", "fan_in-condensed", N_IN)}
CASES = [pytest.param(a, lay, b, marks=() if (a, lay, b) in FAST else pytest.mark.slow)
         for a in ALGORITHMS for lay in LAYOUTS for b in BLOCKS
         if lay == "unstructured-csr" or b == 3 * N_IN or a == "rigl"]


@pytest.mark.parametrize("which,layout_name,block", CASES)
def test_a_stored_update_makes_the_dense_updates_decisions(which, layout_name, block):
    structure, backend_name, padding = LAYOUTS[layout_name]
    settings = dict(ALGORITHMS[which])
    algo = dst.algorithms.make(settings.pop("name"), update_every=10, end_step=1000, drop_fraction=0.4,
                               structure=structure, **settings)
    rules = algo.rules
    assert stored_update.unsupported(algo, stored.Storage(backends.make(backend_name), {}, None)) is None
    w, mask, x, dy = layer(structure=structure)
    g = x.T @ dy
    key, f = jax.random.key(7), jnp.float32(0.4)
    new_w, new_mask, grown = rules.update_layer(key, w, g, mask, f)

    backend = backends.make(backend_name)
    layout = backend.layout(mask)
    layout = layout._replace(count=layout.count + padding)
    values, valid, topology = backend.compress(w, mask, layout)
    value_grads, _, _ = backend.compress(g, mask, layout)
    out = jax.jit(lambda *a: stored_update.update_layer(rules, key, f, *a, backend, layout, block))(
        values, valid, topology, value_grads, x, dy)
    got_w, got_mask = backend.expand(out.values, out.valid, out.topology, layout)
    np.testing.assert_array_equal(got_mask, new_mask)
    np.testing.assert_array_equal(got_w, new_w)
    got_grown, _ = backend.expand(out.grown.astype(jnp.float32), out.valid, out.topology, layout)
    np.testing.assert_array_equal(got_grown > 0, grown)
    assert int(grown.sum()) > 0 and bool(jnp.any(new_mask != mask))
    if structure is None:
        assert int(grown.sum()) == int(0.4 * mask.sum())
    # The stored result is the compressed form of the dense one, slot for slot, and its transpose is rebuilt.
    want_values, want_valid, want_topology = backend.compress(new_w, new_mask, layout)
    for got, want in zip((out.values, out.valid, *out.topology), (want_values, want_valid, *want_topology)):
        np.testing.assert_array_equal(got, want)
    # Each kept weight's source slot held it before the update.
    kept = np.asarray(out.valid & (out.source.reshape(out.valid.shape) >= 0)).reshape(-1)
    np.testing.assert_array_equal(np.asarray(values).reshape(-1)[np.asarray(out.source)[kept]],
                                  np.asarray(out.values).reshape(-1)[kept])


@pytest.mark.parametrize("block", [stored_update.GROW_BLOCK, 3 * N_IN])   # one selection; merged blocks
def test_a_layer_taken_as_wide_makes_the_same_decisions(block, monkeypatch):
    """A layer of 2^32+ positions ranks by wrapped 32-bit positions with each weight's input as the last
    tie-break, and takes each grown weight's unit from the wrapped position and its input. Below 2^32 the
    priorities never repeat, so a small layer taken as wide (the threshold lowered) decides as the dense
    update: the wide path's plumbing, exactly (the tie-break itself: tests/test_kernels.py)."""
    monkeypatch.setattr(stored_update, "WIDE", 1)
    algo = dst.algorithms.make("rigl", update_every=10, end_step=1000, drop_fraction=0.4)   # grows by |grad|
    assert stored_update.wide((N_IN, N_OUT)) and not stored_update.sampled(algo.rules, (N_IN, N_OUT))
    w, mask, x, dy = layer(seed=5)
    key, f = jax.random.key(2), jnp.float32(0.4)
    new_w, new_mask, _ = algo.rules.update_layer(key, w, x.T @ dy, mask, f)
    backend = backends.make("csr")
    layout = backend.layout(mask)
    values, valid, topology = backend.compress(w, mask, layout)
    value_grads, _, _ = backend.compress(x.T @ dy, mask, layout)
    out = jax.jit(lambda *a: stored_update.update_layer(algo.rules, key, f, *a, backend, layout, block))(
        values, valid, topology, value_grads, x, dy)
    got_w, got_mask = backend.expand(out.values, out.valid, out.topology, layout)
    np.testing.assert_array_equal(got_mask, new_mask)
    np.testing.assert_array_equal(got_w, new_w)


@pytest.mark.parametrize("layout_name", ["unstructured-csr", pytest.param("fan_in-condensed", marks=pytest.mark.slow),
                                         pytest.param("2:4-condensed", marks=pytest.mark.slow)])
def test_growth_breaks_ties_among_zero_gradients_by_the_dense_positions(layout_name):
    """With every gradient zero, RigL's growth is all tie-break: stored and dense must still agree."""
    structure, backend_name, _ = LAYOUTS[layout_name]
    algo = dst.algorithms.make("rigl", update_every=10, end_step=1000, drop_fraction=0.5, structure=structure)
    w, mask, x, dy = layer(seed=3, structure=structure)
    dy = jnp.zeros_like(dy)
    key, f = jax.random.key(11), jnp.float32(0.5)
    new_w, new_mask, _ = algo.rules.update_layer(key, w, x.T @ dy, mask, f)
    backend = backends.make(backend_name)
    layout = backend.layout(mask)
    values, valid, topology = backend.compress(w, mask, layout)
    out = stored_update.update_layer(algo.rules, key, f, values, valid, topology, jnp.zeros_like(values), x, dy,
                                     backend, layout, 2 * N_IN)
    got_w, got_mask = backend.expand(out.values, out.valid, out.topology, layout)
    np.testing.assert_array_equal(got_mask, new_mask)
    np.testing.assert_array_equal(got_w, new_w)


def test_the_stored_update_serves_what_it_can_and_leaves_the_rest_to_the_dense_view():
    csr = stored.Storage(backends.csr(), {}, None)
    condensed = csr._replace(backend=backends.condensed())
    make = lambda name, **kw: dst.algorithms.make(name, update_every=5, end_step=50, **kw)
    assert stored_update.unsupported(make("rigl"), csr) is None
    assert stored_update.unsupported(make("set", sign_split=True), csr) is None
    assert stored_update.unsupported(make("rigl", structure=structures.fan_in()), condensed) is None
    assert stored_update.unsupported(make("srigl", structure=structures.fan_in()), condensed) is None   # stored_srigl
    assert stored_update.unsupported(make("set", grow_init="normal"), csr) is None     # the dense draw at the slots
    assert stored_update.unsupported(make("srigl", structure=structures.fan_in(), grow_init="normal"), condensed) \
        is None                                                        # the dense draw at the grown slots, too
    assert stored_update.unsupported(make("rigl", structure=structures.block(2, 2)), csr)


@pytest.mark.parametrize("which", ["rigl", "mest"])
def test_the_masked_backends_slot_view_makes_the_dense_updates_decisions(which):
    """``masked`` is one more implementation of the storage protocol: its slot view is every position of the dense
    kernel in CSR order, and the stored update run on it (slots, the one prune-and-regrow, rebuild) gives the dense
    update's kernel, mask and grown weights (MEST's drop reads the gradient through the same view)."""
    settings = dict(ALGORITHMS[which])
    algo = dst.algorithms.make(settings.pop("name"), update_every=10, end_step=1000, drop_fraction=0.4, **settings)
    w, mask, x, dy = layer()
    g = x.T @ dy
    key, f = jax.random.key(7), jnp.float32(0.4)
    new_w, new_mask, grown = algo.rules.update_layer(key, w, g, mask, f)
    backend = backends.make("masked")
    assert not backend.stores and backend.layout(mask) == backends.Layout((N_IN, N_OUT), N_IN * N_OUT)
    values, valid, topology = backend.compress(w, mask, backend.layout(mask))
    view = backend.slots(values, valid, topology, backend.layout(mask))
    np.testing.assert_array_equal(np.asarray(view.values), np.asarray(w).T.reshape(-1))      # unit by unit
    np.testing.assert_array_equal(np.asarray(view.cols[:N_IN]), np.arange(N_IN))
    out = jax.jit(lambda *a: stored_update.update_layer(algo.rules, key, f, *a, backend, backend.layout(mask),
                                                        3 * N_IN))(values, valid, topology, g, x, dy)
    assert out.topology is None
    np.testing.assert_array_equal(out.valid, new_mask)
    np.testing.assert_array_equal(out.values, new_w)
    np.testing.assert_array_equal(out.grown, grown)
    assert int(grown.sum()) > 0


@pytest.mark.parametrize("grow_std", [None, 0.1], ids=["rms", "fixed"])
def test_grown_weights_under_grow_init_normal_take_the_dense_draw_at_their_positions(grow_std):
    """``grow_init=normal`` from storage: the same masks as the dense update, and each grown weight the dense
    layer's draw at its position times the dense rule's scale (the survivors' RMS, or ``grow_std``)."""
    algo = dst.algorithms.make("set", update_every=10, end_step=1000, drop_fraction=0.4, grow_init="normal",
                               grow_std=grow_std)
    assert stored_update.unsupported(algo, None) is None
    w, mask, x, dy = layer()
    key, f = jax.random.key(7), jnp.float32(0.4)
    new_w, new_mask, grown = algo.rules.update_layer(key, w, x.T @ dy, mask, f)
    backend = backends.make("csr")
    layout = backend.layout(mask)._replace(count=int(mask.sum()) + 9)
    values, valid, topology = backend.compress(w, mask, layout)
    out = jax.jit(lambda *a: stored_update.update_layer(algo.rules, key, f, *a, backend, layout))(
        values, valid, topology, jnp.zeros_like(values), x, dy)
    got_w, got_mask = backend.expand(out.values, out.valid, out.topology, layout)
    np.testing.assert_array_equal(got_mask, new_mask)
    np.testing.assert_allclose(got_w, new_w, rtol=1e-6, atol=1e-7)     # the RMS summed in another order
    # By the rule itself: the grown weights are scale x normal(k_init, shape) at their positions.
    kept = np.asarray(mask & new_mask & ~grown)
    scale = grow_std if grow_std is not None else np.sqrt(np.sum(np.where(kept, np.asarray(w) ** 2, 0)) / kept.sum())
    draw = np.asarray(jax.random.normal(jax.random.split(key, 3)[2], mask.shape))
    np.testing.assert_allclose(np.asarray(got_w)[np.asarray(grown)], scale * draw[np.asarray(grown)], rtol=1e-5)
    assert int(grown.sum()) > 0


def test_above_the_dense_draw_limit_grown_weights_take_one_draw_per_slot(monkeypatch):
    """A layer above ``NORMAL_DRAW_LIMIT`` positions (lowered here) draws one normal per slot, never the dense layer:
    the masks are still the dense update's, and the grown weights are ``grow_std`` times the slots' draws."""
    monkeypatch.setattr(stored_update, "NORMAL_DRAW_LIMIT", 1)
    algo = dst.algorithms.make("set", update_every=10, end_step=1000, drop_fraction=0.4, grow_init="normal",
                               grow_std=0.1)
    w, mask, x, dy = layer()
    key, f = jax.random.key(7), jnp.float32(0.4)
    _, new_mask, grown = algo.rules.update_layer(key, w, x.T @ dy, mask, f)
    backend = backends.make("csr")
    layout = backend.layout(mask)
    values, valid, topology = backend.compress(w, mask, layout)
    out = stored_update.update_layer(algo.rules, key, f, values, valid, topology, jnp.zeros_like(values), x, dy,
                                     backend, layout)
    np.testing.assert_array_equal(backend.expand(out.values, out.valid, out.topology, layout)[1], new_mask)
    per_slot = np.asarray(jax.random.normal(jax.random.split(key, 3)[2], (layout.count,)))
    at = np.asarray(out.grown)
    assert at.sum() == int(grown.sum()) > 0
    np.testing.assert_allclose(np.asarray(out.values)[at], 0.1 * per_slot[at], rtol=1e-6)
