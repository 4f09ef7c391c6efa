"""``sparsity.backend=auto``: store a layer only where the sparse kernels beat masking it.

Before training, each sparse fully connected layer's forward and backward pass (``y = x W``, then ``dx`` and
the weight gradient) is timed at the run's own shapes -- the layer's real mask, and as many input rows as the
layer sees in one step (the batch, times the tokens of a ViT) -- once with XLA's dense product of the masked
kernel and once with the compiled ``csr`` kernels, interleaved, and the medians compared; so is each
convolution the kernels run, at the input shape it sees in one step (XLA's convolution of the masked kernel
against :func:`dst.kernels.csr_conv`). The layers where ``csr`` is faster are stored when together they save
at least :data:`MIN_SAVING_S` over the run's steps (:func:`stored_layers`). Storing has a cost of its own,
paid once for all the stored layers: building the storage and the records' dense view of it, about 0.3 s for
the default experiment (LeNet-300-100), whose stored epoch compiles faster than the masked one (2.6 s against
3.1 s: the stored update's selections, merge and transposes are compiled calls). So a layer that saves a
little is stored beside the others rather than left masked (a run of stored and masked layers also compiles
both kinds of update). The rest stay masked, in the same program. The topology decisions do not depend on the
choice (stored and masked layers make the masked run's), only the time does.

References:
  Nikdan, Pegolotti, Iofinova, Kurtic, Alistarh. "SparseProp: Efficient Sparse Backpropagation for
  Faster Training of Neural Networks", ICML 2023 (a layer is made sparse only where that is faster).
"""

from __future__ import annotations

import concurrent.futures
import statistics
import time
from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from dst import backends
from dst import kernels
from dst.masks import named_leaves
from dst.train.apply import flax_apply

#: The sparse backend ``auto`` stores its chosen layers in (it holds any mask).
SPARSE_BACKEND = "csr"
#: The least time (seconds over the run's steps) the layers faster on csr must save together to be
#: stored: about the one-off cost of storing on a 2-core machine (see the module doc).
MIN_SAVING_S = 0.3


class LayerTiming(NamedTuple):
    """One layer's forward + backward time (median, milliseconds) masked and on the sparse backend, at
    ``rows`` input rows per step, and the run's ``steps``."""

    masked_ms: float
    sparse_ms: float
    rows: int
    steps: int = 0

    @property
    def saving_s(self) -> float:
        """Seconds the sparse backend saves over the run (negative where it is slower)."""
        return (self.masked_ms - self.sparse_ms) * self.steps / 1e3

    @property
    def faster(self) -> bool:
        """Whether the layer's forward + backward is faster on the sparse backend."""
        return self.sparse_ms < self.masked_ms


def stored_layers(timings: dict[str, LayerTiming]) -> list[str]:
    """The layers ``auto`` stores: those faster on csr, when together they save at least
    :data:`MIN_SAVING_S` over the run; none otherwise."""
    faster = [name for name, t in timings.items() if t.faster]
    return faster if sum(timings[n].saving_s for n in faster) >= MIN_SAVING_S else []


def _layer_inputs(model, params, model_state, example, layers) -> dict[str, tuple[type, tuple]]:
    """``{kernel name: (nn.Dense or nn.Conv, input shape)}`` of the layers among ``layers`` for ``example``:
    traced with ``jax.eval_shape``, nothing computed."""
    modules = {name.rsplit("/", 1)[0]: name for name in layers}
    seen = {}

    def record(next_fun, args, kw, context):
        name = modules.get("/".join(context.module.path))
        if context.method_name == "__call__" and name is not None and isinstance(context.module, (nn.Dense, nn.Conv)):
            seen[name] = (nn.Conv if isinstance(context.module, nn.Conv) else nn.Dense, tuple(args[0].shape))
        return next_fun(*args, **kw)

    def forward(p, s, x):
        with nn.intercept_methods(record):
            return flax_apply(model)(p, s, x, True, jax.random.key(0))

    jax.eval_shape(forward, params, model_state, example)
    return seen


def dense_input_rows(model, params, model_state, example, layers) -> dict[str, int]:
    """For each 2-D kernel in ``layers``, the number of input rows its ``nn.Dense`` sees for ``example``
    (the batch, times any other leading axes): traced with ``jax.eval_shape``, nothing computed."""
    return {name: int(np.prod(shape[:-1]))
            for name, (kind, shape) in _layer_inputs(model, params, model_state, example, layers).items()
            if kind is nn.Dense}


def _seconds(fn, args, rounds: int) -> list[float]:
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - start)
    return times


def _csr_of(w: np.ndarray, mask: np.ndarray):
    """``(values, CSR topology)`` of one layer, in numpy: the timing needs no compiled compression (eager
    jax ops compiled one by one took 1.6 s a layer, longer than the timing itself)."""
    units, inputs = np.nonzero(mask.T)                       # CSR order: by output unit, inputs ascending
    counts = np.bincount(units, minlength=mask.shape[1])
    rowptr = np.concatenate([[0], np.cumsum(counts)]).astype(np.int32)
    slots = np.argsort(inputs, kind="stable").astype(np.int32)
    t_rowptr = np.concatenate([[0], np.cumsum(np.bincount(inputs, minlength=mask.shape[0]))]).astype(np.int32)
    topology = backends.CSR(*(jnp.asarray(a, jnp.int32) for a in (inputs, rowptr, t_rowptr, units[slots], slots)))
    return jnp.asarray(w[inputs, units], jnp.float32), topology


