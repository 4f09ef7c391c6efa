"""One convolution's forward + dx + dW: masked XLA against the compiled sparse convolution (dst.kernels.conv).

SparseProp's four ResNet-18 layer shapes (Nikdan et al. 2023, Table 2: 3x3, stride 1, SAME; 64 channels at
56x56, 128 at 28x28, 256 at 14x14, 512 at 7x7), each at a uniform random density (default 5%, the paper's
95% sparsity), batch ``--batch`` (default 64). Each variant is one jitted function returning ``(dx, dW)`` of
``sum(y * g)``:

* ``masked``: ``lax.conv_general_dilated`` of ``where(mask, w, 0)`` (what ``sparsity.backend=masked`` runs);
  dW is the dense kernel gradient;
* ``csr <isa>``: :func:`dst.kernels.csr_conv` on the loops of one instruction set (switched with
  :func:`dst.kernels.use_isa`, so the AVX2 loops are timed on an AVX-512 machine in the same process), dW
  at the nonzeros only. The layout changes (NHWC to batch-last and back, the padding) are inside the timing.

Variants interleave within each round; the table shows per-call medians and masked / csr, the median over
rounds of each round's ratio.

Run: ``.venv/bin/python benchmarks/sparse_conv_time.py [--batch 64] [--density 0.05] [--rounds 5] [--isas avx512,avx2]``
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

SHAPES = [(64, 56), (128, 28), (256, 14), (512, 7)]   # channels, height = width


def timed(fn, *args):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    return time.perf_counter() - start


def variants(channels, size, batch, density, seed=0):
    rng = np.random.default_rng(seed)
    shape = (3, 3, channels, channels)
    mask = rng.random(shape) < density
    w = np.where(mask, rng.normal(size=shape) * 0.05, 0.0).astype(np.float32)
    units, cols = np.nonzero(mask.reshape(-1, channels).T)
    rowptr = np.concatenate([[0], np.cumsum(mask.reshape(-1, channels).sum(0))]).astype(np.int32)
    values = jnp.asarray(w.reshape(-1, channels)[cols, units])
    cols = cols.astype(np.int32)
    transposed = kernels.conv_transpose(cols, rowptr, shape)      # a stored layer keeps it with its topology
    x = jnp.asarray(rng.normal(size=(batch, size, size, channels)), jnp.float32)
    g = jnp.asarray(rng.normal(size=(batch, size, size, channels)), jnp.float32)
    m = jnp.asarray(mask)

    def masked(w, x):
        conv = lambda w, x: jax.lax.conv_general_dilated(x, jnp.where(m, w, 0.0), (1, 1), "SAME",
                                                         dimension_numbers=("NHWC", "HWIO", "NHWC"))
        return jax.grad(lambda w, x: jnp.sum(conv(w, x) * g), (0, 1))(w, x)

    def csr(v, x):
        conv = lambda v, x: kernels.csr_conv(x, v, cols, rowptr, shape, (1, 1), "SAME", transposed)
        return jax.grad(lambda v, x: jnp.sum(conv(v, x) * g), (0, 1))(v, x)

    return (jax.jit(masked), (jnp.asarray(w), x)), (jax.jit(csr), (values, x)), int(mask.sum())


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--density", type=float, default=0.05)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--isas", default=",".join(i for i in ("avx512", "avx2") if i in kernels.runnable_isas()))
    args = parser.parse_args()
    isas = [i for i in args.isas.split(",") if i]
    kernels.require()
    print(f"# {platform.machine()}, {kernels.status()}; batch {args.batch}, density {args.density}, "
          f"{args.rounds} rounds; 3x3 stride 1 SAME; forward + dx + dW per call")
    print("| channels | size | nnz | masked ms | " + " | ".join(f"csr {i} ms | masked / csr {i}" for i in isas) + " |")
    print("| --- | --- | --- | --- | " + " | ".join("--- | ---" for _ in isas) + " |")
    chosen = kernels.isa()
    for channels, size in SHAPES:
        (masked, m_args), (csr, c_args), nnz = variants(channels, size, args.batch, args.density)
        times = {"masked": []} | {i: [] for i in isas}
        for _ in range(2):                                    # compile and warm up every variant
            masked(*m_args)
            for isa in isas:
                kernels.use_isa(isa)
                csr(*c_args)
        for _ in range(args.rounds):
            masked(*m_args)
            times["masked"].append(timed(masked, *m_args))
            for isa in isas:
                kernels.use_isa(isa)
                csr(*c_args)
                times[isa].append(timed(csr, *c_args))
        kernels.use_isa(chosen)
        ms = lambda k, times=times: statistics.median(times[k]) * 1e3
        ratio = lambda k, times=times: statistics.median(a / b for a, b in zip(times["masked"], times[k]))
        print(f"| {channels} | {size} | {nnz:,} | {ms('masked'):.1f} | "
              + " | ".join(f"{ms(i):.1f} | {ratio(i):.2f}" for i in isas) + " |", flush=True)


if __name__ == "__main__":
    main()
