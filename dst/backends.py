"""Storage backends of a sparse layer: how its active weights are held and multiplied.

Structure (which weights may be active together, :mod:`dst.structures`) and storage are independent
parameters of a sparse layer. A :class:`Backend` says how a fully connected layer's kernel
``W [n_in, n_out]`` with its bool mask is stored, and how ``x @ W`` is computed from that storage:

* ``masked`` (default): the dense kernel and its mask, as everywhere else in dst (no conversion);
* ``csr``: ``values [nnz]`` in the params, ``CSR(cols [nnz], rowptr [n_out + 1], ...)`` beside them:
  any pattern at a fixed number of active weights ``nnz`` per layer;
* ``condensed``: ``values [n_out, k]`` and ``Condensed(indices [n_out, k])``: constant fan-in ``k`` (the
  ``fan_in`` and ``n_m`` structures; SRigL's condensed layer).

Rows of both formats are output units, so a unit's weights are contiguous and the compiled kernels
(:mod:`dst.kernels`) stream the batch once per weight. Shapes depend only on ``nnz`` (or ``k``), which
a layer keeps through prune-and-regrow, so a run compiles once. :func:`compress` and :func:`expand` convert
a whole params/masks pair between the dense view and the stored one (inside ``jit``: the counts are static
:class:`Layout` values fixed when the run starts); :func:`stored_apply` runs a flax model on the stored
form, replacing each stored ``nn.Dense`` by the backend's product.

References:
  Lasby, Golubeva, Evci, Nica, Ioannou. "Dynamic Sparse Training with Structured Sparsity", ICLR 2024
  (the condensed constant fan-in layer).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any
from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from dst import kernels
from dst.masks import named_leaves
from dst.masks import replace_named

BACKENDS = ("masked", "csr", "condensed", "dense")


class CSR(NamedTuple):
    """Where a CSR layer's ``values`` sit: input index of each, and each output unit's first slot; and
    the same structure by input unit (``t_*``, :class:`dst.kernels.Transposed`), which the input
    gradient walks. The transpose is built with the topology (:func:`csr_topology`), once per topology
    update, not in every step."""

    cols: jax.Array       # int32 [nnz]
    rowptr: jax.Array     # int32 [n_out + 1]
    t_rowptr: jax.Array   # int32 [n_in + 1]
    t_rows: jax.Array     # int32 [nnz]
    t_slots: jax.Array    # int32 [nnz]

    @property
    def transposed(self) -> kernels.Transposed:
        return kernels.Transposed(self.t_rowptr, self.t_rows, self.t_slots)


class Condensed(NamedTuple):
    """Where a condensed layer's ``values [n_out, k]`` sit: the input index of each; and the transpose
    of the flattened structure, as in :class:`CSR`."""

    indices: jax.Array    # int32 [n_out, k]
    t_rowptr: jax.Array   # int32 [n_in + 1]
    t_rows: jax.Array     # int32 [n_out * k]
    t_slots: jax.Array    # int32 [n_out * k]

    @property
    def transposed(self) -> kernels.Transposed:
        return kernels.Transposed(self.t_rowptr, self.t_rows, self.t_slots)


def csr_topology(cols, rowptr, n_in: int) -> CSR:
    """The :class:`CSR` topology of ``cols`` and ``rowptr``, with its transpose (jit-able)."""
    cols, rowptr = jnp.asarray(cols, jnp.int32), jnp.asarray(rowptr, jnp.int32)
    return CSR(cols, rowptr, *kernels.transpose(cols, rowptr, n_in))


def condensed_topology(indices, n_in: int) -> Condensed:
    """The :class:`Condensed` topology of ``indices [n_out, k]``, with its transpose (jit-able)."""
    indices = jnp.asarray(indices, jnp.int32)
    n_out, k = indices.shape
    return Condensed(indices, *kernels.transpose(indices.reshape(-1), jnp.arange(n_out + 1, dtype=jnp.int32) * k,
                                                 n_in))


class ConvGeometry(NamedTuple):
    """What a stored convolution runs with besides its weights: its dense kernel shape ``[kh, kw, c_in,
    n_out]``, its strides and its padding (``"SAME"``, ``"VALID"`` or ``((top, bottom), (left, right))``), as
    its flax ``nn.Conv`` has them (:func:`convolutions`)."""

    kernel: tuple[int, int, int, int]
    strides: tuple[int, int]
    padding: str | tuple


class Layout(NamedTuple):
    """Static facts of one stored layer: its kernel's matrix view ``(n_in, n_out)`` (a convolution's is
    ``(kh * kw * c_in, n_out)``, the view the structures use), its capacity, the slots it stores (nnz
    capacity, or k): the starting count, or more where the run's algorithm moves weights between layers
    (``sparsity.capacity``); and for a convolution its :class:`ConvGeometry` (``None``: fully connected)."""

    shape: tuple[int, int]
    count: int
    conv: ConvGeometry | None = None

    @property
    def dense_shape(self) -> tuple[int, ...]:
        """The shape of the layer's dense kernel: the matrix view, or a convolution's 4-D kernel."""
        return self.shape if self.conv is None else self.conv.kernel


class SlotView(NamedTuple):
    """One stored layer's slots, flat, in the backend's order (CSR order: by output unit, then input): each
    slot's value, whether it holds a weight, its input (``cols``) and its output unit (``units``; padding
    slots past the last weight sit at ``n_out - 1`` with ``valid`` False). What prune-and-regrow reads and
    writes, the same for every backend."""

    values: jax.Array
    valid: jax.Array
    cols: jax.Array
    units: jax.Array


class Backend(NamedTuple):
    """How one layer is stored. Every function is pure and jit-able; ``layout`` is static.

    * ``layout(mask, capacity=1.0) -> Layout`` from a concrete mask, with room for ``capacity`` times its
      active count (at most the dense size), or raises ``ValueError`` (one sentence);
    * ``compress(w, mask, layout) -> (values, slots, topology)``: ``slots`` (bool, shaped like
      ``values``) marks the slots that hold an active weight; the rest are zero-valued padding, so a
      layer may hold fewer weights than its capacity ``layout.count`` without changing a shape;
    * ``expand(values, slots, topology, layout) -> (w, mask)``, the inverse;
    * ``matmul(x, values, topology) -> x @ W``;
    * ``slots(values, valid, topology, layout) -> SlotView``: the per-layer slot view the stored updates
      read;
    * ``rebuild(values, valid, cols, rowptr, layout) -> (values, valid, topology)``: the stored form of
      slots in CSR order (``rowptr``: each unit's first slot), the inverse of ``slots``;
    * ``fixed_fan_in``: every unit holds the same number of slots, so a layer's count cannot fall or move;
    * ``stores``: the layer is held as slots (``csr``, ``condensed``), or as its dense kernel and mask
      (``masked``, ``dense``: the model runs on the dense params, nothing is converted);
    * ``fields``: the topology's fields an exported model keeps, and ``topology_from(fields, layout)`` the
      topology rebuilt from them (the transposes are derived; a convolution's keyed as its layout's kernel);
    * ``count_of(values) -> int``: the ``layout.count`` that stored ``values`` have (slots, or a fan-in);
    * ``matmul_xla(x, values, topology)``: the product by XLA's gathers alone, without the compiled kernels
      (an exported model's batch of one);
    * ``conv(x, values, topology, geometry) -> y``: a stored convolution on an NHWC batch (``None``: the
      backend stores no convolution).
    """

    name: str
    layout: Callable
    compress: Callable
    expand: Callable
    matmul: Callable
    slots: Callable
    rebuild: Callable
    fixed_fan_in: bool
    stores: bool
    fields: tuple
    topology_from: Callable
    count_of: Callable
    matmul_xla: Callable
    conv: Callable | None = None


# Up to this many positions a layer's flat index fits int32: its slots are scattered by flat index.
FLAT_LIMIT = 2**31 - 1


def _stored_slots(w: jax.Array, mask: jax.Array, capacity: int):
    """``(values, valid, cols, rowptr)``: the active weights of a dense kernel output unit by output unit (CSR
    order) in ``capacity`` slots. Slots past the active count are padding (``valid`` False, input 0, value 0);
    a mask with more weights than slots (an algorithm that moved weights past a layer's capacity, which the
    run reports and stops on) keeps a valid structure of its first weights. Both read the dense arrays front
    to back (:func:`dst.kernels.slots_by_unit`), where a compaction of the transposed mask and a gather in CSR
    order stride across rows."""
    cols, rowptr, count = kernels.slots_by_unit(mask, capacity)
    values = kernels.gather_by_unit(w, mask, cols, rowptr, count)
    return values, jnp.arange(capacity) < count, cols, rowptr


def write_slots(base: jax.Array, values, valid, cols, units) -> jax.Array:
    """The dense ``[n_in, n_out]`` ``base`` with each valid slot's value written at its position (a position
    holds one slot; padding slots write nothing)."""
    n_in, n_out = base.shape
    if base.size < FLAT_LIMIT:   # by flat index, padding dropped out of range: 1.3x the 2-D scatter
        at = jnp.where(valid, cols * n_out + units, base.size)
        return base.reshape(-1).at[at].set(values, unique_indices=True, mode="drop").reshape(base.shape)
    return base.at[cols, jnp.where(valid, units, n_out)].set(values, mode="drop")


def _scatter(values, valid, inputs, units, shape):
    """The dense kernel and mask of stored slots."""
    return (write_slots(jnp.zeros(shape, values.dtype), values, valid, inputs, units),
            write_slots(jnp.zeros(shape, bool), jnp.ones(values.shape, bool), valid, inputs, units))


def csr_slots(size: int, count: int, capacity: float = 1.0) -> int:
    """Slots of a csr layer of ``size`` positions holding ``count`` weights: room for ``capacity`` times the
    count, at most its dense size."""
    # Rounded first: 1.1 x 10 is 11.000000000000002 in floating point, which must give 11 slots, not 12.
    return min(size, math.ceil(round(capacity * count, 6)))


def kernel_layout(shape: tuple, count: int) -> Layout:
    """The :class:`Layout` of a stored kernel of dense ``shape`` holding ``count`` slots (or a fan-in), enough
    to expand it: a 4-D kernel is a convolution over its matrix view (its strides and padding, which expanding
    does not read, are taken as 1 and VALID)."""
    shape = tuple(int(d) for d in shape)
    if len(shape) == 2:
        return Layout(shape, count)
    return Layout((math.prod(shape[:-1]), shape[-1]), count, ConvGeometry(shape, (1, 1), "VALID"))


def _matrix(mask) -> np.ndarray:
    """A concrete kernel's matrix view ``[inputs, n_out]`` (a convolution's ``kh * kw * c_in`` inputs)."""
    mask = np.asarray(mask)
    return mask.reshape(-1, mask.shape[-1])


def _layout_topology(cols, rowptr, layout):
    """The :class:`CSR` of ``cols`` and ``rowptr``; a convolution's transpose is keyed by input channel and
    kernel offset, as its input gradient walks it (:func:`dst.kernels.conv_transpose`)."""
    if layout.conv is None:
        return csr_topology(cols, rowptr, layout.shape[0])
    cols, rowptr = jnp.asarray(cols, jnp.int32), jnp.asarray(rowptr, jnp.int32)
    return CSR(cols, rowptr, *kernels.conv_transpose(cols, rowptr, layout.conv.kernel))


def _csr_layout(mask, capacity: float = 1.0) -> Layout:
    mask = _matrix(mask)
    return Layout(tuple(mask.shape), csr_slots(mask.size, int(mask.sum()), capacity))


def _csr_compress(w, mask, layout):
    # Padding slots belong to the last unit, where they multiply a zero value.
    values, valid, cols, rowptr = _stored_slots(w.reshape(layout.shape), mask.reshape(layout.shape), layout.count)
    return values, valid, _layout_topology(cols, rowptr, layout)


def _csr_slots(values, valid, topology, layout) -> SlotView:
    units = kernels.row_ids(topology.rowptr, layout.count)
    return SlotView(values, valid, topology.cols, units.astype(jnp.int32))


def _csr_expand(values, valid, topology, layout):
    view = _csr_slots(values, valid, topology, layout)
    return _dense_form(_scatter(view.values, view.valid, view.cols, view.units, layout.shape), layout)


def _dense_form(pair, layout):
    """A layer's dense ``(w, mask)`` from its matrix view (a convolution's 4-D kernel)."""
    return tuple(a.reshape(layout.dense_shape) for a in pair)


def _csr_rebuild(values, valid, cols, rowptr, layout):
    return values, valid, _layout_topology(cols, rowptr, layout)


def _csr_conv(x, values, t, conv: ConvGeometry):
    return kernels.csr_conv(x, values, t.cols, t.rowptr, conv.kernel, conv.strides, conv.padding, t.transposed)


def _condensed_layout(mask, capacity: float = 1.0) -> Layout:
    if capacity != 1:
        raise ValueError(f"keeps one fan-in per unit and has no spare slots; sparsity.capacity={capacity} needs "
                         "sparsity.backend=csr")
    mask = _matrix(mask)
    fan_in = mask.sum(axis=0)
    if fan_in.size and fan_in.min() != fan_in.max():
        raise ValueError(f"has fan-ins from {fan_in.min()} to {fan_in.max()}; the condensed backend needs one "
                         "constant fan-in per layer (sparsity.structure=fan_in or n_m)")
    return Layout(tuple(mask.shape), int(fan_in[0]) if fan_in.size else 0)


def _condensed_topology(indices, layout):
    """:func:`condensed_topology`; a convolution's transpose keyed as :func:`_layout_topology` keys it."""
    if layout.conv is None:
        return condensed_topology(indices, layout.shape[0])
    n_out, k = indices.shape
    rowptr = jnp.arange(n_out + 1, dtype=jnp.int32) * k
    return Condensed(indices, *kernels.conv_transpose(indices.reshape(-1), rowptr, layout.conv.kernel))


