"""What the benchmarks in tools/ share: the machine they ran on and its load, percentiles, sizes like 100k,
tables, timing (one call, best of N, alternating A/B), and running a sibling tool in a fresh process.

Every tool runs as a module from the repository root (`.venv/bin/python -m tools.bench_query --help`) and
imports this one as `from tools import harness`.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

ROOT = Path(__file__).resolve().parent.parent  # the checkout these tools belong to


# --------------------------------------------------------------------------- the machine and its load


def cpu_name() -> str:
    """The CPU model from /proc/cpuinfo, else what platform knows."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_line(*parts: str) -> str:
    """'2 CPU cores (model), part, part...': the line a report names its machine with."""
    return ", ".join([f"{os.cpu_count()} CPU cores ({cpu_name()})", *parts])


def meminfo(key: str) -> int:
    """A /proc/meminfo figure (MemTotal, MemAvailable...) in bytes; 0 where it cannot be read."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def loads() -> tuple[float, float, float]:
    """The load average over 1, 5 and 15 minutes (NaN where the system has none)."""
    try:
        return os.getloadavg()
    except OSError:
        return (float("nan"),) * 3


def load1() -> float:
    """The load average over the last minute."""
    return loads()[0]


def load_text() -> str:
    """'0.12 0.34 0.56': the three load averages."""
    return " ".join(f"{x:.2f}" for x in loads())


def load_line() -> str:
    """'load average 0.12 0.34 0.56 on 2 cores'."""
    return f"load average {load_text()} on {os.cpu_count()} cores"


class CpuShare:
    """How much of the machine's CPU time other processes took while this one ran (Linux /proc/stat)."""

    def __init__(self):
        self.start = self._sample()

    @staticmethod
    def _sample():
        try:
            with open("/proc/stat") as f:
                vals = [int(v) for v in f.readline().split()[1:9]]
            busy = (sum(vals) - vals[3] - vals[4]) / os.sysconf("SC_CLK_TCK")
        except (OSError, ValueError):
            busy = float("nan")
        return busy, time.process_time(), time.perf_counter()

    def others(self) -> float:
        """Fraction of all CPUs' time used by other processes since construction."""
        (b0, p0, w0), (b1, p1, w1) = self.start, self._sample()
        return max(0.0, ((b1 - b0) - (p1 - p0)) / ((w1 - w0) * (os.cpu_count() or 1)))


# --------------------------------------------------------------------------- numbers and options


def pct(values, q) -> float:
    """The q-th percentile of values (numpy's linear interpolation)."""
    return float(np.percentile(np.asarray(values, dtype=np.float64), q))


def p50_p99_ms(seconds) -> tuple[float, float]:
    """Median and 99th percentile of timings in seconds, in milliseconds."""
    return pct(seconds, 50) * 1e3, pct(seconds, 99) * 1e3


def parse_sizes(text: str) -> list[int]:
    """Row counts such as '10k,100k,1M' (or 2000, 1_000, 1.5k) as integers."""
    out = []
    for part in text.split(","):
        part = part.strip().lower().replace("_", "")
        mult = 1
        if part.endswith("k"):
            mult, part = 1000, part[:-1]
        elif part.endswith("m"):
            mult, part = 1_000_000, part[:-1]
        out.append(int(float(part) * mult))
    return out


def parser(module: str, description: str, raw: bool = True) -> argparse.ArgumentParser:
    """The options of `python -m module`, its usage line naming the module; raw: the description (a docstring)
    printed as it is written, else wrapped to the terminal."""
    formatter = argparse.RawDescriptionHelpFormatter if raw else argparse.HelpFormatter
    return argparse.ArgumentParser(prog=f"python -m {module}", description=description, formatter_class=formatter)


def ints(text: str) -> list[int]:
    """'1,3' -> [1, 3] (empty items skipped): argparse's type= for a list of integers."""
    return [int(v) for v in text.split(",") if v.strip()]


# --------------------------------------------------------------------------- timing


def timed(fn: Callable, *args, **kwargs) -> tuple[object, float]:
    """fn(*args, **kwargs) and the seconds it took."""
    t = time.perf_counter()
    value = fn(*args, **kwargs)
    return value, time.perf_counter() - t


def best_of(fn: Callable[[], object], repeats: int, sync: Callable[[], None] | None = None,
            warm: bool = True) -> tuple[float, list[float]]:
    """One warm-up call (unless warm=False), then `repeats` timed calls; returns (best seconds, all).

    The best run, not the median: on a shared machine other processes only ever add time. sync (e.g. a CUDA
    synchronise) runs before and after each timed call, so queued device work is counted in full."""
    sync = sync or (lambda: None)
    if warm:
        fn()
    times = []
    for _ in range(repeats):
        sync()
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return min(times), times


