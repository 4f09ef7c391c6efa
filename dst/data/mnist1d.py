"""MNIST-1D (Greydanus 2020): generated offline by the ``mnist1d`` package, cached as ``.npz``.

The published defaults give 4000 training and 1000 test signals of length 40 in 10 classes, seed 42;
they reproduce the published ``mnist1d_data.pkl`` to float64 rounding. Only the package's generator
(``mnist1d.data.make_dataset``) is called, never its downloader. The cache file is named by a hash of the
generator's arguments: ``mnist1d_<hash>.npz`` in ``data_dir`` when given, else found in the usual places
(``$DST_DATA_DIR/mnist1d``, ``$DST_DATA_DIR``, ``~/.cache/dst/mnist1d``, ``/usr/share/datasets/mnist1d``)
and written to ``$DST_DATA_DIR/mnist1d`` or ``~/.cache/dst/mnist1d``.
"""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
import random
import tempfile
import warnings
import zipfile

import numpy as np

from dst.data import lookup
from dst.data.errors import DataError

NAME = "mnist1d"
REQUIREMENT = "mnist1d>=0.0.2,<0.1"
# The published defaults (mnist1d.data.get_dataset_args, less its download url).
DEFAULTS = {
    "num_samples": 5000,
    "train_split": 0.8,
    "template_len": 12,
    "padding": [36, 60],
    "scale_coeff": 0.4,
    "max_translation": 48,
    "corr_noise_scale": 0.25,
    "iid_noise_scale": 2e-2,
    "shear_scale": 0.75,
    "shuffle_seq": False,
    "final_seq_length": 40,
    "seed": 42,
}
KEYS = ("train_x", "train_y", "test_x", "test_y")


def generator_args(**overrides) -> dict:
    unknown = sorted(set(overrides) - set(DEFAULTS))
    if unknown:
        raise DataError(f"unknown MNIST-1D generator arguments {', '.join(unknown)}; "
                        f"allowed: {', '.join(DEFAULTS)}.")
    return json.loads(json.dumps({**DEFAULTS, **overrides}))  # tuples become lists, as in the cache


def cache_name(args: dict) -> str:
    digest = hashlib.sha256(json.dumps(args, sort_keys=True).encode()).hexdigest()[:12]
    return f"mnist1d_{digest}.npz"


def _package():
    try:
        from mnist1d import data
    except ImportError:
        raise DataError(f"dataset.name=mnist1d needs the mnist1d package, a dependency of dst that is not "
                        f"installed here: run 'pip install \"{REQUIREMENT}\"' (or reinstall dst).") from None
    return data


def require_package() -> None:
    """Raise the one-sentence :class:`DataError` when the generator is not installed."""
    _package()


def generate(**overrides) -> dict[str, np.ndarray]:
    """Run the published generator: float32 signals ``(N, 40)`` and int32 labels, without any download.

    The generator seeds Python's and numpy's global random state; both are restored afterwards.
    """
    args = generator_args(**overrides)
    package = _package()
    view = package.get_dataset_args()
    for key, value in args.items():
        setattr(view, key, value)
    py_state, np_state = random.getstate(), np.random.get_state()
    try:
        raw = package.make_dataset(view)
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)
    return {"train_x": raw["x"].astype(np.float32), "train_y": raw["y"].astype(np.int32),
            "test_x": raw["x_test"].astype(np.float32), "test_y": raw["y_test"].astype(np.int32)}


def _read_cache(path: pathlib.Path, args: dict) -> dict[str, np.ndarray] | None:
    try:
        with np.load(path, allow_pickle=False) as f:
            if json.loads(str(f["args"])) != args:
                return None
            arrays = {k: f[k] for k in KEYS}
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as err:
        warnings.warn(f"ignoring the unreadable MNIST-1D cache {path} ({err}); generating it again.", stacklevel=3)
        return None
    length = args["final_seq_length"]
    if (arrays["train_x"].ndim != 2 or arrays["train_x"].shape[1] != length
            or len(arrays["train_x"]) != len(arrays["train_y"]) or len(arrays["test_x"]) != len(arrays["test_y"])):
        warnings.warn(f"ignoring the MNIST-1D cache {path}: its arrays have the wrong shapes.", stacklevel=3)
        return None
    return arrays


def _write_cache(path: pathlib.Path, arrays: dict, args: dict) -> bool:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path.parent, prefix=".mnist1d-", suffix=".npz", delete=False) as f:
            np.savez(f, args=np.array(json.dumps(args, sort_keys=True)), **arrays)
        os.replace(f.name, path)
        return True
    except OSError as err:
        warnings.warn(f"could not cache MNIST-1D in {path} ({err}); it will be generated again next time.",
                      stacklevel=3)
        return False


def write_dir(data_dir=None) -> pathlib.Path:
    """Where a freshly generated MNIST-1D is cached."""
    if data_dir:
        return pathlib.Path(data_dir).expanduser()
    env = os.environ.get("DST_DATA_DIR")
    return pathlib.Path(env) / NAME if env else lookup.cache_dir(NAME)


def find_cache(data_dir=None, **overrides) -> pathlib.Path | None:
    """The existing cache file for these generator arguments, searched in the lookup order."""
    name = cache_name(generator_args(**overrides))
    dirs = [pathlib.Path(data_dir).expanduser()] if data_dir else lookup.candidate_dirs(NAME)
    return next((d / name for d in dirs if (d / name).is_file()), None)


def locate(data_dir=None, **overrides) -> pathlib.Path:
    """The cache file that :func:`load` reads or writes; fails in one sentence without the generator."""
    found = find_cache(data_dir, **overrides)
    if found is not None:
        return found
    require_package()
    return write_dir(data_dir) / cache_name(generator_args(**overrides))


def load(data_dir=None, **overrides) -> tuple[dict[str, np.ndarray], pathlib.Path]:
    """The arrays (from the cache, or generated and cached) and the cache file's path."""
    args = generator_args(**overrides)
    found = find_cache(data_dir, **overrides)
    if found is not None:
        arrays = _read_cache(found, args)
        if arrays is not None:
            return arrays, found
    arrays = generate(**overrides)
    target = found if found is not None and os.access(found.parent, os.W_OK) else (
        write_dir(data_dir) / cache_name(args))
    _write_cache(target, arrays, args)
    return arrays, target
