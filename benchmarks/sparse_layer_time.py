"""One sparse layer's forward + dx + dW: masked dense against the compiled CSR and condensed kernels.

For an ``n x n`` layer at batch ``B`` (defaults: 4000, 128, the issue's anchor layer), each density is
timed as one jitted function returning ``(y, dx, dW)`` of ``sum(y * g)``:

* ``masked``: ``x @ (w * mask)`` with XLA's dense matmul; dW is the dense ``[n, n]`` gradient, masked;
* ``csr``: :func:`dst.kernels.csr_matmul` (random pattern, exact nnz), dW at the nonzeros only;
* ``condensed``: :func:`dst.kernels.condensed_matmul` (constant fan-in, the same nnz);
* ``gather``: the XLA fallback (``csr_matmul_xla``: gather + segment_sum), for reference.

Variants interleave within each round, the kernels once per instruction set (``--isas``, switched with
:func:`dst.kernels.use_isa`: the AVX2 loops are timed on an AVX-512 machine in the same process); the
table shows per-call medians and the ratio masked / variant (the median over rounds of each round's
ratio). Each timed call follows an untimed call of the same variant, as in ``backend_step_time.py``: a
call right after masked's pays for its leftovers.

Run: ``.venv/bin/python benchmarks/sparse_layer_time.py [--n 4000] [--batch 128] [--rounds 7] [--isas avx512,avx2]``
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
    parser.add_argument("--isas", default=None,
                        help="kernel instruction sets to time side by side, e.g. avx512,avx2 (default: every "
                             "one this CPU runs)")
    args = parser.parse_args()
    kernels.require("benchmark")
    isas = args.isas.split(",") if args.isas else list(kernels.runnable_isas())
    print(f"machine: {platform.machine()} {platform.processor() or ''} devices={jax.devices()} "
          f"jax={jax.__version__}; kernels {kernels.status()}; layer {args.n}x{args.n}, batch {args.batch}, "
          f"{args.rounds} rounds, medians; kernel ISAs timed: {', '.join(isas)}")
    print(f"{'density':>8s} {'isa':>8s} {'masked ms':>10s} {'csr ms':>8s} {'cond. ms':>9s} {'gather ms':>10s} "
          f"{'masked/csr':>11s} {'masked/cond.':>13s}")
    for density in (float(d) for d in args.densities.split(",")):
        variants = layer_variants(args.n, args.batch, density)
        if args.no_gather:
            variants.pop("gather")
        # every kernel variant once per ISA, interleaved with masked in each round
        runs = [("masked", None)] + [(k, i) for i in isas for k in variants if k not in ("masked", "gather")]
        runs += [("gather", None)] if "gather" in variants else []
        times = {run: [] for run in runs}
        for r in range(args.rounds + 1):
            for kind, isa in runs:
                if isa:
                    kernels.use_isa(isa)
                fn, *a = variants[kind]
                jax.block_until_ready(fn(*a))   # settle (see the module doc)
                elapsed = timed(fn, *a)
                if r:   # round 0 compiles and warms up
                    times[(kind, isa)].append(elapsed)
        med = {run: 1e3 * statistics.median(v) for run, v in times.items()}
        masked = times[("masked", None)]
        ratio = lambda run, masked=masked, times=times: statistics.median(m / t for m, t in zip(masked, times[run]))
        gather = f"{med[('gather', None)]:10.2f}" if ("gather", None) in med else f"{'-':>10s}"
        for isa in isas:
            print(f"{density:8.3%} {isa:>8s} {med[('masked', None)]:10.2f} {med[('csr', isa)]:8.2f} "
                  f"{med[('condensed', isa)]:9.2f} {gather} {ratio(('csr', isa)):11.2f} "
                  f"{ratio(('condensed', isa)):13.2f}", flush=True)


if __name__ == "__main__":
    main()
