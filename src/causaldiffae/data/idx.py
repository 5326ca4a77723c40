"""Reader for the IDX format of the MNIST files (``train-images-idx3-ubyte`` and friends), gzipped or not.

An IDX file is a 4-byte magic number, two zero bytes, a type code and the number of dimensions, then one
big-endian int32 per dimension, then the data in row-major order (big-endian for multi-byte types).
Whether a file is gzipped is decided by its first two bytes (1f 8b), not by its name.
"""

from __future__ import annotations

import gzip
import math
import zlib
from pathlib import Path

import numpy as np

#: IDX type code -> numpy dtype (big-endian where it matters), as in the format's description.
DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_GZIP_MAGIC = b"\x1f\x8b"


def read_idx(path: str | Path) -> np.ndarray:
    """The array stored in an IDX file (native byte order; uint8 for the MNIST files).

    Raises FileNotFoundError for a missing file and ValueError, naming the file, for anything that is not a
    complete IDX file: a foreign or corrupt file, an unknown type code, or data shorter or longer than the
    header says.
    """
    path = Path(path)
    raw = path.read_bytes()
    if raw[:2] == _GZIP_MAGIC:
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as err:
            raise ValueError(f"{path}: broken gzip stream ({err}); the file is truncated or corrupt") from None
    if len(raw) < 4:
        raise ValueError(f"{path}: {len(raw)} bytes is too short for an IDX file (truncated?)")
    if raw[0] != 0 or raw[1] != 0:
        raise ValueError(f"{path} is not an IDX file: its magic number {raw[:4].hex()} does not start with "
                         "two zero bytes")
    code, ndim = raw[2], raw[3]
    if code not in DTYPES:
        known = ", ".join(f"0x{c:02X} ({d.name})" for c, d in DTYPES.items())
        raise ValueError(f"{path}: unknown IDX type code 0x{code:02X}; the format defines {known}")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ValueError(f"{path}: truncated IDX header ({len(raw)} bytes, {header} needed for {ndim} dims)")
    shape = tuple(int(n) for n in np.frombuffer(raw, dtype=">i4", count=ndim, offset=4))
    if any(n < 0 for n in shape):
        raise ValueError(f"{path}: negative dimension in the IDX header {shape}")
    dtype = DTYPES[code]
    expected = math.prod(shape) * dtype.itemsize
    found = len(raw) - header
    if found != expected:
        what = "truncated" if found < expected else "has trailing bytes"
        raise ValueError(f"{path}: IDX data {what}: {found} bytes after the header, {expected} expected for "
                         f"shape {shape} of {dtype.name}")
    data = np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape)
    return data.astype(dtype.newbyteorder("="), copy=True)