def _condensed_compress(w, mask, layout):
    n_out, k = layout.shape[1], layout.count
    values, valid, cols, _ = _stored_slots(w.reshape(layout.shape), mask.reshape(layout.shape), n_out * k)
    shape = (n_out, k)
    return values.reshape(shape), valid.reshape(shape), _condensed_topology(cols.reshape(shape), layout)


def _condensed_slots(values, valid, topology, layout) -> SlotView:
    units = jnp.repeat(jnp.arange(layout.shape[1], dtype=jnp.int32), layout.count)
    return SlotView(values.reshape(-1), valid.reshape(-1), topology.indices.reshape(-1), units)


def _condensed_expand(values, valid, topology, layout):
    view = _condensed_slots(values, valid, topology, layout)
    return _dense_form(_scatter(view.values, view.valid, view.cols, view.units, layout.shape), layout)


def _condensed_rebuild(values, valid, cols, rowptr, layout):
    del rowptr     # every unit holds `layout.count` slots
    shape = (layout.shape[1], layout.count)
    return values.reshape(shape), valid.reshape(shape), _condensed_topology(cols.reshape(shape), layout)


def _condensed_conv(x, values, t, conv: ConvGeometry):
    n_out, k = values.shape
    rowptr = np.arange(n_out + 1, dtype=np.int32) * k
    return kernels.csr_conv(x, values.reshape(-1), t.indices.reshape(-1), rowptr, conv.kernel, conv.strides,
                            conv.padding, t.transposed)


