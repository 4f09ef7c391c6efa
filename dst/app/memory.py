"""Whether a model's dense form fits this machine, checked from its shapes before anything is allocated.

A masked run builds every layer dense (its initial kernel, mask and optimizer state), so a network too wide
for its dense form would fail in XLA with a C++ check and an abort (a 150000-wide MLP asks for about 90 GB).
:func:`check_dense_fits` says so in one sentence first, from ``jax.eval_shape`` of the model's init; on
``csr``/``condensed`` such a run is born sparse instead (:func:`dst.app.sparse_setup.born_sparse_layers`).
"""

from __future__ import annotations

import math
import resource

from dst.app.validate import ConfigError

# What a weight costs a starting run in its dense form: float32 kernel, gradient and one optimizer
# moment, and a bool mask.
BYTES_PER_WEIGHT = 4 + 4 + 4 + 1
GIB = 2**30


def available_bytes() -> int | None:
    """This process's memory budget: the smaller of the system's available memory and the address-space
    limit (``ulimit -v``); None where neither is known."""
    limits = []
    try:
        with open("/proc/meminfo") as f:
            fields = dict(line.split(":", 1) for line in f)
        limits.append(int(fields["MemAvailable"].split()[0]) * 1024)
    except (OSError, KeyError, ValueError):
        pass
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    if soft != resource.RLIM_INFINITY:
        limits.append(soft)
    return min(limits) if limits else None


def dense_fits(shapes: dict[str, tuple[int, ...]], budget: int | None) -> bool:
    """Whether ``shapes`` (every parameter's shape) fit ``budget`` bytes in their dense form."""
    return budget is None or sum(math.prod(s) for s in shapes.values()) * BYTES_PER_WEIGHT <= budget


def check_dense_fits(shapes: dict[str, tuple[int, ...]], budget: int | None, backend: str) -> None:
    """Raise :class:`ConfigError` naming the largest layer when ``shapes`` (every parameter's shape) need
    more than ``budget`` bytes in their dense form."""
    if dense_fits(shapes, budget):
        return
    total = sum(math.prod(s) for s in shapes.values())
    name, shape = max(shapes.items(), key=lambda item: math.prod(item[1]))
    size = math.prod(shape)
    raise ConfigError(
        f"model: layer {name} is {' x '.join(f'{d:,}' for d in shape)} = {size:,} weights ({4 * size / GIB:.1f} "
        f"GiB dense), and the model needs about {total * BYTES_PER_WEIGHT / GIB:.1f} GiB in its dense form to "
        f"start, more than the {budget / GIB:.1f} GiB this process may use on sparsity.backend={backend}; make the "
        "model smaller, or train it born sparse: sparsity.backend=csr creates its sparse layers in storage from "
        "their counts (sparsity.born_sparse=auto), never dense.")
