"""Shared fixtures: small real models and their params."""

import jax
import jax.numpy as jnp
import pytest

from dst.models import MLP
from dst.models import LeNet5
from dst.models import lenet300
from dst.models import set_mlp


def init_params(model, shape=(1, 784), seed=0):
    return model.init(jax.random.key(seed), jnp.zeros(shape))["params"]


@pytest.fixture(scope="session")
def lenet300_params():
    return init_params(lenet300())


@pytest.fixture(scope="session")
def architectures():
    """Three architectures, one of them a conv net: name -> params."""
    return {
        "lenet300": init_params(lenet300()),
        "set_mlp": init_params(set_mlp()),
        "lenet5": init_params(LeNet5()),
    }


@pytest.fixture(scope="session")
def tiny_mlp():
    model = MLP(hidden=(32, 16), num_classes=10)
    return model, init_params(model, (1, 64))
