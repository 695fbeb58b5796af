"""Bulk rebuilds: embed every row of a manifest in worker processes, resumably, and commit once.

Each finished embedding is saved at once (atomically) in a staging folder beside the index,
`INDEX.rebuild/`, under a digest of its row, so a crash, SIGKILL or Ctrl-C loses at most the
rows in flight and `resume=True` embeds only what is missing. A row that fails (unreadable
files, one class, a missing source) is reported with its reason and does not stop the others.
The index changes in one commit at the end (`add_many(..., only=True)`): until then readers see
the old version, and an interrupted rebuild leaves it untouched.
"""

from __future__ import annotations

import concurrent.futures as cf
import json
import multiprocessing
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tqdm import tqdm

from .embedding import Embedding
from .errors import IndexUsageError, TaskIndexError
from .estimators import DEFAULT_ESTIMATOR
from .index import TaskIndex
from .manifest import ManifestRow, read_manifest

PLAN = "plan.json"


@dataclass
class RebuildReport:
    index: str
    rows: int
    embedded: int = 0
    reused: int = 0
    failed: list[dict] = field(default_factory=list)
    committed: bool = False
    version: int | None = None
    seconds: float = 0.0
    workers: int = 1

    def to_dict(self) -> dict:
        return asdict(self)


def staging_dir(index: str | os.PathLike) -> Path:
    path = Path(index)
    return path.parent / f"{path.name}.rebuild"


def default_workers() -> int:
    """One process per two cores (at least one); each gets its share of the cores as torch threads."""
    return max(1, _cores() // 2)


def rebuild(index: str | os.PathLike, manifest: str | os.PathLike, *, workers: int | None = None,
            resume: bool = False, allow_failures: bool = False, probe: str = "efficientnet_lite0",
            weights: str | None = "imagenet", image_size: int | None = None, estimator: str = DEFAULT_ESTIMATOR,
            trim: float | None = None, progress: bool | None = None) -> RebuildReport:
    """Make INDEX hold exactly the manifest's rows. An existing index keeps its probe and settings;
    `probe`, `weights`, `image_size`, `estimator` and `trim` apply only when it is created."""
    start = time.perf_counter()
    rows = read_manifest(manifest)  # every row checked before any work
    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 1):
        raise TaskIndexError(f"workers must be a whole number >= 1; got {workers!r}")
    workers = min(workers or default_workers(), len(rows))
    index = Path(index)
    stage = staging_dir(index)
    if stage.exists() and not resume:
        raise IndexUsageError(f"an interrupted rebuild of {index} left {stage}: pass resume=True (--resume) to go "
                              "on from it, or delete that folder to start over")
    if not index.exists():
        TaskIndex.create(index, probe=probe, weights=weights, image_size=image_size, estimator=estimator,
                         trim=trim).close()
    with TaskIndex.open(index) as idx:  # the writer's lock, held until the commit
        space = idx.space
        stage.mkdir(exist_ok=True)
        _check_plan(stage, space)
        report = RebuildReport(index=str(index), rows=len(rows), workers=workers)
        todo = [r for r in rows if not (stage / f"{r.digest()}.emb").exists()]
        report.reused = len(rows) - len(todo)
        failed = _run(str(index), todo, stage, workers, progress, report)
        report.failed = sorted(failed, key=lambda f: f["line"])
        if failed and not allow_failures:
            report.seconds = time.perf_counter() - start
            return report  # the live index is untouched; --resume retries only the failed rows
        bad = {f["name"] for f in failed}
        items = [(r.name, Embedding.load(stage / f"{r.digest()}.emb"), r.kind, r.metadata)
                 for r in rows if r.name not in bad]
        if items:
            idx.add_many(items, only=True)
            report.committed, report.version = True, idx.version
    shutil.rmtree(stage, ignore_errors=True)
    report.seconds = time.perf_counter() - start
    return report


def _check_plan(stage: Path, space: dict) -> None:
    """Staged embeddings are only reused for the index space they were made in."""
    plan = stage / PLAN
    if plan.exists():
        staged = json.loads(plan.read_text())["space"]
        if staged != space:
            raise IndexUsageError(f"{stage} holds embeddings made for another probe or estimator ({staged}); "
                                  "delete that folder to start over")
    else:
        plan.write_text(json.dumps({"space": space}, indent=1, sort_keys=True))


def _run(index: str, todo: list[ManifestRow], stage: Path, workers: int, progress, report) -> list[dict]:
    failed = []
    bar = tqdm(total=len(todo), desc="rebuild", unit="row", disable=None if progress is None else not progress)

    def done(row: ManifestRow, error: str | None) -> None:
        if error:
            failed.append({"name": row.name, "line": row.line, "reason": error})
        else:
            report.embedded += 1
        bar.update(1)
        bar.set_postfix(done=report.embedded + report.reused, failed=len(failed), refresh=False)

    threads = max(1, _cores() // workers)
    with bar:
        if workers == 1:
            _init(index, threads)
            for row in todo:
                done(row, _embed_row(row, str(stage)))
            return failed
        context = multiprocessing.get_context("spawn")  # no forked torch thread pools
        with cf.ProcessPoolExecutor(workers, mp_context=context, initializer=_init,
                                    initargs=(index, threads)) as pool:
            futures = {pool.submit(_embed_row, row, str(stage)): row for row in todo}
            try:
                for future in cf.as_completed(futures):
                    done(futures[future], future.result())
            except BaseException:
                pool.shutdown(wait=False, cancel_futures=True)
                raise
    return failed


_WORKER: dict = {}


def _init(index: str, threads: int) -> None:
    """Once per worker: the index's probe and embed options, and this worker's share of the cores."""
    with TaskIndex.open(index, readonly=True) as idx:
        _WORKER.update(probe=idx.probe(), options=idx.embed_options(), threads=threads)


def _embed_row(row: ManifestRow, stage: str) -> str | None:
    """Embed one row into the staging folder; the reason it failed, or None."""
    from .sources import load_task
    from .task2vec import embed

    try:
        task = load_task(row.source, row.image_column, row.label_column, row.per_class, row.seed)
        emb = embed(task, _WORKER["probe"], max_samples=row.max_samples, seed=row.seed, progress=False,
                    threads=_WORKER["threads"], **_WORKER["options"])
        emb.save(os.path.join(stage, f"{row.digest()}.emb"))
    except TaskIndexError as exc:
        return str(exc)
    except (OSError, ValueError, RuntimeError) as exc:  # unreadable files and the like: this row only
        return f"{type(exc).__name__}: {exc}"
    return None


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
