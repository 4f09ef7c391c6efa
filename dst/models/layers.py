"""Parts shared by the convolutional models: input checks, PyTorch-matching BatchNorm and initialisers."""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

# PyTorch's default Conv2d/Linear weight init (kaiming_uniform with a=sqrt(5)): U(±1/sqrt(fan_in)).
torch_default_init = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")
# kaiming_normal_(mode="fan_out", nonlinearity="relu"): N(0, 2 / (k_h * k_w * out_channels)), as set by
# torchvision's ResNets and the sparse_learning WideResNet.
he_fan_out_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


def image_batch(x, model: str):
    """``x`` as an NHWC image batch: ``(N, H, W)`` gets a channel axis, ``(N, H, W, C)`` passes
    through, anything else is a ``ValueError`` naming ``model``."""
    if x.ndim == 3:
        return x[..., None]
    if x.ndim == 4:
        return x
    raise ValueError(f"{model} needs image inputs of shape (N, H, W) or (N, H, W, C); "
                     f"got shape {tuple(x.shape)}.")


def batch_norm(train: bool, name: str) -> nn.BatchNorm:
    """BatchNorm with PyTorch's defaults (torch momentum 0.1 == flax momentum 0.9, epsilon 1e-5):
    batch statistics in training, the running averages (``batch_stats``) in evaluation."""
    return nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5, name=name)


def torch_padding(pad: int):
    """PyTorch's symmetric ``padding=pad`` for a 2-D convolution or pooling."""
    return ((pad, pad), (pad, pad))


def global_average_pool(x):
    """Mean over the spatial axes of an NHWC batch: ``(N, H, W, C) -> (N, C)``."""
    return jnp.mean(x, axis=(1, 2))
