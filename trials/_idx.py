"""Reading MNIST-format IDX files (gzipped or not) with numpy."""

from __future__ import annotations

import gzip
import os
import zlib

import numpy as np

__all__ = ["find_idx_file", "read_idx"]

# IDX type codes -> big-endian numpy dtypes.
_IDX_DTYPES = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


def find_idx_file(directory: str, stem: str) -> str | None:
    """Return the path of ``stem`` in ``directory`` (plain or ``.gz``, ``-idx`` or ``.idx``)."""
    dotted = stem.replace("-idx", ".idx")
    for name in (stem, stem + ".gz", dotted, dotted + ".gz"):
        path = os.path.join(directory, name)
        if os.path.isfile(path):
            return path
    return None


def read_idx(path: str) -> np.ndarray:
    """Parse one IDX file.

    The header is two zero bytes, a type code, the number of dimensions ``k``, then ``k``
    big-endian uint32 sizes; the data follows in C order.

    Parameters
    ----------
    path
        File path; a ``.gz`` suffix or a gzip magic number means gzipped.

    Returns
    -------
    numpy.ndarray
        Array of the header's shape and type (native byte order).

    Raises
    ------
    ValueError
        If the file is not a well-formed IDX file (bad magic, unknown type, wrong size).
    OSError
        If it cannot be read (including a corrupt gzip stream).
    """
    with open(path, "rb") as fh:
        raw = fh.read()
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (EOFError, zlib.error, gzip.BadGzipFile) as exc:
            raise OSError(f"corrupt gzip stream: {exc}") from exc
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise ValueError("bad magic number (expected two zero bytes, a type code and a rank)")
    code, ndim = raw[2], raw[3]
    if code not in _IDX_DTYPES:
        raise ValueError(f"unknown IDX type code 0x{code:02x}")
    if ndim < 1:
        raise ValueError("IDX rank is 0")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ValueError("truncated IDX header")
    shape = tuple(int(s) for s in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    dtype = _IDX_DTYPES[code]
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(raw) - header != expected:
        raise ValueError(
            f"IDX header says shape {shape} ({expected} bytes of data) but the file holds {len(raw) - header} bytes"
        )
    data = np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape)
    return data.astype(dtype.newbyteorder("="))
