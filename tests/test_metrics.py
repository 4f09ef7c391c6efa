"""Run metrics: dead units, ITOP, FLOPs accounting."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dst import metrics
from dst.models import LeNet5
from dst.models import lenet300


def test_dead_units_in_an_mlp():
    m0 = np.ones((6, 4), bool)
    m1 = np.ones((4, 3), bool)
    m2 = np.ones((3, 2), bool)
    m0[:, 1] = False          # hidden unit 1 of layer 0: no incoming
    m1[3, :] = False          # hidden unit 3 of layer 0: no outgoing
    m2[0, :] = False          # hidden unit 0 of layer 1: no outgoing
    masks = {"l0": {"kernel": m0}, "l1": {"kernel": m1}, "l2": {"kernel": m2}}
    got = metrics.dead_units(masks, ["l0/kernel", "l1/kernel", "l2/kernel"])
    assert got == {"l0/kernel": 2, "l1/kernel": 1}


def test_dead_units_follow_channels_through_a_flatten():
    # conv (3x3, 1 -> 2 channels) then dense over a flattened (2x2 positions, 2 channels) input.
    conv = np.ones((3, 3, 1, 2), bool)
    dense = np.ones((8, 5), bool)
    dense[np.arange(8) % 2 == 1, :] = False    # every row of channel 1 inactive
    masks = {"c": {"kernel": conv}, "d": {"kernel": dense}}
    assert metrics.dead_units(masks, ["c/kernel", "d/kernel"]) == {"c/kernel": 1}


def test_layer_flops_of_dense_and_conv_models():
    model = LeNet5()
    params = model.init(jax.random.key(0), jnp.zeros((1, 28, 28)))["params"]
    flops = metrics.layer_flops(model, params, (1, 28, 28))
    assert flops["Conv_0/kernel"] == 2 * 5 * 5 * 1 * 6 * 28 * 28      # SAME padding keeps 28x28
    assert flops["Conv_1/kernel"] == 2 * 5 * 5 * 6 * 16 * 10 * 10     # VALID on 14x14 gives 10x10
    assert flops["Dense_0/kernel"] == 2 * 400 * 120
    mlp = lenet300()
    p = mlp.init(jax.random.key(0), jnp.zeros((1, 784)))["params"]
    assert metrics.layer_flops(mlp, p, (1, 784)) == {"Dense_0/kernel": 2 * 784 * 300,
                                                      "Dense_1/kernel": 2 * 300 * 100,
                                                      "Dense_2/kernel": 2 * 100 * 10}


def test_train_step_flops_follow_the_rigl_appendix():
    f_s, f_d = 10.0, 100.0
    assert metrics.train_step_flops("static", f_s, f_d, 5) == 30.0
    assert metrics.train_step_flops("dense", f_s, f_d, 5) == 300.0
    rigl = metrics.train_step_flops("rigl", f_s, f_d, 5, update_every=100, end_step=1000)
    assert rigl == pytest.approx((3 * f_s * 100 + 2 * f_s + f_d) / 101)
    assert metrics.train_step_flops("rigl", f_s, f_d, 1000, update_every=100, end_step=1000) == 30.0
    assert metrics.train_step_flops("snfs", f_s, f_d, 5) == 2 * f_s + f_d


def test_itop_rate_counts_only_the_named_layers():
    ever = {"a": {"kernel": np.array([[True, False], [True, True]]), "bias": np.array([True, True])}}
    assert metrics.itop_rate(ever, ["a/kernel"]) == 0.75
