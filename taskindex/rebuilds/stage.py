"""A rebuild's staging folder, INDEX.rebuild/: it belongs to the rebuild that holds the index's writer lock.

The folder is only read, written or judged with that lock held, so no message about it can concern a folder
that a live rebuild is using; a second rebuild meanwhile is told which process runs (its pid is in the folder).
A rebuild that ended with failed rows leaves a note of them, so that `allow_failures` can commit the rest later.
Opening (or creating) the index and claiming its folder happen under a lock file beside the index, so two
rebuilds of a path that does not exist yet never both create it.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path

from taskindex.errors import IndexLockedError, IndexUsageError
from taskindex.index.task_index import TaskIndex
from taskindex.space import Space

PLAN = "plan.json"      # the index space the staged embeddings were made in
OWNER = "owner.pid"     # the process that holds the lock while it fills the folder
FAILED = "failed.json"  # the rows that failed, when the last run ended because of them
CREATE_WAIT = 60.0      # seconds a rebuild waits while another opens or creates the index and claims its folder


def staging_dir(index: str | os.PathLike) -> Path:
    path = Path(index)
    return path.parent / f"{path.name}.rebuild"


@contextlib.contextmanager
def writer(index: Path, create: dict, resume: bool, allow_failures: bool) -> Iterator[tuple[TaskIndex, Path]]:
    """INDEX opened for writing (created with `create` when missing) and its staging folder claimed, both held
    until the end; a running rebuild is named as such."""
    with _opening(index):
        try:
            idx = TaskIndex.open(index) if index.exists() else TaskIndex.create(index, **create)
        except IndexLockedError:
            pid = running_rebuild(index)
            if pid is None:
                raise
            raise _running(index, pid) from None
        try:
            staged = claim(index, idx.space, resume, allow_failures)
        except BaseException:
            idx.close()
            raise
    try:
        yield idx, staged
    finally:
        (staged / OWNER).unlink(missing_ok=True)
        idx.close()


@contextlib.contextmanager
def _opening(index: Path) -> Iterator[None]:
    """An exclusive lock on `.INDEX.opening` beside the index, removed when released. A second rebuild waits
    for it, then finds the index locked and the first one's pid in the staging folder."""
    path = index.parent / f".{index.name}.opening"
    deadline = time.monotonic() + CREATE_WAIT
    while True:
        try:
            index.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise IndexUsageError(f"cannot rebuild {index}: its folder {index.parent} is not writable here "
                                  f"({exc.strerror})") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode(errors="replace").strip()
            os.close(fd)
            if time.monotonic() >= deadline:
                raise _running(index, holder or "unknown") from None
            time.sleep(0.05)
            continue
        if _same_file(fd, path):  # not a file that the last holder removed after this process opened it
            break
        os.close(fd)
    os.ftruncate(fd, 0)  # a file left by a killed holder may name it
    os.pwrite(fd, str(os.getpid()).encode(), 0)
    try:
        yield
    finally:
        path.unlink(missing_ok=True)
        os.close(fd)


def _same_file(fd: int, path: Path) -> bool:
    try:
        return os.path.samestat(os.fstat(fd), os.stat(path))
    except FileNotFoundError:
        return False


def _running(index: Path, pid: int | str) -> IndexLockedError:
    what = f"a rebuild of {index} is running (pid {pid}): wait for it to finish, or stop it (Ctrl-C or kill {pid})"
    return IndexLockedError(f"{what}; its finished rows stay staged for resume=True",
                            cli=f"{what}; its finished rows stay staged for --resume")


def running_rebuild(index: Path) -> int | None:
    """The pid of the live process that stages rows for INDEX, if any."""
    try:
        pid = int((staging_dir(index) / OWNER).read_text())
    except (OSError, ValueError):  # no folder, or no note in it
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:  # that process has ended
        return None
    except PermissionError:  # alive, another user's
        pass
    return pid


def check(index: Path, resume: bool, allow_failures: bool) -> Path | None:
    """The staging folder whose rows a run would reuse (None: there is none); refuses a folder left by an
    earlier run unless `resume` (or `allow_failures`, after a run that ended with failed rows)."""
    stage = staging_dir(index)
    if not stage.exists():
        return None
    failed = failures(stage)
    if resume or (allow_failures and failed is not None):
        return stage
    if failed is not None:
        what = f"the last rebuild of {index} ended with {len(failed)} failed row(s), the others staged in {stage}"
        how = "to commit the others, or fix the rows and pass {} to embed only them"
        raise IndexUsageError(f"{what}: pass allow_failures=True {how.format('resume=True')}",
                              cli=f"{what}: pass --allow-failures {how.format('--resume')}")
    what = f"an interrupted rebuild of {index} left its finished rows in {stage}"
    how = "to go on from them, or delete that folder to start over (no rebuild is using it now)"
    raise IndexUsageError(f"{what}: pass resume=True {how}", cli=f"{what}: pass --resume {how}")


def claim(index: Path, space: dict, resume: bool, allow_failures: bool) -> Path:
    """The staging folder, made or taken over by this process; call it with INDEX's writer lock held, so
    that no live process uses the folder."""
    check(index, resume, allow_failures)
    stage = staging_dir(index)
    stage.mkdir(exist_ok=True)
    _check_plan(stage, space)
    (stage / OWNER).write_text(str(os.getpid()))
    (stage / FAILED).unlink(missing_ok=True)
    return stage


def refuse_if_running(index: Path) -> None:
    """A clear error while another process rebuilds INDEX (its staged rows are in flux)."""
    pid = running_rebuild(index)
    if pid is not None:
        raise _running(index, pid)


def failures(stage: Path) -> list[dict] | None:
    """The failed rows of the run that last ended in this folder because of them (None: no such run)."""
    try:
        return json.loads((stage / FAILED).read_text())
    except (OSError, ValueError):
        return None


def record_failures(stage: Path, failed: list[dict]) -> None:
    (stage / FAILED).write_text(json.dumps(failed, indent=1))


def _check_plan(stage: Path, space: dict) -> None:
    """Staged embeddings are only reused for the index space they were made in."""
    plan = stage / PLAN
    if plan.exists():
        staged = json.loads(plan.read_text())["space"]
        if Space.of(staged) != Space.of(space):
            raise IndexUsageError(f"{stage} holds embeddings made for another space "
                                  f"({Space.of(staged).differences(Space.of(space))}, staged vs index): "
                                  "delete that folder to start over (no rebuild is using it now)")
    else:
        plan.write_text(json.dumps({"space": space}, indent=1, sort_keys=True))
