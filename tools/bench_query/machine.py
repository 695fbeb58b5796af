"""What the report says about the machine and about this process's memory."""

from __future__ import annotations

import platform
import shutil
import subprocess
from pathlib import Path

import numpy as np

import taskindex
from tools import harness


def proc_status() -> dict[str, int]:
    """VmRSS, RssAnon, RssFile, VmHWM of this process in bytes."""
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "RssAnon", "RssFile", "VmHWM"):
                out[key] = int(rest.split()[0]) * 1024
    return out


def git_commit() -> str:
    """The checkout's commit, and whether taskindex/ has changes not committed."""
    root = str(harness.ROOT)
    try:
        out = subprocess.run(["git", "-C", root, "log", "-1", "--format=%h"], capture_output=True, text=True,
                             timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", root, "status", "--porcelain", "--untracked-files=no", "taskindex"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return (out + (" + uncommitted changes in taskindex/" if dirty else "")) if out else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def machine_line(workdir: Path) -> str:
    """Cores, memory, free disk in the workdir, the versions that matter and the commit measured."""
    import faiss
    import scipy

    return harness.machine_line(
        f"{harness.meminfo('MemTotal') / 2**30:.0f} GiB RAM",
        f"{shutil.disk_usage(workdir).free / 1e9:.0f} GB free in the workdir", f"Python {platform.python_version()}",
        f"numpy {np.__version__}", f"scipy {scipy.__version__}",
        f"faiss {faiss.__version__} ({faiss.omp_get_max_threads()} threads)",
        f"taskindex {taskindex.__version__} at commit {git_commit()}")
