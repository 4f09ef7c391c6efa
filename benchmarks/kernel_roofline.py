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

``--conv``: the convolution kernels instead (:mod:`dst.kernels.conv`), one row per layer shape and ISA, on
SparseProp's four ResNet-18 shapes (3x3, stride 1; 64 channels at 56x56, 128 at 28x28, 256 at 14x14, 512 at
7x7) at ``--conv-density``, batch ``--conv-batch``, each kernel one FFI call on padded batch-last operands:
``conv`` (forward), ``conv_dx``, ``conv_dw`` and ``conv_backward`` (dx and dW fused), in GFLOP/s of useful
work (``2 nnz OH OW B`` per product), beside XLA's dense convolution of the same shape (all
``2 kh kw c_in c_out OH OW B`` counted) and ``to_batch_last`` (NHWC to padded batch-last, the layout change
before each stored convolution) in GB/s moved (its input read and its output written once).

Run: ``.venv/bin/python benchmarks/kernel_roofline.py [--n 4000] [--batch 128] [--densities 0.5,0.1,0.01]``
or ``.venv/bin/python benchmarks/kernel_roofline.py --conv [--conv-density 0.05] [--conv-batch 64]``
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


CONV_SHAPES = [(64, 56), (128, 28), (256, 14), (512, 7)]   # SparseProp's ResNet-18 layers: channels, size


def conv_calls(values, cols, rowptr, transposed, xp, dyT):
    """``{kernel: (jitted call, its arguments, products of useful work)}`` for one 3x3 stride-1 convolution."""
    attrs = {k: np.int64(v) for k, v in {"kh": 3, "kw": 3, "sh": 1, "sw": 1}.items()}
    grad_x = jax.ShapeDtypeStruct(xp.shape, jnp.float32)
    grad_v = jax.ShapeDtypeStruct(values.shape, jnp.float32)
    out = jax.ShapeDtypeStruct(dyT.shape, jnp.float32)
    call = lambda name, shapes: jax.jit(lambda *a: jax.ffi.ffi_call(name, shapes, vmap_method="sequential")(
        *a, **attrs))
    return {
        "conv": (call("dst_conv", out), (values, cols, rowptr, xp), 1),
        "conv_dx": (call("dst_conv_dx", grad_x), (values, *transposed, dyT), 1),
        "conv_dw": (call("dst_conv_dw", grad_v), (cols, rowptr, dyT, xp), 1),
        "conv_backward": (call("dst_conv_backward", (grad_x, grad_v)), (values, *transposed, dyT, xp), 2),
    }


def conv_rows(args, isas):
    """The roofline rows of the convolution kernels (``--conv``; see the module doc)."""
    from dst.kernels import conv

    batch, density = args.conv_batch, args.conv_density
    print(f"convolutions 3x3 stride 1 SAME, density {density:.1%}, batch {batch}; GFLOP/s of useful work "
          f"(XLA: all counted), to_batch_last in GB/s; medians of {args.rounds} calls")
    names = ("conv", "conv_dx", "conv_dw", "conv_backward")
    print("| channels | size | ISA | " + " | ".join(names) + " | XLA dense conv | to_batch_last GB/s |")
    print("| --- | --- | --- | " + " | ".join("---" for _ in names) + " | --- | --- |")
    rng = np.random.default_rng(0)
    for channels, size in CONV_SHAPES:
        shape = (3, 3, channels, channels)
        mask = rng.random((channels, 9 * channels)) < density            # matrix view: rows = output channels
        units, cols = np.nonzero(mask)
        rowptr = np.concatenate([[0], np.cumsum(mask.sum(1))]).astype(np.int32)
        nnz = len(cols)
        values = jnp.asarray(rng.normal(size=nnz), jnp.float32)
        cols = jnp.asarray(cols, jnp.int32)
        transposed = conv.conv_transpose(cols, rowptr, shape)
        x = jnp.asarray(rng.normal(size=(batch, size, size, channels)), jnp.float32)
        to_batch_last = jax.jit(lambda x: conv._to_batch_last(x, ((1, 1), (1, 1))))
        xp = to_batch_last(x)
        dyT = jnp.asarray(rng.normal(size=(channels, size, size, batch)), jnp.float32)
        w = jnp.asarray(rng.normal(size=shape), jnp.float32)
        dense = jax.jit(lambda x, w: jax.lax.conv_general_dilated(x, w, (1, 1), "SAME",
                                                                  dimension_numbers=("NHWC", "HWIO", "NHWC")))
        dense_gflops = 2 * 9 * channels * channels * size * size * batch / median_seconds(dense, (x, w), args.rounds)
        calls = conv_calls(values, cols, jnp.asarray(rowptr), transposed, xp, dyT)
        for isa in isas:
            kernels.use_isa(isa)
            gflops = {k: products * 2 * nnz * size * size * batch / median_seconds(fn, a, args.rounds) / 1e9
                      for k, (fn, a, products) in calls.items()}
            moved = 4 * (x.size + xp.size) / median_seconds(to_batch_last, (x,), args.rounds) / 1e9
            print(f"| {channels} | {size}x{size} | {isa} | " + " | ".join(f"{gflops[k]:.1f}" for k in names)
                  + f" | {dense_gflops / 1e9:.1f} | {moved:.1f} |", flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=4000)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=11)
    parser.add_argument("--densities", default="0.5,0.1,0.01")
    parser.add_argument("--isas", default=None, help="default: every instruction set this CPU runs")
    parser.add_argument("--conv", action="store_true", help="the convolution kernels instead (module doc)")
    parser.add_argument("--conv-density", type=float, default=0.05)
    parser.add_argument("--conv-batch", type=int, default=64)
    args = parser.parse_args()
    kernels.require("benchmark")
    isas = args.isas.split(",") if args.isas else list(kernels.runnable_isas())
    if args.conv:
        print(f"machine: {platform.machine()} {platform.processor() or ''} jax={jax.__version__}; kernels "
              f"{kernels.status()}")
        return conv_rows(args, isas)
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
