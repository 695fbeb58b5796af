"""The idle-core rule: one thread per core that other processes leave idle. OpenMP threads spin-wait for each
other, so with every core in use and another process holding one, work slows many times over (docs/embedding.md,
'How the embedding is computed'). Embedding, rebuild workers, the MODEL2VEC fit and the t-SNE map follow it."""

from __future__ import annotations

import os
import time


def available_cores() -> int:
    """The cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def idle_cores(own_threads: int = 1) -> int:
    """Cores that other processes leave idle now (at least one); own_threads: this process's busy threads,
    counted out where only the load average is known."""
    cores = available_cores()
    return max(1, min(cores, int(cores - cores_used_by_others(cores, own_threads=own_threads) + 0.5)))


def cores_used_by_others(cores: int, window: float = 0.05, own_threads: int = 1) -> float:
    """Cores other processes keep busy now: the machine's busy time over a short window, less this
    process's own. Not the load average, which counts this process's work of the last minute, so a
    long run of embeddings would talk itself down to one thread."""
    def sample():
        with open("/proc/stat") as f:
            ticks = [int(v) for v in f.readline().split()[1:8]]
        return (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK"), time.process_time(), time.monotonic()

    try:
        (b0, p0, w0) = sample()
        time.sleep(window)
        (b1, p1, w1) = sample()
    except (OSError, ValueError, IndexError):  # no /proc (macOS, Windows): the load average, less our own
        load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
        return max(0.0, load - own_threads)
    return max(0.0, min(float(cores), ((b1 - b0) - (p1 - p0)) / (w1 - w0)))
