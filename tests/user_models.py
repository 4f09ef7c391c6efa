"""A user's own model, importable by ``model._target_=user_models.TinyConvNet`` (tests/ is on the path)."""

import flax.linen as nn
import jax.numpy as jnp


class TinyConvNet(nn.Module):
    """conv -> BatchNorm -> relu -> pool -> dense: a BN conv net that dst has never heard of."""

    width: int = 4
    num_classes: int = 10

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = x.reshape(x.shape[0], x.shape[1], x.shape[2], -1)
        x = nn.Conv(self.width, (3, 3), strides=(2, 2), use_bias=False)(x)
        x = nn.relu(nn.BatchNorm(use_running_average=not train)(x))
        x = nn.max_pool(x, (2, 2), (2, 2))
        return nn.Dense(self.num_classes)(x.reshape(x.shape[0], -1))


def no_module(width: int = 3):
    """A factory that does not build a flax module (for the bad-input test)."""
    return jnp.zeros(width)


class GroupedDilatedNet(nn.Module):
    """A grouped and a dilated convolution, which the sparse kernels do not run, beside a plain one."""

    num_classes: int = 10

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = nn.relu(nn.Conv(8, (3, 3), name="plain")(x))
        x = nn.relu(nn.Conv(8, (3, 3), feature_group_count=2, name="grouped")(x))
        x = nn.relu(nn.Conv(8, (3, 3), kernel_dilation=2, name="dilated")(x))
        return nn.Dense(self.num_classes)(x.mean(axis=(1, 2)))
