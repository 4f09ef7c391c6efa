"""The CIFAR VGG-16 variants (C, D, like) of SNIP and sparse momentum (SNFS), with BatchNorm."""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from dst.models.layers import batch_norm
from dst.models.layers import image_batch
from dst.models.layers import torch_default_init
from dst.models.layers import torch_padding

# "M" is a 2x2 max-pool; an int is a 3x3 conv with that many channels; (k, c) is a kxk conv. Every conv
# pads by 1, the 1x1 ones included (so VGG-C's 1x1 convs grow the feature map by 2 pixels).
VGG_CONFIGS = {
    "C": (64, 64, "M", 128, 128, "M", 256, 256, (1, 256), "M", 512, 512, (1, 512), "M",
          512, 512, (1, 512), "M"),
    "D": (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"),
    "like": (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"),
}


class VGG16(nn.Module):
    """VGG-16 for 32x32 images, in the three variants of SNIP (Lee et al. 2019) that sparse momentum
    (Dettmers & Zettlemoyer 2019, "Sparse Networks from Scratch") and GraSP train on CIFAR.

    Follows ``VGG16`` in ``sparselearning/models.py`` of github.com/TimDettmers/sparse_learning:
    13 convs (3x3, padding 1, with bias, as the reference's ``nn.Conv2d`` defaults), each followed by
    BatchNorm and ReLU, five 2x2 max-pools, then a classifier whose fully connected layers are 512 wide
    and use BatchNorm instead of dropout, in the reference's order Linear-ReLU-BatchNorm1d:

    * ``config="D"``: 512-512-classes (the input is the 1x1x512 feature map of a 32x32 image).
    * ``config="C"``: as D, but the third conv of blocks 3-5 is 1x1 (still padded by 1, as in the
      reference), which leaves a 2x2x512 map, so the classifier is 2048-512-512-classes.
    * ``config="like"``: D's convs with a single hidden layer, 512-512-classes.

    Parameter counts for 10 classes on 32x32 inputs (computed from the layout; kernels only in
    brackets): D 15,255,626 (15,239,872); C 11,323,466 (11,307,712); like 14,991,946 (14,977,728).
    SNIP's own code (namhoonlee/snip-public, ``snip/network.py``) differs from this port in two ways:
    its VGG-C 1x1 convs are unpadded, so its classifier input is 512 wide (10.5M kernel weights), and
    its classifier orders Linear-BatchNorm-ReLU. D and like have the same kernels in both.

    Param names: ``conv1 ... conv13`` (the first conv is ``conv1/kernel``), ``bn1 ... bn13``,
    ``fc1``, ``fc1_bn``, ``fc2``, ``fc2_bn`` (C and D only) and the classifier ``head``
    (``head/kernel``). ``dropout`` (0: the reference) is applied before ``head``. Kernels start as
    PyTorch's defaults (uniform ±1/sqrt(fan_in)); biases at zero.

    Example::

        model = VGG16(config="D", num_classes=10)
        variables = model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
        logits = model.apply(variables, images)  # (N, 10)
    """

    config: str = "D"
    num_classes: int = 10
    dropout: float = 0.0

    def __post_init__(self):
        if self.config not in VGG_CONFIGS:
            raise ValueError(f"model.config of vgg16 must be one of {', '.join(VGG_CONFIGS)}; "
                             f"got {self.config!r}.")
        super().__post_init__()

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = image_batch(x, "vgg16")
        height, width = x.shape[1:3]
        index = 0
        for item in VGG_CONFIGS[self.config]:
            if item == "M":
                x = nn.max_pool(x, (2, 2), strides=(2, 2))
                continue
            kernel, channels = item if isinstance(item, tuple) else (3, item)
            index += 1
            x = nn.Conv(channels, (kernel, kernel), padding=torch_padding(1),
                        kernel_init=torch_default_init, name=f"conv{index}")(x)
            x = nn.relu(batch_norm(train, f"bn{index}")(x))
        if x.shape[1] == 0 or x.shape[2] == 0:
            raise ValueError(f"vgg16 needs larger images: a {height}x{width} input shrinks to nothing "
                             f"after its five 2x2 max-pools (32x32 is the intended size).")
        x = jnp.reshape(x, (x.shape[0], -1))
        hidden = ("fc1", "fc2") if self.config in ("C", "D") else ("fc1",)
        for name in hidden:
            x = nn.relu(nn.Dense(512, kernel_init=torch_default_init, name=name)(x))
            x = batch_norm(train, f"{name}_bn")(x)
        if self.dropout > 0:
            x = nn.Dropout(self.dropout, deterministic=not train)(x)
        return nn.Dense(self.num_classes, kernel_init=torch_default_init, name="head")(x)