def _dense_layout(mask, capacity: float = 1.0) -> Layout:
    del capacity   # every position is a place
    return Layout(tuple(np.shape(mask)), int(np.size(mask)))


def _dense_slots(values, valid, topology, layout) -> SlotView:
    """Every position of a dense ``[n_in, n_out]`` kernel as a slot, in CSR order (unit by unit, then input)."""
    del topology
    n_in, n_out = layout.shape
    return SlotView(values.T.reshape(-1), valid.T.reshape(-1), jnp.tile(jnp.arange(n_in, dtype=jnp.int32), n_out),
                    jnp.repeat(jnp.arange(n_out, dtype=jnp.int32), n_in))


def _dense_rebuild(values, valid, cols, rowptr, layout):
    units = kernels.row_ids(rowptr, values.shape[0]).astype(jnp.int32)
    w, mask = _scatter(values, valid, cols, units, layout.shape)
    return w, mask, None


def _dense_backend(name: str) -> Backend:
    return Backend(name, _dense_layout, lambda w, mask, layout: (w, mask, None),
                   lambda values, slots, topology, layout: (values, slots),
                   lambda x, values, topology: x @ values, _dense_slots, _dense_rebuild, fixed_fan_in=False,
                   stores=False, fields=(), topology_from=lambda fields, layout: None,
                   count_of=lambda values: int(np.size(values)), matmul_xla=lambda x, values, topology: x @ values)