def _time_pair(runs: dict, rows: int, rounds: int) -> LayerTiming:
    """:class:`LayerTiming` of ``runs`` (``{"masked" | "sparse": (jitted gradient, args)}``)."""
    # Both compiled at once (XLA compiles outside the GIL: on 2 cores the pair takes about one's time),
    # then warmed up.
    with concurrent.futures.ThreadPoolExecutor(len(runs)) as pool:
        compiled = dict(zip(runs, pool.map(lambda run: run[0].lower(*run[1]).compile(), runs.values())))
    runs = {k: (compiled[k], args) for k, (_, args) in runs.items()}
    for fn, args in runs.values():
        jax.block_until_ready(fn(*args))
    times = {k: [] for k in runs}
    for _ in range(rounds):                              # interleaved: both see the same machine load
        for k, (fn, args) in runs.items():
            times[k] += _seconds(fn, args, 1)
    return LayerTiming(1e3 * statistics.median(times["masked"]), 1e3 * statistics.median(times["sparse"]), rows)


def _gradients(product, g):
    """The jitted gradient of ``sum(product(x, p) * g)`` with respect to ``p`` and ``x``."""
    return jax.jit(jax.grad(lambda p, x: jnp.sum(product(x, p) * g), (0, 1)))


def time_layer(w, mask, rows: int, rounds: int = 5, seed: int = 0) -> LayerTiming:
    """:class:`LayerTiming` of one layer: kernel ``w [n_in, n_out]`` under ``mask``, ``rows`` input rows."""
    backend = backends.make(SPARSE_BACKEND)
    w, mask = np.asarray(w, np.float32), np.asarray(mask, bool)
    rng = np.random.default_rng(seed)
    x = jnp.asarray(rng.standard_normal((rows, w.shape[0]), np.float32))
    g = jnp.asarray(rng.standard_normal((rows, w.shape[1]), np.float32))
    values, topology = _csr_of(w, mask)
    mask_j = jnp.asarray(mask)
    masked = _gradients(lambda x, w: x @ jnp.where(mask_j, w, 0.0), g)
    sparse = _gradients(lambda x, v: backend.matmul(x, v, topology), g)
    return _time_pair({"masked": (masked, (jnp.asarray(w), x)), "sparse": (sparse, (values, x))}, rows, rounds)


def time_conv(w, mask, geometry: backends.ConvGeometry, input_shape: tuple, rounds: int = 5,
              seed: int = 0) -> LayerTiming:
    """:class:`LayerTiming` of one convolution: kernel ``w [kh, kw, c_in, n_out]`` under ``mask`` with
    ``geometry``'s strides and padding, on an input of ``input_shape`` (NHWC; ``rows``: its batch)."""
    backend = backends.make(SPARSE_BACKEND)
    w, mask = np.asarray(w, np.float32), np.asarray(mask, bool)
    n_out = w.shape[-1]
    layout = backends.Layout((w.size // n_out, n_out), int(mask.sum()), geometry)
    rng = np.random.default_rng(seed)
    x = jnp.asarray(rng.standard_normal(input_shape, np.float32))
    g = jnp.asarray(rng.standard_normal(backends.output_shape(layout, input_shape), np.float32))
    values, flat = _csr_of(w.reshape(layout.shape), mask.reshape(layout.shape))
    topology = backends.CSR(flat.cols, flat.rowptr, *kernels.conv_transpose(flat.cols, flat.rowptr, geometry.kernel))
    mask_j = jnp.asarray(mask)
    masked = _gradients(lambda x, w: jax.lax.conv_general_dilated(
        x, jnp.where(mask_j, w, 0.0), geometry.strides, geometry.padding, dimension_numbers=("NHWC", "HWIO", "NHWC")),
        g)
    sparse = _gradients(lambda x, v: backend.conv(x, v, topology, geometry), g)
    return _time_pair({"masked": (masked, (jnp.asarray(w), x)), "sparse": (sparse, (values, x))}, input_shape[0],
                      rounds)


def choose(model, params, model_state, masks, layers, example, steps: int, rounds: int = 5,
           convolutions: dict | None = None) -> dict[str, LayerTiming]:
    """Time every 2-D kernel of ``layers``, and every convolution of ``convolutions`` (``{name:
    ConvGeometry}``, :func:`dst.backends.convolutions`), for a run of ``steps`` steps (see the module doc);
    ``{name: LayerTiming}`` in layer order."""
    leaves_p, leaves_m = named_leaves(params), named_leaves(masks)
    convolutions = convolutions or {}
    candidates = [n for n in layers if np.ndim(leaves_m[n]) == 2 or n in convolutions]
    inputs = _layer_inputs(model, params, model_state, example, candidates)
    timings = {}
    for name in candidates:
        if name not in inputs:
            continue
        kind, shape = inputs[name]
        if kind is nn.Conv:
            timing = time_conv(leaves_p[name], leaves_m[name], convolutions[name], shape, rounds)
        else:
            timing = time_layer(leaves_p[name], leaves_m[name], int(np.prod(shape[:-1])), rounds)
        timings[name] = timing._replace(steps=steps)
    return timings
