"""Distributions: DESIGN.md reference values and exact total counts."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import dst
from dst.masks import active_count
from dst.models import MLP, lenet300


def _params(model, shape):
    return model.init(jax.random.key(0), jnp.zeros(shape))["params"]


@pytest.mark.parametrize("sparsity, expected", [(0.9, [0.0796, 0.2302, 1.0]), (0.98, [0.0154, 0.0445, 0.3674])])
def test_erk_matches_design_reference_values(sparsity, expected):
    params = _params(lenet300(), (1, 784))
    d = dst.layer_densities(params, sparsity, "erk")
    got = [d[f"Dense_{i}/kernel"] for i in range(3)]
    np.testing.assert_allclose(got, expected, atol=5e-5)
