"""Prune-and-regrow on stored layers (``csr``, ``condensed``), one layer at a time, without their dense form.

At an update step of a :func:`dst.algorithms.base.prune_and_regrow` algorithm (SET, RigL, MEST, with or
without its decay), each stored layer is updated from its stored values, by the one prune-and-regrow of every
storage (:func:`dst.algorithms.layer_view.prune_regrow`) over the layer's :func:`slot_view`:

* **drop** selects among the stored values with the algorithm's own drop rule (``|w|``, Mocanu's
  sign split, MEST's ``|w| + lambda |g|`` with ``g`` the value gradient the step already has);
* **grow** streams over blocks of whole output units. A block's grow score is formed there (RigL: the
  block of the dense weight gradient ``output gradients[:, block]^T @ inputs``, from the step's own
  forward and backward pass; SET/MEST: keyed random ranks). Unstructured, the block's candidates are
  merged with the best so far in a buffer of the layer's capacity (a streaming top-k; candidates
  below the k-th key so far are dropped first); under fan-in or N:M, whose groups lie within a unit,
  each block refills its own groups;
* the kept and the grown weights, both already in CSR order, are merged into a new structure of the
  same capacity (values kept, grown ones zero), and the optimizer's moments move with their weights.

The dense temporaries are one block of the grow score and its keys (:data:`GROW_BLOCK` elements; the
whole layer when it fits), and layers run one after another (each waits for the one before), so an
update of a network holds one layer's block at a time, at update steps only.

The selection is the dense algorithm's, decision for decision: both sides rank by (score, keyed
priority of the weight's flat index in the layer), :func:`dst.selection.priorities_at`, so ties break
alike and a stored run keeps the masked run's masks (``tests/test_stored_runs.py``,
``tests/test_stored_update.py``). Under ``grow_init=normal`` the grown weights take the dense layer's normal draw
at their positions (:func:`grown_normals`) times the scale the dense rule computes. What this path does not cover
(block structure) updates on the dense view instead
(:func:`dst.train.stored.update_algorithm`).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from dst import backends
from dst import kernels
from dst.algorithms.base import SparseAlgorithm
from dst.algorithms.base import grow_scale
from dst.algorithms.layer_view import LayerView
from dst.algorithms.layer_view import call_with
from dst.algorithms.layer_view import prune_regrow
from dst.algorithms.set import random_grow_score
from dst.masks import named_leaves
from dst.masks import path_name
from dst.masks import replace_named
from dst.selection import Priorities
from dst.selection import bottom_k_mask
from dst.selection import grouped_top_k_mask
from dst.selection import score_keys
from dst.train import sampled_growth
from dst.train.moments import map_param_trees

# Elements of the grow score formed at once (64 MiB of float32): a layer larger than this grows by
# blocks of output units.
GROW_BLOCK = 2**24

_U32 = jnp.uint32


def unsupported(algo: SparseAlgorithm, storage) -> str | None:
    """Why ``algo`` cannot update ``storage``'s layers from storage (they then update on the dense view),
    or ``None``."""
    rules = algo.rules
    if rules is None:
        return "the algorithm has its own update"
    structure = rules.structure
    if structure.name != "unstructured" and (structure.unit_group is None or structure.drop is not bottom_k_mask):
        return f"structure={structure.name} has groups across output units"
    return None


def dense_positions(cols, units, n_out: int) -> jax.Array:
    """Each slot's flat index in the dense ``[n_in, n_out]`` layer, ``input * n_out + unit`` (uint32): what
    the tie-break priorities of a selection over stored weights are drawn for."""
    return cols.astype(_U32) * _U32(n_out) + units.astype(_U32)


WIDE = 2**32    # a layer of this many positions or more: its flat positions wrap at 32 bits


def wide(shape) -> bool:
    """Whether a layer of ``shape`` has 2^32 positions or more: its 32-bit flat positions (and so the tie-break
    priorities drawn from them) repeat, and its selections break the remaining ties by each weight's input."""
    return math.prod(shape) >= WIDE


def sampled(rules, shape) -> bool:
    """Whether a layer of ``shape`` grows by sampling positions (:mod:`dst.train.sampled_growth`): one of
    2^32 positions or more, under a uniform random grow score (SET, MEST), unstructured."""
    return wide(shape) and rules.grow_score is random_grow_score and rules.structure.name == "unstructured"


