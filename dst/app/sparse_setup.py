"""The sparse side of a run's start: each layer's initial density (the distribution, ``sparsity.densities``
or ``sparsity.epsilon``, rounded to the structure), the storage its sparse layers take
(``sparsity.backend``: masked, stored on csr/condensed, or per layer with ``auto``), and whether they are
born sparse (``sparsity.born_sparse``), named on the console."""

from __future__ import annotations

import math

import jax

import dst
from dst import backends
from dst import kernels
from dst.app import auto_backend
from dst.app import memory
from dst.app.console import layer_list
from dst.app.validate import ConfigError
from dst.distributions import epsilon_densities
from dst.masks import named_leaves
from dst.structures import structured_densities
from dst.train import born_sparse
from dst.train import stored


def initial_densities(plan, params) -> dict[str, float]:
    """``{layer: density}`` of the initial masks (layers not named are dense): ``sparsity.densities``,
    SET's ``sparsity.epsilon``, or the distribution at the sparsity the algorithm starts from
    (``initial_sparsity``; 0: dense), each rounded to the structure."""
    sp = plan.cfg["sparsity"]
    # Algorithms that prune during training start from `initial_sparsity` (0: dense).
    start = sp.get("initial_sparsity")
    start = sp["sparsity"] if start is None else start
    structure = plan.structure if plan.structure is not None and plan.structure.name != "unstructured" else None
    given = explicit_densities(params, sp["densities"]) if sp.get("densities") else None
    if sp.get("epsilon") is not None:   # SET's counts eps (n_in + n_out) per layer
        given = epsilon_densities(params, sp["epsilon"], dense_layers=sp.get("dense_layers") or ())
    if given:
        densities = given
        if structure is not None:
            shapes = {n: tuple(leaf.shape) for n, leaf in named_leaves(params).items()}
            densities = {n: structure.round_density(shapes[n], d) for n, d in densities.items()
                         if n not in plan.undivided}
    elif start == 0:
        densities = {}
    elif structure is not None:
        densities = structured_densities(params, start, sp["distribution"], structure,
                                         erk_power_scale=sp["erk_power_scale"], dense_layers=sp["dense_layers"])
    else:
        densities = dst.layer_densities(params, start, sp["distribution"], erk_power_scale=sp["erk_power_scale"],
                                        dense_layers=sp["dense_layers"])
    return densities


def storage_for(plan, params, model_state, masks, densities, layers, auto_choice_file=None):
    """``(storage, auto timings)``: the run's :class:`dst.train.stored.Storage` (None when masked) over its
    sparse layers, ``auto``'s per-layer choice made, and what the stored layers' updates do said on the
    console."""
    sp, algo, model = plan.cfg["sparsity"], plan.algo, plan.model
    # A layer that starts dense under an algorithm that prunes it (GMP, IMP) is stored too: its capacity is
    # its count at the start, and what the pruning frees becomes padding.
    pruned = dst.sparsifiable_layers(params, dense_layers=sp.get("dense_layers") or ()) if algo.counts == "fall" else ()
    sparse_layers, timings = [n for n in layers if densities[n] < 1 or n in pruned], {}
    if sp.get("backend") == "auto":
        backend, sparse_layers, timings = auto_backend.auto_layers(plan, params, model_state, masks, sparse_layers,
                                                                   auto_choice_file)
        sp = {**sp, "backend": backend}
    capacity = sp.get("capacity") or stored.default_capacity(algo)
    # The slots hold the masks' weights, or Top-KAST's backward set around them.
    convolutions, kept = stored_convolutions(plan, sp, params, sparse_layers)
    storage = make_run_storage(sp, model, stored.held_masks(algo, params, masks), sparse_layers,
                               None if plan.parallel is None else plan.parallel.mesh, capacity, convolutions, kept)
    say_update_path(sp, algo, storage, densities)
    return storage, timings


def say_update_path(sp: dict, algo, storage, densities: dict) -> None:
    """The run's line on how ``algo``'s updates reach the stored layers (:func:`dst.train.stored.update_path`), and
    a word where a stored layer starts dense; nothing for a masked or static run."""
    if storage is not None and storage.stores and algo.dynamic:
        path, why = stored.update_path(algo, storage)
        how = {"from storage": "updates the stored layers from storage, one layer at a time.",
               "in place": "prunes the stored layers in place, from storage.",
               "in place, then from storage": "prunes the stored layers in place, then regrows them from storage, "
                                              "one layer at a time.",
               "every step": f"updates the stored layers on their dense view at every step ({why}).",
               "momentum, then from storage": "keeps its momentum at every step (each stored layer's dense weight "
                                              "gradient formed from the step's inputs and output gradients) and "
                                              "updates the stored layers from storage, one layer at a time.",
               "theta, then from storage": "ranks each stored layer's dense theta (its backward set's values written "
                                           "over the weights outside it), stores the new backward set and ranks "
                                           "the forward set among its slots.",
               "dense view": f"updates the stored layers on their dense view ({why})."}[path]
        print(f"sparsity: {sp['algorithm']} {how}")
        if any(densities[n] == 1 for n in storage.layout_of):
            print(f"sparsity: {sp['algorithm']} starts some stored layers dense, and a layer keeps its starting "
                  "capacity as it is pruned (freed slots pad it): the kernels pay only at low density, so "
                  "sparsity.backend=masked trains such a run faster.")


