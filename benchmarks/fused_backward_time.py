"""The fused backward kernel (``dst_spmm_t_sddmm``: dx and dW in one pass) on a layer too wide for the caches.

An ``n x n`` layer (default 200000) with ``--per-row`` weights per output unit at random inputs (default
40, about the million-neuron SET-MLP's 13.3M weights over 333334 units), batch 128: its activations
(100 MB each) come from memory in a random order, as in ``benchmarks/million_neurons.py``, whose steps
the fused kernel dominates. Medians of ``--rounds`` calls, on each instruction set this CPU runs.

Run: ``.venv/bin/python benchmarks/fused_backward_time.py [--n 200000] [--per-row 40] [--isas avx512,avx2]``
"""

from __future__ import annotations

import argparse
import platform

import jax
import jax.numpy as jnp
import numpy as np
from kernel_roofline import ffi
from kernel_roofline import median_seconds

from dst import kernels


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=200_000)
    parser.add_argument("--per-row", type=int, default=40)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--isas", default=None, help="default: every instruction set this CPU runs but generic")
    args = parser.parse_args()
    kernels.require("benchmark")
    isas = (args.isas.split(",") if args.isas
            else [i for i in kernels.runnable_isas() if i != "generic"] or ["generic"])
    n, batch, nnz = args.n, args.batch, args.n * args.per_row
    print(f"machine: {platform.machine()} jax={jax.__version__}; kernels {kernels.status()}; layer {n}x{n}, "
          f"{args.per_row} weights per unit, batch {batch}, medians of {args.rounds} calls")
    rng = np.random.default_rng(0)
    cols = jnp.asarray(rng.integers(0, n, size=nnz), jnp.int32)
    rowptr = jnp.asarray(np.arange(n + 1) * args.per_row, jnp.int32)
    values = jnp.asarray(rng.normal(size=nnz), jnp.float32)
    transposed = kernels.transpose(cols, rowptr, n)
    xT = jnp.asarray(rng.normal(size=(n, batch)), jnp.float32)
    dyT = jnp.asarray(rng.normal(size=(n, batch)), jnp.float32)
    shapes = (jax.ShapeDtypeStruct((n, batch), jnp.float32), jax.ShapeDtypeStruct((nnz,), jnp.float32))
    fused = jax.jit(lambda v, tp, tr, ts, d, x: ffi("dst_spmm_t_sddmm", shapes, v, tp, tr, ts, d, x))
    for isa in isas:
        kernels.use_isa(isa)
        seconds = median_seconds(fused, (values, *transposed, dyT, xT), args.rounds)
        print(f"{isa:>8s}: {1e3 * seconds:8.1f} ms per call, {4 * nnz * batch / seconds / 1e9:5.1f} GFLOP/s",
              flush=True)


if __name__ == "__main__":
    main()
