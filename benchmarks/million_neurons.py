"""A SET-MLP of over a million hidden neurons trained on Fashion-MNIST on the CPU, truly sparse.

784-H-H-H-10 with ``--hidden 333334`` (1,000,002 hidden neurons), Erdős–Rényi layers at ``epsilon = 20``
(SET's setting: ``epsilon (n_in + n_out)`` weights per layer, :func:`dst.train.large.er_count`; the output
layer comes out dense): 6.7M + 13.3M + 13.3M + 3.3M = 36.7M weights, where the dense network would hold
2.2e11. The hidden layers are born sparse in CSR form (:func:`dst.train.large.init_born_sparse`) and run
on the compiled kernels (:mod:`dst.kernels`) inside dst's stored train step; after every epoch but the
last, SET drops the fraction ``--zeta`` of each sparse layer's weights closest to zero (``--sign-split``:
Mocanu's per-sign rule) and regrows as many at random (:func:`dst.train.large.set_update`).

Prints progress every ``--log-every`` steps, then per epoch: wall time, test accuracy, the topology
update's time and the process's peak resident memory (``ru_maxrss``). ``--out FILE`` writes the results
as JSON. Defaults: SGD with momentum 0.9, lr 0.01, batch 128, ReLU, no dropout, one epoch; the last
partial batch of each epoch is left out (468 steps of 128). Sparse weights start as N(0, 0.1^2) (the SET
reference code's ``randn / 10``; a dense fan-in scaling would leave a unit of ~40 inputs nearly silent),
the dense output layer as flax's LeCun normal.

Run: ``.venv/bin/python benchmarks/million_neurons.py [--hidden 333334] [--epochs 1] [--out FILE]``
(``--hidden 2000 --max-steps 20`` is a one-minute check.)
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from dst import kernels
from dst.algorithms import make
from dst.algorithms.base import magnitude_drop
from dst.algorithms.set import sign_split_drop
from dst.backends import Stored
from dst.data.datasets import load
from dst.masks import named_leaves
from dst.masks import replace_named
from dst.models import MLP
from dst.train import large
from dst.train import make_train_step
from dst.train.moments import map_param_trees


def peak_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20   # KiB on Linux


def layer_counts(widths, epsilon):
    """{kernel name: ER count} of the layers ER leaves sparse (a layer it fills stays a dense kernel)."""
    out = {}
    for i, shape in enumerate(zip(widths[:-1], widths[1:])):
        count = large.er_count(shape, epsilon)
        if count < shape[0] * shape[1]:
            out[f"Dense_{i}/kernel"] = count
    return out


def moments_of(opt_state, params, name):
    """The optimizer's per-weight arrays of layer ``name`` (every subtree shaped like the params)."""
    found = []
    map_param_trees(lambda node: found.append(named_leaves(node)[name]) or node, opt_state, params)
    return found


def with_moments(opt_state, params, name, moved):
    it = iter(moved)
    return map_param_trees(lambda node: replace_named(node, {name: next(it)}), opt_state, params)


