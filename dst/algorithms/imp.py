"""Lottery tickets: iterative magnitude pruning with rewinding (Frankle & Carbin 2019; Frankle et al. 2020)."""

from __future__ import annotations

import math
import re

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from dst import schedules
from dst.algorithms.base import SparseAlgorithm
from dst.algorithms.base import initial_state
from dst.algorithms.base import skip_calls
from dst.distributions import default_sparsifiable
from dst.masks import named_leaves
from dst.masks import replace_named
from dst.selection import global_top_k_masks
from dst.structures import UNSTRUCTURED

SCOPES = ("global", "layer")
CONTROLS = ("none", "random_prune", "random_reinit")


def pruned_counts(counts: dict[str, int], prune_fraction: float, scope: str) -> dict[str, int] | int:
    """What a level keeps: ``n - ceil(f n)`` of the ``n`` remaining weights, over all layers together
    (``global``: one number) or per layer (``layer``). The count is exact (open_lth's strict threshold
    prunes one weight more)."""
    keep = lambda n: n - math.ceil(prune_fraction * n)
    if scope == "global":
        return keep(sum(counts.values()))
    return {name: keep(n) for name, n in counts.items()}


def imp(*, levels: int, prune_fraction: float = 0.2, rewind_step: int = 0, scope: str = "global",
        control: str = "none", dense_layers=(), sparsifiable=None, structure=None) -> SparseAlgorithm:
    """Iterative magnitude pruning with rewinding, every level in one run.

    Level 0 trains the dense network for the run's ``T`` steps. Each level ``L = 1..levels`` then keeps,
    of the weights the previous level left, all but the ``ceil(prune_fraction * n)`` of smallest
    trained ``|w|`` (``scope="global"``: one threshold over all sparsifiable layers, open_lth's
    ``sparse_global``; ``"layer"``: each layer its own), rewinds the kept weights to their values after
    ``rewind_step`` steps of level 0 (0: the initialisation), and trains steps ``rewind_step..T`` with a
    fresh optimizer whose schedule starts at ``rewind_step``. Density after ``L`` levels is about
    ``(1 - prune_fraction)^L``.

    Controls (open_lth's branches), at every level: ``random_prune`` replaces the mask by a uniformly
    random one with the same per-layer counts; ``random_reinit`` starts from a fresh random
    initialisation instead of the rewound weights. Under a structure (``scope="layer"`` only) each
    layer keeps its largest weights with that structure (N:M: the N largest of every group, so every
    level after the first re-selects at density N/M; fan-in: a whole fan-in per unit; blocks: whole blocks).

    The train loop drives the levels through two fields: ``levels`` and ``next_level(state, key,
    params, masks, fresh_init) -> (params, masks, state)`` (``fresh_init()`` returns a new random
    initialisation, called under ``random_reinit`` only). ``update`` only records the rewind weights at
    ``rewind_step``.

    References:
        Frankle & Carbin 2019, "The Lottery Ticket Hypothesis: Finding Sparse, Trainable Neural
        Networks", ICLR; Frankle et al. 2020, "Linear Mode Connectivity and the Lottery Ticket
        Hypothesis", ICML (rewinding; facebookresearch/open_lth).

    Example::

        algo = dst.algorithms.make("imp", levels=10, prune_fraction=0.2, rewind_step=0)
    """
    if not isinstance(levels, int) or isinstance(levels, bool) or levels < 1:
        raise ValueError(f"levels must be an integer of at least 1 (levels after the dense level 0); got {levels!r}.")
    if not isinstance(prune_fraction, int | float) or not 0.0 < prune_fraction < 1.0:
        raise ValueError(f"prune_fraction must be in (0, 1); got {prune_fraction!r}.")
    if not isinstance(rewind_step, int) or isinstance(rewind_step, bool) or rewind_step < 0:
        raise ValueError(f"rewind_step must be a non-negative integer; got {rewind_step!r}.")
    if scope not in SCOPES:
        raise ValueError(f"scope must be one of {', '.join(SCOPES)}; got {scope!r}.")
    if control not in CONTROLS:
        raise ValueError(f"control must be one of {', '.join(CONTROLS)}; got {control!r}.")
    structure = structure or UNSTRUCTURED
    if structure.name != "unstructured" and scope == "global":
        raise ValueError(f"scope=global cannot keep structure={structure.name} (one threshold over all layers picks "
                         "single weights); use scope=layer.")
    keep_leaf = sparsifiable or default_sparsifiable
    patterns = [re.compile(p) for p in dense_layers]

    def prunable(params):
        return [n for n, x in named_leaves(params).items()
                if keep_leaf(n, tuple(x.shape)) and not any(p.search(n) for p in patterns)
                and structure.undivided(tuple(x.shape)) is None]

    def init(params, masks, key=None):
        del key
        return initial_state(masks, {"rewind": params, "level": jnp.zeros((), jnp.int32)})

    def update(state, key, params, masks, grads):
        del key, grads
        extra = state.extra
        if rewind_step > 0:   # the weights after `rewind_step` optimizer steps of level 0
            capture = (extra["level"] == 0) & (state.step == rewind_step - 1)
            extra = {**extra, "rewind": lax.cond(capture, lambda: params, lambda: extra["rewind"])}
        return params, masks, state._replace(step=state.step + 1, updated=jnp.zeros((), bool), extra=extra)

    def quiet(state):
        if rewind_step == 0:
            return jnp.asarray(schedules.NEVER, jnp.int32)
        before = (state.extra["level"] == 0) & (state.step < rewind_step)
        return jnp.where(before, rewind_step - 1 - state.step, schedules.NEVER).astype(jnp.int32)

    @jax.jit
    def keep_largest(w, m, n_keep, key):
        # One program for every level (the counts are traced): {name: mask} of the weights that stay.
        if scope == "global":
            return global_top_k_masks({n: jnp.abs(x) for n, x in w.items()}, m, n_keep, key)
        return {n: structure.keep(jnp.abs(w[n]), m[n], n_keep[n], jax.random.fold_in(key, i))
                for i, n in enumerate(w)}

    def next_level(state, key, params, masks, fresh_init):
        """The masks, start weights and algorithm state of the next level (host-side, once per level)."""
        w, m = named_leaves(params), named_leaves(masks)
        names = prunable(params)
        counts = {n: int(np.count_nonzero(np.asarray(m[n]))) for n in names}
        target = pruned_counts(counts, prune_fraction, scope)
        if scope == "layer":   # each layer's count, rounded to what the structure allows
            target = {n: jnp.int32(round(structure.round_density(tuple(w[n].shape), target[n] / w[n].size)
                                         * w[n].size)) for n in names}
        kept = keep_largest({n: w[n] for n in names}, {n: m[n] for n in names},
                            jnp.int32(target) if scope == "global" else target, key)
        if control == "random_prune":
            kept = {n: structure.init_mask(jax.random.fold_in(key, 1000 + i), tuple(kept[n].shape),
                                           int(np.count_nonzero(np.asarray(kept[n]))))
                    for i, n in enumerate(names)}
        new_masks = replace_named(masks, kept)
        start = fresh_init() if control == "random_reinit" else state.extra["rewind"]
        new_params = jax.tree_util.tree_map(lambda p, k: jnp.where(k, p, jnp.zeros_like(p)), start, new_masks)
        extra = {**state.extra, "level": state.extra["level"] + 1}
        new_state = initial_state(new_masks, extra)._replace(step=jnp.asarray(rewind_step, jnp.int32))
        return new_params, new_masks, new_state

    return SparseAlgorithm(init=init, update=update, quiet=quiet, skip=skip_calls, levels=levels, counts="fall",
                           next_level=next_level, rewind_step=rewind_step)
