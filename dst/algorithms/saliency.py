"""One-shot pruning at initialisation from a few batches: SNIP and GraSP, then static training."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from dst.algorithms.base import SparseAlgorithm
from dst.algorithms.static import static
from dst.algorithms.targets import check_sparsity
from dst.algorithms.targets import final_counts
from dst.masks import active_count
from dst.masks import apply_masks
from dst.masks import named_leaves
from dst.masks import replace_named
from dst.selection import global_top_k_masks
from dst.structures import UNSTRUCTURED
from dst.structures import structured_densities

SCOPES = ("global", "layer")


def mean_gradient(loss_fn, params, batches):
    """The loss gradient averaged over ``batches``."""
    grads = [jax.grad(loss_fn)(params, batch) for batch in batches]
    return jax.tree_util.tree_map(lambda *g: sum(g) / len(g), *grads)


def _keep_top(key, scores: dict, masks, params, sparsity, scope, distribution, erk_power_scale, dense_layers,
              sparsifiable, structure=UNSTRUCTURED):
    if structure.name == "unstructured":
        finals = final_counts(params, sparsity, distribution, erk_power_scale=erk_power_scale,
                              dense_layers=dense_layers, sparsifiable=sparsifiable)
    else:   # the layers the structure divides, at the densities it allows; each keeps its top with the structure
        sizes = {n: x.size for n, x in named_leaves(params).items()}
        finals = {n: active_count(d, sizes[n]) for n, d in structured_densities(
            params, sparsity, distribution, structure, erk_power_scale=erk_power_scale, dense_layers=dense_layers,
            sparsifiable=sparsifiable).items()}
    m = named_leaves(masks)
    names = list(finals)
    if scope == "global":
        total = round((1.0 - sparsity) * sum(m[n].size for n in names))
        kept = global_top_k_masks({n: scores[n] for n in names}, {n: m[n] for n in names}, total, key)
    else:
        kept = {n: structure.keep(scores[n], m[n], finals[n], jax.random.fold_in(key, i))
                for i, n in enumerate(names)}
    return replace_named(masks, kept)


def _one_shot(score_fn, *, sparsity, batches, scope, distribution, erk_power_scale, dense_layers,
              sparsifiable, structure=None) -> SparseAlgorithm:
    check_sparsity("sparsity", sparsity)
    structure = structure or UNSTRUCTURED
    if structure.name != "unstructured" and scope == "global":
        raise ValueError(f"scope=global cannot keep structure={structure.name} (one threshold over all layers picks "
                         "single weights); use scope=layer.")
    if not isinstance(batches, int) or batches <= 0:
        raise ValueError(f"batches must be a positive integer; got {batches!r}.")
    if scope not in SCOPES:
        raise ValueError(f"scope must be one of {', '.join(SCOPES)}; got {scope!r}.")

    def prune_at_init(key, params, masks, loss_fn, data):
        params = apply_masks(params, masks)
        scores = named_leaves(score_fn(loss_fn, params, data))
        return _keep_top(key, scores, masks, params, sparsity, scope, distribution, erk_power_scale,
                         dense_layers, sparsifiable, structure)

    base = static()
    return base._replace(prune_at_init=prune_at_init, init_batches=batches)


def snip_scores(loss_fn, params, batches):
    """``|g * w|``: the first-order effect of removing each weight on the loss."""
    g = mean_gradient(loss_fn, params, batches)
    return jax.tree_util.tree_map(lambda w, g: jnp.abs(w * g), params, g)


def grasp_scores(loss_fn, params, batches):
    """``w * Hg`` (the negated GraSP score ``-w * Hg``), so that keeping the largest values removes the
    weights of largest ``-w * Hg``, whose removal reduces the gradient flow least."""
    g = mean_gradient(loss_fn, params, batches)
    grad_fn = lambda p: mean_gradient(loss_fn, p, batches)
    _, hg = jax.jvp(grad_fn, (params,), (g,))
    return jax.tree_util.tree_map(lambda w, h: w * h, params, hg)


def snip(*, sparsity: float, batches: int = 1, scope: str = "global", distribution: str = "erk",
         erk_power_scale: float = 1.0, dense_layers=(), sparsifiable=None, structure=None) -> SparseAlgorithm:
    """SNIP: single-shot pruning at initialisation by connection sensitivity.

    Before training, with ``g`` the loss gradient averaged over ``batches`` batches at the initial
    weights, keep the weights of largest ``|g * w|``: ``round((1 - S) sum N_l)`` of them under one
    threshold (``scope="global"``, the paper's rule) or each layer's count from ``distribution``
    (``scope="layer"``; with a ``structure``, each layer keeps its top with that structure: the N of
    every N:M group, a whole fan-in per unit, whole blocks by summed score). Training is then static.

    References:
        Lee et al. 2019, "SNIP: Single-shot Network Pruning based on Connection Sensitivity", ICLR.

    Example::

        algo = dst.algorithms.make("snip", sparsity=0.9, batches=1)
    """
    return _one_shot(snip_scores, sparsity=sparsity, batches=batches, scope=scope, distribution=distribution,
                     erk_power_scale=erk_power_scale, dense_layers=dense_layers, sparsifiable=sparsifiable,
                     structure=structure)


def grasp(*, sparsity: float, batches: int = 1, scope: str = "global", distribution: str = "erk",
          erk_power_scale: float = 1.0, dense_layers=(), sparsifiable=None, structure=None) -> SparseAlgorithm:
    """GraSP: gradient signal preservation at initialisation.

    Before training, with ``g`` the loss gradient over ``batches`` batches and ``Hg`` the Hessian-
    gradient product (a forward-mode derivative of the gradient along ``g``), score each weight by
    ``S = -w * Hg`` and remove the weights of largest ``S`` (keep the smallest), ``round(S sum N_l)``
    of them under one threshold (``scope="global"``) or per layer from ``distribution``. Training is
    then static. (The paper's temperature on the logits is not applied.)

    References:
        Wang et al. 2020, "Picking Winning Tickets Before Training by Preserving Gradient Flow", ICLR.

    Example::

        algo = dst.algorithms.make("grasp", sparsity=0.9, batches=2)
    """
    return _one_shot(grasp_scores, sparsity=sparsity, batches=batches, scope=scope, distribution=distribution,
                     erk_power_scale=erk_power_scale, dense_layers=dense_layers, sparsifiable=sparsifiable,
                     structure=structure)
