"""Flax linen models. They never see masks: the trainer feeds them masked params."""

from dst.models.lenet5 import LeNet5
from dst.models.mlp import MLP, lenet300, set_mlp

__all__ = ["LeNet5", "MLP", "lenet300", "set_mlp"]
