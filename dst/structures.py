"""Structured sparsity as one parameter of selection.

A :class:`Structure` is a few pure functions that mask initialisation and every algorithm's drop and
grow call (as jaxpruner injects a sparsity type into one top-k, but exact), so no algorithm branches on
the structure itself:

* ``unstructured``: any weights (the default; the same masks as before structures existed, bit for bit);
* ``n_m(N, M)``: every group of ``M`` consecutive weights along the reduction dimension of every output
  unit has exactly ``N`` active (sparse tensor cores: 2:4);
* ``fan_in()``: every output unit has the same number of active inputs (SRigL; ablated units have none);
* ``block(rows, cols)``: ``rows x cols`` blocks of the matrix view are all active or all inactive.

Groups live in a kernel's *matrix view*: a kernel ``[..., n_out]`` is a ``[R, n_out]`` matrix with
``R = prod(shape[:-1])`` in memory order, so a conv kernel ``[kh, kw, c_in, c_out]`` reduces over
``kh * kw * c_in`` (``c_in`` fastest). A layer whose dimensions a structure does not divide stays dense
(:func:`undivided_layers` names it).

How an update keeps a structure: the algorithm's drop rule removes weights from the whole layer
(``drop``: for blocks, whole blocks by the rule's scores summed over a block), then ``refill`` grows each
group back to the count it had before the update (an N:M group to N, an output unit to its fan-in, the
layer for unstructured and blocks) with the algorithm's own grow score restricted to that group.

Example::

    structure = dst.structures.n_m(2, 4)
    masks = dst.init_masks(key, params, densities, structure=structure)
    algo = dst.algorithms.make("rigl", update_every=100, end_step=5000, structure=structure)
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp

from dst.distributions import layer_densities
from dst.distributions import sparsifiable_layers
from dst.masks import exact_random_mask
from dst.masks import named_leaves
from dst.selection import bottom_k_mask
from dst.selection import grouped_top_k_mask
from dst.selection import random_ranks
from dst.selection import top_k_mask

STRUCTURES = ("unstructured", "n_m", "fan_in", "block")


class Structure(NamedTuple):
    """The masks a sparse layer may have, as the functions selection calls.

    * ``undivided(shape) -> str | None``: why a kernel of ``shape`` cannot take the structure (it then
      stays dense), or ``None``.
    * ``round_density(shape, d) -> float``: the nearest density the structure allows (N/M; a whole
      fan-in; a whole number of blocks).
    * ``init_mask(key, shape, n_active) -> bool``: a uniformly random mask with the structure and
      exactly ``n_active`` weights.
    * ``drop(scores, mask, k, key) -> bool``: the ``k`` active weights of smallest score (blocks: the
      ``k // (rows * cols)`` active blocks of smallest summed score).
    * ``refill(scores, before, kept, k, key) -> bool``: the weights to grow, of largest score, among
      those not ``kept``, so that each group holds as many as it did in ``before`` (unstructured:
      ``k`` over the layer; blocks: ``k // (rows * cols)`` whole blocks).
    * ``keep(scores, mask, n_keep, key) -> bool``: the active weights to keep, of largest score, with
      the structure: ``n_keep`` of them (N:M: the ``N`` largest of every group; fan-in: the
      ``n_keep // n_out`` largest of every unit; blocks: the ``n_keep // (rows * cols)`` blocks of
      largest summed score). One-shot and iterative pruning (IMP) call it.
    * ``group_counts(mask) -> int32 [G]``: active weights per group (N:M group, output unit, block).
    * ``granule``: how many weights enter or leave a layer together when its count may change (a
      block's ``rows * cols``; 1 otherwise): algorithms that move budget between layers (SNFS) move it
      in these units.
    * ``unit_group(R) -> int``: when every group lies within one output unit, the length of a group
      along the unit's ``R`` inputs (N:M: ``M``; fan-in: ``R``), so a block of whole units refills on
      its own (:mod:`dst.train.stored_update`); ``None`` when groups span units (unstructured: the
      whole layer; blocks).
    """

    name: str
    label: str
    undivided: Callable[[tuple], str | None]
    round_density: Callable[[tuple, float], float]
    init_mask: Callable[..., jax.Array]
    drop: Callable[..., jax.Array]
    refill: Callable[..., jax.Array]
    keep: Callable[..., jax.Array]
    group_counts: Callable[[jax.Array], jax.Array]
    granule: int = 1
    unit_group: Callable[[int], int] | None = None


def matrix_shape(shape: tuple) -> tuple[int, int]:
    """``(R, n_out)``: the kernel's reduction and output dimensions."""
    return math.prod(shape[:-1]), shape[-1]


def matrix(x: jax.Array) -> jax.Array:
    """``[..., n_out] -> [R, n_out]``: the matrix view (a reshape in memory order, no copy). An output
    unit is a column; its inputs run down the column."""
    return x.reshape(-1, x.shape[-1])


def unstructured() -> Structure:
    """Any weights: a layer-wide top-k (the selection every algorithm used before structures)."""
    return Structure(
        name="unstructured", label="unstructured",
        undivided=lambda shape: None,
        round_density=lambda shape, d: float(d),
        init_mask=exact_random_mask,
        drop=bottom_k_mask,
        refill=lambda scores, before, kept, k, key: top_k_mask(scores, ~kept, k, key),
        keep=top_k_mask,
        group_counts=lambda mask: jnp.sum(mask, dtype=jnp.int32)[None])


def _grouped_refill(view, axis):
    """Refill for structures whose groups run along ``axis`` of a view (N:M groups, output units)."""

    def refill(scores, before, kept, k, key):
        del k  # each group's own deficit decides
        count = lambda x: jnp.sum(view(x), axis=axis, keepdims=True, dtype=jnp.int32)
        need = count(before) - count(kept)
        return grouped_top_k_mask(view(scores), ~view(kept), need, key, axis).reshape(before.shape)

    return refill


def n_m(n: int, m: int) -> Structure:
    """N:M: exactly ``n`` active in every group of ``m`` consecutive weights along the reduction
    dimension of every output unit (density ``n / m``).

    References:
        Mishra et al. 2021, "Accelerating Sparse Deep Neural Networks" (2:4 sparse tensor cores);
        Zhou et al. 2021, "Learning N:M Fine-grained Structured Sparse Neural Networks From Scratch".
    """
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in (n, m)) or not 0 < n < m:
        raise ValueError(f"n_m must be two integers [N, M] with 0 < N < M; got {[n, m]!r}.")

    def groups(x):   # [R / M, M, n_out]: each unit's inputs in runs of M
        return matrix(x).reshape(-1, m, x.shape[-1])

    def undivided(shape):
        r = matrix_shape(shape)[0]
        return None if r % m == 0 else f"its reduction dimension {r} is not a multiple of M={m}"

    def init_mask(key, shape, n_active):
        del n_active  # always size * n / m
        view = (math.prod(shape[:-1]) // m, m, shape[-1])
        return grouped_top_k_mask(random_ranks(key, view), jnp.ones(view, bool), n, key, 1).reshape(shape)

    return Structure(name="n_m", label=f"{n}:{m}", undivided=undivided,
                     round_density=lambda shape, d: n / m, init_mask=init_mask, drop=bottom_k_mask,
                     refill=_grouped_refill(groups, 1), unit_group=lambda r: m,
                     keep=lambda scores, mask, n_keep, key: grouped_top_k_mask(
                         groups(scores), groups(mask), n, key, 1).reshape(mask.shape),
                     group_counts=lambda mask: jnp.sum(groups(mask), axis=1, dtype=jnp.int32).reshape(-1))


def fan_in() -> Structure:
    """Constant fan-in: every output unit has the same number of active inputs.

    References:
        Lasby et al. 2024, "Dynamic Sparse Training with Structured Sparsity", ICLR (SRigL).
    """

    def round_density(shape, d):
        r = matrix_shape(shape)[0]
        return max(1, round(d * r)) / r

    def init_mask(key, shape, n_active):
        view = matrix_shape(shape)
        return grouped_top_k_mask(random_ranks(key, view), jnp.ones(view, bool), n_active // view[1], key,
                                  0).reshape(shape)

    return Structure(name="fan_in", label="constant fan-in", undivided=lambda shape: None,
                     round_density=round_density, init_mask=init_mask, drop=bottom_k_mask,
                     refill=_grouped_refill(matrix, 0), unit_group=lambda r: r,
                     keep=lambda scores, mask, n_keep, key: grouped_top_k_mask(
                         matrix(scores), matrix(mask), n_keep // mask.shape[-1], key, 0).reshape(mask.shape),
                     group_counts=lambda mask: jnp.sum(matrix(mask), axis=0, dtype=jnp.int32))


def block(rows: int, cols: int) -> Structure:
    """Blocks of ``rows x cols`` in the matrix view, all active or all inactive. Scores are summed over a
    block (the L1 norm for magnitudes), so the algorithm's own measure ranks whole blocks."""
    if not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in (rows, cols)) \
            or rows * cols < 2:
        raise ValueError(f"block must be two positive integers [rows, cols], not both 1; got {[rows, cols]!r}.")
    area = rows * cols

    def pooled(x):
        r, n_out = matrix_shape(x.shape)
        return x.reshape(r // rows, rows, n_out // cols, cols).astype(jnp.float32).sum(axis=(1, 3))

    def expand(blocks, shape):
        return jnp.repeat(jnp.repeat(blocks, rows, axis=0), cols, axis=1).reshape(shape)

    def undivided(shape):
        r, n_out = matrix_shape(shape)
        if r % rows == 0 and n_out % cols == 0:
            return None
        return f"its matrix view {r} x {n_out} is not a whole number of {rows} x {cols} blocks"

    def round_density(shape, d):
        r, n_out = matrix_shape(shape)
        total = (r // rows) * (n_out // cols)
        return max(1, round(d * total)) / total

    def init_mask(key, shape, n_active):
        r, n_out = matrix_shape(shape)
        return expand(exact_random_mask(key, (r // rows, n_out // cols), n_active // area), shape)

    def drop(scores, mask, k, key):
        return expand(bottom_k_mask(pooled(scores), pooled(mask) > 0, k // area, key), mask.shape)

    def refill(scores, before, kept, k, key):
        del before
        return expand(top_k_mask(pooled(scores), pooled(kept) == 0, k // area, key), kept.shape)

    def keep(scores, mask, n_keep, key):
        return expand(top_k_mask(pooled(scores), pooled(mask) > 0, n_keep // area, key), mask.shape)

    return Structure(name="block", label=f"{rows}x{cols} blocks", undivided=undivided,
                     round_density=round_density, init_mask=init_mask, drop=drop, refill=refill, keep=keep,
                     group_counts=lambda mask: pooled(mask).astype(jnp.int32).reshape(-1), granule=area)


def make(name: str = "unstructured", **settings) -> Structure:
    """The structure named by ``sparsity.structure``, with ``n_m=[N, M]`` or ``block=[rows, cols]``."""
    if name not in STRUCTURES:
        raise ValueError(f"structure must be one of {', '.join(STRUCTURES)}; got {name!r}.")
    if name == "n_m":
        pair = settings.get("n_m")
        if not isinstance(pair, list | tuple) or len(pair) != 2:
            raise ValueError(f"n_m must be two integers [N, M] with 0 < N < M; got {pair!r}.")
        return n_m(*pair)
    if name == "block":
        pair = settings.get("block")
        if not isinstance(pair, list | tuple) or len(pair) != 2:
            raise ValueError(f"block must be two positive integers [rows, cols], not both 1; got {pair!r}.")
        return block(*pair)
    return fan_in() if name == "fan_in" else unstructured()


UNSTRUCTURED = unstructured()


def undivided_layers(params, structure: Structure, layers) -> dict[str, str]:
    """``{layer: reason}`` for the ``layers`` whose kernels ``structure`` does not divide."""
    leaves = named_leaves(params)
    reasons = {n: structure.undivided(tuple(leaves[n].shape)) for n in layers}
    return {n: r for n, r in reasons.items() if r is not None}


def structured_densities(params, sparsity: float, distribution: str, structure: Structure, *,
                         erk_power_scale: float = 1.0, dense_layers=(), sparsifiable=None) -> dict[str, float]:
    """:func:`dst.layer_densities` under a structure: layers it does not divide are dense and out of the
    budget (as ``dense_layers``), and each density is rounded to one the structure allows (N:M: N/M
    whatever the distribution, a layer the distribution makes dense included; fan-in: a whole fan-in;
    blocks: a whole number of blocks)."""
    layers = sparsifiable_layers(params, sparsifiable, dense_layers)
    skip = [f"^{re.escape(n)}$" for n in undivided_layers(params, structure, layers)]
    densities = layer_densities(params, sparsity, distribution, erk_power_scale=erk_power_scale,
                                sparsifiable=sparsifiable, dense_layers=list(dense_layers) + skip)
    leaves = named_leaves(params)
    return {n: structure.round_density(tuple(leaves[n].shape), d) for n, d in densities.items()}
