"""Queries unlike every row: a row's Fisher scaled 0.1x and 10x (as between estimators, or for an unusual task),
against exact=True, with a poor query's widened search (taskindex.index.rerank.widen) and without it; and the
typical queries' latency both ways in turns, so what widening costs them is measured in the same run."""

from __future__ import annotations

import contextlib
from unittest import mock

import numpy as np

from taskindex.embedding.vector import Embedding
from taskindex.index import rerank
from tools import harness
from tools.bench_query import K, log
from tools.bench_query.measure import scan_exact, timed_query

SCALES = (0.1, 10.0)


def unwidened():
    """The query path as it was before queries widened: every query keeps its first candidates."""
    return mock.patch.object(rerank, "poor", lambda *args: False)


def scaled_queries(index, seeds: list[Embedding], n: int, seed: int) -> dict[float, list[Embedding]]:
    """n rows of the index drawn at random, each's Fisher (vector - prior) scaled by every factor of SCALES."""
    v = harness.loaded(index)
    rows = np.sort(np.random.default_rng(seed).choice(len(index), size=min(n, len(index)), replace=False))
    vectors, proto = v.gather(rows), seeds[0]
    prior = proto.prior.astype(np.float32)
    return {c: [Embedding(((x - prior) * c + prior).astype(np.float32), proto.prior, proto.layout, proto.meta)
                for x in vectors] for c in SCALES}


def both_ways(index, qs: list[Embedding], exact: list[list], far: float) -> dict:
    """Recall@K against the exact answers and p50 / p99, without widening and with it; how many widened."""
    out = {}
    for label, context in (("before", unwidened), ("after", contextlib.nullcontext)):
        with context():
            index.query(qs[0], k=K)  # warm-up
            answers = [timed_query(index, q) for q in qs]
        by_name = [len({h.name for h in e} & {h.name for h in a}) / K for (a, _), e in zip(answers, exact)]
        by_dist = [np.mean([h.distance <= e[-1].distance + 1e-7 for h in a]) for (a, _), e in zip(answers, exact)]
        p50, p99 = harness.p50_p99_ms([dt for _, dt in answers])
        out[label] = {"recall": float(np.mean(by_name)), "recall_min": float(np.min(by_name)),
                      "recall_dist": float(np.mean(by_dist)), "p50_ms": p50, "p99_ms": p99}
        if label == "before":  # what decides whether a query widens: its first candidates' nearest distance
            out["widened"] = sum(bool(a) and a[0].distance > far for a, _ in answers)
    return out


def measure_scaled(index, seeds: list[Embedding], n: int, seed: int, scan_truth: bool,
                   typical: list[Embedding]) -> dict:
    """Every figure of the scaled queries, and the typical queries' p50 / p99 with and without widening."""
    v = harness.loaded(index)
    v.candidates.reference = None  # measured again here, to time it: the first query of a process pays it
    ref, reference_s = harness.timed(rerank.reference, v)
    far = ref.far
    out = {"n": n, "far": far, "reference_s": reference_s, "scales": {}}
    for c, qs in scaled_queries(index, seeds, n, seed).items():
        how = "(one scan)" if scan_truth else "path"
        log(f"  scaled queries x{c}: {len(qs)} rows' Fisher, default vs exact {how}")
        exact = scan_exact(index, qs) if scan_truth else [index.query(q, k=K, exact=True) for q in qs]
        out["scales"][c] = both_ways(index, qs, exact, far)
    log(f"  typical queries with and without widening, in turns: {len(typical)} each")

    first = []

    def without(r):
        with unwidened():
            hits, dt = timed_query(index, typical[r])
        first.append(bool(hits) and hits[0].distance > far)
        return dt

    times = harness.alternate({"after": lambda r: timed_query(index, typical[r])[1], "before": without},
                              len(typical), swap=True)
    for label, secs in times.items():
        out[f"typical_{label}"] = harness.p50_p99_ms(secs)
    out["typical_widened"] = sum(first)
    out["typical_n"] = len(typical)
    out["load"] = harness.load1()
    return out
