"""Benchmark of the TASK2VEC embedding: speed, sample efficiency and stability.

All parts use the shipped pretrained probe (EfficientNet-Lite0, offline weights)
and real images from `taskindex.data.samples`, in one run:

1. Throughput of the per-sample montecarlo Fisher pass (`fisher_pass`) against
   (a) the floor: one plain batched forward+backward that forms the conv weight
   gradients, (a') the same backward with activation gradients only (what
   `fisher_pass` itself runs before its per-sample work), (b) a naive per-sample
   autograd loop, (c) the reference "montecarlo" estimator that squares the
   gradient of the batch-mean loss. Also a per-conv-kind breakdown of where the
   per-sample work goes, and ours/floor across image sizes.
2. Samples to reach Spearman 0.99 with a converged reference (exact expectation
   over labels on a large pool), per-sample vs batch-squared estimator, and how
   many more images the batch-squared estimator needs for the same accuracy.
3. Stability of d_sym: two disjoint halves of a task vs different tasks, as a
   function of samples and image size, with and without the prior floor, and
   the fraction of filters whose Fisher is exactly zero.

Usage (from the repository root):
    .venv/bin/python -m tools.bench_embed                 # ~3.5 min on 2 idle CPU cores
    .venv/bin/python -m tools.bench_embed --quick         # ~30 s
    .venv/bin/python -m tools.bench_embed --parts 1 --image-size 224 --samples 64
    .venv/bin/python -m tools.bench_embed --markdown out/perf.md --device cuda

Plain-text tables go to stdout, progress to stderr. The footer says how much CPU
other processes took during the run: with two threads on two cores, a busy
neighbour slows torch's small ops many times over (a default run took 10 minutes
and more with 25-45% of the CPUs taken), so rerun on an idle machine before
quoting numbers.
"""

from __future__ import annotations

import argparse
import platform
import sys
import time

import torch

import taskindex
from tools import harness
from tools.bench_embed.convergence import part_convergence
from tools.bench_embed.stability import part_stability
from tools.bench_embed.throughput import part_throughput
from tools.harness import Table, ints, log


def machine(device: torch.device) -> str:
    gpu = f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else ""
    return harness.machine_line(f"torch {torch.__version__} with {torch.get_num_threads()} threads",
                                f"device {device}{gpu}", f"Python {platform.python_version()}",
                                f"taskindex {taskindex.__version__}")


def parse(argv=None) -> argparse.Namespace:
    p = harness.parser("tools.bench_embed", __doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:N")
    p.add_argument("--quick", action="store_true",
                   help="smaller settings: about 30 s on 2 idle CPU cores (2 minutes on a busy one)")
    p.add_argument("--parts", type=ints, default=[1, 2, 3], help="which parts to run, e.g. 1,3")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--markdown", metavar="FILE", help="also write the results as a Markdown section")
    g = p.add_argument_group("1. throughput")
    g.add_argument("--task", default="fashion-footwear", help="sample task for part 1 (default fashion-footwear)")
    g.add_argument("--image-size", type=int, help="image size (default 64)")
    g.add_argument("--samples", type=int, help="images timed (default 128)")
    g.add_argument("--batch-size", type=int, default=32)
    g.add_argument("--naive-samples", type=int, help="images for the naive per-sample loop (default 16)")
    g.add_argument("--repeats", type=int, help="timed runs after the warm-up; the best is reported (default 3)")
    g.add_argument("--sweep-sizes", type=ints, help="other image sizes for ours/floor (default 32,96,128,224)")
    g.add_argument("--sweep-samples", type=int, help="images per size in the sweep (default 32)")
    g.add_argument("--no-profile", dest="profile", action="store_false", help="skip the per-conv-kind breakdown")
    g = p.add_argument_group("2. samples to Spearman 0.99")
    g.add_argument("--conv-task", default="fashion-footwear")
    g.add_argument("--conv-image-size", type=int, help="image size (default 32)")
    g.add_argument("--pool", type=int, help="reference pool = largest n (default 4096)")
    g.add_argument("--conv-ns", type=ints, help="sample counts up to the pool (default powers of 2 from 32)")
    g.add_argument("--conv-batch", type=int, default=32)
    g.add_argument("--target", type=float, default=0.99)
    g = p.add_argument_group("3. d_sym stability")
    g.add_argument("--tasks", type=lambda s: [v for v in s.split(",") if v],
                   help="default fashion-footwear,fashion-tops,mnist-round,fashion-trouser-vs-rest")
    g.add_argument("--stab-ns", type=ints, help="samples per half (default 64,128,256)")
    g.add_argument("--stab-sizes", type=ints, help="image sizes (default 32,64,96)")
    g.add_argument("--stab-seeds", type=int, help="seeds averaged over (default 2)")
    g.add_argument("--stab-exact-size", type=int,
                   help="also run expectation='exact' at this size (0: skip; default 64)")
    a = p.parse_args(argv)
    q = a.quick
    defaults = dict(
        image_size=64, samples=64 if q else 128, naive_samples=8 if q else 16, repeats=1 if q else 3,
        sweep_sizes=[] if q else [32, 96, 128, 224], sweep_samples=32,
        conv_image_size=32, pool=512 if q else 4096, conv_ns=[32, 64, 128, 256, 512, 1024, 2048, 4096],
        tasks=["fashion-footwear", "fashion-tops", "mnist-round"] if q
        else ["fashion-footwear", "fashion-tops", "mnist-round", "fashion-trouser-vs-rest"],
        stab_ns=[64, 128] if q else [64, 128, 256], stab_sizes=[32, 64] if q else [32, 64, 96],
        stab_seeds=1 if q else 2, stab_exact_size=64,
    )
    for k, v in defaults.items():
        if getattr(a, k) is None:
            setattr(a, k, v)
    return a


def main(argv=None) -> int:
    args = parse(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda was asked for but CUDA is not available")
    torch.manual_seed(args.seed)
    command = harness.command_line("tools.bench_embed", argv)
    mach = machine(device)
    load0 = harness.load1()
    share = harness.CpuShare()
    log(f"bench_embed: {mach}; load average {load0:.2f}")
    t_all = time.perf_counter()
    tables: list[Table] = []
    parts = {1: part_throughput, 2: part_convergence, 3: part_stability}
    for k in args.parts:
        t0 = time.perf_counter()
        new = parts[k](args, device)
        log(f"    part {k}: {time.perf_counter() - t0:.1f}s (other processes so far: {100 * share.others():.0f}% of "
            "the CPUs)")
        for t in new:
            print(t.text(), flush=True)
        tables += new
    wall = time.perf_counter() - t_all
    others = share.others()
    load = (f"other processes used {100 * others:.0f}% of the CPUs during the run; "
            f"load average (1 min) {load0:.2f} at start")
    print(f"command: {command}\nmachine: {mach}\ntotal wall time: {wall:.1f}s; {load}")
    if others > 0.1:
        print("WARNING: other processes were using the CPUs: timings are inflated; rerun on an idle machine")
    if args.markdown:
        md = ["### Embedding benchmark (`python -m tools.bench_embed`)", "",
              f"Command: `{command}`  ", f"Machine: {mach}  ", f"Total wall time: {wall:.0f} s ({load})", ""]
        md += [t.markdown() for t in tables]
        harness.write_report(args.markdown, "\n".join(md))
    return 0


if __name__ == "__main__":
    sys.exit(main())
