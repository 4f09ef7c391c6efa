"""Training on a storage backend (``csr``, ``condensed``): the run's storage, and the algorithms on it.

A stored run keeps, for each stored layer, its values in ``state.params``, its slot flags (which slots
hold an active weight, which are padding) in ``state.live`` and where the values sit in ``state.topologies`` (see
:mod:`dst.backends`). The optimizer, its moments and the plain step see only the stored slots.

The algorithms keep their own rules: at a step where an algorithm may change the topology, its
``update`` runs on the dense view of the layers (expanded from storage), with the dense weight gradient
of each stored layer formed as ``inputs^T @ output gradient`` from the step's own forward and backward
pass, and the result is stored again. Kept weights keep their values and optimizer moments (they move
slots with their positions); grown weights take the freed slots; every shape stays as it was, so the
run compiles once, and the topology decisions are the masked run's. Between updates nothing dense
exists. SET, RigL and MEST (with its decay) update each stored layer from its stored values, one layer
at a time, with the grow score formed in blocks of output units (:mod:`dst.train.stored_update`): the
only dense temporary is one block of it. GMP prunes the stored layers in place
(:mod:`dst.train.stored_prune`), and GraNet does both in turn. SNFS keeps its momentum at every step and
updates from storage (:mod:`dst.train.stored_momentum`), with spare slots per layer since it moves weights
between layers (:func:`default_capacity`; :func:`capacity_overflow` stops a run that outgrows them).
Top-KAST stores its backward set (:mod:`dst.train.stored_backward`), ranking its dense ``theta``. A stored
convolution (:class:`dst.backends.ConvGeometry`) is updated by the algorithm's dense rule on its own dense
view, inside the same per-layer loop (:func:`dst.train.stored_update.conv_layer_update`). The dense view (a
layer's dense size at update steps) serves the rest: block structure, SNFS under a structure, SNFS beside
stored convolutions.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from dst import backends
from dst.algorithms.base import SparseAlgorithm
from dst.masks import named_leaves
from dst.train import one_off
from dst.train import stored_backward
from dst.train import stored_momentum
from dst.train import stored_prune
from dst.train import stored_update
from dst.train.moments import map_param_trees
from dst.train.stored_backward import held_masks  # noqa: F401 (part of this module's interface)

# Per-weight dense metric state (ITOP's ever-active set) is kept while the stored layers' dense size is at
# most this many weights (a 1 GiB bool set at the limit); above it the run reports no itop_rate.
DENSE_METRICS_LIMIT = 2**30

# A stored layer's slots per starting weight (``sparsity.capacity``) when the run's algorithm moves weights
# between layers (``counts="move"``, SNFS). SNFS's defaults took LeNet-300-100's second layer from 23% to
# 34% dense within the first epoch (1.48x); a layer's capacity never exceeds its dense size.
MOVING_CAPACITY = 2.0


def default_capacity(algo: SparseAlgorithm) -> float:
    """The stored layers' ``capacity`` when the run sets none: room to grow where the algorithm moves
    weights between layers, the starting count otherwise (its counts only keep or fall)."""
    return MOVING_CAPACITY if algo.counts == "move" else 1.0


class Storage(NamedTuple):
    """A run's storage: the backend, each stored layer's static :class:`dst.backends.Layout`, the
    model's apply function on stored params (:func:`dst.backends.stored_apply`), whether per-weight
    dense metric state is kept (``dense_metrics``, see ``DENSE_METRICS_LIMIT``), and whether the stored
    layers were born sparse (:mod:`dst.train.born_sparse`: nothing of theirs is ever dense, records included)."""

    backend: backends.Backend
    layout_of: dict
    apply_fn: Callable
    dense_metrics: bool = True
    born_sparse: bool = False

    @property
    def stores(self) -> bool:
        """Whether the layers are held as slots (``csr``, ``condensed``); ``dense`` holds the kernels as they are."""
        return self.backend.stores


def make_storage(model, backend: str, masks, layers, mesh=None, capacity: float = 1.0,
                 convolutions=None) -> Storage | None:
    """The :class:`Storage` of ``model`` under ``backend`` (``None`` for ``masked``). Every 2-D
    (fully connected) kernel among ``layers`` is stored, and every convolution of ``convolutions``
    (``{layer: ConvGeometry}``, :func:`dst.backends.convolutions`); other layers stay masked. With a ``mesh`` (data
    parallelism, :class:`dst.train.devices.DataParallel`) each device multiplies its rows of the batch. Each
    stored layer has room for ``capacity`` times its starting count (:data:`MOVING_CAPACITY` suits an
    algorithm that moves weights between layers). ``dense`` is a
    storage without a backend: nothing is stored, and the step applies no mask (dense training)."""
    if backend == "dense":
        if not all(np.all(m) for m in jax.tree_util.tree_leaves(masks)):
            raise ValueError("sparsity.backend=dense trains every weight, and these masks are sparse; use it with "
                             "sparsity=dense.")
        return Storage(backends.dense(), {}, None, dense_metrics=True)
    chosen = backends.make(backend)
    if not chosen.stores:
        return None
    shapes = {name: np.shape(leaf) for name, leaf in named_leaves(masks).items()}
    convolutions = {n: g for n, g in (convolutions or {}).items() if n in layers}
    stored = [name for name in layers if len(shapes[name]) == 2 or name in convolutions]
    layout_of = backends.layouts(chosen, masks, stored, capacity, convolutions)
    dense_size = sum(int(np.prod(lay.shape)) for lay in layout_of.values())
    return Storage(chosen, layout_of, backends.stored_apply(model, chosen, layout_of, mesh),
                   dense_metrics=dense_size <= DENSE_METRICS_LIMIT)


def check_algorithm(algo: SparseAlgorithm, backend: str, name: str = "this algorithm") -> None:
    """One sentence when ``algo`` (called ``name`` in the sentence) cannot run on a fixed-capacity backend."""
    if algo.trainable is not None and algo.nested_rules is None and backend in ("csr", "condensed"):
        raise ValueError(f"sparsity.backend={backend} stores a backward set through an algorithm's nested_rules "
                         f"(Top-KAST's, dst.algorithms.topkast.NestedRules), and {name} trains outside its forward "
                         "mask without them; use sparsity.backend=masked.")
    if algo.trainable is not None and backend == "condensed":
        raise ValueError(f"sparsity.backend=condensed keeps every unit's fan-in, and {name} trains a backward set "
                         "around its forward mask that has none (Top-KAST); use sparsity.backend=csr or masked.")
    if algo.counts != "keep" and backend == "condensed":
        raise ValueError(f"sparsity.backend=condensed keeps every unit's fan-in, and {name} changes layers' "
                         "counts (GMP, GraNet, MEST's decay, IMP lower them; SNFS moves them between layers); use "
                         "sparsity.backend=csr or masked.")


def compress_state(storage: Storage, params, masks):
    """``(values, slots, topologies)`` of dense ``params`` and ``masks``."""
    return backends.compress(storage.backend, storage.layout_of, params, masks)


def expand_state(storage: Storage, params, slots, topologies):
    """The dense view ``(params, masks)`` of a stored run's state."""
    return backends.expand(storage.backend, storage.layout_of, params, slots, topologies)


