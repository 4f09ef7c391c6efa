"""Sparse-times-dense products for a layer ``y = x @ W`` whose weights are stored by output unit.

Storage (``n_out`` output units, ``nnz`` stored weights):

* CSR: ``values [nnz]``, ``cols [nnz]`` (int32 input index of each weight), ``rowptr [n_out + 1]``; output
  unit ``o`` holds ``values[rowptr[o]:rowptr[o+1]]``. This is W's transpose ``[n_out, n_in]`` in CSR form.
* condensed (constant fan-in ``k``): ``values [n_out, k]``, ``indices [n_out, k]`` — CSR with
  ``rowptr[o] = o * k``.

With the compiled kernels (:mod:`dst.kernels`) on the CPU, the forward pass, ``dx`` and ``dvalues`` are
one FFI call each under a custom VJP: the value gradient is computed at the nonzeros only and no dense
``[n_in, n_out]`` array exists. ``dx`` walks the :class:`Transposed` structure, which a stored layer
builds once per topology (:func:`transpose`) and passes in, so no step sorts its nonzeros. Elsewhere
(no kernels built, or an accelerator) the same functions run an XLA gather and ``segment_sum`` with the
same results; :func:`condensed_matmul_gather` is the batch-of-one inference path.

References:
  Nikdan, Pegolotti, Iofinova, Kurtic, Alistarh. "SparseProp: Efficient Sparse Backpropagation for
  Faster Training of Neural Networks", ICML 2023 (batch-last activations, dW at the nonzeros).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from dst import selection
from dst.kernels import _loader


class Transposed(NamedTuple):
    """A CSR structure by INPUT unit: input ``i``'s nonzeros are the entries ``t`` in
    ``[rowptr[i], rowptr[i+1])``, each at output unit ``rows[t]`` and stored slot ``slots[t]`` (all int32)."""

    rowptr: jax.Array   # [n_in + 1]
    rows: jax.Array     # [nnz]
    slots: jax.Array    # [nnz]


def transpose(cols: jax.Array, rowptr: jax.Array, n_in: int) -> Transposed:
    """The :class:`Transposed` structure of a CSR layer (a stable sort of the slots by input: within an
    input, its nonzeros keep their output order); jit-able. One counting pass in C++ where the kernels are
    built (XLA compiles its sort anew in every program that rebuilds a topology); one sort elsewhere."""
    nnz = cols.shape[0]
    if use_kernels():
        _loader.register()
        shapes = (_int32(n_in + 1), _int32(nnz), _int32(nnz))
        return Transposed(*jax.ffi.ffi_call("dst_transpose", shapes, vmap_method="sequential")(
            jnp.asarray(cols, jnp.int32), jnp.asarray(rowptr, jnp.int32)))
    slots = jnp.argsort(cols, stable=True).astype(jnp.int32)
    counts = jnp.zeros(n_in, jnp.int32).at[cols].add(1)
    t_rowptr = jnp.concatenate([jnp.zeros(1, jnp.int32), jnp.cumsum(counts, dtype=jnp.int32)])
    return Transposed(t_rowptr, row_ids(rowptr, nnz).astype(jnp.int32)[slots], slots)


class Merged(NamedTuple):
    """Kept and grown weights merged in CSR order (:func:`merge_slots`): each slot's input and output
    unit (``n_out``: unused), the kept slot it came from (``-1``: grown or unused), and the row pointers
    (unused slots belong to the last unit)."""

    cols: jax.Array      # int32 [capacity]
    units: jax.Array     # int32 [capacity]
    source: jax.Array    # int32 [capacity]
    rowptr: jax.Array    # int32 [n_out + 1]


def merge_slots(a_cols, a_units, a_live, b_cols, b_units, b_live, n_in: int, n_out: int) -> Merged:
    """Merge two CSR-ordered (by unit, then input) lists of distinct weights into ``a``'s capacity: ``a``
    (the kept slots) may have holes (``a_live`` False), ``b``'s (the grown weights) live entries are a
    prefix. One pass in C++ where the kernels are built; searches in XLA elsewhere, with the same result."""
    if use_kernels():
        _loader.register()
        capacity = a_cols.shape[0]
        shapes = (_int32(capacity), _int32(capacity), _int32(capacity), _int32(n_out + 1))
        return Merged(*jax.ffi.ffi_call("dst_merge", shapes, vmap_method="sequential")(
            a_cols, a_units, a_live, b_cols, b_units, b_live))
    return _merge_xla(a_cols, a_units, a_live, b_cols, b_units, b_live, n_in, n_out)


def _merge_xla(a_cols, a_units, a_live, b_cols, b_units, b_live, n_in: int, n_out: int) -> Merged:
    u32 = jnp.uint32
    order = lambda cols, units: units.astype(u32) * u32(n_in) + cols.astype(u32)   # < 2^32
    a_key, b_key = order(a_cols, a_units), order(b_cols, b_units)
    capacity = a_key.shape[0]
    a_before = jnp.cumsum(a_live, dtype=jnp.int32) - a_live           # live entries of a before each
    b_count = jnp.sum(b_live, dtype=jnp.int32)
    b_sorted = jnp.where(b_live, b_key, u32(0xFFFFFFFF))
    # a's live keys, each hole filled with the key before it: non-decreasing, so searchable.
    a_filled = jax.lax.cummax(jnp.where(a_live, a_key, u32(0)))
    a_slot = a_before + jnp.minimum(jnp.searchsorted(b_sorted, a_key, side="left").astype(jnp.int32), b_count)
    first = jnp.searchsorted(a_filled, b_key, side="left")               # first live a entry >= the key
    a_total = jnp.concatenate([a_before, jnp.sum(a_live, dtype=jnp.int32)[None]])
    b_slot = jnp.arange(b_key.shape[0], dtype=jnp.int32) + a_total[first]
    at_a = jnp.where(a_live, a_slot, capacity)                            # capacity: dropped
    at_b = jnp.where(b_live, b_slot, capacity)
    put = lambda init, at, x: init.at[at].set(x, mode="drop")
    cols = put(put(jnp.zeros(capacity, jnp.int32), at_a, a_cols), at_b, b_cols)
    units = put(put(jnp.full(capacity, n_out, jnp.int32), at_a, a_units), at_b, b_units)
    source = put(jnp.full(capacity, -1, jnp.int32), at_a, jnp.arange(capacity, dtype=jnp.int32))
    rowptr = jnp.concatenate([jnp.searchsorted(units, jnp.arange(n_out, dtype=jnp.int32), side="left"),
                              jnp.full(1, capacity)]).astype(jnp.int32)
    return Merged(cols, units, source, rowptr)


def _int32(size: int) -> jax.ShapeDtypeStruct:
    return jax.ShapeDtypeStruct((size,), jnp.int32)


def compact(mask: jax.Array, size: int) -> tuple[jax.Array, jax.Array]:
    """``(index, count)``: ``jnp.nonzero(mask, size=size, fill_value=0)[0]`` as int32, and the number of
    true entries of the flat ``mask`` (which may exceed ``size``). One pass in C++ where the kernels are
    built (XLA's cumsum costs about 10 ns per element on the CPU); XLA elsewhere."""
    mask = jnp.reshape(mask, -1)
    if not use_kernels():
        return (jnp.nonzero(mask, size=size, fill_value=0)[0].astype(jnp.int32), jnp.sum(mask, dtype=jnp.int32))
    _loader.register()
    shapes = (jax.ShapeDtypeStruct((size,), jnp.int32), jax.ShapeDtypeStruct((), jnp.int32))
    return tuple(jax.ffi.ffi_call("dst_compact", shapes, vmap_method="sequential")(mask))


def slots_by_unit(mask: jax.Array, capacity: int) -> tuple[jax.Array, jax.Array, jax.Array]:
    """``(cols, rowptr, count)``: the true entries of a dense ``[n_in, n_out]`` mask as ``capacity`` slots in
    CSR order (by output unit, then input): each slot's input (0 for padding), each unit's first slot
    (clamped at the capacity: a mask with more entries keeps its first ones; ``rowptr[n_out] = capacity``)
    and the number of true entries. Two row-major passes in C++ where the kernels are built (reading the
    mask by unit misses the cache at every entry: the XLA way transposes it first); XLA elsewhere."""
    n_in, n_out = mask.shape
    if not use_kernels():
        units, cols = jnp.nonzero(mask.T, size=capacity, fill_value=0)
        per_unit = jnp.minimum(jnp.cumsum(jnp.sum(mask, 0, dtype=jnp.int32)), capacity)
        rowptr = jnp.concatenate([jnp.zeros(1, jnp.int32), per_unit[:-1], jnp.full(1, capacity, jnp.int32)])
        return cols.astype(jnp.int32), rowptr.astype(jnp.int32), jnp.sum(mask, dtype=jnp.int32)
    _loader.register()
    shapes = (_int32(capacity), _int32(n_out + 1), jax.ShapeDtypeStruct((), jnp.int32))
    return tuple(jax.ffi.ffi_call("dst_slots_by_unit", shapes, vmap_method="sequential")(mask.astype(bool)))


def gather_by_unit(x: jax.Array, mask: jax.Array, cols: jax.Array, rowptr: jax.Array, count) -> jax.Array:
    """A dense ``[n_in, n_out]`` array read at the slots :func:`slots_by_unit` gave ``mask`` (``x[cols, units]``,
    zero on padding): one front-to-back pass over ``x`` in C++ where the kernels are built (in CSR order the
    reads stride across rows and miss the cache); an XLA gather elsewhere."""
    capacity = cols.shape[0]
    if not use_kernels():
        units = row_ids(rowptr, capacity)
        valid = jnp.arange(capacity) < count
        return jnp.where(valid, x[cols, jnp.minimum(units, x.shape[1] - 1)], jnp.zeros((), x.dtype))
    _loader.register()
    call = jax.ffi.ffi_call("dst_gather_by_unit", jax.ShapeDtypeStruct((capacity,), x.dtype),
                            vmap_method="sequential")
    return call(mask.astype(bool), jnp.asarray(rowptr, jnp.int32), x)


def top_k_of_keys(keys: jax.Array, k, priorities) -> jax.Array:
    """:func:`dst.selection.top_k_of_keys` (the ``k`` largest of flat ``uint32`` ``keys`` by (key,
    priority), 0 marking an ineligible key; ``priorities()`` unique) with the same result: one pass in
    C++ where the kernels are built, which saves XLA compiling a loop of counting passes for every
    selection of a stored update; the XLA selection elsewhere."""
    if not use_kernels():
        return selection.top_k_of_keys(keys, k, priorities)
    _loader.register()
    keys = jnp.reshape(keys, -1).astype(jnp.uint32)
    if isinstance(priorities, selection.Priorities):   # hashed in C++ for the few elements ranked by priority
        none = jnp.zeros(0, jnp.int32)
        positions = none if priorities.positions is None else priorities.positions
        tiebreak = none if priorities.tiebreak is None else priorities.tiebreak
        call = jax.ffi.ffi_call("dst_top_k_hashed", jax.ShapeDtypeStruct(keys.shape, jnp.bool_),
                                vmap_method="sequential")
        return call(keys, jnp.reshape(positions, -1).astype(jnp.int32), priorities.seeds(),
                    jnp.reshape(tiebreak, -1).astype(jnp.int32), jnp.asarray(k, jnp.int32))
    prio = jnp.reshape(priorities(), -1).astype(jnp.uint32)
    call = jax.ffi.ffi_call("dst_top_k", jax.ShapeDtypeStruct(keys.shape, jnp.bool_), vmap_method="sequential")
    return call(keys, prio, jnp.asarray(k, jnp.int32))


def use_kernels() -> bool:
    """Whether the compiled kernels run these products here: built by the install, and on the CPU (elsewhere
    the same functions run their XLA fallbacks)."""
    return _loader.available() and jax.default_backend() == "cpu"


def row_ids(rowptr: jax.Array, nnz: int) -> jax.Array:
    """The output unit of each of ``nnz`` slots, from the row pointers: each unit's first slot marked, then a
    running count (16 ms for 3.2M slots of 4000 units, where ``searchsorted`` took 82; empty units add two
    marks at one slot)."""
    # Slots at or past rowptr[n_out] (padding beyond the rows) count n_out.
    marks = jnp.zeros(nnz + 1, rowptr.dtype).at[rowptr[1:]].add(1, mode="drop")
    return jnp.cumsum(marks)[:nnz]


def csr_matmul_xla(x: jax.Array, values: jax.Array, cols: jax.Array, rowptr: jax.Array) -> jax.Array:
    """``x @ W`` in plain XLA (gather, multiply, ``segment_sum``); differentiable by autodiff."""
    n_out = rowptr.shape[0] - 1
    contributions = jnp.take(x, cols, axis=-1) * values               # [..., nnz]
    rows = row_ids(rowptr, values.shape[0])
    moved = jnp.moveaxis(contributions, -1, 0)
    return jnp.moveaxis(jax.ops.segment_sum(moved, rows, n_out, indices_are_sorted=True), 0, -1)


def _batch_last(x: jax.Array) -> tuple[jax.Array, tuple]:
    lead = x.shape[:-1]
    return x.reshape(-1, x.shape[-1]).T, lead


def _ffi(name: str, shape: tuple, *args) -> jax.Array:
    out = jax.ShapeDtypeStruct(shape, jnp.float32)
    return jax.ffi.ffi_call(name, out, vmap_method="sequential")(*args)


@jax.custom_vjp
def _csr_matmul_kernel(values, cols, rowptr, transposed, x):
    return _csr_forward(values, cols, rowptr, x)[0]


def _csr_forward(values, cols, rowptr, x):
    _loader.register()
    xT, lead = _batch_last(x.astype(jnp.float32))
    yT = _ffi("dst_spmm", (rowptr.shape[0] - 1, xT.shape[1]), values, cols, rowptr, xT)
    return yT.T.reshape(*lead, -1), xT


def _csr_fwd(values, cols, rowptr, transposed, x):
    """The forward rule, with JAX's ``symbolic_zeros``: each argument comes as a ``CustomVJPPrimal`` that
    says whether it is differentiated. A layer whose input is not (the first, fed by data) computes no
    ``dx`` at all; the residuals say so by their structure (``()`` or ``None``), which stays static."""
    values, cols, rowptr, transposed, primal_x = jax.tree.map(
        lambda a: a.value, (values, cols, rowptr, transposed, x),
        is_leaf=lambda a: isinstance(a, jax.custom_derivatives.CustomVJPPrimal))
    y, xT = _csr_forward(values, cols, rowptr, primal_x)
    return y, (values, cols, rowptr, transposed, xT, () if x.perturbed else None)


def _csr_bwd(residuals, dy):
    """``dvalues`` at the nonzeros, and ``dx`` where the input is differentiated: ``dst_backward`` runs
    them in one fused pass or as the two separate kernels, whichever pays on this ISA and shape (chosen
    in C++, see ``FusedBackwardPays`` in ``sparse_matmul.cc``)."""
    values, cols, rowptr, transposed, xT, x_perturbed = residuals
    if isinstance(dy, jax.custom_derivatives.SymbolicZero):
        return None, None, None, None, None
    dyT, lead = _batch_last(dy.astype(jnp.float32))
    if x_perturbed is None:
        return _ffi("dst_sddmm", values.shape, cols, rowptr, dyT, xT), None, None, None, None
    shapes = (jax.ShapeDtypeStruct(xT.shape, jnp.float32), jax.ShapeDtypeStruct(values.shape, jnp.float32))
    dxT, dvalues = jax.ffi.ffi_call("dst_backward", shapes, vmap_method="sequential")(
        values, cols, rowptr, *transposed, dyT, xT)
    return dvalues, None, None, None, dxT.T.reshape(*lead, -1)


_csr_matmul_kernel.defvjp(_csr_fwd, _csr_bwd, symbolic_zeros=True)


def csr_matmul(x: jax.Array, values: jax.Array, cols: jax.Array, rowptr: jax.Array,
               transposed: Transposed | None = None) -> jax.Array:
    """``y = x @ W`` for ``x [..., n_in]`` and a CSR ``W`` (see the module doc); ``y [..., n_out]``.

    Differentiable in ``x`` and ``values``. Runs the compiled kernels on the CPU when they are built.
    ``transposed`` is ``transpose(cols, rowptr, n_in)``, built here when not given (a sort per call:
    a layer that trains keeps it with its topology).
    """
    if not use_kernels():
        return csr_matmul_xla(x, values, cols.astype(jnp.int32), rowptr.astype(jnp.int32))
    if transposed is None:
        transposed = _transpose_of(cols, rowptr, x.shape[-1])
    cols, rowptr = cols.astype(jnp.int32), rowptr.astype(jnp.int32)
    return _csr_matmul_kernel(values.astype(jnp.float32), cols, rowptr, transposed, x)


def _transpose_of(cols, rowptr, n_in: int) -> Transposed:
    """:func:`transpose`, computed at once where the structure is concrete (a constant of the caller's
    ``jit``): staged into the program, its sort of constants is constant-folded by XLA, which took
    minutes for 8M weights."""
    if isinstance(cols, jax.core.Tracer) or isinstance(rowptr, jax.core.Tracer):
        return transpose(cols.astype(jnp.int32), rowptr.astype(jnp.int32), n_in)
    with jax.ensure_compile_time_eval():
        return transpose(jnp.asarray(cols, jnp.int32), jnp.asarray(rowptr, jnp.int32), n_in)


def condensed_matmul(x: jax.Array, values: jax.Array, indices: jax.Array,
                     transposed: Transposed | None = None) -> jax.Array:
    """``y = x @ W`` for a constant fan-in ``W`` held as ``values [n_out, k]``, ``indices [n_out, k]``
    (``transposed``: of the flattened indices, as in :func:`csr_matmul`)."""
    n_out, k = values.shape
    rowptr = np.arange(n_out + 1, dtype=np.int32) * k      # numpy: stays a constant inside jit
    flat = indices.reshape(-1) if isinstance(indices, jax.core.Tracer) else np.asarray(indices).reshape(-1)
    return csr_matmul(x, values.reshape(-1), flat, rowptr, transposed)


def condensed_matmul_gather(x: jax.Array, values: jax.Array, indices: jax.Array) -> jax.Array:
    """The same product as one XLA gather ``x[..., indices]`` (``[..., n_out, k]``) times ``values``.

    Fast for online inference (a batch of one); at training batch sizes the gathered tensor costs more
    than the dense product, so training uses :func:`condensed_matmul`.
    """
    return jnp.einsum("...ok,ok->...o", jnp.take(x, indices, axis=-1), values)
