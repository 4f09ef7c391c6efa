"""Wide residual networks for CIFAR (Zagoruyko & Komodakis 2016), as trained by SNFS and RigL."""

from __future__ import annotations

import flax.linen as nn

from dst.models.layers import batch_norm
from dst.models.layers import global_average_pool
from dst.models.layers import he_fan_out_init
from dst.models.layers import image_batch
from dst.models.layers import torch_default_init
from dst.models.layers import torch_padding


class WideBasicBlock(nn.Module):
    """Pre-activation basic block: BN-ReLU-conv3x3(stride)-BN-ReLU-[dropout]-conv3x3, plus the input
    (identity) or, where the width or stride changes, a 1x1 conv of the activated input.

    Param names: ``bn1``, ``conv1``, ``bn2``, ``conv2`` and ``shortcut_conv`` (where shapes change).
    """

    features: int
    strides: int = 1
    dropout: float = 0.0

    @nn.compact
    def __call__(self, x, train: bool = False):
        def conv(features, kernel, strides, name):
            return nn.Conv(features, (kernel, kernel), (strides, strides),
                           padding=torch_padding(kernel // 2), use_bias=False,
                           kernel_init=he_fan_out_init, name=name)

        activated = nn.relu(batch_norm(train, "bn1")(x))
        out = conv(self.features, 3, self.strides, "conv1")(activated)
        out = nn.relu(batch_norm(train, "bn2")(out))
        if self.dropout > 0:
            out = nn.Dropout(self.dropout, deterministic=not train)(out)
        out = conv(self.features, 3, 1, "conv2")(out)
        if x.shape[-1] != self.features or self.strides != 1:
            # As the reference: the shortcut sees the block's BN-ReLU output, the identity the raw input.
            x = conv(self.features, 1, self.strides, "shortcut_conv")(activated)
        return x + out


class WideResNet(nn.Module):
    """WRN-``depth``-``widen_factor`` for 32x32 images (Zagoruyko & Komodakis 2016, "Wide Residual
    Networks"), the layout of ``WideResNet`` in ``sparselearning/models.py`` of
    github.com/TimDettmers/sparse_learning (itself xternalz/WideResNet-pytorch), which sparse momentum
    trains as WRN-28-2/16-8/16-10/22-8 and RigL as WRN-22-2.

    A 3x3 conv to 16 channels, then three groups of n = (depth - 4) / 6 pre-activation basic blocks
    (:class:`WideBasicBlock`) of widths 16k, 32k, 64k (k = ``widen_factor``; the first block of
    groups 2 and 3 has stride 2, and a 1x1 conv shortcut wherever the width or stride changes), a
    final BN-ReLU, global average pooling (the reference's 8x8 average pool on 32x32 inputs) and a
    dense classifier. Convs have no bias. ``dropout`` sits between a block's two convs (the WRN
    paper's "-dropout" networks and the reference's default use 0.3); 0, the default here, turns it
    off. Conv kernels start as the reference's N(0, 2 / (k*k*out_channels)).

    Parameter counts for 10 classes (this layout; in brackets the WRN paper's rounded counts,
    arXiv:1605.07146): WRN-16-8 10,961,370 (11.0M), WRN-28-10 36,479,194 (36.5M), WRN-40-4
    8,949,210 (8.9M); WRN-22-8 17,158,106, WRN-28-2 1,467,610, WRN-22-2 1,079,642.

    Param names: ``stem_conv`` (``stem_conv/kernel``), blocks ``layer{g}_{i}`` for group g in 1..3 and
    block i from 0 (``layer1_0/bn1``, ``layer1_0/conv1``, ``layer1_0/bn2``, ``layer1_0/conv2``,
    ``layer1_0/shortcut_conv``), ``final_bn`` and the classifier ``head`` (``head/kernel``).

    Example::

        model = WideResNet(depth=22, widen_factor=2, num_classes=10)
        variables = model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
        logits, updates = model.apply(variables, images, train=True, mutable=["batch_stats"])
    """

    depth: int = 28
    widen_factor: int = 2
    dropout: float = 0.0
    num_classes: int = 10

    def __post_init__(self):
        if self.depth < 10 or (self.depth - 4) % 6 != 0:
            raise ValueError(f"model.depth of a WideResNet must be 6n + 4 for some n >= 1 "
                             f"(10, 16, 22, 28, ...); got {self.depth}.")
        if self.widen_factor < 1:
            raise ValueError(f"model.widen_factor of a WideResNet must be a positive integer; "
                             f"got {self.widen_factor}.")
        super().__post_init__()

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = image_batch(x, f"wrn{self.depth}_{self.widen_factor}")
        x = nn.Conv(16, (3, 3), padding=torch_padding(1), use_bias=False,
                    kernel_init=he_fan_out_init, name="stem_conv")(x)
        blocks = (self.depth - 4) // 6
        for group, (width, strides) in enumerate(((16, 1), (32, 2), (64, 2)), start=1):
            for i in range(blocks):
                x = WideBasicBlock(width * self.widen_factor, strides if i == 0 else 1, self.dropout,
                                   name=f"layer{group}_{i}")(x, train)
        x = nn.relu(batch_norm(train, "final_bn")(x))
        x = global_average_pool(x)
        return nn.Dense(self.num_classes, kernel_init=torch_default_init, name="head")(x)


def wrn22_2(num_classes: int = 10, dropout: float = 0.0) -> WideResNet:
    """WRN-22-2 (1.1M params), RigL's CIFAR-10 network."""
    return WideResNet(depth=22, widen_factor=2, dropout=dropout, num_classes=num_classes)


def wrn28_2(num_classes: int = 10, dropout: float = 0.0) -> WideResNet:
    """WRN-28-2 (1.5M params), sparse momentum's CIFAR-10 WRN."""
    return WideResNet(depth=28, widen_factor=2, dropout=dropout, num_classes=num_classes)


def wrn16_8(num_classes: int = 10, dropout: float = 0.0) -> WideResNet:
    """WRN-16-8 (11.0M params, WRN paper), used by SNIP and sparse momentum."""
    return WideResNet(depth=16, widen_factor=8, dropout=dropout, num_classes=num_classes)
