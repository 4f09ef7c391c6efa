"""Layers whose dense form does not fit: born sparse, and SET's topology update on the stored form.

A 333,334 x 333,334 kernel has 1.1e11 weights (444 GB as float32), so such a layer can neither be
initialised by ``model.init`` nor expanded to the dense view that :func:`dst.train.stored.update_algorithm`
gives an algorithm's rules. Here a layer starts in CSR form (:class:`dst.backends.CSR`) and stays there:

* :func:`random_topology`: ``count`` distinct positions drawn uniformly at random (the Erdős–Rényi
  topology of SET; :func:`er_count` gives SET's count ``epsilon (n_in + n_out)``), without a dense mask;
* :func:`init_values`: the layer's initial weights at those positions, from its kernel initialiser;
* :func:`set_update`: SET's prune-and-regrow on the stored values. The drop is the algorithm's own rule
  (:func:`dst.algorithms.base.magnitude_drop` or SET's :func:`dst.algorithms.set.sign_split_drop`) on
  the values; growth draws as many positions uniformly at random among the inactive ones (a just-dropped
  weight may be regrown, as in :func:`dst.algorithms.base.prune_and_regrow`) by rejection sampling of
  positions, where the dense path ranks a dense random score. The count, and so every shape, stays as it
  was; the optimizer's moments move with their weights and grown weights start with zero moments.

The topology update runs on the host between epochs (SET updates once per epoch), with numpy: one sort
of the layer's positions, O(nnz log nnz), never O(n_in n_out). The train step itself is the stored step
of :mod:`dst.train.stored` with a static algorithm, compiled once.

References:
  Mocanu, Mocanu, Stone, Nguyen, Gibescu, Liotta. "Scalable training of artificial neural networks with
  adaptive sparse connectivity inspired by network science", Nature Communications 9, 2018.
  Liu, Mocanu, Matavalam, Pei, Pechenizkiy. "Sparse evolutionary deep learning with over one million
  artificial neurons on commodity hardware", Neural Computing and Applications 33, 2021.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from dst import backends
from dst.algorithms.base import magnitude_drop
from dst.backends import CSR
from dst.masks import named_leaves
from dst.masks import replace_named
from dst.train.state import TrainState
from dst.train.state import counts as count_masks
from dst.train.stored import Storage


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


def host_topology(keys: np.ndarray, shape: tuple[int, int]) -> CSR:
    """The :class:`dst.backends.CSR` of sorted unit-major ``keys`` (``unit * n_in + input``) of a
    ``[n_in, n_out]`` kernel, with its transpose, built with numpy."""
    n_in, n_out = shape
    units, cols = np.divmod(keys, n_in)
    rowptr = np.searchsorted(units, np.arange(n_out + 1)).astype(np.int32)
    cols = cols.astype(np.int32)
    slots = np.argsort(cols, kind="stable").astype(np.int32)
    t_rowptr = np.concatenate([[0], np.cumsum(np.bincount(cols, minlength=n_in))]).astype(np.int32)
    return CSR(*(jnp.asarray(a) for a in (cols, rowptr, t_rowptr, units.astype(np.int32)[slots], slots)))


def _keys(topology: CSR, n_in: int) -> np.ndarray:
    rowptr = np.asarray(topology.rowptr)
    units = np.repeat(np.arange(rowptr.size - 1, dtype=np.int64), np.diff(rowptr))
    return units * n_in + np.asarray(topology.cols, np.int64)


def random_topology(rng: np.random.Generator, shape: tuple[int, int], count: int) -> CSR:
    """``count`` distinct positions of a ``[n_in, n_out]`` kernel, uniformly at random, as a CSR
    topology (no dense mask is formed)."""
    return host_topology(sample_absent(rng, np.empty(0, np.int64), shape[0] * shape[1], count), shape)


def init_values(key: jax.Array, kernel_init: Callable, shape: tuple[int, int], count: int) -> jax.Array:
    """``count`` initial weights of a ``[n_in, n_out]`` layer: ``kernel_init`` on a ``[n_in, m]`` block
    (``m = ceil(count / n_in)``), which has the layer's fan-in. Each weight then follows the law it has
    in the dense layer for initialisers that depend on the fan-in only (flax's default LeCun normal,
    He), which is what a masked layer's active weights follow."""
    n_in = shape[0]
    block = kernel_init(key, (n_in, max(1, -(-count // n_in))), jnp.float32)
    return block.reshape(-1)[:count]


def set_update(key: jax.Array, rng: np.random.Generator, values, topology: CSR, shape: tuple[int, int],
               drop_fraction: float, *, drop_rule: Callable = magnitude_drop, grow_std: float | None = None,
               moments=()) -> tuple:
    """SET's prune-and-regrow of one stored layer (all slots active): drop ``drop_rule``'s choice
    (``int(f n)`` weights), grow as many at positions drawn uniformly among the inactive ones, with
    value 0 (``grow_std``: N(0, grow_std^2)). ``moments`` (arrays shaped like ``values``) move with
    their weights; grown weights' moments are 0.

    Returns ``(values, topology, moments, dropped)``: the new values in the new topology's slot order,
    the new :class:`dst.backends.CSR`, the moved moments and the number dropped (= grown).
    """
    n_in, n_out = shape
    k_drop, k_grow = jax.random.split(key)
    slots = jnp.ones(values.shape, bool)
    dropped = np.asarray(jax.jit(drop_rule)(k_drop, values, None, slots, drop_fraction))
    keep = np.flatnonzero(~dropped)
    kept_keys = _keys(topology, n_in)[keep]          # still sorted
    grown = sample_absent(rng, kept_keys, n_in * n_out, int(dropped.sum()))
    keys = np.concatenate([kept_keys, grown])
    origin = np.concatenate([keep, np.full(grown.size, -1)])
    order = np.argsort(keys, kind="stable")
    keys, origin = keys[order], origin[order]
    is_grown = origin < 0

    def carry(a, fill):
        out = np.asarray(a)[np.maximum(origin, 0)]
        out[is_grown] = fill[is_grown] if isinstance(fill, np.ndarray) else fill
        return jnp.asarray(out)

    new = np.zeros(keys.size, np.float32) if grow_std is None else \
        (grow_std * np.asarray(jax.random.normal(k_grow, (keys.size,)))).astype(np.float32)
    return (carry(values, new), host_topology(keys, shape), [carry(m, 0.0) for m in moments],
            int(grown.size))


def init_born_sparse(key: jax.Array, rng: np.random.Generator, model, x, counts: dict[str, int], tx,
                     algo, *, kernel_init: Callable | None = None, sparse_init: Callable | None = None):
    """``(storage, state)`` of a model of ``nn.Dense`` layers (``dst.models.MLP``) whose layers in
    ``counts`` (``{"Dense_1/kernel": nnz}``) are born sparse: a :func:`random_topology` of that many
    weights each, :func:`init_values` from ``sparse_init`` (default ``kernel_init``), zero biases, and
    the other kernels dense from ``kernel_init`` (default flax's, LeCun normal). Nothing of a stored
    layer's dense size is ever formed (the model's shapes come from ``jax.eval_shape``). ``algo`` must
    not change the topology in the step (``static``; SET's update is :func:`set_update`, between epochs)."""
    kernel_init = kernel_init or jax.nn.initializers.lecun_normal()
    sparse_init = sparse_init or kernel_init
    if algo.dynamic:
        raise ValueError("born-sparse layers take a static algorithm in the step; SET's update is "
                         "dst.train.large.set_update, between epochs")
    abstract = jax.eval_shape(model.init, key, x)["params"]
    shapes = named_leaves(abstract)
    unknown = [n for n in shapes if n.rsplit("/", 1)[-1] not in ("kernel", "bias")]
    if unknown:
        raise ValueError(f"born-sparse models hold nn.Dense kernels and biases only; {unknown[0]} is neither")
    leaves, topologies, layout_of = {}, {}, {}
    for i, (name, leaf) in enumerate(sorted(shapes.items())):
        k = jax.random.fold_in(key, i)
        if name in counts:
            shape = tuple(leaf.shape)
            layout_of[name] = backends.Layout(shape, counts[name])
            topologies[name] = random_topology(rng, shape, counts[name])
            leaves[name] = init_values(k, sparse_init, shape, counts[name])
        elif name.endswith("bias"):
            leaves[name] = jnp.zeros(leaf.shape, leaf.dtype)
        else:
            leaves[name] = kernel_init(k, leaf.shape, leaf.dtype)
    params = replace_named(abstract, leaves)
    masks = jax.tree_util.tree_map(lambda p: jnp.ones(p.shape, bool), params)
    backend = backends.csr()
    storage = Storage(backend, layout_of, backends.stored_apply(model, backend, layout_of), dense_metrics=False)
    state = TrainState(params=params, masks=masks, model_state={}, opt_state=tx.init(params),
                       algo_state=algo.init(params, masks), ever_active=None, active=count_masks(masks),
                       step=jnp.zeros((), jnp.int32), rng=jax.random.fold_in(key, len(shapes)),
                       topologies=topologies)
    return storage, state
