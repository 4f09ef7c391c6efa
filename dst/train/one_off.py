"""One-off programs (building a train state, a dense view for records) compiled for their size.

A run compiles a few programs besides its epoch that run once, or once per record. Over a small model
they take longer to compile than to run: building the default experiment's stored state (LeNet-300-100
on ``csr``) compiled in 1.16 s at XLA's default settings and in 0.28 s with LLVM at -O0 and XLA's older
fusion emitters, and ran in milliseconds either way. Over a large one the optimised code is worth its
compile time: the stored state of an MLP 784-4000x3-10 at 10% took 2.8 s to build and compile at the
defaults, 4.2 s with the fast settings. So below :data:`SMALL_MODEL_ELEMENTS` elements the fast settings
are used. Neither program does floating-point arithmetic that the settings could round differently: they
copy, compact, sort and compare. The settings are XLA CPU options: on another platform (a GPU rejects
``xla_cpu_use_fusion_emitters`` as an unknown option) its defaults are used.
"""

from __future__ import annotations

from collections.abc import Callable

import jax

SMALL_MODEL_ELEMENTS = 1 << 22
FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_cpu_use_fusion_emitters": False}


def tree_elements(tree) -> int:
    """The number of array elements in a pytree."""
    return sum(int(getattr(leaf, "size", 1)) for leaf in jax.tree_util.tree_leaves(tree))


def traced(*args) -> bool:
    """Whether ``args`` hold tracers (a caller's ``jit`` or ``eval_shape``: no program of our own then)."""
    return any(isinstance(leaf, jax.core.Tracer) for leaf in jax.tree_util.tree_leaves(args))


def call(fn: Callable, *args):
    """``fn(*args)`` as one program compiled for its size (:func:`compiled_for_size`), or staged into the
    caller's program where ``args`` are traced."""
    return jax.jit(fn)(*args) if traced(*args) else compiled_for_size(fn, *args)(*args)


def compiled_for_size(fn: Callable, *args):
    """``jax.jit(fn)`` lowered for ``args`` and compiled with :data:`FAST_COMPILE` when ``args`` hold fewer
    than :data:`SMALL_MODEL_ELEMENTS` elements and the program runs on the CPU (XLA's defaults otherwise);
    call it with arrays of the same shapes."""
    lowered = jax.jit(fn).lower(*args)
    fast = tree_elements(args) < SMALL_MODEL_ELEMENTS and jax.default_backend() == "cpu"
    return lowered.compile(FAST_COMPILE if fast else None)