def masked() -> Backend:
    """The dense kernel and its mask, as everywhere else in dst: nothing is converted, and the step runs the model
    on its dense params with XLA's matmul. Its slot view is every position of the layer."""
    return _dense_backend("masked")


def dense() -> Backend:
    """A plain dense model (``sparsity=dense``): the masked backend's storage, with no mask in the train step."""
    return _dense_backend("dense")


def csr() -> Backend:
    """Compressed rows over output units at a fixed nnz; products by :func:`dst.kernels.csr_matmul`."""
    return Backend("csr", _csr_layout, _csr_compress, _csr_expand,
                   lambda x, values, t: kernels.csr_matmul(x, values, t.cols, t.rowptr, t.transposed),
                   _csr_slots, _csr_rebuild, fixed_fan_in=False, stores=True, fields=("cols", "rowptr"),
                   topology_from=lambda fields, layout: _layout_topology(fields["cols"], fields["rowptr"], layout),
                   count_of=lambda values: int(np.size(values)),
                   matmul_xla=lambda x, values, t: kernels.csr_matmul_xla(x, values, t.cols, t.rowptr),
                   conv=_csr_conv)


def condensed() -> Backend:
    """Constant fan-in ``[n_out, k]`` values and indices; products by :func:`dst.kernels.condensed_matmul`."""
    return Backend("condensed", _condensed_layout, _condensed_compress, _condensed_expand,
                   lambda x, values, t: kernels.condensed_matmul(x, values, t.indices, t.transposed),
                   _condensed_slots, _condensed_rebuild, fixed_fan_in=True, stores=True, fields=("indices",),
                   topology_from=lambda fields, layout: _condensed_topology(jnp.asarray(fields["indices"], jnp.int32),
                                                                            layout),
                   count_of=lambda values: int(np.shape(values)[1]),
                   matmul_xla=lambda x, values, t: kernels.condensed_matmul_gather(x, values, t.indices),
                   conv=_condensed_conv)