def at_slots(storage: Storage, flags, masks):
    """A dense bool pytree read at the slots of the stored ``masks`` (:func:`dst.backends.at_slots`)."""
    return backends.at_slots(storage.backend, storage.layout_of, flags, masks)


def initial_state(algo: SparseAlgorithm, storage: Storage, params, masks, key):
    """``(values, slots, topologies, algo state)`` of a run's dense starting ``params`` and ``masks``: the
    layers stored, ``algo.init`` on the dense form (``grown`` then stored by slot); an algorithm that trains
    outside its forward mask stores its backward set (:func:`dst.train.stored_backward.init`)."""
    if algo.trainable is not None:
        return stored_backward.init(algo, storage, params, masks, key)
    state = algo.init(params, masks, key)
    if update_path(algo, storage)[0] == "momentum, then from storage":   # SNFS: its momentum by output unit
        state = stored_momentum.by_unit(storage, state)
    values, slots, topologies = compress_state(storage, params, masks)
    return values, slots, topologies, state._replace(grown=at_slots(storage, state.grown, masks))


def update_path(algo: SparseAlgorithm, storage: Storage) -> tuple[str, str | None]:
    """How ``algo``'s updates reach the stored layers, and why not from storage where they do not:
    ``"from storage"`` (prune-and-regrow one layer at a time, :mod:`dst.train.stored_update`),
    ``"in place"`` (pruning only, :mod:`dst.train.stored_prune`), ``"in place, then from storage"`` (GraNet:
    its global pruning, then its regrowth), ``"every step"`` (on the dense view at every step: an algorithm
    without the quiet/skip hooks), ``"theta, then from storage"`` (Top-KAST: its dense ``theta`` ranked, its sets
    then stored and ranked among the slots, :mod:`dst.train.stored_backward`) or ``"dense view"`` (at its update
    steps)."""
    convolutions = [n for n, lay in storage.layout_of.items() if lay.conv is not None]
    if convolutions and algo.dynamic and algo.quiet is None:   # SNFS's momentum: a dense gradient every step
        return "every step", (f"the algorithm reads every step's dense gradient, which the stored convolutions "
                              f"{', '.join(convolutions)} form on their dense view")
    if algo.dynamic and algo.quiet is None:
        if algo.momentum_rules is not None and stored_momentum.unsupported(algo) is None:
            return "momentum, then from storage", None
        why = "the algorithm reads every step's dense gradient"
        return "every step", why if algo.momentum_rules is None else f"{why}, and {stored_momentum.unsupported(algo)}"
    if algo.trainable is not None:   # (check_algorithm: only with its nested rules, as Top-KAST)
        return "theta, then from storage", None
    if not algo.dynamic:
        return "dense view", "the algorithm never changes the topology"
    regrow = "the algorithm has its own update" if algo.rules is None else stored_update.unsupported(algo, storage)
    prune = stored_prune.unsupported(algo, storage)
    if algo.prune is not None and algo.rules is not None:
        return ("in place, then from storage", None) if prune is None and regrow is None else \
            ("dense view", prune or regrow)
    if regrow is None:
        return "from storage", None
    if algo.prune is not None:
        return ("in place", None) if prune is None else ("dense view", prune)
    return "dense view", regrow


