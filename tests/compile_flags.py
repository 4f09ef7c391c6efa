"""How the test suite has XLA compile, and the one kind of test that needs the default.

The tests check what programs compute, not how fast they run, so XLA compiles them for less compile time:
LLVM at -O0 (``--xla_backend_optimization_level=0``, about a quarter less test time), and fusions emitted
by XLA's older elemental emitters instead of its MLIR fusion emitters (``--xla_cpu_use_fusion_emitters=false``,
half the compile time of a train step with mask updates); docs/testing.md has the measurements. The HLO
passes are the same, so the same fusions and reduction orders.

A test that compares two *different* programs bit for bit (the quiet-path epoch against the plain scan)
checks a property of the code XLA emits by default: the older emitters round some fused float expressions
differently in the two programs (by an ulp or so: masks and counts stay equal).
:func:`with_default_emitters` runs such a test in a child pytest without the second flag.
``DST_TEST_FULL_OPTIMIZATION=1`` runs the whole suite as users' runs compile, as it does wherever a jax
GPU plugin is installed.
"""

import functools
import importlib.util
import os
import pathlib
import subprocess
import sys

FAST_FLAGS = ("--xla_backend_optimization_level=0", "--xla_cpu_use_fusion_emitters=false")
_DEFAULT_EMITTERS = "DST_TEST_DEFAULT_EMITTERS"   # set in the child of with_default_emitters
_ROOT = pathlib.Path(__file__).resolve().parents[1]


def _accelerator_plugin() -> bool:
    """Whether a jax GPU plugin is installed: XLA then aborts on the CPU-only flags (a GPU build rejects
    ``--xla_cpu_use_fusion_emitters``), so the suite compiles with XLA's defaults there."""
    return any(importlib.util.find_spec(name) is not None for name in (
        "jax_cuda12_plugin", "jax_cuda13_plugin", "jax_rocm60_plugin", "jax_rocm7_plugin"))


def flags_for_this_run() -> tuple:
    if os.environ.get("DST_TEST_FULL_OPTIMIZATION") or _accelerator_plugin():
        return ()
    if os.environ.get(_DEFAULT_EMITTERS):
        return FAST_FLAGS[:1]
    return FAST_FLAGS


def uses_default_emitters() -> bool:
    return "--xla_cpu_use_fusion_emitters=false" not in flags_for_this_run()


def with_default_emitters(test):
    """Run ``test`` where XLA emits fusions as in users' runs: in this process when it already does, else
    in a child pytest of this one test (its output is shown when it fails)."""

    @functools.wraps(test)
    def wrapper(*args, **kwargs):
        if uses_default_emitters() or os.environ.get(_DEFAULT_EMITTERS):   # (never a child of a child)
            return test(*args, **kwargs)
        node = os.environ["PYTEST_CURRENT_TEST"].rsplit(" ", 1)[0]   # "tests/x.py::test[param] (call)"
        env = {**os.environ, _DEFAULT_EMITTERS: "1",
               "XLA_FLAGS": os.environ["XLA_FLAGS"].replace("--xla_cpu_use_fusion_emitters=false", "").strip()}
        out = subprocess.run([sys.executable, "-m", "pytest", node, "-q", "-p", "no:xdist", "-p", "no:cacheprovider"],
                             cwd=_ROOT, env=env, capture_output=True, text=True, timeout=600)
        assert out.returncode == 0, f"{node} with XLA's default fusion emitters:\n{out.stdout[-4000:]}"

    return wrapper
