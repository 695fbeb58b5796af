"""Part 3 of the embedding benchmark: stability of d_sym, two disjoint halves of a task against different
tasks, by samples, image size, label mode and estimator, with and without the prior floor."""

from __future__ import annotations

import math
import time

import numpy as np

import taskindex
from taskindex.data import samples
from taskindex.distance import d_sym
from taskindex.embedding.estimators import DEFAULT_ESTIMATOR, estimator_id
from taskindex.embedding.pipeline import LABEL_PASSES
from tools.bench_embed.common import PROBE
from tools.harness import Table, log


def halves(task):
    """Two disjoint halves: alternate images within each class."""
    a, b = [], []
    for c in np.unique(task.labels):
        members = np.flatnonzero(task.labels == c)
        a.append(members[0::2])
        b.append(members[1::2])
    return (task.subset(np.sort(np.concatenate(a)), name=f"{task.name}/A"),
            task.subset(np.sort(np.concatenate(b)), name=f"{task.name}/B"))


def _stability_row(names, emb_by_seed) -> tuple[list[float], float, float, float, float, float]:
    """Per-task within d_sym and the means of within/between, with and without the prior floor."""
    within_task = {a: [] for a in names}
    within0, between, between0 = [], [], []
    for emb in emb_by_seed:
        raw = {k: e.fisher.astype(np.float64) + 1e-30 for k, e in emb.items()}
        for i, a in enumerate(names):
            within_task[a].append(d_sym(emb[a, 0], emb[a, 1]))
            within0.append(d_sym(raw[a, 0], raw[a, 1]))
            for b in names[i + 1:]:
                for ha in (0, 1):
                    for hb in (0, 1):
                        between.append(d_sym(emb[a, ha], emb[b, hb]))
                        between0.append(d_sym(raw[a, ha], raw[b, hb]))
    per_task = [float(np.mean(within_task[a])) for a in names]
    return (per_task, float(np.mean(per_task)), float(np.mean(between)), float(np.mean(within0)),
            float(np.mean(between0)), float(np.mean([(e.fisher == 0).mean() for emb in emb_by_seed
                                                     for e in emb.values()])))


def part_stability(args, device) -> list[Table]:
    names, ns, sizes = args.tasks, sorted(args.stab_ns), sorted(args.stab_sizes)
    seeds = [args.seed + k for k in range(args.stab_seeds)]
    robust = estimator_id(DEFAULT_ESTIMATOR)
    runs = [(S, "sample", "mean") for S in sizes]  # the paper's estimator
    if args.stab_exact_size:
        runs += [(args.stab_exact_size, "exact", "mean"), (args.stab_exact_size, "exact", robust)]
    log(f"[3] d_sym stability: {len(names)} tasks, n in {ns}, sizes {sizes}, seeds {seeds}"
        + (f", exact expectation at {args.stab_exact_size}px" if args.stab_exact_size else ""))
    split = {}  # (task, seed) -> (half A, half B): each seed draws other images of the task
    for name in names:
        per_class = math.ceil(2 * max(ns) / len(samples.spec(name).groups)) + 1
        for sd in seeds:
            split[name, sd] = halves(samples.load(name, max_per_class=per_class, seed=sd))
    t = Table("3. d_sym stability: same task (disjoint halves) vs different tasks",
              ["size", "labels", "estimator", "n", "within", "between", "between/within", "within (no prior)",
               "between (no prior)", "ratio (no prior)", "zero-Fisher filters", "s/embedding"])
    per_task = Table("3b. within-task d_sym(half A, half B) per task",
                     ["size", "labels", "estimator", "n"] + list(names))
    probes = {}
    for S, expectation, estimator in runs:
        probe = probes.setdefault(S, taskindex.load_probe(PROBE, image_size=S, device=device))
        kind, _, trim = estimator.partition(":")
        for n in ns:
            log(f"    {S}px, {expectation}, {estimator}, n={n}")
            t0 = time.perf_counter()
            emb_by_seed = [{(name, h): taskindex.embed(split[name, sd][h], probe, max_samples=n, seed=sd,
                                                       expectation=expectation, estimator=kind,
                                                       trim=float(trim) if trim else None, progress=False,
                                                       device=device)
                            for name in names for h in (0, 1)} for sd in seeds]
            per_emb = (time.perf_counter() - t0) / (2 * len(names) * len(seeds))
            tasks_w, w, bt, w0, b0, zero = _stability_row(names, emb_by_seed)
            t.add(S, expectation, estimator, n, w, bt, f"{bt / w:.2f}x", w0, b0, f"{b0 / w0:.2f}x" if w0 > 0 else "inf",
                  f"{100 * zero:.2f}%", per_emb)
            per_task.add(S, expectation, estimator, n, *tasks_w)
    t.notes.append(f"tasks: {', '.join(names)}; halves = alternate images within each class; within = mean "
                   "d_sym(A, B) of the same task, between = mean over the 4 half pairs of every pair of different "
                   f"tasks; higher between/within is better; averaged over seeds {seeds} (each seed: other images, "
                   "other label draws)")
    t.notes.append("labels: 'sample' = one label drawn per image (the paper's), 'exact' = expectation='exact' "
                   f"(embed's default, {LABEL_PASSES} label directions); estimator: 'mean' = the "
                   f"paper's plain mean over images, {robust} = embed's default")
    t.notes.append("no prior: d_sym on embedding.fisher + 1e-30 (the prior floor removed); zero-Fisher filters: "
                   "mean over the embeddings of (embedding.fisher == 0).mean(); s/embedding includes the head fit")
    per_task.notes.append("with a confident head the sampled-label Fisher hinges on the few images whose drawn label "
                          "is not the head's argmax: a half that draws one such label more than the other differs "
                          "from it by a large factor in whole layers")
    return [t, per_task]
