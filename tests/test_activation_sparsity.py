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