def alternate(calls: dict, rounds: int, swap: bool = False) -> dict:
    """A/B (or A/B/C...) side by side: every call of `calls` (key -> fn(round)) once per round, in turn, so that
    a drift of the machine falls on all of them; swap: every other round in the reverse order (the first round
    in the given one). Returns key -> the calls' return values, one per round."""
    out = {key: [] for key in calls}
    order = list(calls)
    for r in range(rounds):
        for key in (order[::-1] if swap and r % 2 else order):
            out[key].append(calls[key](r))
    return out


# --------------------------------------------------------------------------- tables and reports


def md_row(cells) -> str:
    """One Markdown table row: '| a | b |'."""
    return "| " + " | ".join(str(c) for c in cells) + " |"


def md_rule(align: str) -> str:
    """The rule under a Markdown header, one character a column: l '---', r '---:'; e.g. md_rule('lrr')."""
    return "|" + "".join("---:|" if a == "r" else "---|" for a in align)


@dataclass
class Table:
    """Rows under a title and headers, written as aligned plain text or as Markdown; numbers are formatted
    to 3 significant-ish digits (see fmt) and right-aligned."""

    title: str
    headers: list[str]
    rows: list[list] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def add(self, *row) -> None:
        self.rows.append([fmt(v) for v in row])

    def text(self) -> str:
        cells = [self.headers] + self.rows
        widths = [max(len(str(r[i])) for r in cells) for i in range(len(self.headers))]
        line = "  ".join("-" * w for w in widths)
        out = [self.title, "=" * len(self.title)]
        out.append("  ".join(str(h).ljust(w) for h, w in zip(self.headers, widths)))
        out.append(line)
        for r in self.rows:
            out.append("  ".join(str(c).rjust(w) if numeric(c) else str(c).ljust(w) for c, w in zip(r, widths)))
        out += [f"  * {n}" for n in self.notes]
        return "\n".join(out) + "\n"

    def markdown(self) -> str:
        out = [f"**{self.title}**", ""]
        out.append(md_row(self.headers))
        first = self.rows[0] if self.rows else [""] * len(self.headers)
        out.append(md_rule("".join("r" if numeric(c) else "l" for c in first)))
        out += [md_row(r) for r in self.rows]
        if self.notes:
            out.append("")
            out += [f"* {n}" for n in self.notes]
        return "\n".join(out) + "\n"


def numeric(c) -> bool:
    """Whether a cell reads as a number ('1.5', '2.0x', '< 3 s', '12%')."""
    s = str(c).lstrip("<>=~ ").rstrip("x%s ")
    try:
        float(s)
        return True
    except ValueError:
        return False


def fmt(v):
    """A float as a short cell: 0, 123, 12.3, 0.123 or 1.23e-04; anything else as it is."""
    if isinstance(v, (float, np.floating)):
        if not math.isfinite(v):
            return str(v)
        a = abs(v)
        if a == 0:
            return "0"
        if a >= 100:
            return f"{v:.0f}"
        if a >= 10:
            return f"{v:.1f}"
        if a >= 0.01:
            return f"{v:.3f}"
        return f"{v:.2e}"
    return v


def without(value, keys: set):
    """value with every dict entry under one of keys left out, at any depth (a report without its long lists)."""
    if isinstance(value, dict):
        return {k: without(v, keys) for k, v in value.items() if k not in keys}
    return value


def log(*parts, stamp: bool = False) -> None:
    """Progress to stderr (stdout is for the results), with the time of day where stamp."""
    if stamp:
        parts = (f"[{time.strftime('%H:%M:%S')}]", *parts)
    print(*parts, file=sys.stderr, flush=True)


def write_report(path, text: str) -> None:
    """Write a report file (its folder made where missing) and say so on stderr."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)
    log(f"wrote {path}")


# --------------------------------------------------------------------------- indexes and running tools


def loaded(index):
    """A TaskIndex's loaded version: the private state (vector files, candidate structure, row map) that the
    benchmarks read or swap. The one place in tools/ that knows where TaskIndex keeps it."""
    return index._v



def command_line(module: str, argv: list[str] | None = None, python: str = "python") -> str:
    """How to run this again: 'python -m tools.x ARGS', with argv (default: this process's arguments)."""
    args = sys.argv[1:] if argv is None else argv
    return " ".join(shlex.quote(a) for a in [python, "-m", module, *args])


def module_env(*first: str) -> dict:
    """This process's environment with PYTHONPATH led by `first` (folders), then this checkout, then what
    PYTHONPATH held: a child `python -m tools.x` finds tools/ from any working directory."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([*first, str(ROOT), *filter(None, [env.get("PYTHONPATH")])])
    return env


def run_module(module: str, args: list[str], **kwargs) -> subprocess.CompletedProcess:
    """`python -m module args` in a fresh process of this interpreter (output captured as text)."""
    return subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True, env=module_env(),
                          **kwargs)
