"""Training: the train state, the one jitted step, on-device epochs, evaluation.

``python -m dst.train`` runs the ``dst-train`` command (see :mod:`dst.train.__main__`).
"""

from dst.train.step import TrainState
from dst.train.step import create_train_state
from dst.train.step import cross_entropy
from dst.train.step import epoch_batches
from dst.train.step import evaluate_fn
from dst.train.step import flax_apply
from dst.train.step import make_train_step
from dst.train.step import map_param_like
from dst.train.step import prune_at_init
from dst.train.step import reset_grown_moments
from dst.train.step import reset_moments
from dst.train.step import settle_topology
from dst.train.step import train_epoch_fn

__all__ = [
    "TrainState",
    "create_train_state",
    "cross_entropy",
    "epoch_batches",
    "evaluate_fn",
    "flax_apply",
    "make_train_step",
    "map_param_like",
    "prune_at_init",
    "reset_grown_moments",
    "reset_moments",
    "settle_topology",
    "train_epoch_fn",
]
