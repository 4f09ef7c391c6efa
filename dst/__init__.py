"""dst: dynamic sparse training in JAX with exact sparsity and one compiled train step."""

from dst import algorithms
from dst import models
from dst import schedules
from dst import structures
from dst.distributions import epsilon_densities
from dst.distributions import layer_densities
from dst.distributions import sparsifiable_layers
from dst.export import load_exported
from dst.masks import apply_masks
from dst.masks import density_report
from dst.masks import init_masks
from dst.masks import topology_diff
from dst.selection import bottom_k_mask
from dst.selection import top_k_mask
from dst.train import TrainState
from dst.train import TrainStep
from dst.train import create_train_state
from dst.train import evaluate_fn
from dst.train import flax_apply
from dst.train import init_model
from dst.train import make_train_step
from dst.train import reset_grown_moments
from dst.train import reset_moments
from dst.train import train_epoch_fn

__version__ = "0.1.0"

__all__ = [
    "TrainState",
    "TrainStep",
    "algorithms",
    "apply_masks",
    "bottom_k_mask",
    "create_train_state",
    "density_report",
    "evaluate_fn",
    "flax_apply",
    "init_model",
    "init_masks",
    "epsilon_densities",
    "layer_densities",
    "load_exported",
    "make_train_step",
    "models",
    "reset_grown_moments",
    "reset_moments",
    "schedules",
    "structures",
    "sparsifiable_layers",
    "top_k_mask",
    "topology_diff",
    "train_epoch_fn",
]
