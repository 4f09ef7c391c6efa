"""What a structure costs RigL: per training step and per mask update, against unstructured RigL.

Pairs at equal density, each measured side by side in one process (rounds interleave the variants;
ratios are medians over rounds):

* N:M 2:4 RigL / unstructured RigL, both at 50% (uniform): per step with dT=100 (averaged over dT)
* constant fan-in RigL / unstructured RigL, both at ``--sparsity`` ERK: per step with dT=100
* one structured update / one static train step (same structure), and the same for unstructured
* SRigL (fan-in, ablation) / unstructured RigL, for reference

Targets (issue "Structured sparsity that regrows"): per step <= 1.10, one update <= 5 steps.

Models: ``--model mlp`` (MLP 784-1000-1000-1000-10, batch 128, SGD momentum, one ``lax.scan`` per
epoch) or ``--model wrn22_2`` (WRN-22-2, CIFAR-shaped, batch 128; on CPU one jitted dispatch per step,
as dst runs conv nets there). Data are random (timing does not depend on values).

Run: ``.venv/bin/python benchmarks/structure_step_time.py --model mlp [--rounds 5] [--steps 500]``
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import jax
import optax

import dst
from dst import structures
from dst.models import build_model
from dst.models import set_mlp

BATCH = 128


def timed(fn, *args):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    return time.perf_counter() - start


def setup(model_name, steps):
    if model_name == "mlp":
        model = set_mlp()
        x = jax.random.normal(jax.random.key(3), (steps * BATCH, 784))
    else:
        model = build_model(model_name, num_classes=10)
        x = jax.random.normal(jax.random.key(3), (steps * BATCH, 32, 32, 3))
    y = jax.random.randint(jax.random.key(4), (steps * BATCH,), 0, 10)
    variables = dict(model.init(jax.random.key(0), x[:1]))
    params = variables.pop("params")
    return model, params, variables, x, y


def masks_for(params, sparsity, distribution, structure):
    if structure.name == "unstructured":
        return dst.init_masks(jax.random.key(2), params, dst.layer_densities(params, sparsity, distribution))
    densities = structures.structured_densities(params, sparsity, distribution, structure)
    return dst.init_masks(jax.random.key(2), params, densities, structure=structure)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="mlp", choices=("mlp", "wrn22_2"))
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=500, help="steps per timed epoch (a multiple of 100)")
    parser.add_argument("--sparsity", type=float, default=0.9)
    parser.add_argument("--pairs", default="n_m,fan_in,srigl",
                        help="which comparisons to run (fewer compile faster): n_m, fan_in, srigl")
    args = parser.parse_args()
    pairs = set(args.pairs.split(","))
    steps = args.steps
    model, params, model_state, x, y = setup(args.model, steps)
    loop = "host" if args.model != "mlp" and jax.default_backend() == "cpu" else "scan"
    tx = optax.sgd(0.01, momentum=0.9)
    dyn = dict(update_every=100, end_step=10**6, drop_fraction=0.3)
    plain, n_m, fan = structures.unstructured(), structures.n_m(2, 4), structures.fan_in()
    setups = {}   # name: (masks, algorithm name, structure)
    if "n_m" in pairs:
        setups["static u50"] = (masks_for(params, 0.5, "uniform", plain), "static", plain)
        setups["rigl u50"] = (masks_for(params, 0.5, "uniform", plain), "rigl", plain)
        setups["rigl 2:4"] = (masks_for(params, 0.5, "uniform", n_m), "rigl", n_m)
        setups["static 2:4"] = (masks_for(params, 0.5, "uniform", n_m), "static", n_m)
    if pairs & {"fan_in", "srigl"}:
        setups["static u"] = (masks_for(params, args.sparsity, "erk", plain), "static", plain)
        setups["rigl u"] = (masks_for(params, args.sparsity, "erk", plain), "rigl", plain)
    if "fan_in" in pairs:
        setups["rigl fan-in"] = (masks_for(params, args.sparsity, "erk", fan), "rigl", fan)
    if "srigl" in pairs:
        setups["srigl"] = (masks_for(params, args.sparsity, "erk", fan), "srigl", fan)

    def make(name, structure, **kw):
        return dst.algorithms.make(name, **({} if name == "static" else {**dyn, **kw}), structure=structure)

    loops, updates = {}, {}
    for label, (masks, name, structure) in setups.items():
        algo = make(name, structure)
        state = dst.create_train_state(jax.random.key(1), params, masks, tx, algo, model_state)
        epoch = dst.train_epoch_fn(dst.make_train_step(dst.flax_apply(model), tx, algo), BATCH, loop=loop)
        loops[label] = (lambda e, s: lambda key: e(s, x, y, key)[0])(epoch, state)
        if name != "static":   # one topology update alone, with a dense gradient of the right shapes
            once = make(name, structure, update_every=1)
            grads = jax.tree_util.tree_map(lambda p: jax.random.normal(jax.random.key(5), p.shape), params)
            sparse = dst.apply_masks(params, masks)
            s0 = once.init(sparse, masks)
            fn = jax.jit(lambda p, m, g, k, once=once, s0=s0: once.update(s0, k, p, m, g)[:2])
            updates[label] = (fn, sparse, masks, grads)

    for fn in loops.values():
        timed(fn, jax.random.key(6))
    for fn, *a in updates.values():
        timed(fn, *a, jax.random.key(7))
    per_step = {k: [] for k in loops}
    update_t = {k: [] for k in updates}
    for r in range(args.rounds):
        for k, fn in loops.items():
            per_step[k].append(timed(fn, jax.random.key(100 + r)) / steps)
        for k, (fn, *a) in updates.items():
            for _ in range(3):
                update_t[k].append(timed(fn, *a, jax.random.key(200 + r)))

    med = {k: statistics.median(v) for k, v in per_step.items()}
    upd = {k: statistics.median(v) for k, v in update_t.items()}
    print(f"machine: {platform.machine()} {platform.processor() or ''} devices={jax.devices()} jax={jax.__version__}; "
          f"model {args.model}, loop {loop}, {args.rounds} rounds x {steps} steps, batch {BATCH}")
    for k, t in med.items():
        print(f"  {k:12s} {1e3 * t:9.3f} ms/step" + (f"   one update {1e3 * upd[k]:8.2f} ms" if k in upd else ""))
    ratio = lambda a, b: statistics.median(p / q for p, q in zip(per_step[a], per_step[b]))
    s = f"{args.sparsity:.0%} ERK"
    print("ratios (median over rounds of side-by-side runs):")
    if "n_m" in pairs:
        print(f"  rigl 2:4 / rigl unstructured (50%, dT=100)     {ratio('rigl 2:4', 'rigl u50'):6.3f}   target <= 1.10")
        one = upd['rigl 2:4'] / med['static 2:4']
        print(f"  one 2:4 update / static 2:4 step               {one:6.2f}   target <= 5")
        print(f"  one unstructured update / static step (50%)    {upd['rigl u50'] / med['static u50']:6.2f}")
    if "fan_in" in pairs:
        print(f"  rigl fan-in / rigl unstructured ({s}, dT=100) {ratio('rigl fan-in', 'rigl u'):6.3f}   target <= 1.10")
        one = upd['rigl fan-in'] / med['static u']
        print(f"  one fan-in update / static step ({s})       {one:6.2f}   target <= 5")
    if "srigl" in pairs:
        print(f"  srigl / rigl unstructured ({s}, dT=100)       {ratio('srigl', 'rigl u'):6.3f}")
        print(f"  one srigl update / static step ({s})        {upd['srigl'] / med['static u']:6.2f}")
    if pairs & {"fan_in", "srigl"}:
        print(f"  one unstructured update / static step ({s}) {upd['rigl u'] / med['static u']:6.2f}")


if __name__ == "__main__":
    main()
