"""Bulk rebuilds: embed every row of a manifest in worker processes, resumably, and commit once.

Each finished embedding is saved at once (atomically) in a staging folder beside the index,
`INDEX.rebuild/`, under a digest of its row, so a crash, SIGKILL or Ctrl-C loses at most the
rows in flight and `resume=True` embeds only what is missing. A row that fails (unreadable
files, one class, a missing source) is reported with its reason and does not stop the others.
The index changes in one commit at the end (`add_many(..., only=True)`): until then readers see
the old version, and an interrupted rebuild leaves it untouched. With workers > 1 the workers are
spawned processes, so a script calling rebuild needs Python's `if __name__ == "__main__":` guard.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import multiprocessing
import os
import shutil
import signal
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tqdm import tqdm

from taskindex import validation
from taskindex.embedding.vector import Embedding
from taskindex.errors import TaskIndexError
from taskindex.embedding.estimators import DEFAULT_ESTIMATOR
from taskindex.index.task_index import TaskIndex
from taskindex.index.writes import RESERVED
from taskindex.rebuilds import stage
from taskindex.rebuilds.changes import Changes
from taskindex.rebuilds.inputs import ManifestRow, read_manifest
from taskindex.rebuilds.stage import staging_dir
from taskindex.cores import available_cores, idle_cores
from taskindex.embedding.pipeline import check_on_error

POLL_SECONDS = 0.2  # how often the pool's loop looks for a stop request


@dataclass
class RebuildReport:
    """What a rebuild did, or with dry_run what it would do: `added`, `changed`, `removed` and `kept` name
    the rows (as in `Changes`); `to_embed` rows are embedded now, `reused` come from an earlier run's stage.
    refit_model2vec: the index's MODEL2VEC fit was made on rows the rebuild replaces, so it no longer applies.
    skipped: the rows whose embedding left out unreadable images (on_error="skip"), and which images."""

    index: str
    rows: int
    to_embed: int = 0
    embedded: int = 0
    reused: int = 0
    failed: list[dict] = field(default_factory=list)
    skipped: list[dict] = field(default_factory=list)
    added: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)
    committed: bool = False
    version: int | None = None
    refit_model2vec: bool = False
    dry_run: bool = False
    seconds: float = 0.0
    workers: int = 1
    executor: str = "local"

    def to_dict(self, cli: bool = False) -> dict:
        """The report as plain data; cli: a failed row's reason worded for the command line (flags, not
        arguments)."""
        d = asdict(self)
        d["failed"] = [{"name": f["name"], "line": f["line"], "reason": f["cli_reason" if cli else "reason"]}
                       for f in self.failed]
        return d

    def record(self, changes: Changes) -> None:
        self.added, self.changed, self.removed, self.kept = (changes.added, changes.changed, changes.removed,
                                                             changes.kept)


def default_workers() -> int:
    """One process per two cores (at least one); each takes up to its share of the cores as torch threads."""
    return max(1, available_cores() // 2)


def rebuild(index: str | os.PathLike, manifest: str | os.PathLike, *, workers: int | None = None,
            resume: bool = False, allow_failures: bool = False, probe: str = "efficientnet_lite0",
            weights: str | None = "imagenet", image_size: int | None = None, estimator: str = DEFAULT_ESTIMATOR,
            trim: float | None = None, ray_address: str | None = None, threads: int | None = None,
            dry_run: bool = False, progress: bool | None = None, on_error: str = "raise") -> RebuildReport:
    """Make INDEX hold exactly the manifest's rows. An existing index keeps its probe and settings;
    `probe`, `weights`, `image_size`, `estimator` and `trim` apply only when it is created.

    The report names the rows added, changed, removed and kept. dry_run: only that plan, from the committed
    version, and nothing written. resume: go on from an interrupted run's staged rows. allow_failures: commit
    the rows that worked (a failed row the index holds keeps its committed version), also after a run that
    ended with failed rows. on_error: as embed's, for every row ('skip' embeds the readable images of a row and
    the report names the rows that skipped some, and which).

    workers: local processes (default: one per two cores), each with `threads` torch threads (default:
    embed's rule, one per core that other processes leave idle, at most its share of the cores, decided
    as each row starts). ray_address: run on Ray instead, "local" for a Ray instance
    started here, or a cluster address ("auto", "ray://host:10001")."""
    start = time.perf_counter()
    rows = read_manifest(manifest)  # every row checked before any work
    validation.integer(workers, "workers", none="one per two cores")
    validation.integer(threads, "threads", none="one per idle core, at most each worker's share")
    check_on_error(on_error)
    workers = min(workers or default_workers(), len(rows))
    index = Path(index)
    report = RebuildReport(index=str(index), rows=len(rows), workers=workers,
                           executor="local" if ray_address is None else f"ray ({ray_address})")
    if dry_run:
        _plan(index, rows, report, resume, allow_failures)
        report.seconds = time.perf_counter() - start
        return report
    create = dict(probe=probe, weights=weights, image_size=image_size, estimator=estimator, trim=trim)
    with stage.writer(index, create, resume, allow_failures) as (idx, staged):  # the lock, held until the commit
        _embed_and_commit(idx, rows, staged, report, threads, ray_address, allow_failures, progress, on_error)
    if report.committed:
        shutil.rmtree(staged, ignore_errors=True)
    report.seconds = time.perf_counter() - start
    return report


def _plan(index: Path, rows: list[ManifestRow], report: RebuildReport, resume: bool, allow_failures: bool) -> None:
    """The dry run: the changes against the committed version and the rows a run would embed; writes nothing."""
    report.dry_run = True
    stage.refuse_if_running(index)
    held = []
    if index.exists():
        with TaskIndex.open(index, readonly=True) as idx:
            held, report.version, report.refit_model2vec = idx.names(), idx.version, idx.model2vec is not None
    staged = stage.check(index, resume, allow_failures)  # refused here as the run would refuse it
    report.record(Changes.plan(held, [r.name for r in rows]))
    embedded = [r for r in rows if r.source_task is None]
    report.to_embed = len([r for r in embedded if staged is None or not (staged / f"{r.digest()}.emb").exists()])
    report.reused = len(embedded) - report.to_embed


def _embed_and_commit(idx: TaskIndex, rows: list[ManifestRow], staged: Path, report: RebuildReport,
                      threads: int | None, ray_address: str | None, allow_failures: bool, progress,
                      on_error: str) -> None:
    """Embed the rows not staged yet, then commit them all, unless rows failed and failures are not allowed."""
    changes = Changes.plan(idx.names(), [r.name for r in rows])
    report.record(changes)
    embedded = [r for r in rows if r.source_task is None]  # a model with a source_task takes that row's
    todo = [r for r in embedded if not (staged / f"{r.digest()}.emb").exists()]
    report.to_embed, report.reused = len(todo), len(embedded) - len(todo)
    fresh = {r.name for r in todo}
    for row in [r for r in embedded if r.name not in fresh]:  # staged by an earlier run: its skips count too
        _note_skipped(report, row, Embedding.load(staged / f"{row.digest()}.emb"))
    if report.workers > 1 or ray_address is not None:
        idx.probe()  # a probe that cannot be rebuilt is one clear error here, not one per worker
    if threads is None and ray_address is not None:  # one CPU a task, as Ray schedules them
        threads = 1
    failed = _run(worker_spec(idx, on_error), todo, staged, report.workers, threads, ray_address, progress, report)
    report.failed = sorted(failed, key=lambda f: f["line"])
    report.skipped.sort(key=lambda s: s["line"])
    by_name = {r.name: r for r in rows}
    source = {r.name: by_name[r.source_task] if r.source_task else r for r in rows}
    bad = {f["name"] for f in failed}
    changes = changes.after_failures({n for n, src in source.items() if src.name in bad})
    if failed and (not allow_failures or not changes.alters()):
        stage.record_failures(staged, report.failed)
        return  # the live index is untouched; resume or allow_failures go on from the staged rows
    report.record(changes)
    new, kept = {*changes.added, *changes.changed}, set(changes.kept)
    items = [(r.name, Embedding.load(staged / f"{source[r.name].digest()}.emb"), r.kind, _metadata(r))
             if r.name in new else (r.name, *_committed(idx, r.name)) for r in rows if r.name in new | kept]
    report.refit_model2vec = idx.model2vec is not None
    idx.add_many(items, only=True)
    report.committed, report.version = True, idx.version


def _note_skipped(report: RebuildReport, row: ManifestRow, emb: Embedding) -> None:
    if emb.meta.get("skipped_images"):
        report.skipped.append({"name": row.name, "line": row.line, "skipped_images": emb.meta["skipped_images"],
                               "skipped_files": emb.meta["skipped_files"]})


def _metadata(row: ManifestRow) -> dict:
    return {**row.metadata, "source_task": row.source_task} if row.source_task else row.metadata


def _committed(idx: TaskIndex, name: str) -> tuple:
    """A held row as it is committed: (embedding, kind, its own metadata), to carry it into the next version."""
    emb, meta = idx.get(name)
    own = {k: v for k, v in meta.items() if k not in RESERVED and v is not None}
    return emb, meta["kind"], own


def _run(spec: dict, todo: list[ManifestRow], staged: Path, workers: int, threads: int | None,
         ray_address: str | None,
         progress, report) -> list[dict]:
    """Embed `todo`, saving each result in `staged` as it arrives; returns the failed rows."""
    failed = []
    bar = tqdm(total=len(todo), desc="rebuild", unit="row", disable=None if progress is None else not progress)

    def done(row: ManifestRow, result: tuple[tuple[str, str] | None, Embedding | None]) -> None:
        error, emb = result
        if error:
            failed.append({"name": row.name, "line": row.line, "reason": error[0], "cli_reason": error[1]})
        else:
            emb.save(staged / f"{row.digest()}.emb")  # persisted at once: a crash loses only the rows in flight
            report.embedded += 1
            _note_skipped(report, row, emb)
        bar.update(1)
        bar.set_postfix(done=report.embedded + report.reused, failed=len(failed), refresh=False)

    with bar, _interrupts(raising=workers == 1 or ray_address is not None) as stop:
        if ray_address is not None:
            _run_ray(spec, todo, ray_address, threads, done)
        elif workers == 1:
            _init(spec, threads)
            for row in todo:
                done(row, _embed_row(row))
        else:
            _run_pool(spec, todo, workers, threads, done, stop)
    return failed


def _run_pool(spec: dict, todo: list[ManifestRow], workers: int, threads: int | None, done, stop: list) -> None:
    """Local worker processes. A stop request (Ctrl-C, SIGTERM) ends them at once: the rows already back are
    saved, the rows in flight are dropped, and the run ends in KeyboardInterrupt."""
    context = multiprocessing.get_context("spawn")  # no forked torch thread pools
    with _sigint_blocked():  # inherited by the workers: the terminal's Ctrl-C is the parent's alone to handle
        pool = cf.ProcessPoolExecutor(workers, mp_context=context, initializer=_init,
                                      initargs=(spec, threads, max(1, available_cores() // workers)))
        futures = {pool.submit(_embed_row, row): row for row in todo}
    pending = set(futures)
    try:
        while pending and not stop:
            finished, pending = cf.wait(pending, timeout=POLL_SECONDS, return_when=cf.FIRST_COMPLETED)
            for future in finished:
                done(futures[future], _result(future, stop))
    finally:
        if pending:  # stopped, or failed: keep what is back, end the workers now rather than after their rows
            for future in [f for f in pending if f.done() and not f.cancelled() and f.exception() is None]:
                done(futures[future], future.result())
            for process in list(pool._processes.values()):  # no public way to end them before Python 3.14
                process.kill()
        pool.shutdown(wait=True, cancel_futures=True)
    if stop:
        raise KeyboardInterrupt


def _result(future: cf.Future, stop: list):
    """A row's result; a worker that died is a stop when a signal killed it with the parent's, else an error."""
    try:
        return future.result()
    except cf.BrokenExecutor:
        time.sleep(POLL_SECONDS)  # a signal sent to the whole group reaches this process's handler after this
        if stop:
            raise KeyboardInterrupt from None
        raise TaskIndexError("a rebuild worker process died (killed, or out of memory): the rows it finished are "
                             "staged; resume=True goes on from them",
                             cli="a rebuild worker process died (killed, or out of memory): the rows it finished "
                             "are staged; --resume goes on from them") from None


@contextlib.contextmanager
def _interrupts(raising: bool):
    """SIGINT and SIGTERM during a run, as a list of the signals received: the first one raises KeyboardInterrupt
    when `raising` (the work runs in this thread), else the pool's loop polls the list. Later ones are only
    recorded, so a second Ctrl-C never interrupts the clean-up."""
    stop: list[int] = []
    if threading.current_thread() is not threading.main_thread():  # signals reach the main thread only
        yield stop
        return

    def handler(signum, frame):
        stop.append(signum)
        if raising and len(stop) == 1:
            raise KeyboardInterrupt

    before = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield stop
    finally:
        for s, h in before.items():
            signal.signal(s, h)


@contextlib.contextmanager
def _sigint_blocked():
    """SIGINT blocked in this thread; processes started meanwhile inherit the mask and so never see Ctrl-C."""
    if not hasattr(signal, "pthread_sigmask"):
        yield
        return
    before = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, before)


def _run_ray(spec: dict, todo: list[ManifestRow], address: str, threads: int, done) -> None:
    """One Ray task per row, a GPU each when the cluster has GPUs; results stream back as they finish.

    Ray retries a task whose worker died (max_retries); a row's own error is a result, not retried.
    Sources must be readable where the tasks run (shared storage, or sample:NAME)."""
    import ray

    if not ray.is_initialized():
        ray.init(address=None if address == "local" else address, ignore_reinit_error=True,
                 logging_level="ERROR", log_to_driver=False)
    gpus = 1 if ray.cluster_resources().get("GPU", 0) >= 1 else 0
    task = ray.remote(_ray_embed_row).options(num_cpus=threads, num_gpus=gpus, max_retries=2)
    spec_ref = ray.put(spec)
    pending = {task.remote(spec_ref, row, threads): row for row in todo}
    try:
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            done(pending.pop(ready[0]), ray.get(ready[0]))
    except BaseException:
        for ref in pending:
            ray.cancel(ref, force=True)
        raise


def _ray_embed_row(spec: dict, row: ManifestRow, threads: int):
    if _WORKER.get("spec") != spec:  # once per Ray worker process
        _init(spec, threads)
    return _embed_row(row)


_WORKER: dict = {}


def worker_spec(idx: TaskIndex, on_error: str = "raise") -> dict:
    """What a worker needs to embed rows into `idx`'s space, on any machine: the space and embed's options."""
    return {"space": dict(idx.space), "options": {**idx.embed_options(), "on_error": on_error}}


def _init(spec: dict, threads: int | None, share: int | None = None) -> None:
    """Once per worker: the index's probe (rebuilt from its identity), and its torch threads: `threads`, or
    embed's idle-core rule, capped at `share` (a pool worker's share of the cores) when given."""
    from taskindex.embedding.probes import probe_for_space

    _WORKER.update(spec=spec, threads=threads, share=share, probe=probe_for_space(spec["space"]))


def idle_threads(share: int) -> int:
    """embed's rule, a thread per core that other processes leave idle, capped at `share`: workers that start
    rows together never hold more threads than cores, where torch's spin-waits would slow them all."""
    return min(share, idle_cores())


def _row_threads() -> int | None:
    """The torch threads for the next row (None: embed's own idle-core rule), decided as it starts."""
    threads, share = _WORKER["threads"], _WORKER.get("share")
    return idle_threads(share) if threads is None and share is not None else threads


def _embed_row(row: ManifestRow) -> tuple[tuple[str, str] | None, Embedding | None]:
    """Embed one row: (None, embedding), or ((the reason it failed, its wording for the CLI), None)."""
    from taskindex.data.sources import load_task
    from taskindex.embedding.pipeline import embed

    try:
        task = load_task(row.source, row.image_column, row.label_column, row.per_class, row.seed)
        return None, embed(task, _WORKER["probe"], max_samples=row.max_samples, seed=row.seed, progress=False,
                           threads=_row_threads(), **_WORKER["spec"]["options"])
    except TaskIndexError as exc:
        return (str(exc), exc.cli), None
    except (OSError, ValueError, RuntimeError) as exc:  # unreadable files and the like: this row only
        return (f"{type(exc).__name__}: {exc}",) * 2, None