def update_algorithm(algo: SparseAlgorithm, storage: Storage) -> Callable:
    """``update(state, key, params, slots, topologies, grads, taps, opt_state, ever_active) -> (params,
    slots, topologies, opt_state, ever_active, state, overflow)``: at the steps where the algorithm may
    act (``algo.quiet(state) == 0``) the layers are updated from storage, one at a time
    (:mod:`dst.train.stored_update`: SET, RigL and MEST; :mod:`dst.train.stored_prune`: GMP; both in turn:
    GraNet; :func:`update_path`), or else ``algo.update`` runs on the dense view; ``algo.skip`` elsewhere.
    SNFS (no such hooks: its momentum reads the dense gradient at every step) runs
    :func:`dst.train.stored_momentum.update` at every step; another algorithm without them runs
    ``algo.update`` on the dense view at every step, its result stored where it changed the topology.
    The optimizer's per-weight moments move with their weights to the new slots; ``ever_active`` (dense, or
    None) gains the new masks.

    ``overflow`` (``None`` unless the algorithm moves weights between layers, ``counts="move"``) is, per
    stored layer, how many active weights the update left beyond the layer's capacity (0 when they fit):
    the stored layer then lost them, and the run must stop (:func:`capacity_overflow`)."""
    layouts = storage.layout_of
    no_overflow = lambda: {n: jnp.int32(0) for n in layouts} if algo.counts == "move" else None

    def overflow(masks):
        m = named_leaves(masks)
        return {n: jnp.maximum(jnp.sum(m[n], dtype=jnp.int32) - lay.count, 0) for n, lay in layouts.items()}

    def on_dense_view(state, key, params, slots, topologies, grads, taps):
        dense_p, dense_m = expand_state(storage, params, slots, topologies)
        inner = state._replace(grown=jax.tree_util.tree_map(lambda m: jnp.zeros(m.shape, bool), dense_m))
        return algo.update(inner, key, dense_p, dense_m, stored_update.dense_gradients(storage, grads, taps))

    def store(params, slots, topologies, opt_state, ever_active, new_p, new_m, new_state):
        def move(moments):   # to the slots of the new topology (a grown weight's moments are reset later)
            return compress_state(storage, expand_state(storage, moments, slots, topologies)[0], new_m)[0]

        opt_state = map_param_trees(move, opt_state, params)
        if ever_active is not None:
            ever_active = jax.tree_util.tree_map(jnp.logical_or, ever_active, new_m)
        params, slots, topologies = compress_state(storage, new_p, new_m)
        new_state = new_state._replace(grown=at_slots(storage, new_state.grown, new_m))
        return params, slots, topologies, opt_state, ever_active, new_state, \
            overflow(new_m) if algo.counts == "move" else None

    def act_dense(state, key, params, slots, topologies, opt_state, ever_active, grads, taps):
        new = on_dense_view(state, key, params, slots, topologies, grads, taps)
        return store(params, slots, topologies, opt_state, ever_active, *new)

    def act_every_step(state, key, params, slots, topologies, opt_state, ever_active, grads, taps):
        new_p, new_m, new_state = on_dense_view(state, key, params, slots, topologies, grads, taps)
        unchanged = (params, slots, topologies, opt_state, ever_active, new_state._replace(grown=state.grown),
                     no_overflow())
        return lax.cond(new_state.updated,
                        lambda: store(params, slots, topologies, opt_state, ever_active, new_p, new_m, new_state),
                        lambda: unchanged)

    path, _ = update_path(algo, storage)
    if path == "from storage":
        from_storage = stored_update.update_stored(algo, storage)
        act = lambda *args: (*from_storage(*args), no_overflow())
    elif path == "in place":
        in_place = stored_prune.prune_in_place(algo, storage)
        act = lambda *args: (*in_place(*args), no_overflow())
    elif path == "in place, then from storage":   # GraNet: its key splits into the pruning's and the regrowth's
        in_place = stored_prune.prune_in_place(algo, storage)
        from_storage = stored_update.update_stored(algo, storage)

        def act(state, key, params, slots, topologies, opt_state, ever_active, grads, taps):
            k_prune, k_regrow = jax.random.split(key)
            pruned = in_place(state, k_prune, params, slots, topologies, opt_state, ever_active, grads, taps)[:5]
            return (*from_storage(state, k_regrow, *pruned, grads, taps), no_overflow())
    elif path == "theta, then from storage":    # Top-KAST: its backward set stored, the rest dense until updates
        backward_set = stored_backward.ranked_in_slots(algo.nested_rules, storage)
        act = lambda *args: (*backward_set(*args), no_overflow())
    else:
        act = act_dense

    momentum_path = path == "momentum, then from storage"
    if momentum_path:
        from_storage = stored_momentum.update(algo, storage)

    def update(state, key, params, slots, topologies, grads, taps, opt_state, ever_active):
        if momentum_path:   # SNFS: its momentum at every step, its updates from storage
            return from_storage(state, key, params, slots, topologies, opt_state, ever_active, grads, taps)
        if not algo.dynamic:   # (also the quiet path's plain step: the same metrics as the full one)
            params, slots, state = algo.update(state, key, params, slots, grads)
            return params, slots, topologies, opt_state, ever_active, state, no_overflow()
        if algo.quiet is None:
            return act_every_step(state, key, params, slots, topologies, opt_state, ever_active, grads, taps)
        return lax.cond(algo.quiet(state) == 0,
                        lambda ops: act(state, key, *ops),
                        lambda ops: (*ops[:5], algo.skip(state, 1), no_overflow()),
                        (params, slots, topologies, opt_state, ever_active, grads, taps))

    return update


