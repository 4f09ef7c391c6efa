"""ResNets (He et al. 2016): the CIFAR ResNet-18 and the ImageNet ResNet-50 (torchvision v1.5)."""

from __future__ import annotations

import flax.linen as nn

from dst.models.layers import batch_norm
from dst.models.layers import global_average_pool
from dst.models.layers import he_fan_out_init
from dst.models.layers import image_batch
from dst.models.layers import torch_default_init
from dst.models.layers import torch_padding


def _conv(features: int, kernel: int, strides: int, init, name: str) -> nn.Conv:
    return nn.Conv(features, (kernel, kernel), (strides, strides), padding=torch_padding(kernel // 2),
                   use_bias=False, kernel_init=init, name=name)


class BasicBlock(nn.Module):
    """conv3x3(stride)-BN-ReLU-conv3x3-BN, plus the input or a 1x1 conv-BN projection of it, then ReLU.

    Param names: ``conv1``, ``bn1``, ``conv2``, ``bn2``, ``shortcut_conv``, ``shortcut_bn``.
    """

    features: int
    strides: int = 1
    kernel_init: nn.initializers.Initializer = torch_default_init

    @nn.compact
    def __call__(self, x, train: bool = False):
        out = _conv(self.features, 3, self.strides, self.kernel_init, "conv1")(x)
        out = nn.relu(batch_norm(train, "bn1")(out))
        out = _conv(self.features, 3, 1, self.kernel_init, "conv2")(out)
        out = batch_norm(train, "bn2")(out)
        if x.shape[-1] != self.features or self.strides != 1:
            x = _conv(self.features, 1, self.strides, self.kernel_init, "shortcut_conv")(x)
            x = batch_norm(train, "shortcut_bn")(x)
        return nn.relu(x + out)


class Bottleneck(nn.Module):
    """conv1x1-BN-ReLU-conv3x3(stride)-BN-ReLU-conv1x1(4x)-BN, plus the input or a 1x1 conv-BN
    projection of it, then ReLU. The stride sits on the 3x3 conv (torchvision's "ResNet v1.5").

    Param names: ``conv1``, ``bn1``, ``conv2``, ``bn2``, ``conv3``, ``bn3``, ``shortcut_conv``,
    ``shortcut_bn`` (torchvision's ``downsample.0`` and ``downsample.1``).
    """

    features: int
    strides: int = 1
    expansion: int = 4
    kernel_init: nn.initializers.Initializer = he_fan_out_init

    @nn.compact
    def __call__(self, x, train: bool = False):
        out = _conv(self.features, 1, 1, self.kernel_init, "conv1")(x)
        out = nn.relu(batch_norm(train, "bn1")(out))
        out = _conv(self.features, 3, self.strides, self.kernel_init, "conv2")(out)
        out = nn.relu(batch_norm(train, "bn2")(out))
        out = _conv(self.features * self.expansion, 1, 1, self.kernel_init, "conv3")(out)
        out = batch_norm(train, "bn3")(out)
        if x.shape[-1] != self.features * self.expansion or self.strides != 1:
            x = _conv(self.features * self.expansion, 1, self.strides, self.kernel_init,
                      "shortcut_conv")(x)
            x = batch_norm(train, "shortcut_bn")(x)
        return nn.relu(x + out)


class ResNet18(nn.Module):
    """ResNet-18 for 32x32 images in the layout of github.com/kuangliu/pytorch-cifar
    (``models/resnet.py``), the CIFAR ResNet-18 of most sparse-training papers (e.g. GraNet, MEST,
    ITOP): a 3x3 stride-1 stem conv to 64 channels with BN-ReLU and no max-pool, four groups of two
    :class:`BasicBlock` of widths 64, 128, 256, 512 (stride 2 from the second group, 1x1 conv-BN
    shortcuts where shapes change), global average pooling and a dense classifier. Convs have no bias;
    kernels start as PyTorch's defaults (the reference sets no init).

    Parameters: 11,173,962 for 10 classes (the count of the reference model), 11,220,132 for 100.

    Param names: ``stem_conv`` (``stem_conv/kernel``), ``stem_bn``, blocks ``layer{g}_{i}`` for
    g in 1..4 and i in 0..1 (``layer2_0/conv1``, ``layer2_0/bn1``, ``layer2_0/conv2``,
    ``layer2_0/bn2``, ``layer2_0/shortcut_conv``, ``layer2_0/shortcut_bn``) and the classifier
    ``head`` (``head/kernel``). ``dropout`` (0: the reference) is applied before ``head``.

    Example::

        model = ResNet18(num_classes=10)
        variables = model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
        logits = model.apply(variables, images)  # (N, 10)
    """

    num_classes: int = 10
    dropout: float = 0.0

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = image_batch(x, "resnet18")
        x = _conv(64, 3, 1, torch_default_init, "stem_conv")(x)
        x = nn.relu(batch_norm(train, "stem_bn")(x))
        for group, width in enumerate((64, 128, 256, 512), start=1):
            for i in range(2):
                strides = 2 if (group > 1 and i == 0) else 1
                x = BasicBlock(width, strides, torch_default_init, name=f"layer{group}_{i}")(x, train)
        x = global_average_pool(x)
        if self.dropout > 0:
            x = nn.Dropout(self.dropout, deterministic=not train)(x)
        return nn.Dense(self.num_classes, kernel_init=torch_default_init, name="head")(x)


class ResNet50(nn.Module):
    """ResNet-50 for ImageNet in torchvision's layout (``torchvision/models/resnet.py``, "v1.5": the
    stride of a downsampling Bottleneck is on its 3x3 conv), the network of the RigL, SNFS and Top-KAST
    ImageNet experiments: a 7x7 stride-2 stem conv to 64 channels with BN-ReLU, a 3x3 stride-2
    max-pool, four groups of 3, 4, 6, 3 :class:`Bottleneck` blocks of widths 64, 128, 256, 512
    (outputs 4x wider; stride 2 from the second group; 1x1 conv-BN shortcuts where shapes change),
    global average pooling and a dense classifier. Convs have no bias; conv kernels start as
    torchvision's He normal (fan_out), the classifier as PyTorch's default.

    Parameters: 25,557,032 with ``num_classes=1000`` (torchvision's ``resnet50``; any input size).

    Param names: ``stem_conv`` (``stem_conv/kernel``), ``stem_bn``, blocks ``layer{g}_{i}``
    (``layer1_0/conv1`` ... ``layer1_0/conv3``, ``layer1_0/bn1`` ... ``layer1_0/bn3``,
    ``layer1_0/shortcut_conv``, ``layer1_0/shortcut_bn``) and the classifier ``head``
    (``head/kernel``). ``dropout`` (0: the reference) is applied before ``head``.

    Example::

        model = ResNet50(num_classes=1000)
        variables = model.init(jax.random.key(0), jnp.zeros((1, 224, 224, 3)))
        logits, updates = model.apply(variables, images, train=True, mutable=["batch_stats"])
    """

    num_classes: int = 10
    dropout: float = 0.0

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = image_batch(x, "resnet50")
        x = _conv(64, 7, 2, he_fan_out_init, "stem_conv")(x)
        x = nn.relu(batch_norm(train, "stem_bn")(x))
        x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=torch_padding(1))
        for group, (width, blocks) in enumerate(((64, 3), (128, 4), (256, 6), (512, 3)), start=1):
            for i in range(blocks):
                strides = 2 if (group > 1 and i == 0) else 1
                x = Bottleneck(width, strides, name=f"layer{group}_{i}")(x, train)
        x = global_average_pool(x)
        if self.dropout > 0:
            x = nn.Dropout(self.dropout, deterministic=not train)(x)
        return nn.Dense(self.num_classes, kernel_init=torch_default_init, name="head")(x)
