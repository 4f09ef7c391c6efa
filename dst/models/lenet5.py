"""LeNet-5 (LeCun et al. 1998) as used by the SNFS / sparse_learning MNIST experiments."""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp


class LeNet5(nn.Module):
    """conv5x5(6) - maxpool - conv5x5(16) - maxpool - 120 - 84 - classes, ReLU.

    Accepts ``(N, 28, 28)``, ``(N, 784)`` or ``(N, 28, 28, 1)`` inputs.
    """

    num_classes: int = 10
    dropout: float = 0.0

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = jnp.reshape(x, (x.shape[0], 28, 28, -1))
        x = nn.max_pool(nn.relu(nn.Conv(6, (5, 5), padding="SAME")(x)), (2, 2), (2, 2))
        x = nn.max_pool(nn.relu(nn.Conv(16, (5, 5), padding="VALID")(x)), (2, 2), (2, 2))
        x = jnp.reshape(x, (x.shape[0], -1))
        for width in (120, 84):
            x = nn.relu(nn.Dense(width)(x))
            if self.dropout > 0:
                x = nn.Dropout(self.dropout, deterministic=not train)(x)
        return nn.Dense(self.num_classes)(x)
