"""Layers born sparse: created in their storage from their counts, never dense.

A 333,334 x 333,334 kernel has 1.1e11 weights (444 GB as float32), so such a layer can be neither
initialised by ``model.init`` nor masked. Here each stored layer starts from its count alone:

* :func:`draw_positions`: the count's positions, drawn per the structure (unstructured: uniformly among
  all positions, the Erdős–Rényi topology of SET; ``fan_in``: uniformly within each unit; ``n_m``: N of
  each group of M inputs of each unit), on the host, O(count log count) (N:M: O(count M / N)), never
  O(n_in n_out) for a sparse structure;
* :func:`init_values`: the layer's own initial weights at those positions, from its kernel initialiser
  (read from the model, :func:`kernel_initializers`);
* the backend stores the slots (``Backend.rebuild``), as after any topology update.

The other leaves (biases, dense layers, masked convolutions) come from the model's own ``init``, compiled
with the stored kernels left out of its outputs so XLA never forms them. :func:`init_state` builds the
run's :class:`dst.train.TrainState` and :class:`dst.train.stored.Storage`; training, updates (SET's and
MEST's growth on layers of 2^32 positions or more samples positions, :mod:`dst.train.sampled_growth`),
evaluation and checkpoints are a stored run's. A born-sparse run's decisions are not a masked run's (its
first topology is drawn another way); its records come from the stored topologies
(:func:`dst.train.stored.record_view`).

References:
  Mocanu, Mocanu, Stone, Nguyen, Gibescu, Liotta. "Scalable training of artificial neural networks with
  adaptive sparse connectivity inspired by network science", Nature Communications 9, 2018.
  Liu, Mocanu, Matavalam, Pei, Pechenizkiy. "Sparse evolutionary deep learning with over one million
  artificial neurons on commodity hardware", Neural Computing and Applications 33, 2021.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from dst import backends
from dst.masks import active_count
from dst.masks import init_masks
from dst.masks import named_leaves
from dst.masks import replace_named
from dst.structures import UNSTRUCTURED
from dst.train.apply import init_model
from dst.train.apply import model_state_shapes
from dst.train.state import ALGO_INIT_STREAM
from dst.train.state import TrainState
from dst.train.state import counts as count_masks
from dst.train.stored import DENSE_METRICS_LIMIT
from dst.train.stored import Storage

# Folded into the init key for the stored layers' values.
BORN_VALUES_STREAM = 0x626F726E

# The structures a born-sparse layer can be drawn in and updated in without its dense form (a block
# structure's groups span output units: its updates rank blocks on the dense view).
STRUCTURES = ("unstructured", "fan_in", "n_m")

# Elements of the random keys N:M draws at once (a block of units' groups).
DRAW_BLOCK = 2**22


def er_count(shape: tuple[int, int], epsilon: float) -> int:
    """SET's Erdős–Rényi count of a ``[n_in, n_out]`` layer: ``epsilon (n_in + n_out)`` weights (density
    ``epsilon (n_in + n_out) / (n_in n_out)``), at most all of them."""
    n_in, n_out = shape
    return int(min(n_in * n_out, round(epsilon * (n_in + n_out))))


def _member(keys: np.ndarray, sorted_keys: np.ndarray) -> np.ndarray:
    """Whether each of ``keys`` is in the sorted array ``sorted_keys``."""
    if sorted_keys.size == 0:
        return np.zeros(keys.shape, bool)
    at = np.minimum(np.searchsorted(sorted_keys, keys), sorted_keys.size - 1)
    return sorted_keys[at] == keys


def sample_absent(rng: np.random.Generator, present: np.ndarray, size: int, k: int) -> np.ndarray:
    """``k`` distinct keys of ``[0, size)`` that are not in the sorted ``present``, sorted; every such set
    of ``k`` keys is equally likely. Rejection sampling: O(k log k) where ``present`` is a small part of
    the range (a sparse layer), never O(size)."""
    if k > size - present.size:
        raise ValueError(f"cannot choose {k} of the {size - present.size} free positions")
    if size - present.size <= 4 * k:   # a nearly full layer: choose among the free positions directly
        free = np.setdiff1d(np.arange(size, dtype=np.int64), present, assume_unique=True)
        return np.sort(rng.choice(free, k, replace=False))
    chosen = np.empty(0, np.int64)
    while chosen.size < k:
        draw = np.unique(rng.integers(0, size, int(1.05 * (k - chosen.size)) + 16, dtype=np.int64))
        draw = draw[~_member(draw, present)]
        chosen = np.union1d(chosen, draw)
    # The distinct draws are exchangeable among the free keys: k of them at random are a uniform k-set.
    return np.sort(rng.choice(chosen, k, replace=False)) if chosen.size > k else chosen


def _per_unit(rng: np.random.Generator, n_in: int, n_out: int, fan: int) -> np.ndarray:
    """``[n_out, fan]`` inputs, each row ``fan`` distinct inputs drawn uniformly, sorted."""
    out = np.empty((n_out, fan), np.int64)
    todo = np.arange(n_out)
    while todo.size:
        if 2 * fan > n_in:   # dense rows: a random order of every input, per row (n_in < 2 fan: small)
            rows = np.argsort(rng.random((todo.size, n_in)), axis=1)[:, :fan]
            out[todo] = np.sort(rows, axis=1)
            break
        draw = np.sort(rng.integers(0, n_in, (todo.size, fan + 8 + fan // 8)), axis=1)
        draw[:, 1:][draw[:, 1:] == draw[:, :-1]] = n_in                  # repeats out
        distinct = np.sum(draw < n_in, axis=1)
        done = distinct >= fan
        # A row's distinct draws are a uniform set: `fan` of them at random are a uniform fan-set.
        keys = np.where(draw[done] < n_in, rng.random(draw[done].shape), 2.0)
        pick = np.take_along_axis(draw[done], np.argsort(keys, axis=1)[:, :fan], axis=1)
        out[todo[done]] = np.sort(pick, axis=1)
        todo = todo[~done]
    return out


def _n_of_m(rng: np.random.Generator, n_in: int, n_out: int, n: int, m: int) -> np.ndarray:
    """``[n_out, n_in n / m]`` inputs: in each group of ``m`` consecutive inputs of each unit, ``n`` drawn
    uniformly, sorted. Drawn a block of units at a time (:data:`DRAW_BLOCK` keys)."""
    groups = n_in // m
    out = np.empty((n_out, groups * n), np.int64)
    offsets = (np.arange(groups, dtype=np.int64) * m)[:, None]
    step = max(1, DRAW_BLOCK // max(n_in, 1))
    for start in range(0, n_out, step):
        units = min(step, n_out - start)
        picked = np.argsort(rng.random((units, groups, m)), axis=2)[..., :n]      # a uniform n-set per group
        out[start:start + units] = (np.sort(picked, axis=2) + offsets).reshape(units, -1)
    return out


def _n_m_of(structure, shape) -> tuple[int, int]:
    """``(N, M)`` of an N:M :class:`dst.structures.Structure`: its group, and its density ``N / M`` times it."""
    m = structure.unit_group(shape[0])
    return round(structure.round_density(shape, 1.0) * m), m


def draw_positions(rng: np.random.Generator, shape: tuple[int, int], count: int, structure=UNSTRUCTURED):
    """``(cols, units)`` (int32) of ``count`` distinct positions of a ``[n_in, n_out]`` kernel in CSR order
    (by unit, then input), drawn uniformly under ``structure`` (a :class:`dst.structures.Structure`;
    ``fan_in``: ``count / n_out`` per unit; ``n_m``: N of each group of M inputs of each unit, ``count`` the
    layer's ``n_in n_out N / M``), without a dense mask."""
    n_in, n_out = shape
    name = structure.name
    if name == "fan_in":
        if count % n_out:
            raise ValueError(f"a fan-in layer's count must be a multiple of its {n_out} units; got {count}")
        cols = _per_unit(rng, n_in, n_out, count // n_out).reshape(-1)
    elif name == "n_m":
        n, m = _n_m_of(structure, shape)
        if n_in % m or count != n_in // m * n * n_out:
            raise ValueError(f"an {n}:{m} layer of shape {shape} holds n_in / M * N * n_out weights and needs n_in "
                             f"a multiple of M; got count {count}")
        cols = _n_of_m(rng, n_in, n_out, n, m).reshape(-1)
    elif name == "unstructured":
        units, cols = np.divmod(sample_absent(rng, np.empty(0, np.int64), n_in * n_out, count), n_in)
        return cols.astype(np.int32), units.astype(np.int32)
    else:
        raise ValueError(f"born-sparse layers are drawn in structure {' or '.join(STRUCTURES)}; got {name}")
    units = np.repeat(np.arange(n_out, dtype=np.int64), count // n_out)
    return cols.astype(np.int32), units.astype(np.int32)


def init_values(key: jax.Array, kernel_init: Callable, shape: tuple[int, int], count: int) -> jax.Array:
    """``count`` initial weights of a ``[n_in, n_out]`` layer: ``kernel_init`` on a ``[n_in, m]`` block
    (``m = ceil(count / n_in)``), which has the layer's fan-in. Each weight then follows the law it has
    in the dense layer for initialisers that depend on the fan-in only (flax's default LeCun normal, He,
    PyTorch's default), which is what a masked layer's active weights follow."""
    n_in = shape[0]
    block = kernel_init(key, (n_in, max(1, -(-count // n_in))), jnp.float32)
    return block.reshape(-1)[:count]


def kernel_initializers(model: nn.Module, sample) -> dict[str, Callable]:
    """``{"Dense_1/kernel": kernel_init}`` of every ``nn.Dense`` of ``model``, read from an abstract init."""
    found = {}

    def interceptor(next_fun, args, kw, context):
        if isinstance(context.module, nn.Dense) and context.method_name == "__call__":
            found["/".join((*context.module.path, "kernel"))] = context.module.kernel_init
        return next_fun(*args, **kw)

    with nn.intercept_methods(interceptor):
        model_state_shapes(model, sample)
    return found


def born_layer(key, rng, backend: backends.Backend, layout: backends.Layout, count: int, kernel_init,
               structure=UNSTRUCTURED):
    """``(values, valid, topology)`` of one layer born in ``backend``'s storage: ``count`` weights at
    positions from :func:`draw_positions`, values from :func:`init_values`, in ``layout.count`` slots
    (the rest padding: zero values at the last unit, which the algorithms may fill)."""
    shape, capacity = layout.shape, layout.count
    cols, units = draw_positions(rng, shape, count, structure)
    rowptr = np.searchsorted(units, np.arange(shape[1] + 1)).astype(np.int32)
    rowptr[-1] = capacity                                                # padding slots: the last unit's
    pad = capacity - count
    if backend.fixed_fan_in:
        slots = count
    else:
        slots = capacity
        cols = np.concatenate([cols, np.zeros(pad, np.int32)])
    values = jnp.zeros(slots, jnp.float32).at[:count].set(init_values(key, kernel_init, shape, count))
    valid = jnp.arange(slots) < count
    return backend.rebuild(values, valid, jnp.asarray(cols), jnp.asarray(rowptr), layout)


def _positions_of(backend, stored, valid, layout) -> jax.Array:
    """The dense ``[n_in, n_out]`` bool set of a stored layer's active positions (its starting ever-active set)."""
    view = backend.slots(stored[0], valid, stored[1], layout)
    return backends.write_slots(jnp.zeros(layout.shape, bool), view.valid, view.valid, view.cols, view.units)


def init_state(keys, seed: int, model: nn.Module, sample, densities: dict[str, float], stored_layers: list[str], *,
               backend: backends.Backend, tx, algo, structure=UNSTRUCTURED, capacity: float = 1.0,
               mesh=None) -> tuple[Storage, TrainState]:
    """``(storage, state)`` of ``model`` with ``stored_layers`` (2-D kernels) born sparse in ``backend`` at
    ``densities`` (``round(d n_in n_out)`` weights each; room for ``capacity`` times as many). ``keys =
    (k_init, k_mask, k_state)`` as a masked run splits them: the other leaves and the model state are the
    model's init from ``k_init`` (sparse ones masked at their ``densities`` from ``k_mask``), the stored
    values come from ``k_init`` folded, and the train state's chain of keys starts at ``k_state`` as in
    :func:`dst.train.create_train_state`. ``seed``: the host generator of the positions."""
    k_init, k_mask, k_state = keys
    k_values = jax.random.fold_in(k_init, BORN_VALUES_STREAM)
    abstract, _ = model_state_shapes(model, sample)
    shapes = {n: tuple(leaf.shape) for n, leaf in named_leaves(abstract).items()}
    inits = kernel_initializers(model, sample)
    rng = np.random.default_rng(seed)
    layout_of, stored, slots = {}, {}, {}
    for i, name in enumerate(stored_layers):
        count = active_count(densities[name], math.prod(shapes[name]))
        room = count // shapes[name][1] if backend.fixed_fan_in else \
            backends.csr_slots(math.prod(shapes[name]), count, capacity)      # a fan-in, or the layer's slots
        layout_of[name] = backends.Layout(shapes[name], room)
        values, valid, topology = born_layer(jax.random.fold_in(k_values, i), rng, backend, layout_of[name], count,
                                             inits[name], structure)
        stored[name], slots[name] = (values, topology), valid

    def rest(k):   # the model's own init, the stored kernels left out of the outputs (so never formed)
        params, model_state = init_model(model, k, sample)
        return {n: v for n, v in named_leaves(params).items() if n not in layout_of}, model_state

    leaves, model_state = jax.jit(rest)(k_init)
    params = replace_named(abstract, {**leaves, **{n: v for n, (v, _) in stored.items()}})
    masked = {n: d for n, d in densities.items() if n not in layout_of}
    kept_structure = None if structure.name == "unstructured" else structure
    # The masked layers' masks, and the stored layers' slot flags.
    live = replace_named(init_masks(k_mask, params, masked, structure=kept_structure), slots)
    # ITOP where it fits: the ever-active set is one bool per position, kept only up to DENSE_METRICS_LIMIT of them.
    dense_metrics = sum(math.prod(lay.shape) for lay in layout_of.values()) <= DENSE_METRICS_LIMIT
    storage = Storage(backend, layout_of, backends.stored_apply(model, backend, layout_of, mesh),
                      dense_metrics=dense_metrics, born_sparse=True)
    ever_active = replace_named(live, {n: _positions_of(backend, stored[n], slots[n], lay)
                                        for n, lay in layout_of.items()}) if dense_metrics else None
    # The algorithm's init reads the stored layers' dense shapes (GMP's and MEST's target counts), never values.
    dense_shapes = {n: jax.ShapeDtypeStruct(lay.shape, stored[n][0].dtype) for n, lay in layout_of.items()}
    algo_state = algo.init(replace_named(params, dense_shapes), live, jax.random.fold_in(k_state, ALGO_INIT_STREAM))
    state = TrainState(params=params, live=live, model_state=model_state,
                       opt_state=tx.init(params), algo_state=algo_state, ever_active=ever_active,
                       active=count_masks(live),
                       step=jnp.zeros((), jnp.int32), rng=k_state,
                       topologies={n: t for n, (_, t) in stored.items()})
    return storage, state