def _check_size(name, rules, shape):
    """Refuse, at trace time, an update of a layer of 2^32+ positions that the update cannot rank exactly."""
    if not wide(shape) or sampled(rules, shape):
        return
    if not (kernels.available() and jax.default_backend() == "cpu"):
        raise ValueError(f"layer {name} has {math.prod(shape):,} positions, and its in-step update ranks and "
                         "merges them by 32-bit keys without the compiled kernels; reinstall dst so they build.")
    if rules.structure.name != "unstructured":
        raise ValueError(f"layer {name} has {math.prod(shape):,} positions, and structure={rules.structure.name} "
                         "ranks the positions of a group by their 32-bit index (below 2^32 = 4,294,967,296); "
                         "layers this large grow unstructured (sparsity.structure=unstructured).")


def conv_kernel_gradient(geometry: backends.ConvGeometry, x, dy) -> jax.Array:
    """A convolution's dense kernel gradient ``[kh, kw, c_in, n_out]`` from its inputs and output gradients (on the
    compiled kernels where they run: an update computes it under ``lax.cond``, where XLA's CPU convolution is slow)."""
    return kernels.kernel_gradient(x, dy, geometry.kernel, geometry.strides, geometry.padding)


def dense_gradients(storage, grads, taps, by_unit: bool = False):
    """``grads`` with each stored layer's value gradient replaced by its dense weight gradient
    ``inputs^T @ output gradient`` (``taps = (inputs, output gradients)``, per layer); ``by_unit``: its
    transpose ``[n_out, n_in]``, output unit by output unit as the slots are laid out (the same products)."""
    inputs, cotangents = taps
    dense = {}
    for name, layout in storage.layout_of.items():
        n_in, n_out = layout.shape
        if layout.conv is not None:   # a convolution's kernel gradient, from the same two arrays
            w_grad = conv_kernel_gradient(layout.conv, inputs[name], cotangents[name])
            dense[name] = w_grad.reshape(n_in, n_out).T if by_unit else w_grad
            continue
        x = inputs[name].reshape(-1, n_in).astype(jnp.float32)
        dy = cotangents[name].reshape(-1, n_out).astype(jnp.float32)
        dense[name] = dy.T @ x if by_unit else x.T @ dy
    return replace_named(grads, dense)


class LayerUpdate(NamedTuple):
    """One stored layer after an update: its slots' values, which slots hold a weight, the topology,
    where each slot's weight was before (flat slot index; ``-1``: grown), which slots were grown, and
    each slot's output unit (flat; ``n_out`` for an unused slot) and input (flat)."""

    values: jax.Array
    valid: jax.Array
    topology: backends.CSR | backends.Condensed
    source: jax.Array
    grown: jax.Array
    units: jax.Array
    cols: jax.Array


