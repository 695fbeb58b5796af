"""The on-disk format of an index: immutable files, versioned manifests, atomic commits.

    <index>/CURRENT                  "manifest-00000007.json <sha256>": the committed version
    <index>/manifest-00000007.json   format, space, layout, segments, deleted ids, file checksums
    <index>/data/<uuid>.f32          raw float32 vectors of one segment (rows x dim), memory-mapped
    <index>/data/<uuid>.bf16         the same as bfloat16 (the top half of each float32), where the index keeps
                                     vectors="bfloat16" (format 2): half the disk, d_sym within 1e-3
    <index>/data/<uuid>.proj.f32     the segment's rows in the candidate space (rows x proj_dim)
    <index>/data/<uuid>.parquet      the segment's metadata rows (removed ones too: TaskIndex.to_arrow() reads live rows)
    <index>/data/<uuid>.json         the same rows as JSON records, for segments of up to 10,000 rows: a small index
                                     opened read-only loads from them without pandas or pyarrow
    <index>/data/<uuid>.npy          prior, projection (no pickle: numpy with allow_pickle=False)
    <index>/LOCK                     flock'ed by the one writer; the kernel releases it when it dies

A commit writes only new files (fsync'ed), then a new manifest, then replaces
CURRENT (write to a temporary file, fsync, rename, fsync the directory). A crash
at any instant leaves CURRENT naming a complete, checked version; files of an
unfinished commit are never referenced and are removed by the next compact().
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import mmap
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from taskindex.errors import IndexCorruptError, IndexLockedError, IndexUsageError, TaskIndexError

FORMAT = "taskindex-index"
FORMAT_VERSION = 2  # the newest this code reads: 2 adds bfloat16 vectors; float32 indexes are still written as 1
# how an index stores its raw vectors: manifest["vectors"] -> segment file suffix
VECTOR_TYPES = {"float32": ".f32", "bfloat16": ".bf16"}
# CURRENT's one line: the committed manifest's name and its sha256
_CURRENT = re.compile(rb"(manifest-\d{8}\.json) ([0-9a-f]{64})\n?")
# Vector files are hashed on open only while their total stays under this; `verify` always hashes.
HASH_ON_OPEN_BYTES = 256 << 20


def sha256_file(path: Path) -> str:
    with open(path, "rb") as f:
        if hasattr(hashlib, "file_digest"):  # Python 3.11+: one reused buffer, no 1 MiB bytes per chunk
            return hashlib.file_digest(f, "sha256").hexdigest()
        h = hashlib.sha256()
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
        return h.hexdigest()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.urandom(4).hex()}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


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


# Linux 5.14+; Python names it from 3.12 on
MADV_POPULATE_READ = getattr(mmap, "MADV_POPULATE_READ", 22 if os.uname().sysname == "Linux" else None)
WARM_CHUNK = 64 << 20


def warm(rows: np.ndarray, done=lambda nbytes: None) -> int:
    """Read a memory-mapped vector file into the page cache and map its pages into this process, a chunk at a
    time (`done` is told each chunk's bytes): queries then neither wait on the disk nor fault a page in. Each
    chunk is read with a plain read first, which the kernel reads ahead: from disk 320-780 MB/s against 57-64
    through the map, which is MADV_RANDOM. Where it cannot populate a map, the pages are touched. Returns the
    bytes."""
    mm, path = getattr(rows, "_mmap", None), getattr(rows, "filename", None)
    if mm is None or path is None:
        return 0
    populate = MADV_POPULATE_READ is not None
    pages = rows.reshape(-1).view(np.uint8)
    buf = bytearray(min(WARM_CHUNK, rows.nbytes))
    with open(path, "rb", buffering=0) as f:
        for at in range(0, rows.nbytes, WARM_CHUNK):
            n = min(WARM_CHUNK, rows.nbytes - at)
            f.readinto(memoryview(buf)[:n])
            if populate:
                try:
                    mm.madvise(MADV_POPULATE_READ, at, n)
                except OSError:  # an older kernel
                    populate = False
            if not populate:
                int(pages[at:at + n:mmap.PAGESIZE].sum())  # one byte a page: each is mapped
            done(n)
    return int(rows.nbytes)


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


@dataclass
class FileRef:
    """A data file as the manifest records it."""

    name: str
    size: int
    sha256: str

    def to_json(self) -> dict:
        return {"name": self.name, "size": self.size, "sha256": self.sha256}


class Store:
    """One index directory: reads committed versions, writes new ones."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        self.data = self.root / "data"
        self._lock_fd: int | None = None

    # --- reading -------------------------------------------------------------------------------

    def exists(self) -> bool:
        return (self.root / "CURRENT").is_file()

    def read_manifest(self) -> dict:
        current = self.root / "CURRENT"
        if not self.root.is_dir():
            what = f"{str(self.root)!r} does not exist: create an index with `taskindex create {self.root}`"
            raise IndexUsageError(f"{what} or TaskIndex.create(...)", cli=what)
        if not current.is_file():
            if any(self.root.glob("manifest-*.json")):
                raise IndexCorruptError(f"{current} is missing but {self.root} holds manifests: restore CURRENT "
                                        "from a backup (it names the committed manifest and its sha256)")
            raise IndexUsageError(f"{str(self.root)!r} is not a taskindex index (no CURRENT file): create one with "
                              f"`taskindex create {self.root}`")
        m = _CURRENT.fullmatch(current.read_bytes())
        if not m:
            raise IndexCorruptError(f"{current} is damaged (it should read 'manifest-NNNNNNNN.json <sha256>'): "
                                    "restore it from a backup")
        name, digest = m.group(1).decode(), m.group(2).decode()
        path = self.root / name
        if not path.is_file():
            raise IndexCorruptError(f"{path}, named by {current}, is missing: restore it from a backup")
        raw = path.read_bytes()
        if hashlib.sha256(raw).hexdigest() != digest:
            raise IndexCorruptError(f"{path} does not match the sha256 in {current}: one of them was altered "
                                    "(restore it from a backup)")
        manifest = json.loads(raw)
        if manifest.get("format") != FORMAT:
            raise IndexUsageError(f"{self.root} is not a taskindex index (format {manifest.get('format')!r})")
        if manifest.get("format_version", 0) > FORMAT_VERSION:
            raise IndexUsageError(f"{self.root} was written by a newer taskindex (format "
                              f"{manifest['format_version']}): upgrade taskindex")
        return manifest

    def path(self, ref: dict) -> Path:
        return self.data / ref["name"]

    def check(self, ref: dict, full: bool) -> None:
        """Size always; checksum when `full`. Raises IndexCorruptError naming the file."""
        p = self.path(ref)
        if not p.is_file():
            raise IndexCorruptError(f"{p} is missing: the index is damaged (restore it from a backup)")
        size = p.stat().st_size
        if size != ref["size"]:
            raise IndexCorruptError(f"{p} has {size} bytes, the manifest says {ref['size']}: "
                                    "the file was truncated or altered")
        if full and sha256_file(p) != ref["sha256"]:
            raise IndexCorruptError(f"{p} fails its checksum: the file was altered (bit flip or overwrite)")

    def load_npy(self, ref: dict) -> np.ndarray:
        self.check(ref, full=True)
        return np.load(self.path(ref), allow_pickle=False)

    def memmap(self, ref: dict, cols: int) -> np.ndarray:
        """The rows of a vector file as stored: float32, or uint16 for .bf16 (decode with decode_vectors)."""
        dtype = "<u2" if ref["name"].endswith(".bf16") else "<f4"
        rows = ref["size"] // (np.dtype(dtype).itemsize * cols)
        if rows == 0:
            return np.zeros((0, cols), dtype)
        mm = np.memmap(self.path(ref), dtype=dtype, mode="r", shape=(rows, cols))
        if hasattr(mm, "_mmap") and hasattr(mmap, "MADV_RANDOM"):
            # rows are read at random: the default read-ahead pulled in megabytes per row
            mm._mmap.madvise(mmap.MADV_RANDOM)
        return mm

    # --- writing -------------------------------------------------------------------------------

    def new_file(self, suffix: str, data: bytes) -> dict:
        """Write an immutable data file (fsync'ed) and return its manifest entry."""
        self.data.mkdir(parents=True, exist_ok=True)
        name = f"{os.urandom(16).hex()}{suffix}"  # a random 128-bit name: no two writers collide
        path = self.data / name
        with open(path, "xb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        return FileRef(name, len(data), hashlib.sha256(data).hexdigest()).to_json()

    def commit(self, manifest: dict) -> None:
        """Make `manifest` the current version: after this returns it survives any crash."""
        self._require_lock()
        if self.data.is_dir():
            _fsync_dir(self.data)
        # a float32 index stays readable by taskindex versions that predate bfloat16 storage
        version = 2 if manifest.get("vectors", "float32") != "float32" else 1
        manifest = dict(manifest, format=FORMAT, format_version=version)
        raw = json.dumps(manifest, sort_keys=True).encode()
        name = f"manifest-{manifest['version']:08d}.json"
        write_atomic(self.root / name, raw)
        write_atomic(self.root / "CURRENT", f"{name} {hashlib.sha256(raw).hexdigest()}\n".encode())

    def acquire(self) -> None:
        """Take the writer lock or fail at once, naming the holder."""
        if self._lock_fd is not None:
            return
        lock = self.root / "LOCK"
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            if exc.errno in (errno.EACCES, errno.EROFS, errno.EPERM):
                what = f"{self.root} is read-only here ({exc.strerror})"
                raise IndexUsageError(f"{what}: open it with readonly=True",
                                      cli=f"{what}: `taskindex query`, `ls`, `info` and `verify` only read it"
                                      ) from None
            raise
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 64).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise IndexLockedError(f"{self.root} is being written by another process (pid {holder}): "
                                   "wait for it to finish; readers are never blocked") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        self._lock_fd = fd

    def release(self) -> None:
        if self._lock_fd is not None:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
            os.close(self._lock_fd)
            self._lock_fd = None

    def _require_lock(self) -> None:
        if self._lock_fd is None:
            raise IndexUsageError("the index is open read-only: reopen it with readonly=False to change it")

    def unreferenced(self, manifest: dict) -> list[Path]:
        """Data files and manifests that the current version does not use (left by old or crashed commits)."""
        used = set(referenced_files(manifest))
        current = f"manifest-{manifest['version']:08d}.json"
        out = [p for p in self.data.glob("*") if p.name not in used] if self.data.is_dir() else []
        out += [p for p in self.root.glob("manifest-*.json") if p.name != current]
        out += list(self.root.glob(".*.tmp"))
        return out


def all_refs(manifest: dict) -> list[dict]:
    refs = [manifest["prior"]]
    if manifest.get("projection"):
        refs.append(manifest["projection"])
    if manifest.get("model2vec"):
        refs.append(manifest["model2vec"]["theta"])
    if manifest.get("results"):
        refs.append(manifest["results"])
    for seg in manifest["segments"]:
        refs += [seg[k] for k in ("vectors", "proj", "rows", "records") if seg.get(k)]
    return refs


def referenced_files(manifest: dict) -> list[str]:
    return [ref["name"] for ref in all_refs(manifest)]


def verify(path: str | os.PathLike) -> list[str]:
    """Check CURRENT, the manifest and every data file (size and sha256) without loading the index."""
    store = Store(path)
    try:
        manifest = store.read_manifest()
    except TaskIndexError as exc:
        return [str(exc)]
    problems = []
    for ref in all_refs(manifest):
        p = store.path(ref)
        if not p.is_file():
            problems.append(f"{p}: missing")
        elif p.stat().st_size != ref["size"]:
            problems.append(f"{p}: {p.stat().st_size} bytes, expected {ref['size']} (truncated or altered)")
        elif sha256_file(p) != ref["sha256"]:
            problems.append(f"{p}: checksum mismatch (altered)")
    return problems
