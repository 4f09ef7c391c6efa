"""Multi-layer perceptrons (LeNet-300-100, SET's 784-1000-1000-1000-10)."""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax.numpy as jnp


class MLP(nn.Module):
    """ReLU MLP over flattened inputs: ``hidden`` widths, then ``num_classes`` logits.

    Layers are named ``Dense_0 ... Dense_L`` (flax's default), so their kernels are
    ``Dense_i/kernel`` in the params pytree.
    """

    hidden: Sequence[int] = (300, 100)
    num_classes: int = 10
    dropout: float = 0.0

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = jnp.reshape(x, (x.shape[0], -1))
        for width in self.hidden:
            x = nn.relu(nn.Dense(width)(x))
            if self.dropout > 0:
                x = nn.Dropout(self.dropout, deterministic=not train)(x)
        return nn.Dense(self.num_classes)(x)


def lenet300(num_classes: int = 10, dropout: float = 0.0) -> MLP:
    """LeNet-300-100 (LeCun et al. 1998), the MLP of the RigL/SNFS MNIST experiments."""
    return MLP(hidden=(300, 100), num_classes=num_classes, dropout=dropout)


def set_mlp(num_classes: int = 10, dropout: float = 0.0) -> MLP:
    """SET's 784-1000-1000-1000-10 MLP (Mocanu et al. 2018)."""
    return MLP(hidden=(1000, 1000, 1000), num_classes=num_classes, dropout=dropout)
