"""Storage backends (dst.backends): lossless conversion, and a stored model computes the masked model.

The expectations are the masked model's own outputs and gradients (params with zeros off the mask, the
layout every other test checks): a stored model must give the same logits, the same bias gradients, and
value gradients equal to the dense gradient read at the stored positions.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import dst
from dst import backends
from dst import structures
from dst.masks import named_leaves
from dst.models import MLP
from dst.train import flax_apply


def mlp_with_masks(structure=None, sparsity=0.8, seed=0):
    model = MLP(hidden=(48, 24), num_classes=8)
    params = model.init(jax.random.key(seed), jnp.zeros((1, 32)))["params"]
    layers = dst.sparsifiable_layers(params)
    if structure is None:
        densities = dst.layer_densities(params, sparsity, "erk")
        masks = dst.init_masks(jax.random.key(seed + 1), params, densities)
    else:
        densities = structures.structured_densities(params, sparsity, "uniform", structure)
        masks = dst.init_masks(jax.random.key(seed + 1), params, densities, structure=structure)
    return model, dst.apply_masks(params, masks), masks, layers


CASES = [("csr", None), ("condensed", structures.fan_in()),
         pytest.param("condensed", structures.n_m(1, 4), marks=pytest.mark.slow),
         pytest.param("csr", structures.n_m(2, 4), marks=pytest.mark.slow)]


@pytest.mark.parametrize("name,structure", CASES)
def test_compress_then_expand_returns_the_masked_params(name, structure):
    model, params, masks, layers = mlp_with_masks(structure)
    backend = backends.make(name)
    layout_of = backends.layouts(backend, masks, layers)
    stored, slots, topo = jax.jit(lambda p, m: backends.compress(backend, layout_of, p, m))(params, masks)
    for layer, lay in layout_of.items():
        assert named_leaves(stored)[layer].size == lay.count * (lay.shape[1] if name == "condensed" else 1)
        assert lay.count * (lay.shape[1] if name == "condensed" else 1) == int(named_leaves(masks)[layer].sum())
        assert bool(named_leaves(slots)[layer].all())
    back_p, back_m = jax.jit(lambda p, s, t: backends.expand(backend, layout_of, p, s, t))(stored, slots, topo)
    jax.tree_util.tree_map(np.testing.assert_array_equal, back_p, params)
    jax.tree_util.tree_map(np.testing.assert_array_equal, back_m, masks)


@pytest.mark.parametrize("name,structure", CASES)
def test_a_stored_model_computes_the_masked_model_and_its_gradients(name, structure):
    model, params, masks, layers = mlp_with_masks(structure)
    backend = backends.make(name)
    layout_of = backends.layouts(backend, masks, layers)
    stored, _, topo = backends.compress(backend, layout_of, params, masks)
    apply = backends.stored_apply(model, backend, layout_of)
    x = jax.random.normal(jax.random.key(5), (16, 32))
    y = jax.random.randint(jax.random.key(6), (16,), 0, 8)

    def masked_loss(p):
        return dst.train.cross_entropy(flax_apply(model)(p, {}, x, True, None)[0], y)

    def stored_loss(p):
        return dst.train.cross_entropy(apply(backends.Stored(p, topo), {}, x, True, None)[0], y)

    loss, grads = jax.value_and_grad(masked_loss)(params)
    s_loss, s_grads = jax.jit(jax.value_and_grad(stored_loss))(stored)
    np.testing.assert_allclose(s_loss, loss, rtol=1e-5)
    # The dense gradient at the stored positions is the stored values' gradient; biases are dense.
    expected, _, _ = backends.compress(backend, layout_of, grads, masks)
    jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), s_grads, expected)


def test_a_layer_below_its_capacity_pads_with_inactive_zero_slots():
    """A layer that lost weights (SRigL's ablation rounds its budget down) keeps its shapes: the freed
    slots hold zeros, are marked inactive, and expand to nothing."""
    rng = np.random.default_rng(3)
    mask = rng.random((12, 5)) < 0.5
    w = np.where(mask, rng.normal(size=mask.shape), 0).astype(np.float32)
    backend = backends.csr()
    layout = backends.Layout((12, 5), int(mask.sum()) + 4)
    values, slots, topo = backend.compress(jnp.asarray(w), jnp.asarray(mask), layout)
    assert values.shape == (layout.count,) and int(slots.sum()) == mask.sum()
    assert not np.asarray(values)[~np.asarray(slots)].any()
    back_w, back_mask = backend.expand(values, slots, topo, layout)
    np.testing.assert_array_equal(back_w, w)
    np.testing.assert_array_equal(back_mask, mask)
    x = rng.normal(size=(3, 12)).astype(np.float32)
    np.testing.assert_allclose(backend.matmul(x, values, topo), x @ w, rtol=1e-5, atol=1e-5)


def test_condensed_refuses_a_mask_without_constant_fan_in():
    _, _, masks, layers = mlp_with_masks(None)
    with pytest.raises(ValueError, match=r"condensed: layer Dense_0/kernel has fan-ins from \d+ to \d+"):
        backends.layouts(backends.condensed(), masks, layers)


def test_a_conv_kernel_is_stored_only_with_its_geometry():
    """A 4-D kernel is a stored layer when its convolution's geometry is given (its matrix view the layout's
    shape), and refused in one sentence otherwise."""
    masks = {"Conv_0": {"kernel": np.ones((3, 3, 4, 8), bool)}}
    with pytest.raises(ValueError, match="stores fully connected kernels and the convolutions it is given; "
                                         "Conv_0/kernel has shape"):
        backends.layouts(backends.csr(), masks, ["Conv_0/kernel"])
    geometry = backends.ConvGeometry((3, 3, 4, 8), (1, 1), "SAME")
    layout = backends.layouts(backends.csr(), masks, ["Conv_0/kernel"], convolutions={"Conv_0/kernel": geometry})
    assert layout["Conv_0/kernel"] == backends.Layout((36, 8), 288, geometry)
    assert layout["Conv_0/kernel"].dense_shape == (3, 3, 4, 8)


def test_an_unknown_backend_names_the_allowed_ones():
    with pytest.raises(ValueError, match="sparsity.backend must be one of masked, csr, condensed, dense; got 'coo'"):
        backends.make("coo")


def test_write_slots_writes_valid_slots_only_by_flat_or_two_dimensional_index(monkeypatch):
    """A valid slot at the padding's position (input 0, the last unit) keeps its value: padding writes nothing,
    through the flat index and through the 2-D one that layers of 2^31+ positions take."""
    base = jnp.arange(12.0).reshape(3, 4)
    cols, units = jnp.array([0, 2, 0, 0]), jnp.array([3, 1, 3, 3])
    values, valid = jnp.array([-1.0, -2.0, 7.0, 8.0]), jnp.array([True, True, False, False])
    want = np.asarray(base).copy()
    want[0, 3], want[2, 1] = -1.0, -2.0
    np.testing.assert_array_equal(backends.write_slots(base, values, valid, cols, units), want)
    monkeypatch.setattr(backends, "FLAT_LIMIT", 4)
    np.testing.assert_array_equal(backends.write_slots(base, values, valid, cols, units), want)


@pytest.mark.parametrize("name", backends.BACKENDS)
def test_every_backend_implements_the_one_protocol(name):
    """masked, dense, csr and condensed alike: compress and expand are inverses, the slot view lists every active
    weight at its (input, unit) in CSR order and rebuilds the same storage, and the product is the masked one."""
    _, params, masks, layers = mlp_with_masks(structures.fan_in())
    w, mask = named_leaves(params)[layers[0]], named_leaves(masks)[layers[0]]
    backend = backends.make(name)
    assert backend.name == name and backend.stores == (name in ("csr", "condensed"))
    layout = backend.layout(mask)
    values, valid, topology = backend.compress(w, mask, layout)
    back_w, back_mask = backend.expand(values, valid, topology, layout)
    np.testing.assert_array_equal(back_w, w)
    np.testing.assert_array_equal(back_mask, mask)
    view = backend.slots(values, valid, topology, layout)
    live = np.asarray(view.valid)
    inputs, units = np.nonzero(np.asarray(mask))
    order = np.lexsort((inputs, units))                                  # by unit, then input
    np.testing.assert_array_equal(np.asarray(view.cols)[live], inputs[order])
    np.testing.assert_array_equal(np.asarray(view.units)[live], units[order])
    np.testing.assert_array_equal(np.asarray(view.values)[live], np.asarray(w)[inputs, units][order])
    rowptr = jnp.searchsorted(view.units, jnp.arange(layout.shape[1] + 1), side="left").astype(jnp.int32)
    rebuilt = backend.rebuild(view.values, view.valid, view.cols, rowptr, layout)
    for got, want in zip(jax.tree_util.tree_leaves(rebuilt), jax.tree_util.tree_leaves((values, valid, topology))):
        np.testing.assert_array_equal(got, want)
    x = jax.random.normal(jax.random.key(3), (5, layout.shape[0]))
    np.testing.assert_allclose(backend.matmul(x, values, topology), x @ jnp.where(mask, w, 0), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(backend.matmul_xla(x, values, topology), x @ jnp.where(mask, w, 0), rtol=1e-5,
                               atol=1e-5)
    assert backend.count_of(values) == layout.count
    fields = {f: getattr(topology, f) for f in backend.fields}
    for got, want in zip(jax.tree_util.tree_leaves(backend.topology_from(fields, layout)),
                         jax.tree_util.tree_leaves(topology)):
        np.testing.assert_array_equal(got, want)
