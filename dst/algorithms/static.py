"""``static`` and ``dense``: the topology never changes."""

from __future__ import annotations

from dst.algorithms.base import SparseAlgorithm
from dst.algorithms.base import initial_state


def static(structure=None) -> SparseAlgorithm:
    """Train the initial sparse topology as it is (the sparse baseline of every DST paper).

    Any ``structure`` is kept: the initial masks have it (``dst.init_masks(..., structure=)``) and
    ``update`` never changes them.

    ``update`` only counts steps: params and masks pass through untouched, so inactive weights stay
    exact zeros and every layer keeps its initial count.

    Example::

        algo = dst.algorithms.make("static")
    """

    del structure

    def init(params, masks, key=None):
        del params, key
        return initial_state(masks)

    def update(state, key, params, masks, grads):
        del key, grads
        return params, masks, state._replace(step=state.step + 1)

    return SparseAlgorithm(init=init, update=update, dynamic=False, counts="keep")


def dense() -> SparseAlgorithm:
    """Dense training: the same pass-through as :func:`static`; use it with all-True masks (sparsity 0)."""
    return static()
