"""``sparsity.backend=auto`` in a run: whether csr can run it at all, and the per-layer choice (timed by
:mod:`dst.train.auto`, or read back on a resume), said on the console."""

from __future__ import annotations

import json
import pathlib

import jax.numpy as jnp

from dst import backends
from dst import kernels
from dst.train import auto
from dst.train import distributed
from dst.train import stored


def auto_fallback(plan) -> str | None:
    """Why ``sparsity.backend=auto`` keeps every layer of this run masked (csr cannot run it), or None."""
    sp = plan.cfg["sparsity"]
    if not kernels.available():
        return f"the compiled kernels are missing ({kernels.status()})"
    if plan.cfg["trainer"].get("seeds") is not None:
        return ("the replicas of trainer.seeds need one choice, and auto times each replica on its own "
                "(sparsity.backend=csr stores every sparse layer)")
    if plan.parallel is not None:
        return (f"auto times a layer on one device, and this run splits each batch over {plan.parallel.count} "
                "(sparsity.backend=csr stores every sparse layer)")
    if distributed.process_count() > 1:
        return "the processes of a jax.distributed run could time their layers differently"
    try:
        stored.check_algorithm(plan.algo, "csr", f"sparsity.algorithm={sp['algorithm']}")
    except ValueError:
        return f"sparsity.algorithm={sp['algorithm']} does not run on csr (sparsity.backend=csr says why)"
    if plan.algo.trainable is not None:   # Top-KAST: the slots hold its backward set, not the forward mask
        return (f"sparsity.algorithm={sp['algorithm']} stores its backward set and keeps the weights outside it "
                "dense, which auto's timing at the forward density does not measure (sparsity.backend=csr runs it)")
    if plan.algo.dynamic and plan.algo.quiet is None:   # SNFS's momentum
        return (f"sparsity.algorithm={sp['algorithm']} reads the dense gradient of every step, which a stored layer "
                "forms at a dense layer's cost (sparsity.backend=csr runs it)")
    return None


def auto_layers(plan, params, model_state, masks, layers, choice_file) -> tuple[str, list[str], dict]:
    """``(backend, stored layers, timings)`` of ``sparsity.backend=auto`` for ``plan`` (a
    :class:`dst.app.run.Plan`): each 2-D layer of ``layers``, and each convolution the kernels run,
    timed masked and on csr at the run's shapes (:mod:`dst.train.auto`), both times and the choice on the
    console. A resumed run takes the choice its first start wrote to ``choice_file`` (timings are noisy,
    and the checkpoint holds the chosen layers' storage)."""
    why = auto_fallback(plan)
    if why is not None:
        print(f"sparsity: backend auto keeps every layer masked: {why}.")
        return "masked", [], {}
    if choice_file is not None and pathlib.Path(choice_file).is_file() and plan.cfg["trainer"].get("resume", True):
        timings = {n: auto.LayerTiming(**t) for n, t in json.loads(pathlib.Path(choice_file).read_text()).items()}
        print(f"sparsity: backend auto: the choice of this run's first start ({choice_file}).")
    else:
        example = jnp.zeros((plan.cfg["trainer"]["batch_size"],) + tuple(plan.data.example_shape), jnp.float32)
        convolutions, _ = backends.convolutions(plan.model, example[:1], layers)
        timings = auto.choose(plan.model, params, model_state, masks, layers, example, plan.total_steps,
                              convolutions=convolutions)
        if choice_file is not None and distributed.is_primary():
            pathlib.Path(choice_file).parent.mkdir(parents=True, exist_ok=True)
            pathlib.Path(choice_file).write_text(json.dumps({n: t._asdict() for n, t in timings.items()}, indent=1))
    chosen = auto.stored_layers(timings)
    for name, t in timings.items():
        print(f"sparsity: backend auto: {name} ({t.rows} rows) forward+backward {t.masked_ms:.3f} ms masked, "
              f"{t.sparse_ms:.3f} ms csr, {t.saving_s:+.1f} s over {t.steps} steps -> "
              f"{'csr' if name in chosen else 'masked'}.")
    return ("csr" if chosen else "masked"), chosen, timings
