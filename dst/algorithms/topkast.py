"""Top-KAST (Jayakumar et al. 2020): forward set by top-k |w|, a larger backward set, dense storage."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from dst import schedules
from dst.algorithms.accounting import backward_set_gradient
from dst.algorithms.base import SparseAlgorithm
from dst.algorithms.base import check_schedule
from dst.algorithms.base import initial_state
from dst.algorithms.base import no_growth
from dst.algorithms.base import skip_calls
from dst.algorithms.targets import check_sparsity
from dst.algorithms.targets import final_counts
from dst.masks import active_count
from dst.masks import named_leaves
from dst.masks import replace_named
from dst.selection import top_k_mask
from dst.structures import UNSTRUCTURED
from dst.structures import Structure
from dst.structures import structured_densities


class NestedRules(NamedTuple):
    """What Top-KAST's update does, for storages that hold its backward set as slots
    (:mod:`dst.train.stored_backward`): at an update, for layer ``i`` of ``forward_counts(params)`` (in that
    order; ``params``: dense shapes are enough), with ``k = fold_in(key, i)``, ``B`` is the
    ``backward_counts(params)[name]`` largest ``|theta|`` of the layer and ``A`` the ``forward_counts`` largest
    of ``B`` under the same order (ties by ``k``'s priorities of each weight's dense position, :func:`nested_sets`).
    ``structure``: ``A``'s (a structured ``A`` is kept by the structure and ``B`` is ``A`` and the largest
    of the rest; :func:`layer_sets` says both)."""

    forward_counts: Callable
    backward_counts: Callable
    structure: Structure


def nested_sets(scores, eligible, backward_count, forward_count, key, within=None):
    """``(B, A)``: ``B`` the ``backward_count`` eligible elements of largest ``scores`` and ``A`` the
    ``forward_count`` largest of ``B``, ties broken by ``key``'s priorities (so ``A`` is the top of ``B`` under
    one order). ``within(B) -> A`` ranks ``A`` elsewhere (a stored layer: among ``B``'s slots) with the same
    scores and priorities; by default among ``B`` in place."""
    b = top_k_mask(scores, eligible, backward_count, key)
    a = top_k_mask(scores, b, forward_count, key) if within is None else within(b)
    return b, a


def layer_sets(structure: Structure, scores, backward_count, forward_count, key, within=None):
    """``(B, A)`` of one layer at an update: unstructured, :func:`nested_sets` (``within(B)`` ranks ``A``
    elsewhere); under a ``structure``, ``A`` the ``forward_count`` kept by it and ``B`` is ``A`` and the
    largest of the rest (``B`` needs no structure), with ``within(B, A)`` where given: ``A`` read elsewhere (a
    stored layer: at ``B``'s slots). One key for both sets: equal priorities, so ``A`` is inside ``B``."""
    everything = jnp.ones(scores.shape, bool)
    if structure.name == "unstructured":
        # A is the top of B under the same order (B is the top of everything and holds at least as many):
        # ranked among B only, which the compiled selection passes over quickly.
        return nested_sets(scores, everything, backward_count, forward_count, key, within)
    a = structure.keep(scores, everything, forward_count, key)
    b = a | top_k_mask(scores, ~a, max(backward_count - forward_count, 0), key)
    return b, (a if within is None else within(b, a))


def topkast(*, sparsity: float, backward_sparsity: float, update_every: int, end_step: int,
            start_step: int = 0, penalty: float = 1e-4, distribution: str = "erk",
            erk_power_scale: float = 1.0, dense_layers=(), sparsifiable=None,
            structure=None) -> SparseAlgorithm:
    """Top-K Always Sparse Training.

    The dense parameters ``theta`` are stored. At each update, per layer: the forward set ``A`` is
    the ``round(D_l N_l)`` largest ``|theta|`` and the backward set ``B`` the ``round(B_l N_l)``
    largest (``D_l``, ``B_l`` from ``distribution`` at ``sparsity`` and ``backward_sparsity``; ties
    share one key, so ``A`` is inside ``B``; under a ``structure`` ``A`` has it, the N largest of every
    N:M group, a whole fan-in per unit or whole blocks, and ``B`` is ``A`` and the largest of the rest).
    The forward pass uses ``theta`` masked by ``A``
    (``masks``); the optimizer updates ``theta`` on ``B`` with the gradient at the masked weights plus
    the exploration penalty ``penalty/2 * sum_{B \\ A} theta^2 / D_l`` on the weights outside the
    forward set (scaled by ``1/D_l``: the sparser the layer, the more a weight pays to stay in the
    backward set without being used). Weights outside ``B`` keep their values and may re-enter when
    others shrink; weights in ``A`` get no penalty (use the optimizer's weight decay).

    Weights in ``B \\ A`` do not change the loss, so only the penalty (and weight decay) holds them
    back: when ``B`` is many times larger than ``A`` (98% forward, 80% backward: 10x) and the lr is high,
    they drift, take over ``A`` at the next update and training can collapse. Raise ``penalty`` (1e-3 fixed it on
    LeNet-300-100 at 98%) or ``backward_sparsity`` (experiments/fmnist_lenet300/RESULTS.md).

    The protocol's ``trainable`` and ``penalty`` hooks exist for this algorithm: its optimizer set is
    larger than its forward mask and its stored weights are not zero outside the mask. On
    ``sparsity.backend=csr`` a layer's slots hold ``B`` and its slot flags ``A``
    (:mod:`dst.train.stored_backward`).

    References:
        Jayakumar et al. 2020, "Top-KAST: Top-K Always Sparse Training", NeurIPS.

    Example::

        algo = dst.algorithms.make("topkast", sparsity=0.9, backward_sparsity=0.8, update_every=100,
                                   end_step=5000)
    """
    check_sparsity("sparsity", sparsity)
    check_sparsity("backward_sparsity", backward_sparsity)
    if backward_sparsity > sparsity:
        raise ValueError(f"backward_sparsity must be at most sparsity={sparsity} (the backward set contains "
                         f"the forward set); got {backward_sparsity}.")
    check_schedule(update_every, start_step, end_step, 0.0, "constant")
    if penalty < 0:
        raise ValueError(f"penalty must be non-negative; got {penalty!r}.")
    structure = structure or UNSTRUCTURED
    counts = lambda params, s: final_counts(params, s, distribution, erk_power_scale=erk_power_scale,
                                            dense_layers=dense_layers, sparsifiable=sparsifiable)

    def forward_counts(params):
        if structure.name == "unstructured":
            return counts(params, sparsity)
        leaves = named_leaves(params)
        densities = structured_densities(params, sparsity, distribution, structure, erk_power_scale=erk_power_scale,
                                         dense_layers=dense_layers, sparsifiable=sparsifiable)
        return {n: active_count(d, leaves[n].size) for n, d in densities.items()}

    def top_sets(key, params):
        w = named_leaves(params)
        fwd, bwd = forward_counts(params), counts(params, backward_sparsity)
        a, b = {}, {}
        for i, n in enumerate(fwd):
            b[n], a[n] = layer_sets(structure, jnp.abs(w[n]), bwd.get(n, 0), fwd[n], jax.random.fold_in(key, i))
        return a, b

    def init(params, masks, key=None):
        # Ties among equal |theta| are broken from the run's key (the trainer passes one).
        key = jax.random.key(0) if key is None else key
        m, w = named_leaves(masks), named_leaves(params)
        bwd = counts(params, backward_sparsity)
        # B starts as the forward mask plus the largest |theta| outside it, so that A is inside B.
        backward = {n: m[n] | top_k_mask(jnp.abs(w[n]), ~m[n], bwd[n] - jnp.sum(m[n], dtype=jnp.int32),
                                         jax.random.fold_in(key, i))
                    for i, n in enumerate(bwd)}
        return initial_state(masks, {"backward": replace_named(masks, backward)})

    def update(state, key, params, masks, grads):
        del grads
        due = schedules.is_update_step(state.step, update_every, start_step, end_step)

        def topology(ops):
            params, masks, backward = ops
            a, b = top_sets(key, params)
            old = named_leaves(masks)
            grown = replace_named(no_growth(masks),
                                  {n: a[n] & ~old[n] for n in a})
            return replace_named(masks, a), replace_named(backward, b), grown

        masks, backward, grown = lax.cond(due, topology, lambda ops: (ops[1], ops[2], state.grown),
                                          (params, masks, state.extra["backward"]))
        return params, masks, state._replace(step=state.step + 1, grown=grown, updated=due,
                                             extra={"backward": backward})

    def trainable(state, masks):
        del masks
        return state.extra["backward"]

    def exploration_penalty(state, params, masks, shapes=None):
        # `shapes`: the dense shape of each leaf held as slots (a stored layer), whose leaf size is not its own.
        total = 0.0
        shapes = shapes or {}
        back, fwd = named_leaves(state.extra["backward"]), named_leaves(masks)
        for n, w in named_leaves(params).items():
            shape = shapes.get(n, w.shape)
            if n not in back or len(shape) < 2 or n not in fwd:
                continue
            density = jnp.maximum(jnp.sum(fwd[n]) / math.prod(shape), 1e-6)
            scale = jnp.where(back[n] & ~fwd[n], 1.0 / density, 0.0)
            total = total + jnp.sum(scale * w * w)
        return 0.5 * penalty * total

    def quiet(state):
        return schedules.steps_until_update(state.step, update_every, start_step, end_step)

    # counts="keep": A and B keep their sizes at every update.
    nested = NestedRules(forward_counts, lambda params: counts(params, backward_sparsity), structure)
    return SparseAlgorithm(init=init, update=update, trainable=trainable, penalty=exploration_penalty,
                           quiet=quiet, skip=skip_calls, counts="keep", train_flops=backward_set_gradient,
                           nested_rules=nested)