def capacity_overflow(metrics, layouts: dict) -> str | None:
    """The sentence that stops a run whose algorithm grew a stored layer past its capacity, from an epoch's
    per-step ``metrics`` (``metrics["overflow"]``, :func:`update_algorithm`), or ``None``. Its
    ``layouts`` give the capacities."""
    if "overflow" not in metrics:
        return None
    for name, excess in metrics["overflow"].items():
        worst = int(np.max(excess))
        if worst > 0:
            count = layouts[name].count
            return (f"layer {name} needed {count + worst:,} weights at an update of this epoch, above its capacity "
                    f"of {count:,} slots; raise sparsity.capacity (slots per starting weight) or use "
                    "sparsity.backend=masked. The last checkpoint is kept.")
    return None


def model_params(state):
    """What the run's ``apply_fn`` takes as params: ``state.params``, or on a storage backend the
    :class:`dst.backends.Stored` pair of the params and their topologies."""
    return state.params if state.topologies is None else backends.Stored(state.params, state.topologies)


class UnitCounts(NamedTuple):
    """A stored layer's per-unit statistics, from its slots: its dense shape, its weights, and how many of
    them each output unit takes (``fan_in``) and each input feeds (``fan_out``). What a record reads of a
    layer that is never dense (:func:`record_view`)."""

    shape: tuple[int, int]
    active: int
    fan_in: np.ndarray
    fan_out: np.ndarray


