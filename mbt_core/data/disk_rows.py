"""Rows of `.npy` files read from disk one at a time, so a process's memory does not grow with the split.

A token cache stores its frames and log-mel as one `.npy` file per shard. `DiskRows` presents them as
one read-only (N, V, ...) array: `rows[i]` reads clip i, `rows[i, v, ...]` reads only view v of it, each
with one `os.pread` into a fresh buffer. Reading with pread rather than a memory map keeps the bytes in
the OS page cache, which every process (grain workers included) shares, and out of this process's
resident memory: a memory map's touched pages would count towards it until unmapped. Pickled (to a
worker process), it carries only the file names and opens them again there.
"""
from __future__ import annotations

import os
from typing import Any, Sequence

import numpy as np

from mbt_core.atomic_files import replaced


def _header(path: str) -> tuple[tuple[int, ...], np.dtype, int]:
    """(shape, dtype, offset of the data) of a C-ordered .npy file."""
    with open(path, "rb") as f:
        version = np.lib.format.read_magic(f)
        read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, fortran, dtype = read(f)
        if fortran:
            raise ValueError(f"{path}: a Fortran-ordered array; the token cache writes C order")
        return shape, dtype, f.tell()


class DiskRows:
    """A read-only (N, V, ...) array concatenated from the rows of several .npy files, read on demand."""

    def __init__(self, paths: Sequence[str | os.PathLike]):
        self.paths = [str(p) for p in paths]
        headers = [_header(p) for p in self.paths]
        if not headers:
            raise ValueError("DiskRows needs at least one .npy file")
        inner = {(h[0][1:], h[1]) for h in headers}
        if len(inner) != 1:
            raise ValueError(f"{self.paths[0]}...: shards of different row shapes or dtypes {sorted(map(str, inner))}")
        (row_shape, self.dtype), = inner
        self.shape = (sum(h[0][0] for h in headers), *row_shape)
        self._offsets = [h[2] for h in headers]
        self._starts = np.cumsum([0] + [h[0][0] for h in headers])
        self._row_bytes = int(np.prod(row_shape, dtype=np.int64)) * self.dtype.itemsize
        self._fds: dict[int, int] = {}

    def __reduce__(self):
        return DiskRows, (self.paths,)

    def __len__(self) -> int:
        return self.shape[0]

    @property
    def ndim(self) -> int:
        """Number of axes."""
        return len(self.shape)

    def _read(self, i: int, view: int | None) -> np.ndarray:
        """Row i (or one view of it) from its shard file."""
        if not -len(self) <= i < len(self):
            raise IndexError(f"row {i} of {len(self)}")
        i %= len(self)
        shard = int(np.searchsorted(self._starts, i, side="right")) - 1
        fd = self._fds.get(shard)
        if fd is None:
            fd = self._fds[shard] = os.open(self.paths[shard], os.O_RDONLY)
        offset = self._offsets[shard] + (i - int(self._starts[shard])) * self._row_bytes
        shape, size = self.shape[1:], self._row_bytes
        if view is not None:
            view %= self.shape[1]
            shape, size = self.shape[2:], self._row_bytes // self.shape[1]
            offset += view * size
        data = os.pread(fd, size, offset)
        if len(data) != size:
            raise OSError(f"{self.paths[shard]}: truncated (row {i})")
        return np.frombuffer(bytearray(data), self.dtype).reshape(shape)

    def __getitem__(self, key: Any) -> np.ndarray:
        key = key if isinstance(key, tuple) else (key,)
        first, rest = key[0], key[1:]
        if isinstance(first, (int, np.integer)):
            if rest and isinstance(rest[0], (int, np.integer)):
                return self._read(int(first), int(rest[0]))[rest[1:]]
            return self._read(int(first), None)[rest]
        rows = np.arange(len(self))[first]
        return np.stack([self._read(int(i), None) for i in rows]).reshape(len(rows), *self.shape[1:])[(slice(None), *rest)]

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        out = self[:]
        return out if dtype is None else out.astype(dtype)

    def close(self) -> None:
        """Close the open files (reading again reopens them)."""
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()

    def __del__(self):
        try:
            self.close()
        except Exception:  # interpreter shutdown: os may be gone
            pass


def save_rows(path: str | os.PathLike, array: np.ndarray) -> None:
    """Write `array` as a C-ordered .npy file atomically (a temporary file, then a rename)."""
    with replaced(path) as tmp, open(tmp, "wb") as f:
        np.save(f, np.ascontiguousarray(array))