def evaluate(storage, state, x, y, batch=500):
    forward = jax.jit(lambda p, xb: jnp.argmax(storage.apply_fn(p, {}, xb, False, None)[0], -1))
    stored = Stored(state.params, state.topologies)
    correct = sum(int(jnp.sum(forward(stored, x[i:i + batch]) == y[i:i + batch])) for i in range(0, len(x), batch))
    return correct / len(x)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--hidden", type=int, default=333334)
    parser.add_argument("--layers", type=int, default=3)
    parser.add_argument("--epsilon", type=float, default=20.0)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument("--zeta", type=float, default=0.3)
    parser.add_argument("--sign-split", action="store_true")
    parser.add_argument("--max-steps", type=int, default=None, help="stop each epoch after this many steps")
    parser.add_argument("--log-every", type=int, default=25)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    kernels.require()

    data = load("fashion_mnist")
    train_x, train_y = data.train_x.reshape(len(data.train_x), -1), data.train_y
    test_x, test_y = jnp.asarray(data.test_x.reshape(len(data.test_x), -1)), jnp.asarray(data.test_y)
    widths = [train_x.shape[1], *([args.hidden] * args.layers), 10]
    counts = layer_counts(widths, args.epsilon)
    model = MLP(hidden=tuple(widths[1:-1]), num_classes=10)
    tx = optax.sgd(args.lr, momentum=0.9)
    start = time.perf_counter()
    storage, state = large.init_born_sparse(jax.random.key(args.seed), np.random.default_rng(args.seed), model,
                                            jnp.zeros((1, widths[0])), counts, tx, make("static"),
                                            sparse_init=jax.nn.initializers.normal(0.1))
    print(f"{platform.processor() or platform.machine()}, {jax.device_count()} {jax.default_backend()} device(s), "
          f"kernels: {kernels.status()}", flush=True)
    arch = "-".join(map(str, widths))
    per_layer = ", ".join(f"{n.split('/')[0]} {c:,}" for n, c in counts.items())
    print(f"{arch}: {sum(widths[1:-1]):,} hidden neurons, {sum(counts.values()):,} sparse weights in "
          f"{len(counts)} CSR layers ({per_layer}); born sparse in {time.perf_counter() - start:.1f} s, "
          f"peak {peak_gib():.2f} GiB", flush=True)
    step = jax.jit(make_train_step(None, tx, make("static"), storage=storage).full, donate_argnums=0)
    rng = np.random.default_rng(args.seed + 1)
    drop_rule = sign_split_drop if args.sign_split else magnitude_drop
    steps_per_epoch = len(train_x) // args.batch
    if args.max_steps:
        steps_per_epoch = min(steps_per_epoch, args.max_steps)
    results = {"hidden": sum(widths[1:-1]), "widths": widths, "sparse_weights": sum(counts.values()),
               "counts": counts, "batch": args.batch, "steps_per_epoch": steps_per_epoch, "epochs": []}
    for epoch in range(args.epochs):
        order = rng.permutation(len(train_x))
        t0 = time.perf_counter()
        losses, last = [], (t0, 0)
        for i in range(steps_per_epoch):
            rows = order[i * args.batch:(i + 1) * args.batch]
            state, metrics = step(state, (jnp.asarray(train_x[rows]), jnp.asarray(train_y[rows])))
            losses.append(metrics["loss"])
            if (i + 1) % args.log_every == 0 or i + 1 == steps_per_epoch:
                loss = float(np.mean(losses[-args.log_every:]))      # waits for the step
                now = time.perf_counter()
                done, left = now - t0, steps_per_epoch - i - 1
                window = (now - last[0]) / (i + 1 - last[1])
                last = (now, i + 1)
                print(f"epoch {epoch + 1} step {i + 1}/{steps_per_epoch}: loss {loss:.4f}, {window:.2f} s/step "
                      f"lately, {done / 60:.1f} min, eta {window * left / 60:.1f} min, peak {peak_gib():.2f} GiB",
                      flush=True)
        jax.block_until_ready(state.params)
        train_s = time.perf_counter() - t0
        t1 = time.perf_counter()
        accuracy = evaluate(storage, state, test_x, test_y)
        eval_s = time.perf_counter() - t1
        update_s, dropped = 0.0, {}
        if epoch + 1 < args.epochs:    # SET: after every epoch but the last
            t2 = time.perf_counter()
            params, topologies, opt_state = named_leaves(state.params), dict(state.topologies), state.opt_state
            new_values = {}
            for j, (name, lay) in enumerate(storage.layout_of.items()):
                key = jax.random.fold_in(jax.random.key(args.seed + 2), epoch * 1000 + j)
                values, topologies[name], moved, dropped[name] = large.set_update(
                    key, rng, params[name], topologies[name], lay.shape, args.zeta, drop_rule=drop_rule,
                    moments=moments_of(opt_state, state.params, name))
                opt_state = with_moments(opt_state, state.params, name, moved)
                new_values[name] = values
            state = state._replace(params=replace_named(state.params, new_values), topologies=topologies,
                                   opt_state=opt_state)
            update_s = time.perf_counter() - t2
        row = {"epoch": epoch + 1, "train_minutes": train_s / 60, "s_per_step": train_s / steps_per_epoch,
               "test_accuracy": accuracy, "eval_s": eval_s, "set_update_s": update_s, "dropped": dropped,
               "peak_gib": peak_gib()}
        results["epochs"].append(row)
        print(json.dumps(row), flush=True)
        if args.out:
            with open(args.out, "w") as f:
                json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
