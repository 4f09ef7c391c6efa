"""dst: dynamic sparse training in JAX with exact sparsity and one compiled train step."""

from dst import algorithms, schedules
from dst.distributions import layer_densities, sparsifiable_layers
from dst.masks import apply_masks, density_report, init_masks, topology_diff
from dst.selection import bottom_k_mask, top_k_mask
from dst.train import (
    TrainState,
    create_train_state,
    evaluate_fn,
    flax_apply,
    make_train_step,
    reset_grown_moments,
    reset_moments,
    train_epoch_fn,
)

__version__ = "0.1.0"

__all__ = [
    "TrainState",
    "algorithms",
    "apply_masks",
    "bottom_k_mask",
    "create_train_state",
    "density_report",
    "evaluate_fn",
    "flax_apply",
    "init_masks",
    "layer_densities",
    "make_train_step",
    "reset_grown_moments",
    "reset_moments",
    "schedules",
    "sparsifiable_layers",
    "top_k_mask",
    "topology_diff",
    "train_epoch_fn",
]
