"""Real signals on a local-pool rebuild: Ctrl-C and SIGTERM stop the workers at once, keep the finished rows
staged for --resume, exit 130, and a second Ctrl-C neither prints a traceback nor hangs."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_rebuild import SAMPLES, TINY, sample_rows, write_csv

from taskindex.index.task_index import TaskIndex
from taskindex.rebuilds.run import rebuild, staging_dir

CLI_TINY = ["--probe", "resnet18", "--weights", "random", "--image-size", "16"]
EXIT_BOUND = 20.0  # seconds from the signal to the exit; measured 0.3-1 s on a loaded 2-core machine


def children(pid: int) -> set[int]:
    """The live processes whose parent is `pid` (the pool's workers)."""
    found = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid and fields[0] != "Z":
            found.add(int(stat.parent.name))
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def start_rebuild(index: Path, manifest: str) -> subprocess.Popen:
    """The CLI in its own session, so a signal to its group is what a terminal's Ctrl-C sends."""
    return subprocess.Popen([sys.executable, "-c", "from taskindex.cli import main; main()", "rebuild", str(index),
                             "--manifest", manifest, "--workers", "2", *CLI_TINY],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)


def wait_for_rows(proc: subprocess.Popen, stage: Path, rows: int) -> int:
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and len(list(stage.glob("*.emb"))) < rows:
        assert proc.poll() is None, f"the rebuild ended before the signal: {proc.communicate()}"
        time.sleep(0.05)
    return len(list(stage.glob("*.emb")))


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc").is_dir(), reason="reads the process table from /proc")
@pytest.mark.parametrize("how", ["ctrl-c", "ctrl-c twice", "sigterm"])
def test_a_signal_stops_a_pool_rebuild_at_once_and_resume_keeps_the_finished_rows(tmp_path, how):
    index, manifest = tmp_path / "idx", write_csv(tmp_path / "m.csv", sample_rows(SAMPLES, per_class=12))
    stage = staging_dir(index)
    proc = start_rebuild(index, manifest)
    try:
        wait_for_rows(proc, stage, 2)
        workers = children(proc.pid)
        assert len(workers) >= 2, workers  # the two workers and multiprocessing's resource tracker
        sent = time.monotonic()
        if how == "sigterm":
            proc.send_signal(signal.SIGTERM)  # `kill PID`: the parent alone
        else:
            os.killpg(proc.pid, signal.SIGINT)  # the terminal sends Ctrl-C to the whole group
            if how == "ctrl-c twice":
                time.sleep(0.1)
                os.killpg(proc.pid, signal.SIGINT)
        out, err = proc.communicate(timeout=EXIT_BOUND + 40)
        took = time.monotonic() - sent
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 130, (proc.returncode, err)
    assert took < EXIT_BOUND, f"{took:.1f} s from the signal to the exit"
    assert "Traceback" not in err and "Interrupted:" in err, err
    deadline = time.monotonic() + 10  # the resource tracker exits once it reads the end of its pipe
    while time.monotonic() < deadline and any(alive(pid) for pid in workers):
        time.sleep(0.1)
    assert not [pid for pid in workers if alive(pid)], "the workers outlived the rebuild"
    staged = {p.name for p in stage.glob("*.emb")}
    assert 2 <= len(staged) < len(SAMPLES)
    with TaskIndex.open(index, readonly=True) as idx:
        assert idx.names() == []  # nothing committed
    report = rebuild(index, manifest, workers=1, threads=1, resume=True, progress=False)
    assert (report.reused, report.embedded, report.failed) == (len(staged), len(SAMPLES) - len(staged), [])
    with TaskIndex.open(index, readonly=True) as idx:
        assert sorted(idx.names()) == sorted(SAMPLES) and idx.space["probe"] == TINY["probe"]


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc").is_dir(), reason="reads the process table from /proc")
def test_a_worker_that_dies_is_one_line_and_the_finished_rows_stay_staged(tmp_path):
    index, manifest = tmp_path / "idx", write_csv(tmp_path / "m.csv", sample_rows(SAMPLES, per_class=12))
    stage = staging_dir(index)
    proc = start_rebuild(index, manifest)
    try:
        wait_for_rows(proc, stage, 1)
        workers = [pid for pid in children(proc.pid)
                   if b"resource_tracker" not in Path(f"/proc/{pid}/cmdline").read_bytes()]
        os.kill(workers[0], signal.SIGKILL)  # as the kernel's out-of-memory killer would
        out, err = proc.communicate(timeout=EXIT_BOUND + 40)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 2, (proc.returncode, err)
    assert "Traceback" not in err and "Error: a rebuild worker process died" in err and "--resume" in err, err
    assert len(list(stage.glob("*.emb"))) >= 1
