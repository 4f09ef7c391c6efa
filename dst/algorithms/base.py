"""The algorithm protocol and the shared prune-and-regrow core.

Every algorithm is a :class:`SparseAlgorithm`: a pair of pure functions ::

    state = algo.init(params, masks)            # or algo.init(params, masks, key)
    params, masks, state = algo.update(state, key, params, masks, grads)

``grads`` is the dense gradient of the loss with respect to the effective weights. ``update`` runs once
per optimizer step inside the jitted train step, increments ``state.step`` and changes the topology only
at scheduled steps, under ``lax.cond``, so a whole run compiles once.

Every state carries ``grown`` (bool pytree of the weights (re)initialised by the latest topology update)
and ``updated`` (whether this call changed the topology): the trainer zeroes the optimizer moments of
``grown`` weights when ``updated`` is set.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from dst import schedules
from dst.algorithms.accounting import windowed
from dst.algorithms.layer_view import LayerView
from dst.algorithms.layer_view import prune_regrow
from dst.distributions import SparsifiableFilter
from dst.distributions import default_sparsifiable
from dst.masks import path_name
from dst.selection import bottom_k_mask
from dst.structures import UNSTRUCTURED
from dst.structures import Structure

GROW_INITS = ("zeros", "normal")


class SparseAlgorithm(NamedTuple):
    """A sparse-training algorithm: pure ``init`` and ``update`` (optax style), plus optional hooks.

    The hooks extend the protocol for algorithms that ``init``/``update`` alone cannot express; the
    trainer uses each one the same way for every algorithm that sets it:

    * ``dynamic=False``: ``update`` never changes the topology (static, dense), so the trainer leaves
      out the per-step bookkeeping of updates.
    * ``prune_at_init(key, params, masks, loss_fn, batches) -> masks`` with ``init_batches`` batches:
      one-shot pruning from data before training (SNIP, GraSP). ``loss_fn(params, batch)`` is the
      training loss; the trainer calls the hook once, before ``init``.
    * ``trainable(state, masks) -> bool pytree``: the weights the optimizer updates when that set is
      larger than the forward mask (Top-KAST's backward set). Setting it means *dense storage*:
      params outside the forward mask keep their values, the forward pass applies the mask, and the
      loss gradient is taken with respect to the masked (effective) weights.
    * ``penalty(state, params, masks, shapes=None) -> scalar``: a regulariser added to the loss the
      optimizer sees (Top-KAST's exploration penalty); growth scores still read the plain loss gradient.
      ``shapes`` gives the dense shape of each leaf that ``params`` hold as stored slots (a sparse backend).
    * ``drop_fraction_at(step) -> float`` and ``train_flops(step, f_sparse, f_dense, f_backward) ->
      float`` (host functions, :mod:`dst.algorithms.accounting`): what the run logs about the
      algorithm, its drop fraction (or pruning rate) at a step and the training FLOPs of one example
      at a step. Unset: no drop fraction (logged as 0) and ``3 f_S`` (sparse training).
    * ``quiet(state) -> int32`` with ``skip(state, n) -> state``: for schedule-driven algorithms,
      how many of the next ``update`` calls cannot change params or masks, and the state after ``n``
      such calls. The trainer then runs those steps without calling ``update`` (no ``lax.cond`` in
      the hot loop: on CPU a cond carrying the params costs 2-7% of every step even when it does
      not fire) and calls ``update`` only where it may act. Results are identical either way.
    * ``report(state, masks, counts=None) -> {key: number}`` (host): what else the run logs about the
      algorithm at each record (SRigL's ablated units and fan-ins per layer); ``counts`` (given only where
      there are born-sparse layers: ``{layer: dst.train.stored.UnitCounts}``) stands for those layers' masks.
    * ``levels > 0`` with ``next_level(state, key, params, masks, start_params) -> (params, masks,
      state)`` and ``rewind_step``: the run trains ``levels + 1`` levels, each from step ``rewind_step``
      to the end (level 0 from 0) with a fresh optimizer, and calls ``next_level`` between them (IMP).
    * ``prune``: a :class:`PruneRule` saying what ``update`` does where it only prunes (GMP), so that
      stored layers are pruned in place; ``rules`` says the same of :func:`prune_and_regrow`'s updates.
    * ``counts``: what the updates do to each layer's number of active weights: ``"keep"`` it (SET,
      RigL, SRigL, static), let it only ``"fall"`` (GMP, GraNet, MEST's decay, IMP's levels) or
      ``"move"`` it between layers (SNFS; the default, which promises nothing). A stored layer (``csr``;
      :mod:`dst.backends`) holds a fixed capacity of slots: kept counts fill it, fallen ones leave padding.
    * ``momentum_rules``: what SNFS's update does (:class:`dst.algorithms.snfs.MomentumRules`), so that
      stored layers update from storage.
    * ``nested_rules``: what Top-KAST's update does (:class:`dst.algorithms.topkast.NestedRules`), so that
      stored layers rank their forward set among their slots.
    """

    init: Callable[..., Any]
    update: Callable[..., tuple[Any, Any, Any]]
    dynamic: bool = True
    prune_at_init: Callable[..., Any] | None = None
    init_batches: int = 0
    trainable: Callable[..., Any] | None = None
    penalty: Callable[..., Any] | None = None
    quiet: Callable[..., Any] | None = None
    skip: Callable[..., Any] | None = None
    drop_fraction_at: Callable[[int], float] | None = None
    train_flops: Callable[..., float] | None = None
    report: Callable[..., dict] | None = None
    levels: int = 0
    next_level: Callable[..., Any] | None = None
    rewind_step: int = 0
    counts: str = "move"
    rules: PruneRegrowRules | None = None
    prune: PruneRule | None = None
    momentum_rules: Any = None
    nested_rules: Any = None


class PruneRule(NamedTuple):
    """What an update that only prunes does (GMP), for callers that hold a layer in another form than a
    dense array (:mod:`dst.train.stored_prune` prunes stored layers in place, without their dense form):
    at each step where the algorithm updates, it keeps the largest ``|w|`` of the active weights of
    ``layers(state, shapes)`` (``shapes``: each leaf's dense shape, in the params' order),
    ``counts(state, sizes)`` of them (``sizes``: each layer's dense number of weights):
    per layer (``{name: int32}``, layer ``i`` of ``layers`` breaking ties with ``fold_in(key, i)``) or, as
    one number, over the layers together (one threshold; ties broken with ``key`` by the position in the
    layers laid end to end). Pruned weights become exact zeros; nothing grows; ``structure`` is the
    algorithm's (only an unstructured rule prunes stored layers in place)."""

    layers: Callable[[Any], list]
    counts: Callable[..., Any]
    structure: Structure


class PruneRegrowRules(NamedTuple):
    """What :func:`prune_and_regrow` does at an update, layer by layer, for callers that hold a layer in
    another form than a dense array (the stored backends update stored layers without their dense
    form, :mod:`dst.train.stored_update`).

    * ``drop_rule``, ``grow_score``, ``grow_init``, ``grow_std``, ``structure``: the algorithm's rules;
    * ``updates(name, shape) -> bool``: whether the leaf takes part (sparsifiable, divided by the
      structure);
    * ``fraction(step)``: the drop fraction ``f(t)`` at an update step;
    * ``update_layer(key, w, g, mask, f, excess=0)``: one dense layer's update, ``(w, mask, grown)``;
    * ``keys_by``: which index layer ``name``'s key folds in: ``"leaf"`` (its place among all the
      params' leaves; :func:`prune_and_regrow`) or ``"layer"`` (among the leaves ``updates`` takes; GraNet);
    * ``ablation``, or None: SRigL's neuron ablation (:class:`dst.algorithms.srigl.Ablation`); the
      stored layers then update by :mod:`dst.train.stored_srigl`;
    * ``excess(step, extra, name, n)``, or None: how many weights layer ``name`` (``n`` active) drops at
      ``step`` on top of ``int(f n)`` without regrowing them (MEST's decay; ``extra`` is the state's);
      ``decays`` says whether it is set.
    """

    drop_rule: Callable[..., jax.Array]
    grow_score: Callable[..., jax.Array]
    grow_init: str
    grow_std: float | None
    structure: Structure
    updates: Callable[[str, tuple], bool]
    fraction: Callable[..., jax.Array]
    update_layer: Callable[..., tuple]
    excess: Callable[..., jax.Array] | None = None
    keys_by: str = "leaf"
    ablation: Any = None

    @property
    def decays(self) -> bool:
        """Whether updates also drop weights they do not regrow (MEST's decay)."""
        return self.excess is not None


class PruneRegrowState(NamedTuple):
    step: jax.Array      # int32 number of update calls so far
    grown: Any           # bool pytree: weights (re)initialised at the latest topology update
    updated: jax.Array   # bool: this call changed the topology
    extra: Any = ()      # algorithm-specific state (per-layer targets, momentum, ...)


def no_growth(masks):
    """An all-False ``grown`` pytree shaped like ``masks``."""
    return jax.tree_util.tree_map(lambda m: jnp.zeros(m.shape, bool), masks)


def initial_state(masks, extra=()) -> PruneRegrowState:
    """The state every algorithm starts from: step 0, nothing grown, not updated, its ``extra``."""
    return PruneRegrowState(step=jnp.zeros((), jnp.int32), grown=no_growth(masks),
                            updated=jnp.zeros((), bool), extra=extra)


# Per-layer rules. `w`, `g`, `mask` are one layer's arrays; `f` is the (traced) drop fraction and
# `excess` a count to drop on top of int(f * n) without regrowing it (sparsity decay). A drop rule that
# takes `select` (a bottom-k: (scores, eligible, k, key) -> mask) selects through the structure, so it
# can keep blocks whole; one that does not selects single weights itself.
DropRule = Callable[..., jax.Array]          # (key, w, g, mask, f, excess[, select]) -> bool mask of dropped
GrowScore = Callable[..., jax.Array]         # (key, w, g) -> scores, largest grown first


def drop_count(f, n):
    """``k = int(f * n)`` for a float32 fraction and an integer count, as int32.

    ``f`` is a float32 rounding of the schedule's value (0.7 is stored as 0.69999999), so a product that
    is a whole number in exact arithmetic can land a hair below it: within two float32 ulps of the next
    integer counts as that integer. Products that are not whole numbers keep their floor, also on large
    layers (0.3 x 2,359,296 = 707,788.8 -> 707,788; a relative slack would round it up).
    """
    p = f * n.astype(jnp.float32)
    k = jnp.floor(p)
    ulp = jnp.nextafter(p, jnp.float32(jnp.inf)) - p
    return jnp.where(k + 1 - p <= 2 * ulp, k + 1, k).astype(jnp.int32)


def magnitude_drop(key, w, g, mask, f, excess=0, select=bottom_k_mask):
    """Drop the ``int(f * n) + excess`` active weights of smallest ``|w|`` (through ``select``: whole
    blocks of smallest L1 norm under a block structure)."""
    del g
    n = jnp.sum(mask, dtype=jnp.int32)
    return select(jnp.abs(w), mask, drop_count(f, n) + excess, key)


def check_schedule(update_every, start_step, end_step, drop_fraction_, drop_schedule):
    """Raise one clear sentence for any schedule hyper-parameter out of range."""
    if not isinstance(update_every, int) or update_every <= 0:
        raise ValueError(f"update_every must be a positive integer; got {update_every!r}.")
    if not isinstance(start_step, int) or start_step < 0:
        raise ValueError(f"start_step must be a non-negative integer; got {start_step!r}.")
    if not isinstance(end_step, int) or end_step <= start_step:
        raise ValueError(f"end_step must be an integer greater than start_step={start_step}; "
                         f"got {end_step!r}.")
    if not 0.0 <= float(drop_fraction_) <= 1.0:
        raise ValueError(f"drop_fraction must be in [0, 1]; got {drop_fraction_!r}.")
    if drop_schedule not in schedules.DROP_SCHEDULES:
        allowed = ", ".join(schedules.DROP_SCHEDULES)
        raise ValueError(f"drop_schedule must be one of {allowed}; got {drop_schedule!r}.")


def grow_scale(w, kept, grow_std=None):
    """The standard deviation of weights grown under ``grow_init=normal``: ``grow_std`` where given (a fixed scale;
    SET's reference code: N(0, 1) / 10), else the RMS of the layer's surviving weights (``w`` where ``kept``), so
    regrown weights match the scale the layer has now rather than its scale at initialisation."""
    if grow_std is not None:
        return grow_std
    n = jnp.maximum(jnp.sum(kept), 1).astype(w.dtype)
    return jnp.sqrt(jnp.sum(jnp.where(kept, w * w, 0.0)) / n)


def grow_values(key, w, kept, grow_init, grow_std=None):
    """Values for weights grown in a dense layer ``w``: zeros, or N(0, :func:`grow_scale`^2) drawn over the layer."""
    if grow_init == "zeros":
        return jnp.zeros_like(w)
    return grow_scale(w, kept, grow_std) * jax.random.normal(key, w.shape, w.dtype)


def dense_view(w, g, mask, grow_score, grow_init, grow_std=None, structure: Structure = UNSTRUCTURED) -> LayerView:
    """A dense layer and its mask as the :class:`dst.algorithms.layer_view.LayerView` of
    :func:`dst.algorithms.layer_view.prune_regrow`: the drop selects through the structure (whole blocks
    under ``block``), the grow refills it by ``grow_score`` over the whole layer, and grown weights take
    ``grow_init`` values. The view's result is ``(w, mask, grown)``."""
    def grow(key, kept, k):
        return structure.refill(grow_score(key, w, g), mask, kept, k, key)

    def place(key, kept, grown):
        new_mask = kept | grown
        return jnp.where(grown, grow_values(key, w, kept, grow_init, grow_std), jnp.where(new_mask, w, 0.0)), \
            new_mask, grown

    # The unstructured call is the one every rule took before structures: the same trace.
    options = {} if structure.name == "unstructured" else {"select": structure.drop}
    return LayerView(w, g, mask, mask.size, options, grow, place)


def prune_regrow_layer(key, w, g, mask, f, excess, drop_rule, grow_score, grow_init, grow_std=None,
                       structure: Structure = UNSTRUCTURED):
    """One dense layer's prune-and-regrow, ``(w, mask, grown)``: :func:`prune_regrow` on its
    :func:`dense_view`."""
    return prune_regrow(drop_rule, key, dense_view(w, g, mask, grow_score, grow_init, grow_std, structure), f, excess)


def check_structure(structure: Structure | None, drop_rule=None, *, decay: bool = False) -> Structure:
    """The structure to use (``None``: unstructured), or one sentence on why these rules cannot keep it."""
    structure = structure or UNSTRUCTURED
    if structure.name == "block" and drop_rule is not None and "select" not in inspect.signature(drop_rule).parameters:
        raise ValueError(f"structure=block cannot be kept by the drop rule {drop_rule.__name__}, which picks single "
                         "weights rather than whole blocks; use structure unstructured, n_m or fan_in.")
    if decay and structure.name != "unstructured":
        raise ValueError(f"structure={structure.name} cannot be kept with a sparsity decay (initial_sparsity), "
                         "which drops weights without regrowing them; use structure=unstructured.")
    return structure


def unstructured_only(structure: Structure | None, algorithm: str, reason: str) -> None:
    """Raise one sentence when an algorithm that cannot keep a structure is given one."""
    if structure is not None and structure.name != "unstructured":
        raise ValueError(f"structure={structure.name} cannot be kept by {algorithm}: {reason}; use "
                         "structure=unstructured.")


def prune_and_regrow(*, drop_rule: DropRule, grow_score: GrowScore, update_every: int, end_step: int,
                     start_step: int = 0, drop_fraction: float = 0.3, drop_schedule: str = "cosine",
                     grow_init: str = "zeros", grow_std: float | None = None,
                     sparsifiable: SparsifiableFilter | None = None, init_extra: Callable[..., Any] | None = None,
                     excess: Callable[..., Any] | None = None, structure: Structure | None = None) -> SparseAlgorithm:
    """The shared core of the dynamic algorithms: at each scheduled step, in every sparse layer, drop
    the weights chosen by ``drop_rule`` and grow as many inactive ones by the largest ``grow_score``.

    With ``n`` active weights and ``f(t)`` the drop fraction, ``k = int(f(t) n)`` are dropped and exactly
    ``k`` grown (a just-dropped weight may be regrown), so every layer keeps its count. Grown weights
    take ``grow_init`` values (``normal``: N(0, sigma^2), sigma the RMS of the layer's surviving weights,
    or ``grow_std`` when given); dropped ones become exact zeros. Updates happen at
    ``t = start_step + i * update_every < end_step``.

    Sparsity decay (MEST): ``init_extra(params, masks)`` builds ``state.extra`` and
    ``excess(step, extra, name, n)`` says how many weights a layer drops at ``step`` on top of
    ``int(f(t) n)`` without regrowing them.

    Structures (:mod:`dst.structures`): the drop rule removes weights from the whole layer (whole
    blocks under ``block``) and the grow refills each group (N:M group, output unit) to the count it
    had, with ``grow_score`` restricted to that group; a layer the structure does not divide is left
    as it is (dense).
    """
    check_schedule(update_every, start_step, end_step, drop_fraction, drop_schedule)
    if grow_init not in GROW_INITS:
        raise ValueError(f"grow_init must be one of {', '.join(GROW_INITS)}; got {grow_init!r}.")
    if grow_std is not None and (grow_init != "normal" or not grow_std > 0):
        raise ValueError(f"grow_std must be a positive number, with grow_init=normal; got {grow_std!r} with "
                         f"grow_init={grow_init}.")
    structure = check_structure(structure, drop_rule, decay=excess is not None)
    keep_leaf = sparsifiable or default_sparsifiable
    alpha = float(drop_fraction)

    def init(params, masks, key=None):
        del key
        return initial_state(masks, init_extra(params, masks) if init_extra else ())

    updates_leaf = lambda name, shape: keep_leaf(name, shape) and structure.undivided(shape) is None
    fraction = lambda t: schedules.drop_fraction(t, alpha, drop_schedule, end_step)

    def topology(step, extra, key, params, masks, grads):
        # Everything here, the per-layer keys and f(t) included, runs only at update steps: scalar ops
        # cost microseconds each on CPU, which adds up to percents of a step if done every step.
        f = fraction(step)
        flat, treedef = jax.tree_util.tree_flatten_with_path(params)
        out_w, out_m, out_g = [], [], []
        for i, ((path, w), m, g) in enumerate(zip(flat, treedef.flatten_up_to(masks),
                                                 treedef.flatten_up_to(grads))):
            name = path_name(path)
            if updates_leaf(name, tuple(w.shape)):
                n = jnp.sum(m, dtype=jnp.int32)
                more = jnp.int32(0) if excess is None else excess(step, extra, name, n)
                w, m, grown = prune_regrow_layer(jax.random.fold_in(key, i), w, g, m, f, more, drop_rule,
                                            grow_score, grow_init, grow_std, structure)
            else:
                grown = jnp.zeros(m.shape, bool)
            out_w.append(w)
            out_m.append(m)
            out_g.append(grown)
        return treedef.unflatten(out_w), treedef.unflatten(out_m), treedef.unflatten(out_g)

    def update(state, key, params, masks, grads):
        due = schedules.is_update_step(state.step, update_every, start_step, end_step)
        params, masks, grown = lax.cond(
            due,
            lambda ops: topology(state.step, state.extra, key, *ops),
            lambda ops: (ops[0], ops[1], state.grown),
            (params, masks, grads))
        return params, masks, state._replace(step=state.step + 1, grown=grown, updated=due)

    def quiet(state):
        return schedules.steps_until_update(state.step, update_every, start_step, end_step)

    def update_layer(key, w, g, mask, f, more=0):
        return prune_regrow_layer(key, w, g, mask, f, jnp.int32(more), drop_rule, grow_score, grow_init, grow_std,
                                  structure)

    rules = PruneRegrowRules(drop_rule, grow_score, grow_init, grow_std, structure, updates_leaf, fraction,
                             update_layer, excess)
    return SparseAlgorithm(init=init, update=update, quiet=quiet, skip=skip_calls,
                           counts="keep" if excess is None else "fall",
                           drop_fraction_at=windowed(fraction, start_step, end_step), rules=rules)


def skip_calls(state, n):
    """The state after ``n`` ``update`` calls that did not change the topology (``quiet`` ones)."""
    return state._replace(step=state.step + n, updated=jnp.zeros((), bool))
