"""Which kernels feed which: the forward order of a model's kernels and its sequential pairs, read from
the jaxpr of one forward pass (so any model works, the user's own included).

A kernel *op* is a ``dot_general`` or ``conv_general_dilated`` that multiplies activations by a kernel
leaf of the params (possibly reshaped or cast). Following values through every other op, each kernel
op gets its *parents*: the kernel ops whose outputs reach its input without passing another kernel op.
``(a, b)`` is a *sequential pair* when ``b``'s only parent is ``a`` and ``a``'s only child is ``b``
(and ``a``'s output does not reach the model's output another way). Residual blocks fail this test
(a block's input reaches both its first conv and the addition), so per-unit metrics that need a
clean producer/consumer pair (dead units) leave them out rather than count wrongly.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import jax
from jax.extend import core as jex_core

from dst.masks import named_leaves

KERNEL_OPS = ("dot_general", "conv_general_dilated")
# Ops through which a kernel leaf is still "the kernel" (reshaped, cast, masked by a constant).
KERNEL_VIEWS = ("reshape", "convert_element_type", "transpose", "squeeze", "expand_dims", "copy", "copy_p")


class KernelGraph(NamedTuple):
    order: list[str]                 # kernels in the order the forward pass first uses them
    pairs: list[tuple[str, str]]     # sequential (producer, consumer) pairs, in forward order
    flops: dict[str, float]          # forward FLOPs (2 per multiply-add) of each kernel, per traced call
    convolutional: bool = False      # whether any kernel op is a convolution


def _op_flops(eqn) -> float:
    """2 x multiply-adds of one dot_general / conv_general_dilated equation."""
    out = math.prod(eqn.outvars[0].aval.shape)
    if eqn.primitive.name == "dot_general":
        (lhs_contract, _), _ = eqn.params["dimension_numbers"]
        lhs = eqn.invars[0].aval.shape
        return 2.0 * out * math.prod(lhs[d] for d in lhs_contract)
    rhs = eqn.invars[1].aval.shape
    out_features = rhs[eqn.params["dimension_numbers"].rhs_spec[0]]
    return 2.0 * out * math.prod(rhs) / out_features


def _inner_jaxpr(eqn):
    """The sub-jaxpr of a call-like equation whose inputs and outputs are the equation's own."""
    for value in eqn.params.values():
        inner = value.jaxpr if isinstance(value, jex_core.ClosedJaxpr) else value
        if isinstance(inner, jex_core.Jaxpr) and len(inner.invars) == len(eqn.invars) \
                and len(inner.outvars) == len(eqn.outvars):
            return inner
    return None


def kernel_graph(forward: Callable, params, layers: list[str]) -> KernelGraph:
    """Trace ``forward(params) -> logits`` once (abstractly) and read the kernels' data flow.

    ``layers`` are the kernel names to follow (``"Dense_0/kernel"``, ...). Trace ``forward`` on one
    example to read per-example FLOPs.
    """
    names = list(named_leaves(params))
    closed = jax.make_jaxpr(forward)(params)
    wanted = set(layers)
    kernel_of, sources = {}, {}
    for var, name in zip(closed.jaxpr.invars, names):
        if name in wanted:
            kernel_of[var] = name
    order, parents, flops, conv = [], {}, {}, []

    def src(v):
        return sources.get(v, frozenset()) if not isinstance(v, jex_core.Literal) else frozenset()

    def walk(jaxpr):
        for eqn in jaxpr.eqns:
            inner = _inner_jaxpr(eqn)
            if inner is not None:
                for outer, var in zip(eqn.invars, inner.invars):
                    if not isinstance(outer, jex_core.Literal):
                        sources[var] = src(outer)
                        if outer in kernel_of:
                            kernel_of[var] = kernel_of[outer]
                walk(inner)
                for outer, var in zip(eqn.outvars, inner.outvars):
                    if not isinstance(var, jex_core.Literal):
                        sources[outer] = src(var)
                        if var in kernel_of:
                            kernel_of[outer] = kernel_of[var]
                continue
            kernels = [kernel_of[v] for v in eqn.invars if not isinstance(v, jex_core.Literal) and v in kernel_of]
            name = eqn.primitive.name
            if name in KERNEL_OPS and len(kernels) == 1:
                kernel = kernels[0]
                inputs = [v for v in eqn.invars if isinstance(v, jex_core.Literal) or v not in kernel_of]
                parents.setdefault(kernel, set()).update(*(src(v) for v in inputs))
                flops[kernel] = flops.get(kernel, 0.0) + _op_flops(eqn)
                conv.append(name == "conv_general_dilated")
                if kernel not in order:
                    order.append(kernel)
                for out in eqn.outvars:
                    sources[out] = frozenset([kernel])
                continue
            if kernels and name in KERNEL_VIEWS and len(eqn.outvars) == 1:
                kernel_of[eqn.outvars[0]] = kernels[0]
            merged = frozenset().union(*(src(v) for v in eqn.invars))
            for out in eqn.outvars:
                sources[out] = merged

    walk(closed.jaxpr)
    children: dict[str, set] = {}
    for child, ps in parents.items():
        for p in ps:
            children.setdefault(p, set()).add(child)
    for out in closed.jaxpr.outvars:           # reaching the output counts as another consumer
        for p in src(out):
            children.setdefault(p, set()).add(None)
    pairs = [(a, b) for a in order for b in order
             if parents.get(b) == {a} and children.get(a) == {b}]
    order += [n for n in layers if n not in order]
    return KernelGraph(order=order, pairs=sorted(pairs, key=lambda ab: order.index(ab[0])),
                       flops={n: flops.get(n, 0.0) for n in order}, convolutional=any(conv))
