"""experiment=set_tutorial: its components against a numpy transcription of the tutorial code's
training step (set_mlp.py / fc_mlp.py), the data subset, and the preset's schedule and densities."""

import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import dst
from dst.data.datasets import numpy_subset

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from experiments.set_tutorial.components import TutorialMLP  # noqa: E402
from experiments.set_tutorial.components import tutorial_mse  # noqa: E402
from experiments.set_tutorial.components import tutorial_sgd  # noqa: E402

LR, MOMENTUM, WD = 0.05, 0.9, 2e-4


def sigmoid(x):
    return 1 / (1 + np.exp(-x))


def tutorial_step(w, b, pdw, pdd, x, y, sum_kernels=False):
    """One minibatch of the tutorial's fit(): _feed_forward (no dropout), _back_prop, _update_w_b."""
    n = len(w)
    a, z = [x], []
    for i in range(n):
        z.append(a[-1] @ w[i] + b[i])
        a.append(np.maximum(z[-1], 0) if i < n - 1 else sigmoid(z[-1]))
    p = a[-1]
    delta = (p - y) * sigmoid(p) * (1 - sigmoid(p))          # MSE.prime * Sigmoid.prime(y_pred)
    grads = [None] * n
    for i in reversed(range(n)):
        dw = a[i].T @ delta
        grads[i] = (dw if sum_kernels else dw / len(x), delta.mean(0))
        if i:
            delta = (delta @ w[i].T) * (z[i - 1] > 0)
    for i in range(n):
        pdw[i] = MOMENTUM * pdw[i] - LR * grads[i][0]
        pdd[i] = MOMENTUM * pdd[i] - LR * grads[i][1]
        w[i] = w[i] + pdw[i] - WD * w[i]
        b[i] = b[i] + pdd[i] - WD * b[i]
    return w, b, pdw, pdd


@pytest.mark.parametrize("dense_sums", [False, True])
def test_three_steps_match_the_tutorial_code(dense_sums):
    model = TutorialMLP(hidden=(12, 9), num_classes=4, dropout=0.0)
    x = jax.random.uniform(jax.random.key(1), (8, 10))
    labels = jnp.array([0, 1, 2, 3, 3, 2, 1, 0])
    params = model.init(jax.random.key(0), x)["params"]
    masks = jax.tree_util.tree_map(lambda p: jnp.ones(p.shape, bool), params)
    tx = tutorial_sgd(LR, MOMENTUM, WD, kernel_grad_scale=8.0 if dense_sums else 1.0)
    algo = dst.algorithms.make("dense")
    state = dst.create_train_state(jax.random.key(2), params, masks, tx, algo)
    step = jax.jit(dst.make_train_step(dst.flax_apply(model), tx, algo, tutorial_mse))

    names = [f"Dense_{i}" for i in range(3)]
    w = [np.asarray(params[k]["kernel"], np.float64) for k in names]
    b = [np.asarray(params[k]["bias"], np.float64) for k in names]
    pdw, pdd = [np.zeros_like(v) for v in w], [np.zeros_like(v) for v in b]
    y = np.eye(4)[np.asarray(labels)]
    for _ in range(3):
        state, metrics = step(state, (x, labels))
        w, b, pdw, pdd = tutorial_step(w, b, pdw, pdd, np.asarray(x, np.float64), y, sum_kernels=dense_sums)
    for i, k in enumerate(names):
        np.testing.assert_allclose(state.params[k]["kernel"], w[i], rtol=2e-5, atol=1e-7)
        np.testing.assert_allclose(state.params[k]["bias"], b[i], rtol=2e-5, atol=1e-7)


def test_dropout_masks_forward_only_and_evaluation_scales_later_pre_activations():
    model = TutorialMLP(hidden=(6, 5), num_classes=3, dropout=0.25)
    x = jax.random.uniform(jax.random.key(1), (4, 7))
    params = model.init(jax.random.key(0), x)["params"]
    w = [np.asarray(params[f"Dense_{i}"]["kernel"]) for i in range(3)]
    b = [np.asarray(params[f"Dense_{i}"]["bias"]) for i in range(3)]
    # Evaluation: layers after the first have their pre-activations (bias included) times 0.75.
    h1 = np.maximum(np.asarray(x) @ w[0] + b[0], 0)
    h2 = np.maximum(0.75 * (h1 @ w[1] + b[1]), 0)
    expected = 0.75 * (h2 @ w[2] + b[2])
    np.testing.assert_allclose(model.apply({"params": params}, x, train=False), expected, rtol=1e-5, atol=1e-6)
    # Training: unscaled keep masks in the forward pass; the gradient into a dropped unit's incoming
    # weights is what it would be unmasked (the code's delta uses the unmasked z).
    rng = {"dropout": jax.random.key(5)}
    out, inter = model.apply({"params": params}, x, train=True, rngs=rng, capture_intermediates=True)
    z1 = np.asarray(inter["intermediates"]["Dense_1"]["__call__"][0])
    undropped = np.maximum(np.maximum(np.asarray(x) @ w[0] + b[0], 0) @ w[1] + b[1], 0) @ w[2] + b[2]
    assert not np.allclose(out, undropped)          # some unit was dropped, and nothing rescaled

    def loss(p):
        return jnp.sum(model.apply({"params": p}, x, train=True, rngs=rng))

    g = jax.grad(loss)(params)
    # d loss / d h2 = W2.sum(1) for every example, straight through the mask, so Dense_1's bias
    # gradient is the batch sum of relu'(z1) * W2.sum(1) (a masking backward would zero dropped units).
    expected_bias = ((z1 > 0) * w[2].sum(1)).sum(0)
    np.testing.assert_allclose(g["Dense_1"]["bias"], expected_bias, rtol=1e-5, atol=1e-6)