_MAKERS = {"masked": masked, "csr": csr, "condensed": condensed, "dense": dense}


def make(name: str) -> Backend:
    """The backend called ``name``."""
    if name not in _MAKERS:
        raise ValueError(f"sparsity.backend must be one of {', '.join(BACKENDS)}; got {name!r}")
    return _MAKERS[name]()


def layouts(backend: Backend, masks, layers, capacity: float = 1.0, convolutions=None) -> dict[str, Layout]:
    """The static :class:`Layout` of each stored layer, from concrete masks, with room for ``capacity``
    times each layer's active count (``ValueError`` naming the layer when the backend cannot hold its mask).
    ``convolutions``: the :class:`ConvGeometry` of each convolution among ``layers`` (:func:`convolutions`)."""
    leaves, convolutions = named_leaves(masks), convolutions or {}
    out = {}
    for name in layers:
        if np.ndim(leaves[name]) != 2 and name not in convolutions:
            raise ValueError(f"sparsity.backend={backend.name} stores fully connected kernels and the convolutions "
                             f"it is given; {name} has shape {tuple(np.shape(leaves[name]))}")
        try:
            out[name] = backend.layout(leaves[name], capacity)._replace(conv=convolutions.get(name))
        except ValueError as err:
            raise ValueError(f"sparsity.backend={backend.name}: layer {name} {err}.") from None
    return out


def compress(backend: Backend, layout_of: dict[str, Layout], params, masks):
    """``(params, slots, topologies)``: each layer of ``layout_of`` in stored form. ``params`` hold its
    values, ``slots`` its slot masks and ``topologies`` (``{layer name: CSR | Condensed}``) where the
    values sit. Other leaves pass through (``slots`` keeps their masks)."""
    p, m = named_leaves(params), named_leaves(masks)
    stored = {name: backend.compress(p[name], m[name], lay) for name, lay in layout_of.items()}
    topologies = {name: v[2] for name, v in stored.items()}
    return (replace_named(params, {n: v[0] for n, v in stored.items()}),
            replace_named(masks, {n: v[1] for n, v in stored.items()}), topologies)


