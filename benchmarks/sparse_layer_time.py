"""One sparse layer's forward + dx + dW: masked dense against the compiled CSR and condensed kernels.

For an ``n x n`` layer at batch ``B`` (defaults: 4000, 128, the issue's anchor layer), each density is
timed as one jitted function returning ``(y, dx, dW)`` of ``sum(y * g)``:

* ``masked``: ``x @ (w * mask)`` with XLA's dense matmul; dW is the dense ``[n, n]`` gradient, masked;
* ``csr``: :func:`dst.kernels.csr_matmul` (random pattern, exact nnz), dW at the nonzeros only;
* ``condensed``: :func:`dst.kernels.condensed_matmul` (constant fan-in, the same nnz);
* ``gather``: the XLA fallback (``csr_matmul_xla``: gather + segment_sum), for reference.

Variants interleave within each round; the table shows per-call medians and the ratio masked / variant
(the median over rounds of each round's ratio).

Run: ``.venv/bin/python benchmarks/sparse_layer_time.py [--n 4000] [--batch 128] [--rounds 7]``
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


def timed(fn, *args):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    return time.perf_counter() - start


def layer_variants(n, batch, density, seed=0):
    rng = np.random.default_rng(seed)
    k = max(1, round(density * n))                       # fan-in: same nnz for csr and condensed
    indices = np.argsort(rng.random((n, n)), axis=1)[:, :k].astype(np.int32)   # [n_out, k]
    mask = np.zeros((n, n), bool)
    mask[indices, np.arange(n)[:, None]] = True          # mask [n_in, n_out]
    # csr: a random pattern with the same nnz, not constant fan-in
    flat = rng.choice(n * n, size=k * n, replace=False)
    csr_mask = np.zeros(n * n, bool)
    csr_mask[flat] = True
    csr_mask = csr_mask.reshape(n, n)
    o_idx, i_idx = np.nonzero(csr_mask.T)
    rowptr = np.concatenate([[0], np.cumsum(csr_mask.sum(0))]).astype(np.int32)
    x = jnp.asarray(rng.normal(size=(batch, n)), jnp.float32)
    g = jnp.asarray(rng.normal(size=(batch, n)), jnp.float32)
    w = jnp.asarray(rng.normal(size=(n, n)) * 0.05, jnp.float32)

    def grads(product, params):
        return jax.jit(lambda p, x: jax.value_and_grad(lambda p, x: jnp.sum(product(x, p) * g), (0, 1))(p, x))

    mask_j = jnp.asarray(mask)
    masked = grads(lambda x, w: x @ jnp.where(mask_j, w, 0.0), w)
    values = jnp.asarray(rng.normal(size=i_idx.size) * 0.05, jnp.float32)
    cols, rp = jnp.asarray(i_idx, jnp.int32), jnp.asarray(rowptr)
    csr = grads(lambda x, v: kernels.csr_matmul(x, v, cols, rp), values)
    gather = grads(lambda x, v: kernels.csr_matmul_xla(x, v, cols, rp), values)
    cvals = jnp.asarray(rng.normal(size=(n, k)) * 0.05, jnp.float32)
    idx = jnp.asarray(indices)
    condensed = grads(lambda x, v: kernels.condensed_matmul(x, v, idx), cvals)
    return {"masked": (masked, w, x), "csr": (csr, values, x), "condensed": (condensed, cvals, x),
            "gather": (gather, values, x)}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=4000)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--densities", default="0.5,0.1,0.05,0.01,0.001")
    parser.add_argument("--no-gather", action="store_true", help="skip the slow XLA fallback")
    args = parser.parse_args()
    kernels.require("benchmark")
    print(f"machine: {platform.machine()} {platform.processor() or ''} devices={jax.devices()} "
          f"jax={jax.__version__}; kernels {kernels.status()}; layer {args.n}x{args.n}, batch {args.batch}, "
          f"{args.rounds} rounds, medians")
    print(f"{'density':>8s} {'masked ms':>10s} {'csr ms':>8s} {'cond. ms':>9s} {'gather ms':>10s} "
          f"{'masked/csr':>11s} {'masked/cond.':>13s}")
    for density in (float(d) for d in args.densities.split(",")):
        variants = layer_variants(args.n, args.batch, density)
        if args.no_gather:
            variants.pop("gather")
        for fn, *a in variants.values():
            timed(fn, *a)
        times = {k: [] for k in variants}
        for _ in range(args.rounds):
            for k, (fn, *a) in variants.items():
                times[k].append(timed(fn, *a))
        med = {k: 1e3 * statistics.median(v) for k, v in times.items()}
        ratio = lambda k, times=times: statistics.median(m / t for m, t in zip(times["masked"], times[k]))
        gather = f"{med['gather']:10.2f}" if "gather" in med else f"{'-':>10s}"
        print(f"{density:8.3%} {med['masked']:10.2f} {med['csr']:8.2f} {med['condensed']:9.2f} {gather} "
              f"{ratio('csr'):11.2f} {ratio('condensed'):13.2f}", flush=True)


if __name__ == "__main__":
    main()
