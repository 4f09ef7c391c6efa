"""Training: the train state, the one jitted step, on-device epochs, evaluation.

``python -m dst.train`` runs the ``dst-train`` command (see :mod:`dst.train.__main__`).
"""

from dst.train.apply import flax_apply
from dst.train.apply import init_model
from dst.train.epoch import epoch_batches
from dst.train.epoch import train_epoch_fn
from dst.train.evaluate import evaluate_fn
from dst.train.prune_init import prune_at_init
from dst.train.state import TrainState
from dst.train.state import create_train_state
from dst.train.state import map_param_like
from dst.train.state import reset_grown_moments
from dst.train.state import reset_moments
from dst.train.state import settle_topology
from dst.train.step import TrainStep
from dst.train.step import cross_entropy
from dst.train.step import make_train_step

__all__ = [
    "TrainState",
    "TrainStep",
    "create_train_state",
    "cross_entropy",
    "epoch_batches",
    "evaluate_fn",
    "flax_apply",
    "init_model",
    "make_train_step",
    "map_param_like",
    "prune_at_init",
    "reset_grown_moments",
    "reset_moments",
    "settle_topology",
    "train_epoch_fn",
]