def expand(backend: Backend, layout_of: dict[str, Layout], params, slots, topologies):
    """The dense view ``(params, masks)`` of a stored triple (the inverse of :func:`compress`)."""
    p, s = named_leaves(params), named_leaves(slots)
    dense = {name: backend.expand(p[name], s[name], topologies[name], lay) for name, lay in layout_of.items()}
    return (replace_named(params, {n: w for n, (w, _) in dense.items()}),
            replace_named(slots, {n: mask for n, (_, mask) in dense.items()}))


def at_slots(backend: Backend, layout_of: dict[str, Layout], flags, masks):
    """A dense bool pytree ``flags`` read at the slots that stored ``masks`` give each layer (bool per slot;
    other leaves: ``flags & masks``): the weights an update grew, the forward set among the stored ones."""
    values, slots, _ = compress(backend, layout_of, flags, masks)
    return jax.tree_util.tree_map(jnp.logical_and, values, slots)


class Stored(NamedTuple):
    """What a stored model's apply takes in the place of its params: the params (stored layers as
    values) and where the values sit."""

    params: Any
    topologies: dict


def sharded_matmul(backend: Backend, mesh, axis: str = "data") -> Callable:
    """``backend.matmul`` for a batch split over ``mesh``'s ``axis`` (data parallelism): each device runs
    the kernels on its rows (``jax.shard_map``) with the whole topology and values, which every device
    holds; the value gradient's per-device sums are added over the devices by the map's transpose."""
    return sharded(backend.matmul, mesh, axis)


def sharded(product: Callable, mesh, axis: str = "data") -> Callable:
    """``product(x, values, topology)`` on each device's rows of ``x`` (see :func:`sharded_matmul`)."""
    from jax.sharding import PartitionSpec

    rows, whole = PartitionSpec(axis), PartitionSpec()
    # check_vma=False: the kernels' custom VJP returns plain cotangents, without the manual-axis types that
    # the check wants; the map's transpose still sums the replicated inputs' cotangents over the devices.
    return jax.shard_map(product, mesh=mesh, in_specs=(rows, whole, whole), out_specs=rows, check_vma=False)


def _conv_padding(padding):
    """An ``nn.Conv``'s padding as :func:`dst.kernels.csr_conv` takes it, or ``None`` (CIRCULAR, CAUSAL)."""
    if isinstance(padding, str):
        return padding.upper() if padding.upper() in ("SAME", "VALID") else None
    if isinstance(padding, int):
        return ((padding, padding), (padding, padding))
    pairs = tuple((p, p) if isinstance(p, int) else tuple(int(v) for v in p) for p in padding)
    return pairs if len(pairs) == 2 and all(len(p) == 2 for p in pairs) else None


def _unstorable(module: nn.Conv, x) -> str | None:
    """Why the kernels cannot run this call of ``module`` (``None``: they can)."""
    dims = (module.kernel_size,) if isinstance(module.kernel_size, int) else tuple(module.kernel_size)
    ones = lambda v: v is None or all(d == 1 for d in ((v,) if isinstance(v, int) else v))
    if len(dims) != 2 or np.ndim(x) != 4:
        return f"a {len(dims)}-D convolution on inputs of rank {np.ndim(x)} (the kernels take 2-D, batched)"
    if module.feature_group_count != 1:
        return f"grouped ({module.feature_group_count} groups)"
    if not ones(module.kernel_dilation) or not ones(module.input_dilation):
        return "dilated"
    if _conv_padding(module.padding) is None:
        return f"padding {module.padding}"
    return None


