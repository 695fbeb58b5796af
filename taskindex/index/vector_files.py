"""The rows of a vector file: bfloat16 encoding and decoding, and reading rows of a memory-mapped segment file
(prefetched at random, or a dense stretch with one read call).
"""

from __future__ import annotations

import mmap

import numpy as np

from taskindex.errors import IndexCorruptError


def encode_vectors(vectors: np.ndarray, vector_type: str) -> bytes:
    """float32 rows -> the bytes of a segment file. bfloat16 rounds to nearest even and keeps every entry > 0."""
    v = np.ascontiguousarray(vectors, dtype="<f4")
    if vector_type == "float32":
        return v.tobytes()
    bits = v.view("<u4")
    half = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype("<u2")
    half[(half == 0) & (bits != 0)] = 1  # a positive value never becomes 0 (the smallest subnormal instead)
    return half.tobytes()


def decode_vectors(raw: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """Rows of a segment file (float32, or bfloat16 read as uint16) -> float32 rows, into `out` if given
    (a C-contiguous float32 array of the same shape): one pass, no temporaries."""
    raw = np.asarray(raw)
    if out is None:
        if raw.dtype == np.float32:
            return raw
        out = np.empty(raw.shape, np.float32)
    if raw.dtype == np.float32:
        out[...] = raw
    else:
        np.left_shift(raw, 16, out=out.view(np.uint32), dtype=np.uint32)
    return out


def prefetch(rows: np.ndarray, pos: np.ndarray) -> None:
    """Ask the kernel to start reading the pages of rows `pos` of a memory-mapped file, one madvise a row. The
    map reads at random (MADV_RANDOM: one 4 KiB page a fault), so rows not in the page cache are then fetched
    together instead of a page at a time: 200 random rows of 42 KiB from disk took 112 ms instead of 475
    (tools/bench_reads.py). Where they are cached it costs ~4 us a row; merging runs of rows first cost more
    in numpy calls than the calls it saved."""
    mm = getattr(rows, "_mmap", None)
    if mm is None or not hasattr(mmap, "MADV_WILLNEED"):
        return
    row_bytes = rows.strides[0]  # Store.memmap maps whole files from their first byte
    start = np.asarray(pos, np.int64) * row_bytes
    aligned = start - start % mmap.PAGESIZE
    for at, size in zip(aligned.tolist(), (start + row_bytes - aligned).tolist()):  # plain ints: 3x cheaper
        mm.madvise(mmap.MADV_WILLNEED, at, size)


def _read_into(path, offset: int, out: np.ndarray) -> None:
    """Bytes of a file from `offset` straight into `out`: no temporary array to copy from."""
    view = memoryview(out).cast("B")
    with open(path, "rb", buffering=0) as f:
        f.seek(offset)
        done = 0
        while done < len(view):
            got = f.readinto(view[done:])
            if not got:
                raise IndexCorruptError(f"{path} ended early: the file was truncated (restore it from a backup)")
            done += got


DENSE_ROWS = 64  # a run of at least this many rows, with at most as many gaps, is read with one read call


def read_rows(rows: np.ndarray, pos: np.ndarray, out: np.ndarray) -> None:
    """Rows `pos` (ascending) of a memory-mapped segment file, decoded into `out` (float32).

    A dense stretch (an exact scan, or opening the projections) is read with one read call, which the file's
    read-ahead serves at 731 MB/s from disk where the random-access map faults 30 MB/s; scattered rows (a query's
    candidates) go through the map after `prefetch` (tools/bench_reads.py)."""
    pos = np.asarray(pos, dtype=np.int64)
    path = getattr(rows, "filename", None)
    if (path is not None and len(pos) >= DENSE_ROWS and pos[-1] - pos[0] < 2 * len(pos)
            and bool(np.all(pos[1:] > pos[:-1]))):
        if rows.dtype == np.float32 and pos[-1] - pos[0] + 1 == len(pos):  # no gaps, no decoding: read in place
            _read_into(path, int(pos[0]) * rows.strides[0], out)
            return
        src = np.fromfile(path, dtype=rows.dtype, count=int(pos[-1] - pos[0] + 1) * rows.shape[1],
                          offset=int(pos[0]) * rows.strides[0]).reshape(-1, rows.shape[1])
        pos = pos - pos[0]
    else:
        prefetch(rows, pos)
        src = rows.view(np.ndarray)  # np.memmap's own indexing costs ~50 us a call in Python
    if src.dtype == np.float32:
        np.take(src, pos, axis=0, out=out)  # no temporary
    else:
        decode_vectors(src[pos], out=out)


