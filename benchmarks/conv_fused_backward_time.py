"""A stored convolution's two gradients in one pass (``dst_conv_backward``) against the two kernels apart.

SparseProp's four ResNet-18 layer shapes and WRN-22-2's first group (3x3, stride 1, SAME) at 95% uniform
sparsity, batch 64: the jitted gradient of ``sum(csr_conv(x, values) ** 2)`` with respect to the input and the
values (forward, layout changes and both gradients), once with ``dst.kernels.conv.FUSED_BACKWARD`` (one pass over
the output gradient) and once without it (``dst_conv_dx`` then ``dst_conv_dw``), rounds interleaved; medians and
the median of each round's ratio, on the ISA in use (``DST_KERNELS_ISA=avx2`` to force AVX2).

Run: ``.venv/bin/python benchmarks/conv_fused_backward_time.py``
"""

import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from dst import kernels
from dst.kernels import conv as kconv

SHAPES = [(64, 56), (128, 28), (256, 14), (512, 7), (32, 32)]   # channels, height = width
BATCH, DENSITY, ROUNDS = 64, 0.05, 7


def gradient_fn(cols, rowptr, transposed, shape, fused: bool):
    kconv.FUSED_BACKWARD = fused     # read when the program is traced
    loss = lambda x, v: jnp.sum(kconv.csr_conv(x, v, cols, rowptr, shape, (1, 1), "SAME", transposed) ** 2)
    return jax.jit(jax.grad(loss, argnums=(0, 1)))


def main():
    kernels.require("benchmark")
    print(f"# {kernels.status()}; batch {BATCH}, {1 - DENSITY:.0%} uniform, {ROUNDS} rounds")
    print("| channels | size | fused ms | separate ms | separate / fused |")
    print("| --- | --- | --- | --- | --- |")
    rng = np.random.default_rng(0)
    for channels, size in SHAPES:
        shape = (3, 3, channels, channels)
        mask = rng.random(shape) < DENSITY
        w = np.where(mask, rng.normal(size=shape), 0).astype(np.float32)
        units, cols = np.nonzero(mask.reshape(-1, channels).T)
        rowptr = jnp.asarray(np.concatenate([[0], np.cumsum(mask.reshape(-1, channels).sum(0))]).astype(np.int32))
        values, cols = jnp.asarray(w.reshape(-1, channels)[cols, units]), jnp.asarray(cols.astype(np.int32))
        transposed = kconv.conv_transpose(cols, rowptr, shape)
        x = jnp.asarray(rng.normal(size=(BATCH, size, size, channels)).astype(np.float32))
        variants = {name: gradient_fn(cols, rowptr, transposed, shape, name == "fused") for name in ("fused", "sep")}
        kconv.FUSED_BACKWARD = True
        times = {name: [] for name in variants}
        for _ in range(ROUNDS):
            for name, fn in variants.items():
                jax.block_until_ready(fn(x, values))          # untimed: the other variant's leftovers
                start = time.perf_counter()
                jax.block_until_ready(fn(x, values))
                times[name].append(time.perf_counter() - start)
        ratio = statistics.median(a / b for a, b in zip(times["sep"], times["fused"]))
        print(f"| {channels} | {size} | {1e3 * statistics.median(times['fused']):.1f} | "
              f"{1e3 * statistics.median(times['sep']):.1f} | {ratio:.2f} |", flush=True)


if __name__ == "__main__":
    main()
