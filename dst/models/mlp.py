"""Multi-layer perceptrons (LeNet-300-100, SET's 784-1000-1000-1000-10)."""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax.numpy as jnp


class MLP(nn.Module):
    """ReLU MLP over flattened inputs: ``hidden`` widths, then ``num_classes`` logits.

    Layers are named ``Dense_0 ... Dense_L`` (flax's default), so their kernels are
    ``Dense_i/kernel`` in the params pytree. Kernels start from flax's LeCun normal (variance 1 / fan-in of
    the dense layer); ``hidden_std``: the hidden layers' kernels from N(0, hidden_std^2) instead, as SET's
    reference code draws its sparse layers (``randn / 10``), whose units see a few dozen inputs where
    the dense fan-in scaling assumes hundreds of thousands.
    """

    hidden: Sequence[int] = (300, 100)
    num_classes: int = 10
    dropout: float = 0.0
    hidden_std: float | None = None

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = jnp.reshape(x, (x.shape[0], -1))
        init = nn.initializers.lecun_normal() if self.hidden_std is None else nn.initializers.normal(self.hidden_std)
        for width in self.hidden:
            x = nn.relu(nn.Dense(width, kernel_init=init)(x))
            if self.dropout > 0:
                x = nn.Dropout(self.dropout, deterministic=not train)(x)
        return nn.Dense(self.num_classes)(x)


def lenet300(num_classes: int = 10, dropout: float = 0.0) -> MLP:
    """LeNet-300-100 (LeCun et al. 1998), the MLP of the RigL/SNFS MNIST experiments."""
    return MLP(hidden=(300, 100), num_classes=num_classes, dropout=dropout)


def set_mlp(num_classes: int = 10, dropout: float = 0.0) -> MLP:
    """SET's 784-1000-1000-1000-10 MLP (Mocanu et al. 2018)."""
    return MLP(hidden=(1000, 1000, 1000), num_classes=num_classes, dropout=dropout)
