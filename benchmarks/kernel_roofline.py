"""Each compiled kernel's GFLOP/s of useful work, per instruction set, beside XLA's dense matmul.

One ``n x n`` layer (default 4000, batch 128, the anchor layer of the 4000-wide MLP) with a random pattern
at each density. Each kernel is one jitted FFI call on batch-last operands, timed alone:

* ``spmm``: the forward product ``yT = W xT``;
* ``spmm_t``: the input gradient ``dxT = W^T dyT`` over the transposed structure;
* ``sddmm``: the value gradient at the nonzeros;
* ``fused``: ``spmm_t`` and ``sddmm`` in one pass (counted as both products' work).

Useful work is ``2 nnz B`` FLOPs per product (``4 nnz B`` for fused); XLA's dense ``x @ W`` does
``2 n^2 B``, all of it counted. Medians over ``--rounds`` calls; kernel ISAs switch with
:func:`dst.kernels.use_isa`, so every ISA the CPU runs is measured in one process.

Run: ``.venv/bin/python benchmarks/kernel_roofline.py [--n 4000] [--batch 128] [--densities 0.5,0.1,0.01]``
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from dst import kernels


def median_seconds(fn, args, rounds):
    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def ffi(name, shapes, *args):
    return jax.ffi.ffi_call(name, shapes, vmap_method="sequential")(*args)


def kernel_calls(values, cols, rowptr, tr, xT, dyT):
    """``{kernel: (jitted call, its arguments, products of useful work)}`` for one layer."""
    act = jax.ShapeDtypeStruct(xT.shape, jnp.float32)
    val = jax.ShapeDtypeStruct(values.shape, jnp.float32)
    return {
        "spmm": (jax.jit(lambda v, c, p, x: ffi("dst_spmm", act, v, c, p, x)), (values, cols, rowptr, xT), 1),
        "spmm_t": (jax.jit(lambda v, tp, trw, ts, d: ffi("dst_spmm_t", act, v, tp, trw, ts, d)),
                   (values, *tr, dyT), 1),
        "sddmm": (jax.jit(lambda c, p, d, x: ffi("dst_sddmm", val, c, p, d, x)), (cols, rowptr, dyT, xT), 1),
        "fused": (jax.jit(lambda v, tp, trw, ts, d, x: ffi("dst_spmm_t_sddmm", (act, val), v, tp, trw, ts, d, x)),
                  (values, *tr, dyT, xT), 2),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=4000)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=11)
    parser.add_argument("--densities", default="0.5,0.1,0.01")
    parser.add_argument("--isas", default=None, help="default: every instruction set this CPU runs")
    args = parser.parse_args()
    kernels.require("benchmark")
    isas = args.isas.split(",") if args.isas else list(kernels.runnable_isas())
    n, batch = args.n, args.batch
    print(f"machine: {platform.machine()} {platform.processor() or ''} jax={jax.__version__}; kernels "
          f"{kernels.status()}; layer {n}x{n}, batch {batch}, medians of {args.rounds} calls")
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(batch, n)), jnp.float32)
    w = jnp.asarray(rng.normal(size=(n, n)), jnp.float32)
    dense = jax.jit(lambda x, w: x @ w)
    dense_gflops = 2 * n * n * batch / median_seconds(dense, (x, w), args.rounds) / 1e9
    print(f"XLA dense x @ W: {dense_gflops:.1f} GFLOP/s (all {2 * n * n * batch / 1e9:.2f} GFLOP counted)")
    print(f"{'density':>8s} {'isa':>8s} {'spmm':>8s} {'spmm_t':>8s} {'sddmm':>8s} {'fused':>8s}"
          "   GFLOP/s of useful work")
    f32 = jnp.float32
    for density in (float(d) for d in args.densities.split(",")):
        nnz = int(round(density * n * n))
        flat = np.sort(rng.choice(n * n, size=nnz, replace=False))      # row-major over output units
        rows, cols = (flat // n).astype(np.int32), (flat % n).astype(np.int32)
        rowptr = np.searchsorted(rows, np.arange(n + 1)).astype(np.int32)
        values = jnp.asarray(rng.normal(size=nnz), f32)
        cols_j, rowptr_j = jnp.asarray(cols), jnp.asarray(rowptr)
        tr = kernels.transpose(cols_j, rowptr_j, n)
        xT, dyT = x.T + 0.0, jnp.asarray(rng.normal(size=(n, batch)), f32)
        calls = kernel_calls(values, cols_j, rowptr_j, tr, xT, dyT)
        for isa in isas:
            kernels.use_isa(isa)
            gflops = {k: products * 2 * nnz * batch / median_seconds(fn, a, args.rounds) / 1e9
                      for k, (fn, a, products) in calls.items()}
            print(f"{density:8.3%} {isa:>8s} " + " ".join(f"{gflops[k]:8.1f}" for k in calls), flush=True)


if __name__ == "__main__":
    main()
