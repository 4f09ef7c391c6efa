"""Where one stored convolution's time goes: its three kernels and the layout changes around them.

WRN-22-2's first-group convolution (3x3, 32 -> 32 channels, 32x32, stride 1, SAME) at 95% uniform sparsity,
batch ``--batch`` (128): the compiled forward product, input gradient and value gradient on batch-last arrays
(``dst_conv``, ``dst_conv_dx``, ``dst_conv_dw``), the two gradients in one pass (``dst_conv_backward``), and the
layout change of an activation into the kernels'
padded batch-last form by XLA (``transpose`` + ``pad``) and by the compiled pass (``dst_to_batch_last``), and out
of it by XLA (``transpose``). Per-call medians of ``--calls`` calls, the ISA in use (``DST_KERNELS_ISA`` to force).

Run: ``.venv/bin/python benchmarks/conv_parts_time.py [--batch 128] [--calls 5]``
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from dst import kernels
from dst.kernels import conv


def median_ms(fn, *args, calls=5):
    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--calls", type=int, default=5)
    args = parser.parse_args()
    kernels.require()
    kernels.register()
    batch, size, channels = args.batch, 32, 32
    shape = (3, 3, channels, channels)
    rng = np.random.default_rng(0)
    mask = rng.random(shape) < 0.05
    w = np.where(mask, rng.normal(size=shape) * 0.05, 0.0).astype(np.float32)
    units, cols = np.nonzero(mask.reshape(-1, channels).T)
    rowptr = jnp.asarray(np.concatenate([[0], np.cumsum(mask.reshape(-1, channels).sum(0))]).astype(np.int32))
    values, cols = jnp.asarray(w.reshape(-1, channels)[cols, units]), jnp.asarray(cols.astype(np.int32))
    transposed = conv.conv_transpose(cols, rowptr, shape)
    x = jnp.asarray(rng.normal(size=(batch, size, size, channels)), jnp.float32)
    xp = jnp.asarray(rng.normal(size=(channels, size + 2, size + 2, batch)), jnp.float32)
    dy = jnp.asarray(rng.normal(size=(channels, size, size, batch)), jnp.float32)
    attrs = dict(kh=np.int64(3), kw=np.int64(3), sh=np.int64(1), sw=np.int64(1))
    out = lambda s: jax.ShapeDtypeStruct(s, jnp.float32)
    parts = {
        "forward (dst_conv)": (jax.jit(lambda v, xp: jax.ffi.ffi_call("dst_conv", out(dy.shape))(
            v, cols, rowptr, xp, **attrs)), (values, xp)),
        "input gradient (dst_conv_dx)": (jax.jit(lambda v, d: jax.ffi.ffi_call("dst_conv_dx", out(xp.shape))(
            v, *transposed, d, **attrs)), (values, dy)),
        "value gradient (dst_conv_dw)": (jax.jit(lambda d, xp: jax.ffi.ffi_call("dst_conv_dw", out(values.shape))(
            cols, rowptr, d, xp, **attrs)), (dy, xp)),
        "both gradients in one pass (dst_conv_backward)": (jax.jit(lambda v, d, xp: jax.ffi.ffi_call(
            "dst_conv_backward", (out(xp.shape), out(values.shape)))(v, *transposed, d, xp, **attrs)),
            (values, dy, xp)),
        "NHWC to padded batch-last, XLA": (jax.jit(lambda x: jnp.pad(jnp.transpose(x, (3, 1, 2, 0)),
                                                                    ((0, 0), (1, 1), (1, 1), (0, 0)))), (x,)),
        "NHWC to padded batch-last, compiled": (jax.jit(lambda x: conv._to_batch_last(x, ((1, 1), (1, 1)))), (x,)),
        "batch-last to NHWC, XLA": (jax.jit(lambda d: jnp.transpose(d, (3, 1, 2, 0))), (dy,)),
        "padded batch-last to NHWC, XLA": (jax.jit(lambda d: jnp.transpose(d[:, 1:-1, 1:-1], (3, 1, 2, 0))), (xp,)),
        "batch-last to NHWC, compiled": (jax.jit(lambda d: conv._from_batch_last(d)), (dy,)),
        "padded batch-last to NHWC, compiled": (jax.jit(lambda d: conv._from_batch_last(
            d, ((1, 1), (1, 1)))), (xp,)),
        "copy of the activation (XLA, the floor)": (jax.jit(lambda d: d * 1.0001), (dy,)),
    }
    print(f"# {kernels.status()}; 3x3 {channels}->{channels} at {size}x{size}, batch {batch}, 95% uniform")
    print("| part | ms |")
    print("| --- | --- |")
    for name, (fn, fn_args) in parts.items():
        print(f"| {name} | {median_ms(fn, *fn_args, calls=args.calls):.1f} |", flush=True)


if __name__ == "__main__":
    main()
