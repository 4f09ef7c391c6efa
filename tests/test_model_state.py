"""Model state through the trainer: BatchNorm statistics in training, running averages in evaluation,
BN scales and biases never sparse, and one-shot pruning and FLOPs on a BN net."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from algo_helpers import every_algorithm

import dst
from dst import metrics
from dst.masks import named_leaves


class BNNet(nn.Module):
    """Dense -> BatchNorm -> relu -> Dense: small enough to check against numpy by hand."""

    @nn.compact
    def __call__(self, x, train: bool = False):
        h = nn.Dense(16, name="fc1")(x.reshape(x.shape[0], -1))
        h = nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5, name="bn")(h)
        return nn.Dense(4, name="fc2")(nn.relu(h))


def _problem(algorithm="rigl", mask_sparsity=0.8, **hparams):
    model = BNNet()
    params, model_state = dst.init_model(model, jax.random.key(0), jnp.zeros((1, 12)))
    x = jax.random.normal(jax.random.key(1), (64, 12)) * 3.0 + 1.0
    y = jnp.arange(64) % 4
    densities = dst.layer_densities(params, mask_sparsity, "uniform")
    masks = dst.init_masks(jax.random.key(2), params, densities)
    algo = dst.algorithms.make(algorithm, **hparams)
    tx = optax.sgd(0.05, momentum=0.9)
    state = dst.create_train_state(jax.random.key(3), params, masks, tx, algo, model_state)
    return model, x, y, algo, tx, state


def test_init_model_splits_params_from_batch_stats():
    params, model_state = dst.init_model(BNNet(), jax.random.key(0), jnp.zeros((1, 12)))
    assert set(model_state) == {"batch_stats"}
    stats = named_leaves(model_state)
    np.testing.assert_array_equal(stats["batch_stats/bn/mean"], np.zeros(16))
    np.testing.assert_array_equal(stats["batch_stats/bn/var"], np.ones(16))
    assert "bn/scale" in named_leaves(params) and "bn/bias" in named_leaves(params)


def test_training_step_normalises_with_the_batch_and_updates_the_running_averages():
    model, x, y, algo, tx, state = _problem("static")
    step = jax.jit(dst.make_train_step(dst.flax_apply(model), tx, algo))
    batch = (x[:32], y[:32])
    new, _ = step(state, batch)
    # Reference in numpy: the pre-BN activations of this batch at the step's (pre-update) weights.
    w, b = (np.asarray(named_leaves(state.params)[f"fc1/{k}"]) for k in ("kernel", "bias"))
    h = np.asarray(batch[0]) @ w + b
    stats = named_leaves(new.model_state)
    np.testing.assert_allclose(stats["batch_stats/bn/mean"], 0.1 * h.mean(0), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(stats["batch_stats/bn/var"], 0.9 + 0.1 * h.var(0), rtol=1e-4, atol=1e-6)


def test_evaluation_uses_the_running_averages():
    model, x, y, algo, tx, state = _problem("static")
    step = jax.jit(dst.make_train_step(dst.flax_apply(model), tx, algo))
    for i in range(3):
        state, _ = step(state, (x[16 * i:16 * i + 16], y[16 * i:16 * i + 16]))
    out = dst.evaluate_fn(dst.flax_apply(model), batch_size=10)(state.params, state.model_state, x, y)
    p, s = named_leaves(state.params), named_leaves(state.model_state)
    h = np.asarray(x) @ np.asarray(p["fc1/kernel"]) + np.asarray(p["fc1/bias"])
    h = (h - s["batch_stats/bn/mean"]) / np.sqrt(s["batch_stats/bn/var"] + 1e-5) * p["bn/scale"] + p["bn/bias"]
    logits = np.maximum(h, 0) @ np.asarray(p["fc2/kernel"]) + np.asarray(p["fc2/bias"])
    assert float(out["accuracy"]) == pytest.approx(float(np.mean(logits.argmax(-1) == np.asarray(y))))
    ref = optax.softmax_cross_entropy_with_integer_labels(jnp.asarray(logits), y).mean()
    assert float(out["loss"]) == pytest.approx(float(ref), rel=1e-4)
    # Batch statistics would give other logits: evaluation really reads the running averages.
    batch_logits, _ = dst.flax_apply(model)(state.params, state.model_state, x, True, None)
    assert not np.allclose(np.asarray(batch_logits), logits, atol=1e-3)


@pytest.mark.parametrize("algorithm", every_algorithm(["rigl", "set", "snfs", "topkast"]))
def test_batchnorm_scales_and_biases_are_never_sparse(algorithm):
    hp = dict(update_every=2, end_step=100)
    if algorithm == "topkast":
        hp.update(sparsity=0.8, backward_sparsity=0.6, distribution="uniform")
    model, x, y, algo, tx, state = _problem(algorithm, **hp)
    layers = dst.sparsifiable_layers(state.params)
    assert layers == ["fc1/kernel", "fc2/kernel"]
    initial = named_leaves(state.params)
    epoch = dst.train_epoch_fn(dst.make_train_step(dst.flax_apply(model), tx, algo), 16)
    for e in range(3):
        state, metrics = epoch(state, x, y, jax.random.key(e))
    assert int(metrics["updated"].sum()) > 0
    masks, params = named_leaves(state.masks), named_leaves(state.params)
    # A BN unit whose incoming weights are all inactive sees a constant, normalised to zero: its scale,
    # bias and pre-BN bias get no gradient while that lasts, so not every unit must have moved.
    for name in ("bn/scale", "bn/bias", "fc1/bias", "fc2/bias"):
        assert masks[name].all(), name                    # never masked ...
        changed = np.asarray(params[name]) != np.asarray(initial[name])
        assert changed.mean() >= (1.0 if name == "fc2/bias" else 0.5), name   # ... and trained
    assert dst.density_report(state.masks)["global"] == pytest.approx(0.2, abs=0.01)


def test_one_shot_pruning_and_flops_on_a_bn_net():
    model, x, y, _, _, state = _problem("static")
    algo = dst.algorithms.make("snip", sparsity=0.8, batches=2)
    dense = jax.tree_util.tree_map(lambda p: jnp.ones(p.shape, bool), state.params)
    masks = dst.train.prune_at_init(algo, jax.random.key(0), state.params, dense, dst.flax_apply(model), x, y, 16,
                                    model_state=state.model_state)
    assert dst.density_report(masks)["global"] == pytest.approx(0.2, abs=1e-3)
    assert all(named_leaves(masks)[n].all() for n in ("bn/scale", "bn/bias"))
    flops = metrics.layer_flops(dst.flax_apply(model), state.params, state.model_state, x)
    assert flops == {"fc1/kernel": 2 * 12 * 16, "fc2/kernel": 2 * 16 * 4}