def stored_convolutions(plan, sp: dict, params, sparse_layers) -> tuple[dict, dict]:
    """``(geometries, kept)``: the convolutions among ``sparse_layers`` that ``sparsity.backend`` stores
    (:func:`dst.backends.convolutions`), and why each other one stays masked."""
    convs = [n for n, leaf in named_leaves(params).items() if n in sparse_layers and len(leaf.shape) == 4]
    if not convs or sp.get("backend") not in ("csr", "condensed"):
        return {}, {}
    if plan.algo.trainable is not None:
        return {}, {n: "a backward set is stored for fully connected layers only" for n in convs}
    sample = jax.numpy.zeros((1, *plan.data.example_shape), jax.numpy.float32)
    return backends.convolutions(plan.model, sample, sparse_layers)


def make_run_storage(sp: dict, model, masks, sparse_layers, mesh=None, capacity: float = 1.0, convolutions=None,
                     kept=None):
    """The run's :class:`dst.train.stored.Storage` (None when masked) over its ``sparse_layers``, what it
    stores and what stays masked named on the console; ``mesh``: the data-parallel devices' (each runs the
    kernels on its rows); ``capacity``: each stored layer's slots per starting weight; ``convolutions``: the
    geometry of each convolution it stores, and ``kept``: why each other one stays masked."""
    backend, kept = sp.get("backend") or "masked", kept or {}
    try:
        storage = stored.make_storage(model, backend, masks, sparse_layers, mesh, capacity, convolutions)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    if storage is not None and not storage.stores:
        print("sparsity: backend dense: a plain dense model, with no mask in the train step.")
    elif storage is not None and not storage.layout_of:   # nothing sparse to store: the masked run it is
        why = "; ".join(f"{n} {w}" for n, w in kept.items() if n in sparse_layers) or \
            "every sparse layer starts dense (sparsity=dense, or a sparsity of 0)"
        print(f"sparsity: backend {backend} stores no layer: {why}, so the run trains them masked, as "
              "sparsity.backend=masked would.")
        return None
    elif storage is not None:
        masked_here = [f"{n} ({kept.get(n, 'not a fully connected layer or convolution')})" for n in sparse_layers
                       if n not in storage.layout_of]
        print(f"sparsity: backend {backend} stores {layer_list(storage.layout_of)}"
              + (f"; stay masked: {', '.join(masked_here)}" if masked_here else "") + ".")
        if capacity != 1:
            print(f"sparsity: capacity {capacity:g}: each stored layer has {capacity:g} slots per starting weight "
                  "(at most its dense size), room for the algorithm to move weights between layers.")
        print(f"sparsity: kernels {kernels.status()}")
        if not storage.dense_metrics:
            print("sparsity: the stored layers are too large for per-weight metric state: itop_rate is not tracked.")
    return storage


def explicit_densities(params, given: dict) -> dict[str, float]:
    """``sparsity.densities``: a density per named layer (a paper's own per-layer counts); layers not
    named stay dense. Every name must be a sparsifiable layer and every density in (0, 1]."""
    layers = dst.sparsifiable_layers(params)
    for name, density in given.items():
        if name not in layers:
            raise ConfigError(f"sparsity.densities names {name!r}, which is not a sparsifiable layer; the model's "
                              f"are {', '.join(layers)}.")
        if not isinstance(density, (int, float)) or not 0 < density <= 1:
            raise ConfigError(f"sparsity.densities.{name} must be a number in (0, 1]; got {density!r}.")
    return {name: float(d) for name, d in given.items()}




# What a born-sparse weight costs in storage: value, gradient and one optimizer moment (float32), its input
# and its transpose's row and slot (int32), its slot flag.
STORED_BYTES_PER_WEIGHT = 4 * 3 + 4 * 3 + 1


