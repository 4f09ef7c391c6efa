"""Shared fixtures: small real models and their params; one persistent JAX compilation cache.

The suite compiles the same programs many times over: each test builds its own jitted step, and each
``dst-train`` subprocess starts cold. A compilation cache shared by a test process and its subprocesses
(they inherit the environment) turns every repeat into a disk read. Each pytest-xdist worker has its own
folder: jax writes an entry without a lock, so two processes must not write one folder at once (of the
processes of one multi-process run, only process 0 writes). The folders live in
``.pytest_cache/jax-compilation-cache/`` (``make clean`` removes them); set ``DST_TEST_COMPILATION_CACHE``
to put them elsewhere.

XLA compiles the tests for less compile time (LLVM at -O0, its older fusion emitters): tests/compile_flags.py
says which flags and why, and how a test that needs XLA's default code runs. ``DST_TEST_FULL_OPTIMIZATION=1``
runs the suite as users' runs compile.
"""

import os
import pathlib

from compile_flags import flags_for_this_run

# Before the first import of jax, which reads these once. Set here, not defaulted: a worker inherits the
# controller's environment, and with it the controller's folder.
_CACHE_ROOT = os.environ.get("DST_TEST_COMPILATION_CACHE",
                             pathlib.Path(__file__).resolve().parents[1] / ".pytest_cache" / "jax-compilation-cache")
os.environ["JAX_COMPILATION_CACHE_DIR"] = os.path.join(_CACHE_ROOT, os.environ.get("PYTEST_XDIST_WORKER", "main"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ["XLA_FLAGS"] = " ".join([os.environ.get("XLA_FLAGS", ""), *flags_for_this_run()]).strip()
# pytest-xdist already runs a worker per core: the sparse kernels' OpenMP threads (and their spin-waits)
# would only compete with the other workers. Subprocesses (dst-train) inherit the setting.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import pytest  # noqa: E402

import dst  # noqa: E402
from dst import kernels  # noqa: E402
from dst.models import MLP  # noqa: E402
from dst.models import LeNet5  # noqa: E402
from dst.models import lenet300  # noqa: E402
from dst.models import set_mlp  # noqa: E402

# Every instruction set this CPU runs (the AVX2 loops are tested on an AVX-512 machine too).
ISAS = kernels.runnable_isas() if kernels.available() else ()


@pytest.fixture(params=ISAS)
def isa(request):
    """Run the test's kernels on one instruction set, then restore the one chosen at load."""
    before = kernels.use_isa(request.param)
    yield request.param
    kernels.use_isa(before)


def init_params(model, shape=(1, 784), seed=0):
    return dst.init_model(model, jax.random.key(seed), jnp.zeros(shape))[0]


@pytest.fixture(scope="session")
def lenet300_params():
    return init_params(lenet300())


@pytest.fixture(scope="session")
def architectures():
    """Three architectures, one of them a conv net: name -> params."""
    return {
        "lenet300": init_params(lenet300()),
        "set_mlp": init_params(set_mlp()),
        "lenet5": init_params(LeNet5()),
    }


@pytest.fixture(scope="session")
def tiny_mlp():
    model = MLP(hidden=(32, 16), num_classes=10)
    return model, init_params(model, (1, 64))
