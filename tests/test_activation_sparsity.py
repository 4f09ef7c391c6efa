"""Activation sparsity in the records: the fraction of exact zeros in each sparse layer's input.

A hand-made MLP whose first layer leaves half of its ReLU units at exactly zero (zero weights, negative
bias) for every input, and inputs whose examples hold known numbers of exact zeros: the expected fractions
follow from the construction, not from the implementation. The set does not divide into the evaluation's
chunks, so the padding rows (all zeros) must not count.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import dst
from dst.models import MLP
from dst.train import stored
from dst.train.evaluate import stream_evaluate_fn

LAYERS = ["Dense_0/kernel", "Dense_1/kernel"]
N = 23


def problem():
    model = MLP(hidden=(8,), num_classes=3)
    params = model.init(jax.random.key(0), jnp.zeros((1, 6)))["params"]
    kernel = np.full((6, 8), 0.5, np.float32)
    kernel[:, :4] = 0.0                                   # units 0-3: no input ...
    bias = np.where(np.arange(8) < 4, -1.0, 1.0).astype(np.float32)   # ... and a negative bias: ReLU gives 0
    params = {**params, "Dense_0": {"kernel": jnp.asarray(kernel), "bias": jnp.asarray(bias)}}
    rng = np.random.default_rng(0)
    x = rng.uniform(0.5, 1.0, size=(N, 6)).astype(np.float32)   # positive: the live units stay positive
    zeros = np.arange(N) % 4                               # example i holds i % 4 exact zeros
    for i, z in enumerate(zeros):
        x[i, rng.choice(6, z, replace=False)] = 0.0
    y = np.zeros(N, np.int32)
    expected = {"Dense_0/kernel": float(np.mean(zeros / 6)), "Dense_1/kernel": 0.5}
    return model, params, x, y, expected


def test_the_evaluation_reports_each_layers_input_zero_fraction_over_the_set():
    model, params, x, y, expected = problem()
    out = dst.evaluate_fn(dst.flax_apply(model), batch_size=10, layers=LAYERS)(params, {}, x, y)
    for name, want in expected.items():
        assert float(out[f"zero_fraction/{name}"]) == pytest.approx(want, abs=1e-6)
    plain = dst.evaluate_fn(dst.flax_apply(model), batch_size=10)(params, {}, x, y)
    assert set(plain) == {"loss", "accuracy"} and float(plain["loss"]) == pytest.approx(float(out["loss"]))


def test_streamed_and_stored_evaluations_report_the_same_fractions():
    model, params, x, y, expected = problem()
    batches = [(x[i:i + 10], y[i:i + 10]) for i in range(0, N, 10)]
    streamed = stream_evaluate_fn(dst.flax_apply(model), 10, layers=LAYERS)(params, {}, iter(batches))
    masks = jax.tree_util.tree_map(lambda p: p != 0 if p.ndim == 2 else jnp.ones(p.shape, bool), params)
    masks = {**masks, "Dense_0": {**masks["Dense_0"], "kernel": jnp.asarray(np.asarray(params["Dense_0"]["kernel"])
                                                                             >= 0)}}   # dense: zeros kept stored
    storage = stored.make_storage(model, "csr", masks, LAYERS)
    values, slots, topologies = stored.compress_state(storage, params, masks)
    on_csr = dst.evaluate_fn(storage.apply_fn, batch_size=10, layers=LAYERS)(
        dst.backends.Stored(values, topologies), {}, x, y)
    for name, want in expected.items():
        assert float(streamed[f"zero_fraction/{name}"]) == pytest.approx(want, abs=1e-6)
        assert float(on_csr[f"zero_fraction/{name}"]) == pytest.approx(want, abs=1e-6)



# The kernels skip the weights of inputs that are zero across the whole batch (dst/kernels/csrc/zero_inputs.h).
from dst import kernels  # noqa: E402

needs_kernels = pytest.mark.skipif(not kernels.available(), reason="the compiled kernels are not built")


def _csr(mask, w):
    """``values, cols, rowptr`` of the matrix ``w [n_in, n_out]`` under ``mask``, by output unit."""
    cols = [np.flatnonzero(mask[:, o]) for o in range(mask.shape[1])]
    rowptr = np.concatenate([[0], np.cumsum([len(c) for c in cols])]).astype(np.int32)
    cols = np.concatenate(cols).astype(np.int32)
    units = np.repeat(np.arange(mask.shape[1]), np.diff(rowptr))
    return w[cols, units].astype(np.float32), cols, rowptr, units


def _run_both_ways(fn, *args):
    """``fn(*args)`` with the skipping on and off: (results on, results off, (weights, skipped) on)."""
    kernels.zero_input_counts()
    on = jax.block_until_ready(fn(*args))
    counts = kernels.zero_input_counts()
    before = kernels.skip_zero_inputs(False)
    try:
        off = jax.block_until_ready(fn(*args))
        assert kernels.zero_input_counts() == (0, 0)
    finally:
        kernels.skip_zero_inputs(before)
    return on, off, counts


@needs_kernels
def test_a_dense_layer_skips_the_weights_of_inputs_that_are_zero_across_the_batch(isa):
    """Inputs 2, 5 and 11 are zero in every example (input 7 in some only): the forward product and the value
    gradient skip exactly the weights that read 2, 5 and 11, and compute what the dense product does, the same
    floats as without skipping; those weights' gradients are zero. With input 2 alone zero, nothing is skipped."""
    rng = np.random.default_rng(0)
    n_in, n_out, batch = 12, 7, 9
    mask = rng.random((n_in, n_out)) < 0.5
    w = rng.standard_normal((n_in, n_out))
    values, cols, rowptr, units = _csr(mask, w)
    x = rng.standard_normal((batch, n_in)).astype(np.float32)
    x[:, [2, 5, 11]] = 0.0
    x[:4, 7] = 0.0
    g = rng.standard_normal((batch, n_out)).astype(np.float32)

    def forward_and_value_gradient(v, inputs):   # the input is not differentiated: dst_sddmm gives dW
        y, pullback = jax.vjp(lambda vv: kernels.csr_matmul(inputs, vv, cols, rowptr), v)
        return y, pullback(g)[0]

    (y, dv), (y_off, dv_off), (weights, skipped) = _run_both_ways(jax.jit(forward_and_value_gradient), values, x)
    dead = int(np.isin(cols, [2, 5, 11]).sum())
    assert dead > 0 and (weights, skipped) == (2 * len(values), 2 * dead)
    np.testing.assert_array_equal(y, y_off)
    np.testing.assert_array_equal(dv, dv_off)
    np.testing.assert_allclose(y, x @ np.where(mask, w, 0).astype(np.float32), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(dv, (x.T @ g)[cols, units], rtol=1e-5, atol=1e-5)
    assert np.all(np.asarray(dv)[np.isin(cols, [2, 5, 11])] == 0)
    # One zero input of 12 is not worth copying the structure for (SkippingPays: a quarter or more): none skipped.
    x[:, [5, 11]] = 1.0
    (y, dv), _, (weights, skipped) = _run_both_ways(jax.jit(forward_and_value_gradient), values, x)
    assert (weights, skipped) == (2 * len(values), 0)
    np.testing.assert_allclose(y, x @ np.where(mask, w, 0).astype(np.float32), rtol=1e-5, atol=1e-5)


@needs_kernels
def test_a_convolution_skips_the_weights_of_input_channels_that_are_zero_everywhere(isa):
    """Input channels 1 and 3 of a 3x3 convolution are zero in every example and pixel (channel 0 in some
    pixels only): the forward product and the value gradient skip exactly their weights and agree with XLA's
    convolution and its kernel gradient, the same floats as without skipping."""
    rng = np.random.default_rng(1)
    kh, kw, c_in, n_out = 3, 3, 5, 4
    mask = rng.random((kh * kw * c_in, n_out)) < 0.4
    w = rng.standard_normal((kh * kw * c_in, n_out))
    values, cols, rowptr, units = _csr(mask, w)
    x = rng.standard_normal((4, 6, 6, c_in)).astype(np.float32)
    x[..., [1, 3]] = 0.0
    x[:, :2, :, 0] = 0.0
    kernel = np.where(mask, w, 0).astype(np.float32).reshape(kh, kw, c_in, n_out)
    xla = lambda k: jax.lax.conv_general_dilated(x, k, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
    g = rng.standard_normal(np.shape(xla(kernel))).astype(np.float32)

    def forward_and_value_gradient(v):
        y, pullback = jax.vjp(lambda vv: kernels.csr_conv(x, vv, cols, rowptr, (kh, kw, c_in, n_out)), v)
        return y, pullback(g)[0]

    (y, dv), (y_off, dv_off), (weights, skipped) = _run_both_ways(jax.jit(forward_and_value_gradient), values)
    dead = int(np.isin(cols % c_in, [1, 3]).sum())
    assert dead > 0 and (weights, skipped) == (2 * len(values), 2 * dead)
    np.testing.assert_array_equal(y, y_off)
    np.testing.assert_array_equal(dv, dv_off)
    np.testing.assert_allclose(y, xla(kernel), rtol=1e-5, atol=1e-5)
    dense = np.asarray(jax.grad(lambda k: jnp.sum(xla(k) * g))(kernel)).reshape(-1, n_out)
    np.testing.assert_allclose(dv, dense[cols, units], rtol=1e-4, atol=1e-4)
