"""Flax linen models. They never see masks: the trainer feeds them masked params."""

from dst.models.lenet5 import LeNet5
from dst.models.mlp import MLP
from dst.models.mlp import lenet300
from dst.models.mlp import set_mlp

MODELS = ("lenet300", "set_mlp", "mlp", "lenet5")


def build_model(name: str, num_classes: int = 10, dropout: float = 0.0, hidden=(300, 100)):
    """A model by its config name: ``lenet300``, ``set_mlp``, ``mlp`` (any ``hidden``) or ``lenet5``."""
    if name == "lenet300":
        return lenet300(num_classes, dropout)
    if name == "set_mlp":
        return set_mlp(num_classes, dropout)
    if name == "mlp":
        return MLP(hidden=tuple(hidden), num_classes=num_classes, dropout=dropout)
    if name == "lenet5":
        return LeNet5(num_classes=num_classes, dropout=dropout)
    raise ValueError(f"model.name must be one of {', '.join(MODELS)}; got {name!r}.")


__all__ = ["MLP", "MODELS", "LeNet5", "build_model", "lenet300", "set_mlp"]
