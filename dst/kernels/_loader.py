"""Loading and registering ``dst.kernels._cpu``, and choosing its instruction set (see :mod:`dst.kernels`)."""

from __future__ import annotations

import functools
import importlib
import os

_HOW_TO_BUILD = (
    "dst's sparse kernels are not built in this install ({why}); they need a C++17 compiler and CMake "
    "(Debian/Ubuntu: apt-get install g++ cmake), then reinstall dst (make -B .venv/.installed-stamp, or "
    "pip install --no-build-isolation -e .)"
)

#: The environment variable that forces a lower instruction set than the best this CPU runs.
ISA_VARIABLE = "DST_KERNELS_ISA"


@functools.cache
def _load():
    """The compiled module, or why it cannot be used (a sentence). The instruction set is chosen here,
    once per process: the best this CPU runs, or the one ``DST_KERNELS_ISA`` names."""
    try:
        module = importlib.import_module("dst.kernels._cpu")
    except ImportError as err:   # no compiler at install time, or an install without the build step
        return _HOW_TO_BUILD.format(why=f"import dst.kernels._cpu failed: {err}")
    forced = os.environ.get(ISA_VARIABLE, "").strip()
    if forced and not module.use_isa(forced):
        return (f"{ISA_VARIABLE}={forced} is not an instruction set this CPU and build run; "
                f"allowed: {', '.join(module.runnable_isas())}")
    return module


def available() -> bool:
    """True when the compiled kernels are importable (and ``DST_KERNELS_ISA``, if set, names one they run)."""
    return not isinstance(_load(), str)


def _module():
    module = _load()
    if isinstance(module, str):
        raise ValueError(module)
    return module


def isa() -> str:
    """The instruction set the kernels run: ``"avx512"``, ``"avx2"`` or ``"generic"``."""
    return _module().isa()


def runnable_isas() -> tuple[str, ...]:
    """The instruction sets this build has and this CPU runs, best first (``"generic"`` always)."""
    return tuple(_module().runnable_isas())


def use_isa(name: str) -> str:
    """Run the kernels on instruction set ``name`` from now on (compiled programs too: the handlers read
    the choice on every call), and return the one used before. For benchmarks and tests; a run takes
    ``DST_KERNELS_ISA`` instead."""
    module = _module()
    before = module.isa()
    if not module.use_isa(name):
        raise ValueError(f"kernel instruction set {name!r} is not one this CPU and build run; allowed: "
                         f"{', '.join(module.runnable_isas())}.")
    return before


def skip_zero_inputs(on: bool) -> bool:
    """Whether the kernels skip the weights whose input is zero across the whole batch (a dead unit, a blank
    pixel of every image, a convolution's input channel that is zero everywhere) in the forward product and
    the value gradient, from now on; returns the setting before. On by default: the results are the same
    floats (but for a weight that is inf or NaN, whose product with zero it skips). For benchmarks."""
    return bool(_module().skip_zero_inputs(bool(on)))


def zero_input_counts() -> tuple[int, int]:
    """``(weights, skipped)``: how many weights the forward products and value gradients were given since
    the last call (each call counts its layer's weights once), and how many of them read an input that was
    zero across the batch and were skipped; the counts restart at zero."""
    weights, skipped = _module().zero_input_counts()
    return int(weights), int(skipped)


def fused_backward_pays(n_in: int, nnz: int, batch: int) -> bool:
    """Whether ``dst_backward`` takes the fused pass (dx and dW together) on the ISA in use for a layer of
    ``n_in`` inputs and ``nnz`` weights at ``batch`` rows, rather than ``dst_spmm_t`` then ``dst_sddmm``."""
    return _module().fused_backward_pays(n_in, nnz, batch)


def status() -> str:
    """One line: the kernels, their instruction set and thread count, or why they cannot be used."""
    module = _load()
    if isinstance(module, str):
        return module
    runnable = module.runnable_isas()
    forced = f", forced by {ISA_VARIABLE}" if os.environ.get(ISA_VARIABLE, "").strip() else ""
    return (f"built (dst.kernels._cpu, {module.isa()} instructions{forced}; this CPU runs "
            f"{', '.join(runnable)}; {module.num_threads()} OpenMP threads)")


def require(field: str = "sparsity.backend") -> None:
    """Raise ``ValueError`` naming ``field`` when the kernels cannot be used; register them otherwise."""
    if not available():
        raise ValueError(f"{field} needs the compiled kernels: " + status())
    register()


@functools.cache
def register() -> None:
    """Register the handlers with ``jax.ffi`` (once per process; a no-op without the kernels)."""
    module = _load()
    if isinstance(module, str):
        return
    import jax

    for name, capsule in module.registrations().items():
        jax.ffi.register_ffi_target(name, capsule, platform="cpu")
