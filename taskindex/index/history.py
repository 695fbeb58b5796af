"""Versions as LanceDB users know them: list them, open one read-only, restore one as a new commit, move a reader
to the newest (refresh), repair a lost or damaged CURRENT, and compact while keeping the last few versions and
every version a live reader holds (leases.py).
"""

from __future__ import annotations

import json
import os
from datetime import datetime, timezone
from pathlib import Path

from taskindex import validation
from taskindex.errors import IndexCorruptError, IndexUsageError, TaskIndexError
from taskindex.index import leases, writes
from taskindex.index.manifest import Manifest
from taskindex.index.storage import Store, all_refs, manifest_name, referenced_files, sha256_file
from taskindex.index.version import LoadedVersion

KEEP_VERSIONS = 5  # versions compact() keeps by default: the compacted one and the four before it


def numbers(store: Store) -> list[int]:
    """The versions whose manifests are on disk, ascending."""
    found = []
    for p in store.root.glob("manifest-*.json"):
        digits = p.name[len("manifest-"):-len(".json")]
        if digits.isdigit():
            found.append(int(digits))
    return sorted(found)


def _current(store: Store) -> int | None:
    """The version CURRENT names; None where CURRENT is lost or damaged."""
    try:
        return store.read_manifest()["version"]
    except TaskIndexError:
        return None


def at_version(store: Store, version: int) -> dict:
    """The manifest of a committed `version`, parsed and checked (CURRENT holds the sha256 of its own only)."""
    store.require_folder()
    path = store.root / manifest_name(version)
    current = _current(store)
    if current is not None and version > current:
        raise IndexUsageError(f"{store.root} is at version {current}: version {version} was never committed")
    try:
        manifest = store.checked(json.loads(path.read_bytes()))
    except FileNotFoundError:
        raise IndexUsageError(f"{store.root} holds no version {version} (compact removes old versions): "
                              f"`taskindex versions {store.root}` lists those it holds") from None
    except (ValueError, AttributeError):
        raise IndexCorruptError(f"{path} is damaged: open another version") from None
    if manifest.get("version") != version:
        raise IndexCorruptError(f"{path} holds version {manifest.get('version')!r}, not {version}: open another")
    return manifest


def loaded(store: Store, readonly: bool, version: int | None = None) -> LoadedVersion:
    """The version CURRENT names (or `version`), loaded, with this handle's lease on it."""
    for _ in range(20):  # a compact can remove the version between reading CURRENT and leasing it: read again
        manifest = store.read_manifest() if version is None else at_version(store, version)
        if leases.hold(store, manifest["version"]):
            return LoadedVersion(store, Manifest.from_json(manifest), readonly)
        if version is not None:
            break
    raise IndexUsageError(f"{store.root} changed while it was opened (a compact removed the version read): "
                          "open it again")


def refresh(v: LoadedVersion) -> int:
    """Move a handle to the newest committed version (a writer is always there); returns it."""
    for _ in range(20):
        manifest = v.store.read_manifest()
        if manifest["version"] == v.manifest.version:
            return v.manifest.version
        if leases.hold(v.store, manifest["version"]):
            v.load(Manifest.from_json(manifest))
            return v.manifest.version
    raise IndexUsageError(f"{v.store.root} keeps changing under this reader: call refresh() again",
                          cli=f"{v.store.root} keeps changing: run the command again")


def versions(store: Store) -> list[dict]:
    """Every version on disk, oldest first: its number, commit time, rows and what the commit did."""
    store.require_folder()
    current, out = _current(store), []
    if not numbers(store):
        raise IndexUsageError(f"{store.root} holds no manifests: it is not a taskindex index")
    for n in numbers(store):
        if current is not None and n > current:  # written by a commit that never finished
            continue
        path = store.root / manifest_name(n)
        try:
            m = json.loads(path.read_bytes())
            row = {"rows": m["row_count"], "operation": m.get("operation") or "(not recorded)",
                   "time": m.get("committed") or _mtime(path)}
        except (OSError, ValueError, KeyError, TypeError):
            row = {"rows": None, "operation": "(damaged manifest)", "time": None}
        out.append({"version": n, **row, "current": n == current})
    return out