def check_born_structure(sp: dict, undivided: dict, shapes: dict, budget: int | None) -> None:
    """One sentence where a born-sparse run's structure needs a dense layer: a structure whose groups span
    output units (``block``: its updates rank blocks on the dense view), or a layer the structure does not
    divide (``undivided``: ``{layer: why}``; it stays dense) whose dense form does not fit ``budget``."""
    structure = sp.get("structure") or "unstructured"
    if structure not in born_sparse.STRUCTURES:
        raise ConfigError(f"sparsity.structure={structure} ranks whole blocks across output units on a layer's dense "
                          f"form, which a born-sparse layer never has; born-sparse layers take "
                          f"{', '.join(born_sparse.STRUCTURES)} (or sparsity.born_sparse=false where the dense form "
                          "fits).")
    dense = {n: shapes[n] for n in undivided}
    if dense and (not memory.dense_fits(dense, budget) or any(math.prod(s) >= 2**32 for s in dense.values())):
        name = max(dense, key=lambda n: math.prod(dense[n]))
        raise ConfigError(f"born sparse, layer {name} cannot take sparsity.structure={structure}: "
                          f"{undivided[name]}, so the structure leaves it dense, and its dense form "
                          f"({math.prod(dense[name]):,} weights) does not fit; use a shape the structure divides or "
                          "sparsity.structure=unstructured.")


def born_sparse_layers(plan, shapes: dict[str, tuple[int, ...]], densities: dict[str, float]) -> list[str]:
    """The layers born sparse (:mod:`dst.train.born_sparse`), or ``[]`` where the run starts from its
    dense form. ``sparsity.born_sparse``: ``true`` on csr/condensed; ``auto`` (default) there where the
    dense form does not fit this process's memory or a sparse layer has 2^32 positions or more (which a
    masked run cannot update); ``false`` never. One sentence for what cannot work."""
    sp, algo = plan.cfg["sparsity"], plan.algo
    backend, setting = sp.get("backend") or "masked", sp.get("born_sparse", "auto")
    budget = memory.available_bytes()
    fits = memory.dense_fits(shapes, budget)
    huge = any(math.prod(shapes[n]) >= 2**32 for n in densities)
    if backend not in ("csr", "condensed") or setting is False or (setting == "auto" and fits and not huge):
        if setting is True:
            raise ConfigError(f"sparsity.born_sparse=true creates the sparse layers in csr or condensed storage, and "
                              f"this run's sparsity.backend is {backend}; use csr or condensed.")
        memory.check_dense_fits(shapes, budget, backend)
        return []
    layers = [n for n, d in densities.items() if len(shapes[n]) == 2 and d < 1]
    check_born_structure(sp, plan.undivided, shapes, budget)
    name = f"sparsity.algorithm={sp['algorithm']}"
    why = None
    path = stored.update_path(algo, stored.Storage(backends.make(backend), {}, None))[0] if algo.dynamic else None
    if algo.prune_at_init is not None:
        why = "it prunes from a dense form before training"
    elif algo.levels:
        why = "its levels rewind and prune a dense form"
    elif algo.counts == "move" or algo.trainable is not None:
        why = "it keeps a dense state of every weight (SNFS's momentum, Top-KAST's weights outside its backward set)"
    elif algo.dynamic and path not in ("from storage", "in place", "in place, then from storage"):
        why = "it updates stored layers on their dense view"
    if why:
        raise ConfigError(f"a born-sparse run's layers never exist dense, and {name} cannot run so: {why}; use "
                          "static, set, rigl, mest, gmp, granet or srigl, or a model whose dense form fits "
                          "(sparsity.born_sparse=false).")
    if not layers:
        if setting is True:
            raise ConfigError("sparsity.born_sparse=true creates the sparse layers from their counts, and this run "
                              "starts every fully connected layer dense; set sparsity.initial_sparsity above 0 (an "
                              "algorithm that prunes) or sparsity.born_sparse=auto.")
        memory.check_dense_fits(shapes, budget, backend)   # nothing to be born sparse: the dense form must fit
        return []
    stored_weights = sum(math.prod(shapes[n]) * densities[n] for n in layers)
    if budget is not None and stored_weights * STORED_BYTES_PER_WEIGHT > budget:
        big = max(layers, key=lambda n: math.prod(shapes[n]) * densities[n])
        raise ConfigError(f"born sparse, layer {big} still holds {math.prod(shapes[big]) * densities[big]:,.0f} "
                          f"weights (density {densities[big]:.3g}) and the run about "
                          f"{stored_weights * STORED_BYTES_PER_WEIGHT / memory.GIB:.1f} GiB, more than the "
                          f"{budget / memory.GIB:.1f} GiB this process may use; raise sparsity.sparsity or lower "
                          "sparsity.epsilon.")
    why_born = "sparsity.born_sparse=true" if setting is True else \
        ("a layer has 2^32 positions or more" if huge else "the dense form does not fit this process's memory")
    print(f"sparsity: {layer_list(layers)} born sparse in {backend} storage ({why_born}): created from their "
          "counts, never dense; records come from the topologies.")
    return layers
