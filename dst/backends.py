"""Storage backends of a sparse layer: how its active weights are held and multiplied.

Structure (which weights may be active together, :mod:`dst.structures`) and storage are independent
parameters of a sparse layer. A :class:`Backend` says how a fully connected layer's kernel
``W [n_in, n_out]`` with its bool mask is stored, and how ``x @ W`` is computed from that storage:

* ``masked`` (default): the dense kernel and its mask, as everywhere else in dst (no conversion);
* ``csr``: ``values [nnz]`` in the params, ``CSR(cols [nnz], rowptr [n_out + 1])`` in the masks' place:
  any pattern at a fixed number of active weights ``nnz`` per layer;
* ``condensed``: ``values [n_out, k]`` and ``Condensed(indices [n_out, k])``: constant fan-in ``k`` (the
  ``fan_in`` and ``n_m`` structures; SRigL's condensed layer).

Rows of both formats are output units, so a unit's weights are contiguous and the compiled kernels
(:mod:`dst.kernels`) stream the batch once per weight. Shapes depend only on ``nnz`` (or ``k``), which
a layer keeps through prune-and-regrow, so a run compiles once. :func:`compress` and :func:`expand` convert
a whole params/masks pair between the dense view and the stored one (inside ``jit``: the counts are static
:class:`Layout` values fixed when the run starts); :func:`sparse_apply` runs a flax model on the stored
form, replacing each stored ``nn.Dense`` by the backend's product.

References:
  Lasby, Golubeva, Evci, Nica, Ioannou. "Dynamic Sparse Training with Structured Sparsity", ICLR 2024
  (the condensed constant fan-in layer).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from dst import kernels
from dst.masks import named_leaves
from dst.masks import replace_named

BACKENDS = ("masked", "csr", "condensed")


class CSR(NamedTuple):
    """Where a CSR layer's ``values`` sit: input index of each, and each output unit's first slot."""

    cols: jax.Array     # int32 [nnz]
    rowptr: jax.Array   # int32 [n_out + 1]


class Condensed(NamedTuple):
    """Where a condensed layer's ``values [n_out, k]`` sit: the input index of each."""

    indices: jax.Array  # int32 [n_out, k]


class Layout(NamedTuple):
    """Static facts of one stored layer: its dense kernel shape and its stored count (nnz, or k)."""

    shape: tuple[int, int]
    count: int


class Backend(NamedTuple):
    """How one layer is stored. Every function is pure and jit-able; ``layout`` is static.

    * ``layout(mask) -> Layout`` from a concrete mask, or raises ``ValueError`` (one sentence);
    * ``compress(w, mask, layout) -> (stored values, topology)``;
    * ``expand(values, topology, layout) -> (w, mask)``, the inverse;
    * ``matmul(x, values, topology) -> x @ W``.
    """

    name: str
    layout: Callable
    compress: Callable
    expand: Callable
    matmul: Callable


def _nonzero_by_unit(mask: jax.Array, count: int):
    """Positions of the active weights, output unit by output unit (CSR order): ``(inputs, units)``."""
    units, inputs = jnp.nonzero(mask.T, size=count, fill_value=0)
    return inputs.astype(jnp.int32), units.astype(jnp.int32)


def _csr_layout(mask) -> Layout:
    mask = np.asarray(mask)
    return Layout(tuple(mask.shape), int(mask.sum()))


def _csr_compress(w, mask, layout):
    inputs, units = _nonzero_by_unit(mask, layout.count)
    rowptr = jnp.concatenate([jnp.zeros(1, jnp.int32), jnp.cumsum(jnp.sum(mask, 0, dtype=jnp.int32))])
    return w[inputs, units], CSR(inputs, rowptr.astype(jnp.int32))


def _csr_expand(values, topology, layout):
    units = jnp.searchsorted(topology.rowptr, jnp.arange(layout.count, dtype=jnp.int32), side="right") - 1
    w = jnp.zeros(layout.shape, values.dtype).at[topology.cols, units].set(values)
    mask = jnp.zeros(layout.shape, bool).at[topology.cols, units].set(True)
    return w, mask


def _condensed_layout(mask) -> Layout:
    fan_in = np.asarray(mask).sum(axis=0)
    if fan_in.size and fan_in.min() != fan_in.max():
        raise ValueError(f"has fan-ins from {fan_in.min()} to {fan_in.max()}; the condensed backend needs one "
                         "constant fan-in per layer (sparsity.structure=fan_in or n_m)")
    return Layout(tuple(np.shape(mask)), int(fan_in[0]) if fan_in.size else 0)


