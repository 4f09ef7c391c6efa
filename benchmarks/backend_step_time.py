"""A whole train step on each storage backend: masked against csr and condensed, per density and width.

The model is an MLP 784-W-W-W-10 (``--widths``, default 1000 and 4000), batch 128, SGD with momentum,
constant fan-in masks at each density (so all three backends hold the very same weights; the first and
last layer included). Each variant runs ``--steps`` steps of static training as one ``lax.scan`` (the
plain step every dynamic algorithm takes between its updates), and per-step times are medians over rounds
that interleave the variants. Each timed call follows an untimed call of the same variant: a first call
after another variant pays for that one's leftovers (XLA's pool threads still spinning, caches holding its
640 MB). Without it, at 1% the csr step timed right after masked took 8.4 ms and the condensed step, the
same kernels on the same weights timed after csr, 6.8 ms. Also reported: the ratio masked / backend, and
the compiled plain step's memory (``compile().memory_analysis()``: arguments + temporaries, in MiB). The
stored backends run once per kernel instruction set (``--isas``; :func:`dst.kernels.use_isa` switches them
between calls, so an AVX-512 machine times its AVX2 loops in the same process), each beside the same masked
times.

Run: ``.venv/bin/python benchmarks/backend_step_time.py [--widths 1000,4000] [--densities 0.5,0.1,0.01,0.001]``
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import jax
import jax.numpy as jnp
import optax

import dst
from dst import kernels
from dst import structures
from dst.models import MLP
from dst.train import stored

BATCH = 128


def timed(fn, *args):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    return time.perf_counter() - start


def fan_in_mlp(width, density):
    """``(model, params, layers, masks)``: the MLP 784-W-W-W-10 with constant fan-in masks at ``density``."""
    model = MLP(hidden=(width, width, width), num_classes=10)
    params = model.init(jax.random.key(0), jnp.zeros((1, 784)))["params"]
    layers = dst.sparsifiable_layers(params)
    fan = structures.fan_in()
    densities = {n: fan.round_density(tuple(params[n.split("/")[0]]["kernel"].shape), density) for n in layers}
    return model, params, layers, dst.init_masks(jax.random.key(1), params, densities, structure=fan)


def variants(width, density, steps, backends=("masked", "csr", "condensed")):
    model, params, layers, masks = fan_in_mlp(width, density)
    x = jax.random.normal(jax.random.key(2), (steps * BATCH, 784))
    y = jax.random.randint(jax.random.key(3), (steps * BATCH,), 0, 10)
    tx = optax.sgd(0.01, momentum=0.9)
    algo = dst.algorithms.make("static")
    out = {}
    for backend in backends:
        storage = stored.make_storage(model, backend, masks, layers)
        state = dst.create_train_state(jax.random.key(4), params, masks, tx, algo, storage=storage)
        step = dst.make_train_step(dst.flax_apply(model), tx, algo, storage=storage)
        epoch = jax.jit(dst.train_epoch_fn(step, BATCH, loop="scan"))
        memory = epoch.lower(state, x, y, jax.random.key(5)).compile().memory_analysis()
        mib = (memory.argument_size_in_bytes + memory.temp_size_in_bytes) / 2**20 if memory else float("nan")
        out[backend] = ((lambda e, s: lambda key: e(s, x, y, key)[0])(epoch, state), mib)
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--widths", default="1000,4000")
    parser.add_argument("--densities", default="0.5,0.1,0.05,0.01,0.001")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=20, help="steps per timed call")
    parser.add_argument("--masked-up-to", type=int, default=10_000,
                        help="widest MLP that also runs masked (at 20000 wide the masked state, built beside the "
                             "stored ones, was killed for memory on a 24 GiB machine)")
    parser.add_argument("--backends", default="masked,csr,condensed")
    parser.add_argument("--isas", default=None,
                        help="kernel instruction sets to time side by side, e.g. avx512,avx2 (default: every "
                             "one this CPU runs but the portable fallback)")
    args = parser.parse_args()
    kernels.require("benchmark")
    print(f"machine: {platform.machine()} {platform.processor() or ''} devices={jax.devices()} "
          f"jax={jax.__version__}; kernels {kernels.status()}; MLP 784-W-W-W-10, batch {BATCH}, constant "
          f"fan-in masks, static training, {args.rounds} rounds x {args.steps} steps, medians")
    isas = args.isas.split(",") if args.isas else [i for i in kernels.runnable_isas() if i != "generic"] or ["generic"]
    print(f"kernel ISAs timed side by side: {', '.join(isas)}")
    print(f"{'width':>6s} {'density':>8s} {'isa':>8s} {'masked ms':>10s} {'csr ms':>8s} {'cond. ms':>9s} "
          f"{'masked/csr':>11s} {'masked/cond.':>13s} {'MiB masked/csr/cond.':>22s}")
    for width in (int(w) for w in args.widths.split(",")):
        for density in (float(d) for d in args.densities.split(",")):
            names = [b for b in args.backends.split(",") if b != "masked" or width <= args.masked_up_to]
            built = variants(width, density, args.steps, names)
            # the stored backends once per instruction set, interleaved with masked in every round
            runs = [(k, None if k == "masked" else i) for k in built for i in (isas if k != "masked" else [None])]
            times = {run: [] for run in runs}
            for r in range(args.rounds + 1):
                for backend, isa in runs:
                    if isa:
                        kernels.use_isa(isa)
                    jax.block_until_ready(built[backend][0](jax.random.key(99)))   # settle (see above)
                    elapsed = timed(built[backend][0], jax.random.key(100 + r)) / args.steps
                    if r:   # round 0 compiles and warms up
                        times[(backend, isa)].append(elapsed)
            mib = "/".join(f"{built[k][1]:.0f}" if k in built else "-" for k in ("masked", "csr", "condensed"))
            for isa in isas:
                t = {k: times.get((k, None if k == "masked" else isa)) for k in ("masked", "csr", "condensed")}
                med = {k: 1e3 * statistics.median(v) if v else float("nan") for k, v in t.items()}
                ratio = lambda k, t=t: statistics.median(m / v for m, v in zip(t["masked"], t[k])) \
                    if t["masked"] and t[k] else float("nan")
                print(f"{width:6d} {density:8.3%} {isa:>8s} {med['masked']:10.2f} {med['csr']:8.2f} "
                      f"{med['condensed']:9.2f} {ratio('csr'):11.2f} {ratio('condensed'):13.2f} {mib:>22s}",
                      flush=True)


if __name__ == "__main__":
    main()