def grow_candidates(rules, key, valid, kept, cols, units, x, dy, k, shape, capacity: int, block: int = GROW_BLOCK,
                    need=None, scores_of=None):
    """``(inputs, units, chosen)``: the weights to grow outside ``kept``, of largest grow score (ties by
    keyed priority of the dense position), in CSR order (by unit, then input) in ``capacity`` slots,
    ``chosen`` marking the used ones (a prefix). Unstructured: the ``k`` largest of the layer; under a
    structure whose groups lie within units (fan-in, N:M): each group refilled to the count it had in
    ``valid``, or each unit by ``need[unit]`` where given (whole units as groups). The layer's dense
    grow score is formed in blocks of at most ``block`` elements (whole output units, laid out unit by
    unit). Each block's candidates are merged with the best so far
    (unstructured) or appended (structured), so the result is the selection over the whole layer and
    stays in CSR order without a sort. ``scores_of(start, width)``, where given, is the grow score of the
    ``width`` units from ``start`` (``[width, n_in]``) in the place of the rule's (SNFS: its momentum's ``|m|``)."""
    n_in, n_out = shape
    width = max(1, min(n_out, block // max(n_in, 1)))
    blocks = -(-n_out // width)
    group = None if rules.structure.unit_group is None else rules.structure.unit_group(n_in)
    inputs = jnp.arange(n_in, dtype=_U32)[None, :]
    slot = jnp.arange(capacity)

    def candidates(b):
        start = jnp.minimum(b * width, n_out - width)     # the last block overlaps the one before ...
        block_units = start + jnp.arange(width, dtype=jnp.int32)
        local = jnp.where((units >= start) & (units < start + width), units - start, width)   # width: dropped
        here = lambda m: jnp.zeros((width, n_in), bool).at[local, cols].max(m, mode="drop")
        kept_here = here(kept)
        eligible = ~kept_here & (block_units >= b * width)[:, None]   # ... and skips the units it repeats
        positions = inputs * _U32(n_out) + block_units.astype(_U32)[:, None]      # flat, wrapped at 2^32
        if scores_of is None:
            grads = lax.dynamic_slice_in_dim(dy, start, width, axis=1).T @ x        # [width, n_in]
            scores = call_with(rules.grow_score, key, None, grads, positions=positions)
        else:
            scores = scores_of(start, width)
        if group is None:
            ins = jnp.broadcast_to(inputs, (width, n_in)).astype(jnp.int32).reshape(-1)
            return jnp.where(eligible, score_keys(scores), _U32(0)).reshape(-1), positions.reshape(-1), ins
        view = lambda a: a.reshape(width, n_in // group, group)
        count = lambda m: jnp.sum(view(m), axis=2, keepdims=True, dtype=jnp.int32)
        if need is None:
            wanted = count(here(valid)) - count(kept_here)
        else:   # given per unit (SRigL: its new fan-in, none for an ablated unit)
            wanted = need[block_units].reshape(width, 1, 1)
        chosen = grouped_top_k_mask(view(scores), view(eligible), wanted, key, 2, view(positions))
        return chosen.reshape(-1), positions.reshape(-1)

    def priorities(positions, ins):   # a wide layer's wrapped positions repeat: their inputs settle it
        return Priorities(key, positions, positions.size, ins if wide(shape) else None)

    def best_of(keys, positions, ins, qualify, count):
        """The ``capacity`` slots of ``keys`` (0: empty), ``positions`` and inputs ``ins`` that ``qualify``
        (``count`` of them, at most ``capacity``), in order."""
        index, _ = kernels.compact(qualify, capacity)
        return jnp.where(slot < count, keys[index], _U32(0)), positions[index], ins[index]

    def merge(b, best):
        best_keys, best_positions, best_ins, floor = best
        keys, positions, ins = candidates(b)
        # A candidate below `floor` (the k-th best key so far, once k are held) can never be chosen: the
        # block's others are few after the first blocks, and only they meet the best so far. A block with
        # more than fit is first cut to its own k best.
        qualify = keys >= floor
        count = jnp.sum(qualify, dtype=jnp.int32)

        def own_best():
            chosen = kernels.top_k_of_keys(keys, k, priorities(positions, ins))
            return best_of(keys, positions, ins, chosen, jnp.sum(chosen, dtype=jnp.int32))

        keys, positions, ins = lax.cond(count <= capacity, lambda: best_of(keys, positions, ins, qualify, count),
                                        own_best)
        keys, positions = jnp.concatenate([best_keys, keys]), jnp.concatenate([best_positions, positions])
        ins = jnp.concatenate([best_ins, ins])
        chosen = kernels.top_k_of_keys(keys, k, priorities(positions, ins))
        held = jnp.sum(chosen, dtype=jnp.int32)
        keys, positions, ins = best_of(keys, positions, ins, chosen, held)
        floor = jnp.where(held >= k, jnp.min(jnp.where(slot < held, keys, _U32(0xFFFFFFFF))), _U32(1))
        return keys, positions, ins, floor

    def append(b, found):
        count, found_positions = found
        chosen, positions = candidates(b)
        index, new = kernels.compact(chosen, capacity)
        at = jnp.where(slot < new, count + slot, capacity)            # capacity: dropped
        return count + new, found_positions.at[at].set(positions[index], mode="drop")

    if group is not None:
        count, positions = lax.fori_loop(0, blocks, append, (jnp.int32(0), jnp.zeros(capacity, _U32)))
        return (positions // _U32(n_out)).astype(jnp.int32), (positions % _U32(n_out)).astype(jnp.int32), slot < count
    if blocks == 1:    # the whole layer in one block: one selection, nothing to merge
        keys, positions, ins = candidates(0)
        chosen = kernels.top_k_of_keys(keys, k, priorities(positions, ins))
        index, count = kernels.compact(chosen, capacity)
        positions, ins, chosen = positions[index], ins[index], slot < count
    else:
        empty = (jnp.zeros(capacity, _U32), jnp.zeros(capacity, _U32), jnp.zeros(capacity, jnp.int32), _U32(1))
        best_keys, positions, ins, _ = lax.fori_loop(0, blocks, merge, empty)
        chosen = best_keys > 0
    # The unit from the wrapped position and the input: exact at any size (both below 2^32).
    return ins, (positions - ins.astype(_U32) * _U32(n_out)).astype(jnp.int32), chosen


def slot_view(rules, values, valid, cols, units, value_grads, x, dy, shape, block: int = GROW_BLOCK) -> LayerView:
    """A stored layer's slots in CSR order (flat: ``cols`` and ``units`` of each slot) as the
    :class:`dst.algorithms.layer_view.LayerView` of :func:`dst.algorithms.layer_view.prune_regrow`: the drop
    selects among the slots (ties by the keyed priority of each slot's dense position, as the dense view
    breaks them; the compiled top-k where built), the grow streams over blocks of units
    (:func:`grow_candidates`; sampled positions on a layer too large to rank, :mod:`dst.train.sampled_growth`),
    and the kept and grown weights are merged into new slots (:func:`merge_kept_and_grown`, whose result is
    the view's)."""
    n_in, n_out = shape
    capacity = values.shape[0]
    positions = dense_positions(cols, units, n_out)
    tiebreak = cols if wide(shape) else None

    def select(scores, eligible, k, key):
        return bottom_k_mask(scores, eligible, k, key, positions, kernels.top_k_of_keys, tiebreak)

    def grow(key, kept, k):
        if sampled(rules, shape):     # too large to rank: positions drawn (the same law as uniform ranks)
            return sampled_growth.sample_growth(key, valid, kept, cols, units, k, shape, capacity)
        return grow_candidates(rules, key, valid, kept, cols, units, x, dy, k, shape, capacity, block)

    def place(key, kept, grown):
        merged = merge_kept_and_grown(values, cols, units, kept, *grown, shape)
        if rules.grow_init == "zeros":
            return merged
        new_values, _, new_cols, new_units, _, new_grown, _ = merged
        new_values = with_normal_growth(new_values, new_grown, grow_scale(values, kept, rules.grow_std), key, new_cols,
                                        new_units, shape)
        return (new_values, *merged[1:])

    return LayerView(values, value_grads, valid, n_in * n_out, {"select": select, "positions": positions}, grow,
                     place)


# Up to this many positions, grown values under grow_init=normal are the dense layer's draw at their positions
# (the masked run's values); above it, one draw per slot (the same law).
NORMAL_DRAW_LIMIT = 2**26


def with_normal_growth(values, grown, scale, key, cols, units, shape) -> jax.Array:
    """``values`` with each ``grown`` slot set to ``scale`` times its :func:`grown_normals` draw: the values a dense
    layer's ``grow_init=normal`` gives the weights grown at those positions (every stored update's last step)."""
    return jnp.where(grown, scale * grown_normals(key, cols, units, shape, values.dtype), values)


def grown_normals(key, cols, units, shape, dtype) -> jax.Array:
    """A standard normal per slot (``cols``, ``units``): the dense layer's draw ``normal(key, shape)`` at each slot's
    position, as :func:`dst.algorithms.base.grow_values` draws it, on a layer of at most :data:`NORMAL_DRAW_LIMIT`
    positions (a dense temporary at update steps); one draw per slot above, where the dense draw would not fit."""
    if math.prod(shape) <= NORMAL_DRAW_LIMIT:
        return jax.random.normal(key, shape, dtype)[cols, jnp.minimum(units, shape[1] - 1)]
    return jax.random.normal(key, cols.shape, dtype)


def update_slots(rules, key, f, values, valid, cols, units, value_grads, x, dy, shape, block: int = GROW_BLOCK,
                 excess=0):
    """One stored layer's update by ``rules`` (a :class:`dst.algorithms.base.PruneRegrowRules`):
    :func:`dst.algorithms.layer_view.prune_regrow` on its :func:`slot_view`, ``(values, live, cols, units,
    source, grown, rowptr)`` of the new slots, in CSR order, unused slots last (unit ``n_out``). The dense
    update's decisions, from storage; ``excess`` more weights are dropped than grown (MEST's decay: the
    freed slots join the unused ones). The selections, the merge and the transposes are compiled calls
    where the kernels are built (:mod:`dst.kernels`), XLA programs with the same results elsewhere."""
    view = slot_view(rules, values, valid, cols, units, value_grads, x, dy, shape, block)
    return prune_regrow(rules.drop_rule, key, view, f, excess)


def merge_kept_and_grown(values, cols, units, kept, grown_inputs, grown_units, grown, shape):
    """``(values, live, cols, units, source, grown, rowptr)`` of a layer's new slots: its ``kept`` slots (with
    their values) and the ``grown`` weights (value 0) merged in CSR order (unit, then input), unused slots at
    the end (unit ``n_out``); ``source`` is each new slot's old slot (-1: grown or unused). The last step of
    every stored prune-and-regrow (:func:`update_slots`, SNFS's and SRigL's updates)."""
    n_in, n_out = shape
    merged = kernels.merge_slots(cols, units, kept, grown_inputs, grown_units, grown, n_in, n_out)
    source = merged.source
    live = merged.units < n_out
    new_values = jnp.where(source >= 0, values[jnp.maximum(source, 0)], 0).astype(values.dtype)
    return new_values, live, merged.cols, merged.units, source, live & (source < 0), merged.rowptr


def move_moments(opt_state, params, sources: dict):
    """The optimizer's per-weight moments moved with their weights: each stored layer's to its new slots
    (``sources``: ``{layer: the old slot of each new slot, -1 where grown or unused}``, whose moments start at
    zero until the step resets a grown weight's anyway)."""
    def move(moments):
        leaves = named_leaves(moments)
        return replace_named(moments, {n: jnp.where(src >= 0, leaves[n].reshape(-1)[jnp.maximum(src, 0)],
                                                    0).reshape(leaves[n].shape) for n, src in sources.items()})

    return map_param_trees(move, opt_state, params)


def update_layer(rules, key, f, values, valid, topology, value_grads, x, dy, backend: backends.Backend,
                 layout: backends.Layout, block: int = GROW_BLOCK, excess=0) -> LayerUpdate:
    """One stored layer's update by ``rules``: :func:`update_slots` on the ``backend``'s slot view of the
    layer, stored again by the backend in the same capacity (``layout``)."""
    view = backend.slots(values, valid, topology, layout)
    grads = backend.slots(value_grads, valid, topology, layout).values     # in the slots' order
    new_values, live, new_cols, new_units, source, grown, rowptr = update_slots(
        rules, key, f, view.values, view.valid, view.cols, view.units, grads, x, dy, layout.shape, block, excess)
    grown = backend.rebuild(grown, live, new_cols, rowptr, layout)[0]     # laid out as the values are
    new_values, live, new_topology = backend.rebuild(new_values, live, new_cols, rowptr, layout)
    return LayerUpdate(new_values, live, new_topology, source, grown, new_units, new_cols)


def update_layers(storage, rules, key, params, slots, topologies, opt_state, ever_active, grads, taps, *,
                  stored_layer, dense_layer):
    """The loop of a stored update by ``rules`` (a :class:`dst.algorithms.base.PruneRegrowRules`) over the
    params' leaves, one stored layer after another. A leaf that ``rules.updates(name, dense shape)`` takes
    is updated by ``stored_layer(name, key, operands, layout) -> LayerUpdate``
    where it is stored (``operands``: values, slots, topology, value gradients, inputs, output gradients)
    and by ``dense_layer(name, key, w, g, mask) -> (w, mask, grown)`` where it stays masked, or where it is a
    stored convolution (on its own dense view, :func:`conv_layer_update`); its key folds
    in its place among all leaves (``rules.keys_by="leaf"``) or among the leaves taken (``"layer"``). The
    optimizer's moments move to their weights' new slots and ``ever_active`` gains the new weights.
    Returns ``(params, slots, topologies, opt_state, ever_active, grown)``."""
    inputs, cotangents = taps
    flat, treedef = jax.tree_util.tree_flatten_with_path(params)
    out_p, out_s, out_g, sources = [], [], [], {}
    ever = None if ever_active is None else treedef.flatten_up_to(ever_active)
    topologies = dict(topologies)
    done, taken = None, 0
    for i, ((path, w), m, g) in enumerate(zip(flat, treedef.flatten_up_to(slots), treedef.flatten_up_to(grads))):
        name = path_name(path)
        layout = storage.layout_of.get(name)
        take = rules.updates(name, layout.shape if layout is not None else tuple(w.shape))
        layer_key = jax.random.fold_in(key, taken if rules.keys_by == "layer" else i)
        taken += take
        if take and layout is not None and layout.conv is not None:   # a stored convolution: its dense rule
            if done is not None:
                done, operands = lax.optimization_barrier((done, (w, m, g)))
            w, m, grown, topologies[name], sources[name], dense_m = conv_layer_update(
                storage.backend, layout, dense_layer, name, layer_key, w, m, topologies[name], inputs[name],
                cotangents[name])
            done = w
            if ever is not None:
                ever[i] = ever[i] | dense_m
        elif take and layout is not None:
            n_in, n_out = layout.shape
            _check_size(name, rules, layout.shape)
            operands = (w, m, topologies[name], g, inputs[name].reshape(-1, n_in).astype(jnp.float32),
                        cotangents[name].reshape(-1, n_out).astype(jnp.float32))
            if done is not None:   # one layer at a time: this layer starts after the last one ended
                done, operands = lax.optimization_barrier((done, operands))
            new = stored_layer(name, layer_key, operands, layout)
            done = new
            w, m, grown = new.values, new.valid, new.grown
            topologies[name], sources[name] = new.topology, new.source
            if ever is not None:
                ever[i] = ever[i].at[new.cols, new.units].max(new.units < n_out, mode="drop")   # unused: n_out
        elif take:
            w, m, grown = dense_layer(name, layer_key, w, g, m)
            if ever is not None:
                ever[i] = ever[i] | m
        else:
            grown = jnp.zeros(m.shape, bool)
        out_p.append(w)
        out_s.append(m)
        out_g.append(grown)

    opt_state = move_moments(opt_state, params, sources)
    ever_active = None if ever is None else treedef.unflatten(ever)
    return (treedef.unflatten(out_p), treedef.unflatten(out_s), topologies, opt_state, ever_active,
            treedef.unflatten(out_g))


def conv_layer_update(backend, layout, dense_layer, name, key, values, valid, topology, x, dy):
    """A stored convolution updated by the algorithm's dense rule (``dense_layer``) on its own dense view (a
    convolution's kernel is small beside its activations), stored again in the same capacity. Returns
    ``(values, valid, grown, topology, source, dense mask)``: ``source`` each new slot's old slot (``-1``:
    grown or padding), as the stored layers' moves give it."""
    w, mask = backend.expand(values, valid, topology, layout)
    new_w, new_mask, grown = dense_layer(name, key, w, conv_kernel_gradient(layout.conv, x, dy), mask)
    new_values, new_valid, new_topology = backend.compress(new_w, new_mask, layout)
    slot_ids = jnp.arange(1, new_values.size + 1, dtype=jnp.int32).reshape(values.shape)
    old_slot = backend.expand(slot_ids, valid, topology, layout)[0]              # 0 where no weight was
    source = backend.compress(old_slot, new_mask, layout)[0].reshape(-1) - 1
    grown_slots = backend.compress(grown, new_mask, layout)[0] & new_valid
    return new_values, new_valid, grown_slots, new_topology, source, new_mask


def update_stored(algo: SparseAlgorithm, storage, block: int = GROW_BLOCK):
    """``act(state, key, params, slots, topologies, opt_state, ever_active, grads, taps)`` for
    :func:`dst.train.stored.update_algorithm` at a step where ``algo`` updates by its ``rules``
    (:func:`update_layers`): stored layers by :func:`update_layer`, other sparse leaves (masked layers of a
    stored run) by the algorithm's dense layer update."""
    rules = algo.rules
    if rules.ablation is not None:   # SRigL
        from dst.train import stored_srigl  # here: it builds on this module

        return stored_srigl.update_stored(algo, storage, block)

    def act(state, key, params, slots, topologies, opt_state, ever_active, grads, taps):
        f = rules.fraction(state.step)

        def more(name, valid):   # weights dropped and not regrown (MEST's decay), from the active count
            if rules.excess is None:
                return jnp.int32(0)
            return rules.excess(state.step, state.extra, name, jnp.sum(valid, dtype=jnp.int32))

        def stored_layer(name, layer_key, operands, layout):
            return update_layer(rules, layer_key, f, *operands, storage.backend, layout, block,
                                more(name, operands[1]))

        def dense_layer(name, layer_key, w, g, m):
            return rules.update_layer(layer_key, w, g, m, f, more(name, m))

        *out, grown = update_layers(storage, rules, key, params, slots, topologies, opt_state, ever_active, grads,
                                    taps, stored_layer=stored_layer, dense_layer=dense_layer)
        return (*out, state._replace(step=state.step + 1, grown=grown, updated=jnp.ones((), bool)))

    return act
