"""Your own model: any flax.linen module, named by ``model._target_=my_model.ResidualMLP``."""

import flax.linen as nn
import jax.numpy as jnp


class ResidualMLP(nn.Module):
    """A projection to ``width``, ``blocks`` residual blocks (LayerNorm, Dense, ReLU, Dense) and a
    classifier. Its kernels (``ndim >= 2``) are sparse; LayerNorm scales and biases stay dense."""

    width: int = 128
    blocks: int = 2
    num_classes: int = 10      # dst fills it in from the data set
    dropout: float = 0.0       # dropout draws from the step's key in training

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = nn.Dense(self.width, name="embed")(jnp.reshape(x, (x.shape[0], -1)))
        for i in range(self.blocks):
            h = nn.LayerNorm(name=f"block{i}_norm")(x)
            h = nn.relu(nn.Dense(self.width, name=f"block{i}_in")(h))
            h = nn.Dropout(self.dropout, deterministic=not train)(h)
            x = x + nn.Dense(self.width, name=f"block{i}_out")(h)
        return nn.Dense(self.num_classes, name="head")(nn.relu(x))