def unit_counts(storage: Storage, state) -> dict[str, UnitCounts]:
    """:class:`UnitCounts` of each stored layer, from the backend's slot view (no dense form)."""
    values, slots = named_leaves(state.params), named_leaves(state.live)
    out = {}
    for name, layout in storage.layout_of.items():
        view = storage.backend.slots(values[name], slots[name], state.topologies[name], layout)
        valid, cols, units = (np.asarray(a) for a in (view.valid, view.cols, view.units))
        n_in, n_out = layout.shape
        out[name] = UnitCounts(layout.shape, int(valid.sum()), np.bincount(units[valid], minlength=n_out),
                               np.bincount(cols[valid], minlength=n_in))
    return out


def record_view(storage: Storage | None, state):
    """``(state, unit counts)`` for what a record reads (densities, dead units, an algorithm's report): the
    dense view (:func:`dense_view`) and no counts; for born-sparse layers, the state as stored and their
    :class:`UnitCounts`, which the records read in their place."""
    if storage is not None and storage.born_sparse:
        return state, unit_counts(storage, state)
    return dense_view(storage, state), {}


def dense_view(storage: Storage | None, state):
    """``state`` with dense params and masks for what a record reads (densities, dead units, an
    algorithm's report): itself when masked; the stored layers expanded otherwise."""
    if storage is None or not storage.stores:
        return state
    expand = _expander(storage.backend, tuple(storage.layout_of.items()))
    params, masks = expand(state.params, state.live, state.topologies)
    return state._replace(params=params, live=masks, topologies=None)


@functools.lru_cache(maxsize=16)
def _expander(backend: backends.Backend, layouts: tuple):
    """The jitted expansion of one storage, compiled once per run (a new ``jax.jit`` of a new lambda at
    every record recompiled it: 0.22 s per epoch of the default experiment, more than its csr steps saved)."""
    layout_of = dict(layouts)
    expand = lambda p, s, t: backends.expand(backend, layout_of, p, s, t)
    compiled = []

    def call(p, s, t):   # compiled at the first concrete call, for the model's size (dst.train.one_off)
        if one_off.traced(p, s, t):
            return expand(p, s, t)      # inside a caller's jit: part of its program
        if not compiled:
            compiled.append(one_off.compiled_for_size(expand, p, s, t))
        return compiled[0](p, s, t)

    return call
