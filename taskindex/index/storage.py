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
unfinished commit are never referenced and are removed by the next compact(). A
write that fails (a full disk, a failed fsync) removes the files of its commit
and raises CommitError: the last committed version stays current.

Every open handle holds a shared flock on the manifest of the version it reads
(its lease): compact() never removes a version that a live reader holds.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import mmap
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from taskindex.errors import CommitError, IndexCorruptError, IndexLockedError, IndexUsageError
from taskindex.errors import VersionGoneError  # noqa: F401  (where index/version.py and tests import it from)
# the rows of vector files, read and written where tests and tools have always imported them from
from taskindex.index.vector_files import decode_vectors, encode_vectors, prefetch, read_rows  # noqa: F401

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


def manifest_name(version: int) -> str:
    return f"manifest-{version:08d}.json"


def _write_file(path: Path, data: bytes) -> None:
    """A new file, written through os.write until every byte is down (a full disk fails here, not later)
    and fsync'ed."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        view = memoryview(data).cast("B")
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)


def _remove(path: Path) -> None:
    try:
        os.unlink(path)
    except OSError:  # already gone, or the disk refuses: an unreferenced file, removed by the next compact
        pass


def write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.urandom(4).hex()}.tmp")
    try:
        _write_file(tmp, data)
        os.replace(tmp, path)
    except BaseException:
        _remove(tmp)
        raise
    _fsync_dir(path.parent)


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
        self.lease = None  # the open manifest this handle holds a shared flock on (history.hold)
        self._pending: list[Path] = []  # files written for a commit not made yet
        self.committed: int | None = None  # the version CURRENT named when last read or written here

    # --- reading -------------------------------------------------------------------------------

    def exists(self) -> bool:
        return (self.root / "CURRENT").is_file()

    def read_manifest(self) -> dict:
        current = self.root / "CURRENT"
        self.require_folder()
        if not current.is_file():
            if any(self.root.glob("manifest-*.json")):
                self._damaged(f"{current} is missing but {self.root} holds manifests")
            self._not_an_index("is not a taskindex index (no CURRENT file)")
        m = _CURRENT.fullmatch(current.read_bytes())
        if not m:
            self._damaged(f"{current} is damaged (it should read 'manifest-NNNNNNNN.json <sha256>')")
        name, digest = m.group(1).decode(), m.group(2).decode()
        path = self.root / name
        if not path.is_file():
            self._damaged(f"{path}, named by {current}, is missing")
        raw = path.read_bytes()
        if hashlib.sha256(raw).hexdigest() != digest:
            self._damaged(f"{path} does not match the sha256 in {current}: one of them was altered")
        manifest = self.checked(json.loads(raw))
        self.committed = manifest["version"]
        return manifest

    def require_folder(self) -> None:
        if self.root.is_dir():
            return
        if self.root.exists():
            self._not_an_index("is a file, not a taskindex index (an index is a folder)")
        what = f"{str(self.root)!r} does not exist: create an index with `taskindex create {self.root}`"
        raise IndexUsageError(f"{what} or TaskIndex.create(...)", cli=what)

    def _not_an_index(self, what: str):
        """Say the path is no index, with a fix that works: create refuses a file or a folder that holds files."""
        what = f"{str(self.root)!r} {what}"
        if self.root.is_dir() and not any(self.root.iterdir()):
            raise IndexUsageError(f"{what}: create one in it with TaskIndex.create(...)",
                                  cli=f"{what}: create one in it with `taskindex create {self.root}`")
        if self.root.is_dir():
            what += " and holds other files"
        raise IndexUsageError(f"{what}: open an index's folder, or create one in a new folder with "
                              "TaskIndex.create(...)",
                              cli=f"{what}: give an index's folder as INDEX (it comes before DATA), or create one in "
                              "a new folder with `taskindex create NEW_FOLDER`")

    def checked(self, manifest: dict) -> dict:
        """A parsed manifest, refused unless it is a taskindex manifest this code reads."""
        if manifest.get("format") != FORMAT:
            raise IndexUsageError(f"{self.root} is not a taskindex index (format {manifest.get('format')!r})")
        if manifest.get("format_version", 0) > FORMAT_VERSION:
            raise IndexUsageError(f"{self.root} was written by a newer taskindex (format "
                              f"{manifest['format_version']}): upgrade taskindex")
        return manifest

    def _damaged(self, what: str):
        fix = "to point CURRENT at the newest intact version (its earlier manifests are still here)"
        error = IndexCorruptError(f"{what}: run TaskIndex.repair({str(self.root)!r}) {fix}",
                                  cli=f"{what}: run `taskindex repair {self.root}` {fix}")
        error.what = what  # for repair's report
        raise error

    def path(self, ref: dict) -> Path:
        return self.data / ref["name"]

    def check(self, ref: dict, full: bool) -> None:
        """Size always; checksum when `full`. Raises IndexCorruptError naming the file."""
        p = self.path(ref)
        if not p.is_file():
            raise IndexCorruptError(f"{p} is missing: the index is damaged (restore it from a backup, or run "
                                    f"`taskindex repair {self.root}` to go back to the newest intact version)")
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
        name = f"{os.urandom(16).hex()}{suffix}"  # a random 128-bit name: no two writers collide
        path = self.data / name
        try:
            self.data.mkdir(parents=True, exist_ok=True)
            self._pending.append(path)
            _write_file(path, data)
        except OSError as exc:
            raise self._failed(exc) from None
        return FileRef(name, len(data), hashlib.sha256(data).hexdigest()).to_json()

    def commit(self, manifest: dict) -> None:
        """Make `manifest` the current version: after this returns it survives any crash."""
        self._require_lock()
        # a float32 index stays readable by taskindex versions that predate bfloat16 storage
        version = 2 if manifest.get("vectors", "float32") != "float32" else 1
        manifest = dict(manifest, format=FORMAT, format_version=version)
        raw = json.dumps(manifest, sort_keys=True).encode()
        name = manifest_name(manifest["version"])
        current = self.root / "CURRENT"
        tmp = self.root / f".CURRENT.{os.urandom(4).hex()}.tmp"
        try:
            if self.data.is_dir():
                _fsync_dir(self.data)
            self._pending.append(self.root / name)
            write_atomic(self.root / name, raw)
            self._pending.append(tmp)
            _write_file(tmp, f"{name} {hashlib.sha256(raw).hexdigest()}\n".encode())
            os.replace(tmp, current)
        except OSError as exc:
            raise self._failed(exc) from None
        self._pending.clear()
        self.committed = manifest["version"]
        try:
            _fsync_dir(self.root)
        except OSError as exc:
            raise CommitError(f"version {manifest['version']} of {self.root} is committed, but the disk failed to "
                              f"confirm it ({exc.strerror or exc}): check the disk; after a power cut the index may "
                              f"open at the version before, intact too", committed=True) from None

    def _failed(self, exc: OSError) -> CommitError:
        """The error of a write that failed mid-commit, once the commit's files are removed."""
        for path in self._pending:
            _remove(path)
        self._pending.clear()
        why = {errno.ENOSPC: "the disk is full", errno.EDQUOT: "the disk quota is used up"}.get(
            exc.errno, exc.strerror or str(exc))
        held = f"version {self.committed}" if self.committed is not None else "its last committed version"
        return CommitError(f"could not write to {self.root} ({why}): nothing was committed, the index still holds "
                           f"{held}, intact; free space or fix the disk and retry")

    def acquire(self, timeout: float | None = None) -> None:
        """Take the writer lock, waiting up to `timeout` seconds for it (None: fail at once), naming the holder."""
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
        deadline = time.monotonic() + (timeout or 0)
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    holder = os.read(fd, 64).decode(errors="replace").strip() or "unknown"
                    os.close(fd)
                    raise _locked(self.root, holder, timeout) from None
                time.sleep(min(0.05, max(0.0, deadline - time.monotonic())))
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        self._lock_fd = fd

    def release(self) -> None:
        if self.lease is not None:
            self.lease.close()
            self.lease = None
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
        current = manifest_name(manifest["version"])
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


def _locked(root: Path, holder: str, timeout: float | None) -> IndexLockedError:
    what = f"{root} is being written by another process (pid {holder})"
    if timeout:
        return IndexLockedError(f"{what}, still after {timeout:g} s: wait longer (lock_timeout=SECONDS) or for it "
                                "to finish; readers are never blocked",
                                cli=f"{what}, still after {timeout:g} s: wait longer (--wait SECONDS) or for it to "
                                "finish; readers are never blocked")
    return IndexLockedError(f"{what}: wait for it to finish (lock_timeout=SECONDS waits); readers are never blocked",
                            cli=f"{what}: wait for it to finish (--wait SECONDS waits); readers are never blocked")
