"""Distributions: the reference values, the ERK formula and exact total counts of
docs/design.md#distributions."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import dst
from dst.masks import active_count
from dst.masks import named_leaves


@pytest.mark.parametrize("sparsity, expected",
                         [(0.9, [0.0796, 0.2302, 1.0]), (0.98, [0.0154, 0.0445, 0.3674])])
def test_erk_matches_design_reference_values(lenet300_params, sparsity, expected):
    d = dst.layer_densities(lenet300_params, sparsity, "erk")
    got = [d[f"Dense_{i}/kernel"] for i in range(3)]
    np.testing.assert_allclose(got, expected, atol=5e-5)


def _numpy_erk(shapes, sparsity, power=1.0):
    """Plain reference: solve eps, make the largest overflowing layer dense, repeat."""
    sizes = np.array([np.prod(s) for s in shapes], float)
    raw = np.array([(sum(s) / np.prod(s)) ** power for s in shapes])
    dense = np.zeros(len(shapes), bool)
    while True:
        eps = ((1 - sparsity) * sizes.sum() - sizes[dense].sum()) / (raw[~dense] * sizes[~dense]).sum()
        d = np.where(dense, 1.0, eps * raw)
        if (d <= 1).all():
            return d
        over = np.where(~dense & (d > 1), raw, -1)
        dense[np.argmax(over)] = True


@pytest.mark.parametrize("arch", ["lenet300", "set_mlp", "lenet5"])
@pytest.mark.parametrize("distribution", ["uniform", "er", "erk"])
@pytest.mark.parametrize("sparsity", [0.5, 0.9, 0.98])
def test_exact_total_count_on_three_architectures(architectures, arch, distribution, sparsity):
    params = architectures[arch]
    d = dst.layer_densities(params, sparsity, distribution)
    leaves = named_leaves(params)
    assert set(d) == {n for n, x in leaves.items() if x.ndim >= 2}
    assert all(0 < v <= 1 for v in d.values())
    total = sum(leaves[n].size for n in d)
    masks = dst.init_masks(jax.random.key(0), params, d)
    active = sum(int(np.asarray(m).sum()) for n, m in named_leaves(masks).items() if n in d)
    assert abs(active - (1 - sparsity) * total) <= len(d)
    for n, m in named_leaves(masks).items():
        expected = active_count(d[n], leaves[n].size) if n in d else leaves[n].size
        assert int(np.asarray(m).sum()) == expected


@pytest.mark.parametrize("arch", ["lenet300", "set_mlp", "lenet5"])
@pytest.mark.parametrize("power", [1.0, 0.5])
def test_erk_matches_numpy_reference(architectures, arch, power):
    params = architectures[arch]
    d = dst.layer_densities(params, 0.95, "erk", erk_power_scale=power)
    shapes = [tuple(named_leaves(params)[n].shape) for n in d]
    np.testing.assert_allclose(list(d.values()), _numpy_erk(shapes, 0.95, power), rtol=1e-12)


def test_er_uses_fan_in_and_fan_out(lenet300_params):
    d = dst.layer_densities(lenet300_params, 0.8, "er")
    ratio = d["Dense_1/kernel"] / d["Dense_0/kernel"]
    assert ratio == pytest.approx(((300 + 100) / (300 * 100)) / ((784 + 300) / (784 * 300)))


def test_dense_layers_and_filter_keep_leaves_out_of_the_budget(lenet300_params):
    d = dst.layer_densities(lenet300_params, 0.9, "uniform", dense_layers=[r"^Dense_0/"])
    assert set(d) == {"Dense_1/kernel", "Dense_2/kernel"}
    assert d["Dense_1/kernel"] == pytest.approx(0.1)
    only_first = dst.layer_densities(lenet300_params, 0.9, "erk",
                                     sparsifiable=lambda name, shape: name == "Dense_0/kernel")
    assert only_first == {"Dense_0/kernel": pytest.approx(0.1)}


@pytest.mark.parametrize("kwargs, field", [
    (dict(sparsity=1.0, distribution="erk"), "sparsity"),
    (dict(sparsity=-0.1, distribution="erk"), "sparsity"),
    (dict(sparsity=0.9, distribution="gaussian"), "distribution"),
])
def test_bad_arguments_name_the_field(lenet300_params, kwargs, field):
    with pytest.raises(ValueError, match=field):
        dst.layer_densities(lenet300_params, **kwargs)


def _shapes_of(name, shape):
    from dst.models import build_model

    model = build_model(name)
    return jax.eval_shape(lambda k: model.init(k, jnp.zeros(shape)), jax.random.key(0))["params"]


def test_erk_over_every_conv_dim_of_a_resnet_with_its_stem_kept_dense():
    params = _shapes_of("resnet18", (1, 32, 32, 3))
    d = dst.layer_densities(params, 0.9, "erk", dense_layers=["^stem_conv/"])
    assert "stem_conv/kernel" not in d and "layer1_0/bn1/scale" not in d
    shapes = [tuple(named_leaves(params)[n].shape) for n in d]
    assert sum(len(s) == 4 for s in shapes) == 19            # 16 block convs + 3 shortcut convs
    np.testing.assert_allclose(list(d.values()), _numpy_erk(shapes, 0.9), rtol=1e-12)


def test_vit_embeddings_and_tokens_are_never_sparse():
    params = _shapes_of("vit_tiny", (1, 32, 32, 3))
    layers = dst.sparsifiable_layers(params)
    assert "pos_embedding" not in " ".join(layers) and "cls_token" not in " ".join(layers)
    assert {"patch_embedding/kernel", "block0/attn/qkv/kernel", "block0/mlp_fc1/kernel", "head/kernel"} <= set(layers)
