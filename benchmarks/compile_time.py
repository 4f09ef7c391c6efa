"""Compile time of train steps with mask updates, under the XLA flags of the environment.

The test suite's speed is mostly XLA compile time (tests/compile_flags.py); this measures what a flag
changes on the kind of program the tests compile most: one jitted train step (forward, backward,
optimizer, the algorithm's update) of a small MLP, for four algorithms.

    XLA_FLAGS="--xla_backend_optimization_level=0" .venv/bin/python benchmarks/compile_time.py
    XLA_FLAGS="--xla_backend_optimization_level=0 --xla_cpu_use_fusion_emitters=false" \
        .venv/bin/python benchmarks/compile_time.py
"""

import argparse
import inspect
import os
import time

import jax
import jax.numpy as jnp
import optax

import dst
from dst.models import MLP


def compile_seconds(name: str) -> float:
    model = MLP(hidden=(32, 16), num_classes=10)
    params = dst.init_model(model, jax.random.key(0), jnp.zeros((1, 64)))[0]
    densities = dst.layer_densities(params, 0.8, "erk")
    masks = dst.init_masks(jax.random.key(1), params, densities)
    wanted = dict(sparsity=0.8, backward_sparsity=0.6, update_every=2, end_step=1000)  # those the factory takes
    accepted = inspect.signature(dst.algorithms.factory(name)).parameters
    algo = dst.algorithms.make(name, **{k: v for k, v in wanted.items() if k in accepted})
    tx = optax.sgd(0.05, momentum=0.9)
    state = dst.create_train_state(jax.random.key(2), params, masks, tx, algo)
    batch = (jnp.zeros((32, 64)), jnp.zeros((32,), jnp.int32))
    lowered = jax.jit(dst.make_train_step(dst.flax_apply(model), tx, algo)).lower(state, batch)
    start = time.perf_counter()
    lowered.compile()
    return time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--algorithms", nargs="+", default=["rigl", "topkast", "gmp", "set"])
    args = parser.parse_args()
    print(f"XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}")
    times = {name: compile_seconds(name) for name in args.algorithms}
    for name, seconds in times.items():
        print(f"{name:8s} {seconds:6.2f} s")
    print(f"{'total':8s} {sum(times.values()):6.2f} s")


if __name__ == "__main__":
    main()
