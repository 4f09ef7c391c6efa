"""The IDX file format (MNIST, Fashion-MNIST, KMNIST): read and write, plain or gzipped.

Layout: two zero bytes, a type code (0x08 = unsigned byte), the number of dimensions, one big-endian
uint32 per dimension, then the data in C order.
"""

from __future__ import annotations

import gzip
import pathlib
import struct
import zlib

import numpy as np

from dst.data.errors import DataError

_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
_CODES = {np.dtype(np.uint8): 0x08, np.dtype(np.int8): 0x09}


def _read_bytes(path: pathlib.Path) -> bytes:
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                return f.read()
        return path.read_bytes()
    except (OSError, EOFError, zlib.error) as err:
        raise DataError(f"cannot read {path}: {err} (the file is truncated or corrupt; "
                        f"delete it and get it again).") from None


def read_idx(path) -> np.ndarray:
    """Read one IDX file (``.gz`` is decompressed) into a numpy array of its stored shape."""
    path = pathlib.Path(path)
    raw = _read_bytes(path)
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _DTYPES:
        raise DataError(f"{path} is not an IDX file (bad magic number {raw[:4].hex() or 'empty'}).")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{path} is truncated: its header needs {header} bytes, the file has {len(raw)}.")
    shape = struct.unpack(f">{ndim}I", raw[4:header])
    dtype = np.dtype(_DTYPES[raw[2]])
    expected = header + int(np.prod(shape)) * dtype.itemsize
    if len(raw) != expected:
        raise DataError(f"{path} is truncated or corrupt: shape {shape} needs {expected} bytes, "
                        f"the file has {len(raw)}.")
    return np.frombuffer(raw, dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


def write_idx(path, array: np.ndarray) -> None:
    """Write ``array`` (uint8 or int8) as an IDX file; gzipped when ``path`` ends in ``.gz``."""
    path = pathlib.Path(path)
    array = np.ascontiguousarray(array)
    if array.dtype not in _CODES:
        raise ValueError(f"write_idx supports uint8 and int8 arrays; got {array.dtype}.")
    data = bytes([0, 0, _CODES[array.dtype], array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    data += array.tobytes()
    if path.suffix == ".gz":
        with gzip.open(path, "wb") as f:
            f.write(data)
    else:
        path.write_bytes(data)