def test_loss_value_and_gradient_are_the_tutorials():
    z = jnp.array([[0.3, -1.2, 2.0], [1.0, 0.0, -0.5]])
    labels = jnp.array([2, 0])
    y = np.eye(3)[[2, 0]]
    p = sigmoid(np.asarray(z, np.float64))
    np.testing.assert_allclose(tutorial_mse(z, labels), np.mean((p - y) ** 2), rtol=1e-6)
    expected = (p - y) * sigmoid(p) * (1 - sigmoid(p)) / 2
    np.testing.assert_allclose(jax.grad(tutorial_mse)(z, labels), expected, rtol=1e-5)
    # Not the textbook derivative p (1 - p): the tutorial applies its sigmoid prime to p.
    assert not np.allclose(expected, (p - y) * p * (1 - p) / 2)


def test_subset_is_numpy_seed_then_two_shuffles():
    np.random.seed(0)
    train = np.arange(600)
    np.random.shuffle(train)
    test = np.arange(100)
    np.random.shuffle(test)
    got_train, got_test = numpy_subset(600, 100, 20, 10, 0)
    np.testing.assert_array_equal(got_train, train[:20])
    np.testing.assert_array_equal(got_test, test[:10])


def test_preset_densities_are_the_expected_counts_of_eps_draws():
    from omegaconf import OmegaConf

    conf = pathlib.Path(__file__).resolve().parents[1] / "conf" / "sparsity"
    shapes = {"Dense_0/kernel": (784, 1000), "Dense_1/kernel": (1000, 1000), "Dense_2/kernel": (1000, 1000),
              "Dense_3/kernel": (1000, 10)}
    for name in ("set_tutorial", "static_tutorial"):
        densities = OmegaConf.load(conf / f"{name}.yaml").densities
        for layer, (n, m) in shapes.items():
            draws = 13 * (n + m)
            assert densities[layer] == pytest.approx(1 - (1 - 1 / (n * m)) ** draws, abs=1e-6)
    sp = OmegaConf.load(conf / "set_tutorial.yaml")
    updates = [t for t in range(400 * 50) if dst.schedules.is_update_step(jnp.int32(t), sp.update_every,
                                                                          sp.start_step, sp.end_step)]
    assert len(updates) == 399 and updates[0] == 50 and updates[-1] == 399 * 50


@pytest.fixture(scope="session")
def idx_dir(tmp_path_factory):
    from idx_data import write_dataset

    return write_dataset(tmp_path_factory.mktemp("idx") / "fashion_mnist")


@pytest.mark.parametrize("overrides, sentence", [
    (["dataset.subset.train=5000"], "dataset.subset asks for 5000 train / 40 test rows; the files have 640 / 200"),
    ([{"Dense_9/kernel": 0.5}], "sparsity.densities names 'Dense_9/kernel', which is not a"),
    ([{"Dense_0/kernel": 1.5}], "sparsity.densities.Dense_0/kernel must be a number in (0, 1]"),
    (["optimizer._target_=experiments.set_tutorial.components.nothing"],
     "optimizer._target_=experiments.set_tutorial.components.nothing: module experiments.set_tutorial.components "
     "has no attribute 'nothing'"),
    (["trainer.loss=no_such_package.loss"], "trainer.loss=no_such_package.loss cannot be imported"),
])
def test_bad_tutorial_settings_are_one_sentence(overrides, sentence, idx_dir, tmp_path):
    from hydra import compose
    from hydra import initialize_config_dir
    from omegaconf import OmegaConf

    from dst.app.run import run
    from dst.app.validate import ConfigError

    conf = pathlib.Path(__file__).resolve().parents[1] / "conf"
    # Layer names hold "/", which Hydra's override grammar does not take in keys: densities are edited
    # in the composed dict.
    densities = [o for o in overrides if isinstance(o, dict)]
    overrides = [o for o in overrides if not isinstance(o, dict)]
    with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
        cfg = OmegaConf.to_container(compose("config", overrides=[
            "experiment=set_tutorial", f"dataset.data_dir={idx_dir}", "dataset.subset.train=96",
            "dataset.subset.test=40", "logger=none", "trainer.max_steps=1", *overrides]), resolve=True)
    for d in densities:
        cfg["sparsity"]["densities"].update(d)
    with pytest.raises(ConfigError) as err:
        run(cfg, tmp_path)
    assert sentence in str(err.value)
