"""Loading and registering ``dst.kernels._cpu`` (see :mod:`dst.kernels`)."""

from __future__ import annotations

import functools
import importlib

_HOW_TO_BUILD = (
    "dst's sparse kernels are not built in this install ({why}); they need a C++17 compiler and CMake "
    "(Debian/Ubuntu: apt-get install g++ cmake), then reinstall dst (make -B .venv/.installed-stamp, or "
    "pip install --no-build-isolation -e .)"
)


@functools.cache
def _load():
    """The compiled module, or the reason it cannot be imported (a string)."""
    try:
        return importlib.import_module("dst.kernels._cpu")
    except ImportError as err:   # no compiler at install time, or an install without the build step
        return f"import dst.kernels._cpu failed: {err}"


def available() -> bool:
    """True when the compiled kernels are importable."""
    return not isinstance(_load(), str)


def status() -> str:
    """One line: the kernels and their thread count, or why they are missing and how to build them."""
    module = _load()
    if isinstance(module, str):
        return _HOW_TO_BUILD.format(why=module)
    return f"built (dst.kernels._cpu, {module.num_threads()} OpenMP threads)"


def require(field: str = "sparsity.backend") -> None:
    """Raise ``ValueError`` naming ``field`` when the kernels are missing; register them otherwise."""
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
