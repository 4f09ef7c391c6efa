"""Where data sets are looked for, shared by every file format.

Lookup order for a data set ``name`` (first hit wins):

1. ``data_dir`` when given: it must hold the files (no fallback, so a typo never trains on other data);
2. ``$DST_DATA_DIR/<name>``, then ``$DST_DATA_DIR``;
3. ``~/.cache/dst/<name>`` (where ``dst-data download`` puts the files);
4. ``/usr/share/datasets/<name>`` (Debian's ``dataset-fashion-mnist`` installs there).

``<name>`` is tried as written and with ``_`` as ``-`` (``fashion_mnist`` -> ``fashion-mnist``). A format
whose official archive unpacks into a folder of its own (CIFAR's ``cifar-10-batches-py/``) also looks
inside that folder of each place. Nothing is downloaded.
"""

from __future__ import annotations

import os
import pathlib
from collections.abc import Callable

from dst.data.errors import DataNotFoundError

SYSTEM_ROOT = pathlib.Path("/usr/share/datasets")

# probe(folder) -> the folder that holds the files (``folder`` itself or its archive subfolder), or None.
Probe = Callable[[pathlib.Path], "pathlib.Path | None"]


def folder_names(name: str) -> list[str]:
    return list(dict.fromkeys([name, name.replace("_", "-")]))


def cache_dir(name: str) -> pathlib.Path:
    """``~/.cache/dst/<name>``: where ``dst-data download`` and generated data sets write by default."""
    return pathlib.Path.home() / ".cache" / "dst" / name


def candidate_dirs(name: str) -> list[pathlib.Path]:
    """The folders searched when no ``data_dir`` is given, in order."""
    names = folder_names(name)
    dirs = []
    env = os.environ.get("DST_DATA_DIR")
    if env:
        dirs += [pathlib.Path(env) / n for n in names] + [pathlib.Path(env)]
    dirs += [pathlib.Path.home() / ".cache" / "dst" / n for n in names]
    dirs += [SYSTEM_ROOT / n for n in names]
    return dirs


def download_command(name: str, folder: pathlib.Path | str | None = None, verb: str = "download") -> str:
    """The ``dst-data`` command that puts ``name`` into ``folder`` (the default cache when None)."""
    target = "" if folder is None or pathlib.Path(folder) == cache_dir(name) else f" --dir {folder}"
    return f"dst-data {verb} {name}{target}"


def search(name: str, data_dir: str | os.PathLike | None, probe: Probe, *, missing: Callable[[pathlib.Path], str],
           how_to_get: Callable[[pathlib.Path], str], inside: str = "") -> pathlib.Path:
    """The folder holding ``name``'s files, or :class:`DataNotFoundError` in one sentence.

    ``missing(folder)`` says what a given ``data_dir`` lacks; ``how_to_get(folder)`` says how to put the
    files there; ``inside`` names the archive subfolder that each place was also searched for.
    """
    if data_dir:
        folder = pathlib.Path(data_dir).expanduser()
        found = probe(folder)
        if found is not None:
            return found
        raise DataNotFoundError(f"dataset.data_dir={str(folder)!r} does not hold the {name} files "
                                f"({missing(folder)}); {how_to_get(folder)}.")
    searched = candidate_dirs(name)
    for folder in searched:
        found = probe(folder)
        if found is not None:
            return found
    also = f" (nor in a {inside} folder inside any of them)" if inside else ""
    raise DataNotFoundError(
        f"{name} was not found in {', '.join(str(d) for d in searched)}{also}; "
        f"{how_to_get(cache_dir(name))} (or set dataset.data_dir or $DST_DATA_DIR).")
