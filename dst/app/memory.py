"""Whether a model's dense form fits this machine, checked from its shapes before anything is allocated.

``dst-train`` builds every layer dense (its initial kernel, mask and optimizer state) before masking it or
storing it on a sparse backend, so a network too wide for its dense form fails in XLA with a C++ check
and an abort (a 150000-wide MLP asks for about 90 GB). :func:`check_dense_fits` says so in one sentence
first, from ``jax.eval_shape`` of the model's init.
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


def check_dense_fits(shapes: dict[str, tuple[int, ...]], budget: int | None, backend: str) -> None:
    """Raise :class:`ConfigError` naming the largest layer when ``shapes`` (every parameter's shape) need
    more than ``budget`` bytes in their dense form."""
    total = sum(math.prod(s) for s in shapes.values())
    if budget is None or total * BYTES_PER_WEIGHT <= budget:
        return
    name, shape = max(shapes.items(), key=lambda item: math.prod(item[1]))
    size = math.prod(shape)
    raise ConfigError(
        f"model: layer {name} is {' x '.join(f'{d:,}' for d in shape)} = {size:,} weights ({4 * size / GIB:.1f} "
        f"GiB dense), and the model needs about {total * BYTES_PER_WEIGHT / GIB:.1f} GiB in its dense form to "
        f"start, more than the {budget / GIB:.1f} GiB this process may use; dst-train builds every layer dense "
        f"before it masks or stores it (sparsity.backend={backend} does not change that), so make the model "
        "smaller, or train a network this wide born sparse with dst.train.large (benchmarks/million_neurons.py).")
