"""The fused backward kernel (``dst_spmm_t_sddmm``: dx and dW in one pass) on a layer too wide for the caches.

An ``n x n`` layer (default 200000) with ``--per-row`` weights per output unit at random inputs (default
40, about the million-neuron SET-MLP's 13.3M weights over 333334 units), batch 128: its activations
(100 MB each) come from memory in a random order, as in ``dst-train experiment=set_mlp_million``, whose steps
the fused kernel dominates. Medians of ``--rounds`` calls, on each instruction set this CPU runs.

``--sweep`` instead times the fused pass against the two separate kernels (``dst_spmm_t`` then
``dst_sddmm``) on square layers of ``--widths`` x ``--densities`` (constant fan-in, random inputs), per
ISA, and prints which one ``dst_backward`` takes there (:func:`dst.kernels.fused_backward_pays`): the
measurements behind that rule.

Run: ``.venv/bin/python benchmarks/fused_backward_time.py [--n 200000] [--per-row 40] [--isas avx512,avx2]``
or ``.venv/bin/python benchmarks/fused_backward_time.py --sweep [--widths 300,1000,2000,4000,8000]``
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


def sweep(widths, densities, batch, rounds, isas):
    """Separate / fused time per ISA on square constant fan-in layers; > 1 where the fused pass wins."""
    print(f"{'width':>6s} {'density':>8s} {'isa':>7s} {'fused ms':>9s} {'separate ms':>12s} {'sep./fused':>11s} "
          f"{'dst_backward takes':>19s}")
    rng = np.random.default_rng(0)
    for n in widths:
        for density in densities:
            k = max(1, round(density * n))
            cols_np = np.sort(np.argsort(rng.random((n, n)), axis=1)[:, :k], axis=1).reshape(-1)
            cols = jnp.asarray(cols_np, jnp.int32)
            rowptr = jnp.asarray(np.arange(n + 1) * k, jnp.int32)
            values = jnp.asarray(rng.normal(size=n * k), jnp.float32)
            transposed = kernels.transpose(cols, rowptr, n)
            xT = jnp.asarray(rng.normal(size=(n, batch)), jnp.float32)
            dyT = jnp.asarray(rng.normal(size=(n, batch)), jnp.float32)
            act = jax.ShapeDtypeStruct((n, batch), jnp.float32)
            val = jax.ShapeDtypeStruct((n * k,), jnp.float32)
            fused = jax.jit(lambda v, tp, tr, ts, d, x, act=act, val=val: ffi("dst_spmm_t_sddmm", (act, val), v, tp,
                                                                                 tr, ts, d, x))
            separate = jax.jit(lambda v, c, p, tp, tr, ts, d, x, act=act, val=val: (
                ffi("dst_spmm_t", act, v, tp, tr, ts, d), ffi("dst_sddmm", val, c, p, d, x)))
            for isa in isas:
                kernels.use_isa(isa)
                f = median_seconds(fused, (values, *transposed, dyT, xT), rounds)
                s = median_seconds(separate, (values, cols, rowptr, *transposed, dyT, xT), rounds)
                takes = "fused" if kernels.fused_backward_pays(n, n * k, batch) else "separate"
                print(f"{n:6d} {density:8.2%} {isa:>7s} {1e3 * f:9.3f} {1e3 * s:12.3f} {s / f:11.2f} {takes:>19s}",
                      flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=200_000)
    parser.add_argument("--per-row", type=int, default=40)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--isas", default=None, help="default: every instruction set this CPU runs but generic")
    parser.add_argument("--sweep", action="store_true", help="fused against separate over --widths x --densities")
    parser.add_argument("--widths", default="300,1000,2000,4000,8000")
    parser.add_argument("--densities", default="0.3,0.1,0.01")
    args = parser.parse_args()
    kernels.require("benchmark")
    isas = (args.isas.split(",") if args.isas
            else [i for i in kernels.runnable_isas() if i != "generic"] or ["generic"])
    if args.sweep:
        print(f"machine: {platform.machine()} jax={jax.__version__}; kernels {kernels.status()}; batch "
              f"{args.batch}, medians of {args.rounds} calls")
        return sweep([int(w) for w in args.widths.split(",")], [float(d) for d in args.densities.split(",")],
                     args.batch, args.rounds, isas)
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
