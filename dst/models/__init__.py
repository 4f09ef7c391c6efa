"""Flax linen models. They never see masks: the trainer feeds them masked params.

Every model is called as ``model.apply(variables, x, train=...)`` and returns ``(N, num_classes)``
logits; the models with BatchNorm (VGG-16, the WRNs, the ResNets) keep its running averages in the
``batch_stats`` collection. ``build_model`` builds any of ``MODELS`` by its config name.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Sequence

from dst.models.lenet5 import LeNet5
from dst.models.mlp import MLP
from dst.models.mlp import lenet300
from dst.models.mlp import set_mlp
from dst.models.resnet import ResNet18
from dst.models.resnet import ResNet50
from dst.models.vgg import VGG16
from dst.models.vit import VisionTransformer
from dst.models.wide_resnet import WideResNet
from dst.models.wide_resnet import wrn16_8
from dst.models.wide_resnet import wrn22_2
from dst.models.wide_resnet import wrn28_2

# Config name -> a module class or a function returning a module; its fields (or arguments) are the
# model's options.
_BUILDERS = {
    "lenet300": lenet300,
    "set_mlp": set_mlp,
    "mlp": MLP,
    "lenet5": LeNet5,
    "vgg16": VGG16,
    "wrn22_2": wrn22_2,
    "wrn28_2": wrn28_2,
    "wrn16_8": wrn16_8,
    "resnet18": ResNet18,
    "resnet50": ResNet50,
    "vit_tiny": VisionTransformer,
}

MODELS = tuple(_BUILDERS)


def model_options(name: str) -> tuple[str, ...]:
    """The options model ``name`` takes (its module's fields), sorted: e.g. ``("dropout", "num_classes")``."""
    if name not in _BUILDERS:
        raise ValueError(f"model.name must be one of {', '.join(MODELS)}; got {name!r}.")
    builder = _BUILDERS[name]
    if inspect.isclass(builder):
        names = [f.name for f in dataclasses.fields(builder) if f.init and f.name not in ("parent", "name")]
    else:
        names = list(inspect.signature(builder).parameters)
    return tuple(sorted(names))


def build_model(name: str, num_classes: int = 10, **options):
    """The model called ``name`` in ``MODELS``, built with ``num_classes`` and its own ``options``
    (e.g. ``dropout``; ``hidden`` for ``mlp``; ``config`` for ``vgg16``; ``depth``, ``dim``, ``heads``,
    ``mlp_dim``, ``patch_size`` for ``vit_tiny``). An unknown name or option is a ``ValueError``.

    Example::

        model = build_model("vgg16", num_classes=100, config="C")
    """
    allowed = model_options(name)
    for option in options:
        if option not in allowed:
            raise ValueError(f"model.{option} is not an option of model {name}; "
                             f"its options are {', '.join(allowed)}.")
    options = {key: tuple(value) if isinstance(value, Sequence) and not isinstance(value, str) else value
               for key, value in options.items()}
    return _BUILDERS[name](num_classes=num_classes, **options)


__all__ = [
    "MLP",
    "MODELS",
    "LeNet5",
    "ResNet18",
    "ResNet50",
    "VGG16",
    "VisionTransformer",
    "WideResNet",
    "build_model",
    "lenet300",
    "model_options",
    "set_mlp",
    "wrn16_8",
    "wrn22_2",
    "wrn28_2",
]