def _mtime(path: Path) -> str:
    return datetime.fromtimestamp(path.stat().st_mtime, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def restore(v: LoadedVersion, version) -> None:
    """Commit the rows and settings of an earlier `version` as the newest version (every version stays)."""
    validation.integer(version, "version")
    target = Manifest.from_json(at_version(v.store, version))
    for ref in all_refs(target.to_json()):
        v.store.check(ref, full=True)
    writes.commit(v, target.but(next_id=max(target.next_id, v.manifest.next_id)),
                  operation=f"restored version {version}")


def problems(store: Store, manifest: dict) -> list[str]:
    """What is wrong with a version's files (sizes and sha256); empty: intact."""
    out = []
    for ref in all_refs(manifest):
        p = store.path(ref)
        if not p.is_file():
            out.append(f"{p}: missing")
        elif p.stat().st_size != ref["size"]:
            out.append(f"{p}: {p.stat().st_size} bytes, expected {ref['size']} (truncated or altered)")
        elif sha256_file(p) != ref["sha256"]:
            out.append(f"{p}: checksum mismatch (altered)")
    return out


def verify(path: str | os.PathLike) -> list[str]:
    """Check CURRENT, the manifest and every data file (size and sha256) without loading the index."""
    store = Store(path)
    try:
        manifest = store.read_manifest()
    except TaskIndexError as exc:
        return [exc.cli]
    return problems(store, manifest)


def repair(path: str | os.PathLike, lock_timeout: float | None = None) -> dict:
    """Point a lost or damaged CURRENT (or one naming a damaged version) at the newest intact version, as a new
    commit that says so; an intact index is left as it is. Returns what was wrong and what was done."""
    store = Store(path)
    store.require_folder()
    if not numbers(store):
        raise IndexUsageError(f"{store.root} holds no manifests: it is not a taskindex index")
    store.acquire(lock_timeout)
    try:
        return _repair(store)
    finally:
        store.release()


def _repair(store: Store) -> dict:
    report = {"index": str(store.root), "repaired": False, "skipped": []}
    try:
        current = store.read_manifest()
        bad = problems(store, current)
        newest = current["version"]
        if not bad:
            return {**report, "version": newest, "problem": None}
        problem = f"version {newest} is damaged: {bad[0]}"
    except TaskIndexError as exc:
        problem, newest = getattr(exc, "what", str(exc)), None
    on_disk = numbers(store)
    next_id = 0
    for n in on_disk:
        try:
            next_id = max(next_id, json.loads((store.root / manifest_name(n)).read_bytes())["next_id"])
        except (OSError, ValueError, KeyError, TypeError):
            pass
    for n in reversed([n for n in on_disk if newest is None or n <= newest]):
        try:
            manifest = store.checked(json.loads((store.root / manifest_name(n)).read_bytes()))
            bad = problems(store, manifest)
        except (OSError, ValueError, KeyError, TypeError, TaskIndexError) as exc:
            bad = [str(exc) or type(exc).__name__]
        if bad:
            report["skipped"].append({"version": n, "problem": bad[0]})
            continue
        fixed = Manifest.from_json(manifest).but(version=max(on_disk) + 1, next_id=max(next_id, manifest["next_id"]),
                                                  committed=writes.now(), operation=f"repaired: back to version {n}")
        store.commit(fixed.to_json())
        return {**report, "repaired": True, "version": fixed.version, "from_version": n, "problem": problem}
    raise IndexCorruptError(f"{store.root} holds no intact version ({problem}): restore it from a backup")


def compact(v: LoadedVersion, vector_type: str, keep) -> int:
    """Fold every live row into one segment (a commit), then remove what neither the last `keep` versions nor
    a live reader's version uses; returns the files removed."""
    validation.integer(keep, "keep")
    writes.commit(v, writes.compacted(v, vector_type), retrain=True)
    return clean(v.store, v.manifest.version, keep)


def clean(store: Store, current: int, keep: int) -> int:
    """Remove old manifests first, then the data files no remaining manifest names: a kill at any point leaves
    every remaining version whole (files it leaves behind are unreferenced, and go at the next compact)."""
    removed, kept = 0, []
    for n in numbers(store):
        if current - keep < n <= current or not leases.remove_unless_held(store, n):
            kept.append(n)
        else:
            removed += 1
    used = set()
    for n in kept:
        try:
            used.update(referenced_files(json.loads((store.root / manifest_name(n)).read_bytes())))
        except (OSError, ValueError, KeyError, TypeError):  # a damaged manifest names nothing it can open
            pass
    leftovers = [p for p in store.data.glob("*") if p.name not in used] if store.data.is_dir() else []
    for p in [*leftovers, *store.root.glob(".*.tmp")]:
        try:
            os.unlink(p)
            removed += 1
        except FileNotFoundError:
            pass
    return removed
