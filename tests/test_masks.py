"""Mask pytrees: exact counts, application, reports and topology diffs."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import dst
from dst.masks import named_leaves


def test_init_masks_structure_dtype_and_exact_counts(lenet300_params):
    densities = {"Dense_0/kernel": 0.1, "Dense_1/kernel": 0.33}
    masks = dst.init_masks(jax.random.key(0), lenet300_params, densities)
    assert jax.tree_util.tree_structure(masks) == jax.tree_util.tree_structure(lenet300_params)
    for name, m in named_leaves(masks).items():
        p = named_leaves(lenet300_params)[name]
        assert m.dtype == jnp.bool_ and m.shape == p.shape
        expected = round(densities[name] * p.size) if name in densities else p.size
        assert int(m.sum()) == expected


def test_init_masks_depends_on_key_and_is_reproducible(lenet300_params):
    d = {"Dense_0/kernel": 0.2}
    a = dst.init_masks(jax.random.key(0), lenet300_params, d)
    b = dst.init_masks(jax.random.key(0), lenet300_params, d)
    c = dst.init_masks(jax.random.key(1), lenet300_params, d)
    assert np.array_equal(a["Dense_0"]["kernel"], b["Dense_0"]["kernel"])
    assert not np.array_equal(a["Dense_0"]["kernel"], c["Dense_0"]["kernel"])


def test_init_masks_rejects_unknown_layer(lenet300_params):
    with pytest.raises(ValueError, match="Dense_9/kernel"):
        dst.init_masks(jax.random.key(0), lenet300_params, {"Dense_9/kernel": 0.5})


def test_apply_masks_gives_exact_zeros(lenet300_params):
    masks = dst.init_masks(jax.random.key(0), lenet300_params, {"Dense_0/kernel": 0.1})
    out = dst.apply_masks(lenet300_params, masks)
    w, m = np.asarray(out["Dense_0"]["kernel"]), np.asarray(masks["Dense_0"]["kernel"])
    assert (w[~m] == 0).all()
    np.testing.assert_array_equal(w[m], np.asarray(lenet300_params["Dense_0"]["kernel"])[m])


def test_density_report_counts_only_sparsifiable_layers(lenet300_params):
    d = dst.layer_densities(lenet300_params, 0.9, "erk")
    masks = dst.init_masks(jax.random.key(0), lenet300_params, d)
    report = dst.density_report(masks)
    assert set(report) == {"global", *d}
    assert report["global"] == pytest.approx(0.1, abs=3 / 266200)
    assert "Dense_0/bias" not in report


def test_topology_diff_counts_dropped_and_grown():
    old = {"w": jnp.array([[True, True, False, False]])}
    new = {"w": jnp.array([[True, False, True, True]])}
    diff = dst.topology_diff(old, new)
    assert diff["w"] == {"dropped": 1, "grown": 2}
    assert diff["total"] == {"dropped": 1, "grown": 2}
