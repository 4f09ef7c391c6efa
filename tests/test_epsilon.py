"""``sparsity.epsilon`` (SET's Erdos-Renyi counts): each sparse layer holds eps (n_in + n_out) weights,
capped at its size; bad combinations are one sentence."""

import pathlib
import re

import jax
import jax.numpy as jnp
import pytest
from hydra import compose
from hydra import initialize_config_dir
from idx_data import write_dataset
from omegaconf import OmegaConf

import dst
from dst.app.run import initialise
from dst.app.run import prepare
from dst.app.validate import ConfigError
from dst.app.validate import validate
from dst.models import MLP

CONF = pathlib.Path(__file__).resolve().parents[1] / "conf"
QUIET = lambda *_: None


def composed(*overrides):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return OmegaConf.to_container(compose("config", overrides=list(overrides)), resolve=True)


def test_each_layer_holds_epsilon_times_its_fan_in_plus_fan_out_capped_at_its_size():
    params = MLP(hidden=(300, 100), num_classes=10).init(jax.random.key(0), jnp.zeros((1, 784)))["params"]
    got = dst.epsilon_densities(params, 20)
    # By hand: 20 (784 + 300) / (784 * 300); 20 (300 + 100) / (300 * 100); 20 * 110 > 100 * 10: dense.
    assert got == {"Dense_0/kernel": pytest.approx(21680 / 235200), "Dense_1/kernel": pytest.approx(8000 / 30000),
                   "Dense_2/kernel": 1.0}
    assert dst.epsilon_densities(params, 1, dense_layers=["Dense_0"]).keys() == {"Dense_1/kernel", "Dense_2/kernel"}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return write_dataset(tmp_path_factory.mktemp("idx") / "fashion_mnist", n_train=256)


def test_a_run_with_epsilon_starts_from_those_counts_and_says_its_global_sparsity(data_dir):
    said = []
    cfg = composed("sparsity=set", "sparsity.distribution=er", "sparsity.epsilon=20", f"dataset.data_dir={data_dir}",
                   "logger=none", "trainer.epochs=1")
    plan = prepare(cfg, said.append)
    parts = initialise(plan)
    counts = {n: int(m.sum()) for n, m in dst.masks.named_leaves(parts.state.masks).items() if n.endswith("kernel")}
    assert counts == {"Dense_0/kernel": 21680, "Dense_1/kernel": 8000, "Dense_2/kernel": 1000}
    assert any("sparsity: er with epsilon=20: about 30,680 weights, global sparsity 0.8847" in s for s in said), said


@pytest.mark.parametrize("overrides, sentence", [
    (("sparsity.epsilon=20",), "sparsity.epsilon sets SET's Erdos-Renyi counts eps (n_in + n_out) per layer, so "
                               "sparsity.distribution must be er; got erk."),
    (("sparsity.distribution=er", "sparsity.epsilon=0"), "sparsity.epsilon must be"),
])
def test_epsilon_without_er_or_out_of_range_is_one_sentence(overrides, sentence):
    with pytest.raises(ConfigError, match="^" + re.escape(sentence)):
        validate(composed("sparsity=set", *overrides))


def test_epsilon_with_an_algorithm_that_sets_its_own_counts_is_one_sentence(data_dir):
    cfg = composed("sparsity=gmp", "sparsity.distribution=er", "sparsity.epsilon=20", f"dataset.data_dir={data_dir}",
                   "logger=none")
    with pytest.raises(ConfigError, match=r"^sparsity.epsilon fixes each layer's count at eps \(n_in \+ n_out\), and "
                                          r"sparsity.algorithm=gmp sets its own counts"):
        prepare(cfg, QUIET)