def convolutions(model: nn.Module, example, layers) -> tuple[dict, dict]:
    """``(geometries, kept)`` of the ``nn.Conv`` kernels among ``layers`` (kernel leaf names): the
    :class:`ConvGeometry` of each one the kernels can run, and for the others why not (grouped, dilated,
    CIRCULAR padding, not 2-D), from one abstract call of ``model`` on ``example`` (a batch of inputs)."""
    geometries, kept = {}, {}

    def record(next_fun, args, kwargs, context):
        module = context.module
        name = "/".join(module.path) + "/kernel"
        if context.method_name == "__call__" and isinstance(module, nn.Conv) and name in layers:
            why = _unstorable(module, args[0])
            if why is not None:
                kept[name] = why
            else:
                c_in = np.shape(args[0])[-1]
                kh, kw = module.kernel_size
                strides = (1, 1) if module.strides is None else (
                    (module.strides,) * 2 if isinstance(module.strides, int) else tuple(module.strides))
                geometries[name] = ConvGeometry((kh, kw, c_in, module.features), strides,
                                                _conv_padding(module.padding))
        return next_fun(*args, **kwargs)

    with nn.intercept_methods(record):
        jax.eval_shape(lambda x: model.init(jax.random.key(0), x), jax.ShapeDtypeStruct(np.shape(example), jnp.float32))
    return geometries, kept


def output_shape(layout: Layout, input_shape: tuple) -> tuple:
    """The shape of a stored layer's output for an input of ``input_shape``."""
    if layout.conv is None:
        return tuple(input_shape[:-1]) + (layout.shape[1],)
    g = layout.conv
    run = lambda x: jax.lax.conv_general_dilated(x, jnp.zeros(g.kernel, x.dtype), g.strides, g.padding,
                                                 dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return jax.eval_shape(run, jax.ShapeDtypeStruct(tuple(input_shape), jnp.float32)).shape


def stored_apply(model: nn.Module, backend: Backend, layout_of: dict[str, Layout], mesh=None):
    """The trainer's ``apply_fn`` (:mod:`dst.train.apply`) for a model stored by ``backend``: it takes a
    :class:`Stored` where the masked model takes params, and computes every stored ``nn.Dense`` as
    ``backend.matmul(x, values, topology) + bias`` and every stored ``nn.Conv`` as ``backend.conv`` of its
    layout's :class:`ConvGeometry` (plus bias); other modules run as they are.

    ``apply_fn.with_taps(stored, model_state, x, train, rng, probes)`` also adds ``probes[layer]`` to
    each stored layer's output and returns its inputs, ``(logits, model_state, inputs)``: the gradient
    with respect to the probes is each layer's output gradient, so a dense weight gradient
    ``inputs^T @ d probes`` can be formed one layer at a time where an algorithm needs it (RigL).
    With a ``mesh`` (data parallelism) the products run on each device's rows (:func:`sharded_matmul`).
    """
    from dst.train.apply import flax_apply  # here: dst.train imports this module

    modules = {name.rsplit("/", 1)[0]: name for name in layout_of}
    masked = flax_apply(model)
    matmul = backend.matmul if mesh is None else sharded_matmul(backend, mesh)
    convs = {name: (lambda x, v, t, g=lay.conv: backend.conv(x, v, t, g)) for name, lay in layout_of.items()
             if lay.conv is not None}
    if mesh is not None:
        convs = {name: sharded(conv, mesh) for name, conv in convs.items()}

    def run(stored: Stored, model_state, x, train, rng, probes):
        inputs = {}

        def interceptor(next_fun, args, kw, context):
            module = context.module
            name = modules.get("/".join(module.path))
            kind = nn.Dense if name not in convs else nn.Conv
            if context.method_name != "__call__" or name is None or not isinstance(module, kind):
                return next_fun(*args, **kw)
            params = module.variables["params"]
            (x_in,) = args
            if name in convs and (why := _unstorable(module, x_in)) is not None:
                raise ValueError(f"sparsity.backend={backend.name} cannot run {name} on its kernels: the convolution "
                                 f"is {why}, and they run 2-D convolutions without groups or dilation with SAME, "
                                 "VALID or explicit padding; leave it out of the stored convolutions "
                                 "(dst.backends.convolutions keeps it masked).")
            inputs[name] = x_in
            product = matmul if name not in convs else convs[name]
            y = product(x_in, params["kernel"], stored.topologies[name])
            y = y + params["bias"] if module.use_bias else y
            return y if probes is None else y + probes[name]

        with nn.intercept_methods(interceptor):
            logits, model_state = masked(stored.params, model_state, x, train, rng)
        return logits, model_state, inputs

    def apply_fn(stored, model_state, x, train, rng):
        return run(stored, model_state, x, train, rng, None)[:2]

    apply_fn.with_taps = run
    return apply_fn
