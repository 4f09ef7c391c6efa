"""Flax linen models. They never see masks: the trainer feeds them masked params."""

from dst.models.mlp import MLP
from dst.models.mlp import lenet300
from dst.models.mlp import set_mlp

__all__ = ["MLP", "lenet300", "set_mlp"]
