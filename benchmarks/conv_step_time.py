"""A conv net's whole train step, masked against its convolutions stored on csr.

Model: WRN-22-2 (``--model``; CIFAR-shaped random data, 32x32x3, 10 classes), batch ``--batch`` (128), SGD
with momentum, static training (the plain step every dynamic algorithm takes between its updates), at 95%
uniform and 90% ERK over every sparsifiable layer (the stem convolution and the classifier included). The
masked step runs XLA's convolutions on ``where(mask, w, 0)``; the csr step stores every convolution the
kernels can run and the classifier (``dst.backends.convolutions``), so the step runs
``dst.kernels.csr_conv``. One jitted dispatch per step, as ``dst-train`` runs conv nets on the CPU.
Variants interleave round by round, each timed over ``--steps`` consecutive steps after two settling ones (a
single step right after another variant's ran up to twice as slow as a run's steady steps: masked 3.2 s against
``dst-train``'s 1.5 s; the csr step once per instruction set, ``--isas``, switched with
``dst.kernels.use_isa``), and an ``auto`` step storing only the layers ``sparsity.backend=auto`` chooses for a run
of 10,000 steps (:func:`dst.train.auto.choose`, timed on the first ISA); the table shows per-step medians and
masked / csr, the median of each round's ratio.

Run: ``.venv/bin/python benchmarks/conv_step_time.py [--model wrn22_2] [--batch 128] [--rounds 3] [--steps 3]``
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import jax
import optax

import dst
from dst import backends
from dst import kernels
from dst.models import build_model
from dst.train import auto
from dst.train import stored

SETTINGS = [("95% uniform", 0.95, "uniform"), ("90% ERK", 0.9, "erk")]


def timed(fn, *args):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    return time.perf_counter() - start


def steps(model, batch, sparsity, distribution):
    """``{variant: (jitted step, state)}`` for masked and csr, from the same params and masks."""
    x = jax.random.normal(jax.random.key(1), (batch, 32, 32, 3))
    y = jax.random.randint(jax.random.key(2), (batch,), 0, 10)
    variables = model.init(jax.random.key(0), x[:1])
    params, model_state = variables["params"], {"batch_stats": variables["batch_stats"]}
    layers = dst.sparsifiable_layers(params)
    masks = dst.init_masks(jax.random.key(3), params, dst.layer_densities(params, sparsity, distribution))
    algo, tx = dst.algorithms.make("static"), optax.sgd(0.1, momentum=0.9)
    geometries, _ = backends.convolutions(model, x[:1], layers)
    storage = stored.make_storage(model, "csr", masks, layers, convolutions=geometries)
    # auto: the layers sparsity.backend=auto stores for a run of 10,000 steps (timed per layer on the ISA in use)
    timings = auto.choose(model, params, model_state, masks, layers, x, steps=10_000, convolutions=geometries)
    chosen = auto.stored_layers(timings)
    auto_storage = stored.make_storage(model, "csr", masks, chosen, convolutions=geometries) if chosen else None
    out = {}
    for name, store in (("masked", None), ("csr", storage), ("auto", auto_storage)):
        step = jax.jit(dst.make_train_step(dst.flax_apply(model) if store is None else None, tx, algo,
                                           storage=store).full, donate_argnums=0)
        state = dst.create_train_state(jax.random.key(4), params, masks, tx, algo, model_state, storage=store)
        out[name] = (step, state)
    return out, (x, y), (len(storage.layout_of), len(chosen))


def time_setting(variants, batch, isas, rounds, steps) -> dict:
    """Per-step seconds of each variant, rounds interleaved (each round's: the median of ``steps`` consecutive
    steps after two settling ones): ``{"masked": [...], isa: [...]}``."""
    states = {name: state for name, (_, state) in variants.items()}
    times = {"masked": []} | {i: [] for i in isas}

    def run(name, isa=None):
        if isa is not None:
            kernels.use_isa(isa)
        step = variants[name][0]
        for _ in range(2):   # untimed: the previous variant's leftovers (the state is donated: keep the new one)
            states[name] = step(states[name], batch)[0]
        jax.block_until_ready(states[name])
        seconds = []
        for _ in range(steps):   # consecutive steps, as a run takes them
            start = time.perf_counter()
            states[name], metrics = step(states[name], batch)
            jax.block_until_ready(metrics)
            seconds.append(time.perf_counter() - start)
        return statistics.median(seconds)

    run("masked")
    for isa in isas:
        run("csr", isa)
    run("auto", isas[0])
    times["auto"] = []
    for _ in range(rounds):
        times["masked"].append(run("masked"))
        for isa in isas:
            times[isa].append(run("csr", isa))
        times["auto"].append(run("auto", isas[0]))
    return times


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="wrn22_2")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=3, help="consecutive timed steps per variant and round")
    parser.add_argument("--settings", default=",".join(label for label, _, _ in SETTINGS),
                        help="which of the settings to run, by label")
    parser.add_argument("--isas", default=",".join(i for i in ("avx512", "avx2") if i in kernels.runnable_isas()))
    args = parser.parse_args()
    isas = [i for i in args.isas.split(",") if i]
    kernels.require()
    model = build_model(args.model, num_classes=10)
    print(f"# {platform.machine()}, {kernels.status()}; {args.model}, batch {args.batch}, {args.rounds} rounds; "
          "static train step, one dispatch per step")
    columns = " | ".join(f"csr {i} s/step | masked / csr {i}" for i in isas)
    print(f"| setting | stored layers (auto) | masked s/step | {columns} | auto {isas[0]} s/step | masked / auto |")
    print("| --- | --- | --- | " + " | ".join("--- | ---" for _ in isas) + " | --- | --- |")
    chosen = kernels.isa()
    for label, sparsity, distribution in (s for s in SETTINGS if s[0] in args.settings.split(",")):
        variants, batch, stored_layers = steps(model, args.batch, sparsity, distribution)
        times = time_setting(variants, batch, isas, args.rounds, args.steps)
        kernels.use_isa(chosen)
        ratios = {i: statistics.median(a / b for a, b in zip(times["masked"], times[i])) for i in [*isas, "auto"]}
        print(f"| {label} | {stored_layers[0]} ({stored_layers[1]}) | {statistics.median(times['masked']):.3f} | "
              + " | ".join(f"{statistics.median(times[i]):.3f} | {ratios[i]:.2f}" for i in [*isas, "auto"]) + " |",
              flush=True)


if __name__ == "__main__":
    main()
