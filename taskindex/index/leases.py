"""Reader leases: every open handle holds a shared flock on the manifest of the version it reads, so that a
compact in another process keeps that version's files until the handle moves on or dies (the kernel drops a
dead process's flocks).

A compact takes the exclusive flock of an old manifest before it removes it, and removes it while holding it:
a reader that leases a manifest afterwards finds it unlinked and reads CURRENT again.
"""

from __future__ import annotations

import fcntl
import os

from taskindex.index.storage import Store, manifest_name


def hold(store: Store, version: int) -> bool:
    """Make `version` the one `store`'s handle holds (its lease taken before the old one is dropped): False where
    that version's manifest is gone. Where the file system has no flock the handle holds none."""
    try:
        lease = open(store.root / manifest_name(version), "rb")
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(lease.fileno(), fcntl.LOCK_SH)  # waits only while a compact removes this very version
    except OSError:
        lease.close()
        lease = None
    else:
        if os.fstat(lease.fileno()).st_nlink == 0:  # the compact that held it removed it
            lease.close()
            return False
    if store.lease is not None:
        store.lease.close()
    store.lease = lease
    return True


def remove_unless_held(store: Store, version: int) -> bool:
    """Remove the manifest of `version` unless a live handle holds it; True when it was removed."""
    path = store.root / manifest_name(version)
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        except OSError:  # no flock here: no reader can hold it either
            pass
        os.unlink(path)
        return True
    finally:
        os.close(fd)
