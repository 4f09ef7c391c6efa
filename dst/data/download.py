"""Explicit downloads for users who are online (``dst-data download NAME``); the loaders never download.

Each file is streamed to ``<file>.part`` while its md5 is computed, checked against the published md5, and
only then renamed into place; archives are unpacked with tarfile's ``data`` filter (no absolute paths, no
links out of the folder) and deleted afterwards.
"""

from __future__ import annotations

import hashlib
import os
import pathlib
import sys
import tarfile
import urllib.error
import urllib.request
from typing import NamedTuple
from typing import TextIO

from dst.data import lookup
from dst.data.errors import DataError
from dst.data.mnist import FILES as IDX_FILES


class Resource(NamedTuple):
    url: str
    md5: str
    extract: bool = False   # a tar.gz to unpack into the target folder


def _idx(base: str, md5s: tuple[str, str, str, str]) -> tuple[Resource, ...]:
    return tuple(Resource(f"{base}{stem}.gz", md5) for stem, md5 in zip(IDX_FILES.values(), md5s))


KRIZ = "https://www.cs.toronto.edu/~kriz/"
RESOURCES: dict[str, tuple[Resource, ...]] = {
    "cifar10": (Resource(f"{KRIZ}cifar-10-python.tar.gz", "c58f30108f718f92721af3b95e74349a", True),),
    "cifar100": (Resource(f"{KRIZ}cifar-100-python.tar.gz", "eb9058c3a382ffc7106e4002c42a8d85", True),),
    "mnist": _idx("https://ossci-datasets.s3.amazonaws.com/mnist/",
                  ("f68b3c2dcbeaaa9fbdd348bbdeb94873", "d53e105ee54ea40749a09fcbcd1e9432",
                   "9fb629c4189551a2d022fa330f9573f3", "ec29112dd5afa0611ce80d1b7f02629c")),
    "fashion_mnist": _idx("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
                          ("8d4fb7e6c68d591d4c3dfef9ec88bf0d", "25c81989df183df01b3e8a0aad5dffbe",
                           "bef4ecab320f06d8554ea6380940ec79", "bb300cfdad3c16e7a12a480ee83cd310")),
    "kmnist": _idx("https://codh.rois.ac.jp/kmnist/dataset/kmnist/",
                   ("bdb82020997e1d708af4cf47b453dcf7", "e144d726b3acfaa3e44228e80efcd344",
                    "5c965bf0a639b31b8f53240b1b52f4d7", "7320c461ea6c1c855c0b718fb2a4b134")),
}
CHUNK = 1 << 20


def md5_of(path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def _megabytes(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


def fetch(url: str, target, md5: str, progress: TextIO | None = sys.stderr) -> pathlib.Path:
    """Download ``url`` to ``target``, showing the bytes received; :class:`DataError` on a wrong md5."""
    target = pathlib.Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    part = target.with_name(target.name + ".part")
    digest, received = hashlib.md5(usedforsecurity=False), 0
    try:
        with urllib.request.urlopen(url, timeout=60) as response, open(part, "wb") as out:
            total = int(response.headers.get("Content-Length") or 0)
            of = f" of {_megabytes(total)}" if total else ""
            for block in iter(lambda: response.read(CHUNK), b""):
                out.write(block)
                digest.update(block)
                received += len(block)
                if progress is not None:
                    progress.write(f"\r{target.name}: {_megabytes(received)}{of}")
                    progress.flush()
    except (urllib.error.URLError, OSError) as err:
        part.unlink(missing_ok=True)
        reason = getattr(err, "reason", err)
        raise DataError(f"could not download {url} ({reason}); check the connection and run the command again, "
                        f"or put the file into {target.parent} by hand.") from None
    if progress is not None:
        progress.write("\n")
    if digest.hexdigest() != md5:
        part.unlink(missing_ok=True)
        raise DataError(f"{url} arrived with md5 {digest.hexdigest()} ({received} bytes), but the published md5 "
                        f"is {md5}; the download is incomplete or corrupt, so run the command again.")
    os.replace(part, target)
    return target


def extract(archive, folder) -> None:
    """Unpack a tar(.gz) archive into ``folder``; :class:`DataError` names a corrupt archive."""
    try:
        with tarfile.open(archive) as tar:
            tar.extractall(folder, filter="data")
    except (tarfile.TarError, OSError, EOFError) as err:
        raise DataError(f"cannot unpack {archive} ({err}); delete it and run the command again.") from None


def download(name: str, folder=None, *, resources: tuple[Resource, ...] | None = None, force: bool = False,
             progress: TextIO | None = sys.stderr) -> pathlib.Path:
    """Put ``name``'s files into ``folder`` (default ``~/.cache/dst/<name>``) and return where they load from.

    ``resources`` replaces the official URLs and md5s (tests point it at local ``file://`` archives).
    Files already there are kept unless ``force``.
    """
    from dst.data.datasets import locate  # the loaders' own check that the files are complete

    if name not in RESOURCES:
        raise DataError(f"dst-data download takes one of {', '.join(RESOURCES)}; got {name!r}.")
    folder = pathlib.Path(folder).expanduser() if folder else lookup.cache_dir(name)
    if not force:
        try:
            return locate(name, folder)
        except DataError:
            pass
    for resource in resources or RESOURCES[name]:
        target = folder / resource.url.rsplit("/", 1)[-1]
        if force or not target.is_file() or md5_of(target) != resource.md5:
            fetch(resource.url, target, resource.md5, progress)
        if resource.extract:
            extract(target, folder)
            target.unlink()
    return locate(name, folder)