def _condensed_compress(w, mask, layout):
    n_out, k = layout.shape[1], layout.count
    inputs, units = _nonzero_by_unit(mask, n_out * k)
    return w[inputs, units].reshape(n_out, k), Condensed(inputs.reshape(n_out, k))


def _condensed_expand(values, topology, layout):
    units = jnp.broadcast_to(jnp.arange(layout.shape[1])[:, None], topology.indices.shape)
    w = jnp.zeros(layout.shape, values.dtype).at[topology.indices, units].set(values)
    mask = jnp.zeros(layout.shape, bool).at[topology.indices, units].set(True)
    return w, mask


def csr() -> Backend:
    """Compressed rows over output units at a fixed nnz; products by :func:`dst.kernels.csr_matmul`."""
    return Backend("csr", _csr_layout, _csr_compress, _csr_expand,
                   lambda x, values, t: kernels.csr_matmul(x, values, t.cols, t.rowptr))


def condensed() -> Backend:
    """Constant fan-in ``[n_out, k]`` values and indices; products by :func:`dst.kernels.condensed_matmul`."""
    return Backend("condensed", _condensed_layout, _condensed_compress, _condensed_expand,
                   lambda x, values, t: kernels.condensed_matmul(x, values, t.indices))


def make(name: str) -> Backend | None:
    """The backend called ``name`` (``None`` for ``masked``: nothing is converted)."""
    if name == "masked":
        return None
    if name == "csr":
        return csr()
    if name == "condensed":
        return condensed()
    raise ValueError(f"sparsity.backend must be one of {', '.join(BACKENDS)}; got {name!r}")


def layouts(backend: Backend, masks, layers) -> dict[str, Layout]:
    """The static :class:`Layout` of each stored layer, from concrete masks (``ValueError`` naming the layer
    when the backend cannot hold its mask)."""
    leaves = named_leaves(masks)
    out = {}
    for name in layers:
        if np.ndim(leaves[name]) != 2:
            raise ValueError(f"sparsity.backend={backend.name} stores fully connected kernels only; {name} has "
                             f"shape {tuple(np.shape(leaves[name]))}")
        try:
            out[name] = backend.layout(leaves[name])
        except ValueError as err:
            raise ValueError(f"sparsity.backend={backend.name}: layer {name} {err}") from None
    return out


def compress(backend: Backend, layout_of: dict[str, Layout], params, masks):
    """``(params, masks)`` with each layer of ``layout_of`` in stored form (values; topology)."""
    p, m = named_leaves(params), named_leaves(masks)
    stored = {name: backend.compress(p[name], m[name], lay) for name, lay in layout_of.items()}
    return (replace_named(params, {n: v for n, (v, _) in stored.items()}),
            replace_named(masks, {n: t for n, (_, t) in stored.items()}, is_leaf=_is_topology))


def expand(backend: Backend, layout_of: dict[str, Layout], params, masks):
    """The dense view ``(params, masks)`` of a stored pair (the inverse of :func:`compress`)."""
    p, m = named_leaves(params), named_leaves(masks, is_leaf=_is_topology)
    dense = {name: backend.expand(p[name], m[name], lay) for name, lay in layout_of.items()}
    return (replace_named(params, {n: w for n, (w, _) in dense.items()}),
            replace_named(masks, {n: mask for n, (_, mask) in dense.items()}, is_leaf=_is_topology))


def _is_topology(x) -> bool:
    return isinstance(x, CSR | Condensed)


def sparse_apply(model: nn.Module, backend: Backend, layout_of: dict[str, Layout]):
    """``apply(variables, x, topologies, **kwargs)``: ``model.apply`` with every stored ``nn.Dense``
    computed as ``backend.matmul(x, values, topology) + bias`` (``topologies``: the masks pytree in
    stored form). Other modules run as they are."""
    stored_modules = {name.rsplit("/", 1)[0] for name in layout_of}

    def apply(variables, x, topologies, **kwargs):
        topology_of = named_leaves(topologies, is_leaf=_is_topology)

        def interceptor(next_fun, args, kw, context):
            module = context.module
            path = "/".join(module.path)
            if context.method_name != "__call__" or path not in stored_modules or not isinstance(module, nn.Dense):
                return next_fun(*args, **kw)
            params = module.variables["params"]
            (inputs,) = args
            y = backend.matmul(inputs, params["kernel"], topology_of[f"{path}/kernel"])
            return y + params["bias"] if module.use_bias else y

        with nn.intercept_methods(interceptor):
            return model.apply(variables, x, **kwargs)

    return apply
