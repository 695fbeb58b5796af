"""The report of one size: its table (metric, value, target, PASS/FAIL), as text and as Markdown."""

from __future__ import annotations

import math

from tools import harness
from tools.bench_query import K

KIB = 1024

# (key, label, target description, check) -- a check gets (value, N) and returns True/False, or None
# when the target does not apply at that N.
TARGETS = {
    "recall": ("recall@10 >= 0.99 (100k), >= 0.97 (1M)",
               lambda v, n: (v >= 0.99) if n == 100_000 else (v >= 0.97) if n >= 1_000_000 else None),
    "p50_ms": ("p50 <= 8 ms at 100k, <= 60 ms at 1M",
               lambda v, n: (v <= 8.0) if n == 100_000 else (v <= 60.0) if n >= 1_000_000 else None),
    "p99_ms": ("p99 <= 20 ms at 100k", lambda v, n: (v <= 20.0) if n == 100_000 else None),
    "rss_bytes_per_row": ("<= 1.5 KiB RAM per row (100k and 1M: fixed costs dominate smaller N)",
                          lambda v, n: (v <= 1.5 * KIB) if n >= 100_000 else None),
    "disk_bytes_per_row": ("<= 45 KiB on disk per row at 1M", lambda v, n: (v <= 45 * KIB) if n >= 1_000_000
                           else None),
    "add_one_ms": ("add one row <= 200 ms (1M)", lambda v, n: (v <= 200.0) if n >= 1_000_000 else None),
    "many_speedup": ("query_many of 1,000 >= 20x faster than 1,000 queries (100k)",
                     lambda v, n: (v >= 20.0) if n == 100_000 else None),
    "scaled_recall": ("recall@10 >= 0.95 for queries unlike every row (issue 22)", lambda v, n: v >= 0.95),
    "typical_p50_ratio": ("typical p50 within 10% of the search without widening",
                          lambda v, n: v <= 1.10),
}


def verdict(key: str, value: float, n: int) -> str:
    if key not in TARGETS or value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    ok = TARGETS[key][1](value, n)
    return "" if ok is None else ("PASS" if ok else "FAIL")


def fmt_ms(v: float) -> str:
    return f"{v / 1e3:.2f} s" if v >= 1e4 else f"{v:.2f} ms" if v < 100 else f"{v:.0f} ms"


def fmt_s(v: float) -> str:
    return f"{v * 1e3:.1f} ms" if v < 1 else f"{v:.1f} s" if v < 600 else f"{v / 60:.1f} min"


def table_rows(r: dict) -> list[tuple[str, str, str, str]]:
    """(metric, value, target, verdict) for one size."""
    n = r["n"]
    out = []

    def row(metric, value, key=None, raw=None):
        target = TARGETS[key][0] if key in TARGETS else ""
        out.append((metric, value, target, verdict(key, raw, n) if key else ""))

    for part in (_index_rows, _query_rows, _scaled_rows, _memory_rows, _baseline_rows):
        part(r, row)
    if "add_one_ms" in r:
        row(f"add one row (median of {r['add_one_n']}; max)",
            f"{fmt_ms(r['add_one_ms'])} ({fmt_ms(r['add_one_max_ms'])})", "add_one_ms", r["add_one_ms"])
        row(f"add {r['add_bulk_n']:,} rows (one add_many)", fmt_s(r["add_bulk_s"]))
    return out


def _scaled_rows(r: dict, row) -> None:
    """Queries unlike every row, without and with widening; the typical queries' latency both ways."""
    sc = r.get("scaled")
    if not sc:
        return
    row("widening: a query widens when its nearest candidate is farther than",
        f"{sc['far']:.4g} (d_sym; measured in {fmt_s(sc['reference_s'])} by the first query of a process)")
    for c, res in sc["scales"].items():
        b, a = res["before"], res["after"]
        row(f"rows' Fisher x{c:g} ({sc['n']} queries): recall@10 without -> with widening",
            f"{b['recall']:.3f} (min {b['recall_min']:.2f}) -> {a['recall']:.3f} (min {a['recall_min']:.2f}); "
            f"by distance {b['recall_dist']:.3f} -> {a['recall_dist']:.3f}; {res['widened']} widened",
            "scaled_recall", a["recall"])
        row(f"  x{c:g}: p50 / p99 without -> with widening",
            f"{fmt_ms(b['p50_ms'])} / {fmt_ms(b['p99_ms'])} -> {fmt_ms(a['p50_ms'])} / {fmt_ms(a['p99_ms'])}")
    (b50, b99), (a50, a99) = sc["typical_before"], sc["typical_after"]
    row(f"typical queries p50 / p99 without -> with widening ({sc['typical_n']} each, in turns)",
        f"{fmt_ms(b50)} / {fmt_ms(b99)} -> {fmt_ms(a50)} / {fmt_ms(a99)} ({a50 / b50:.2f}x p50; "
        f"{sc['typical_widened']} widened; load {sc['load']:.2f})", "typical_p50_ratio", a50 / b50)


def _index_rows(r: dict, row) -> None:
    """The build, the files, the candidate structure, the page cache."""
    n = r["n"]
    if math.isnan(r["build_s"]):
        row("build: add_many in batches", "not timed here (--reuse of an index built earlier)")
    else:
        row("build: add_many in batches (excl. generating rows)",
            f"{fmt_s(r['build_s'])} ({r['build_s'] / n * 1e3:.2f} ms/row; generation {fmt_s(r['gen_s'])})")
    row("on disk", f"{r['disk_bytes'] / 1e9:.2f} GB ({r['disk_bytes'] / n / KIB:.1f} KiB/row, "
        f"{r.get('vectors', 'float32')} vectors)", "disk_bytes_per_row", r["disk_bytes"] / n)
    row("candidate structure (chosen on open; open time)", f"{r['candidates_kind']} ({fmt_s(r['open_s'])})")
    w = r.get("warm")
    if w:
        row("page cache before the queries", f"warmed by index.warm(): {w['bytes'] / 1e9:.1f} GB in {fmt_s(w['s'])}"
            if w["bytes"] else "cold: not warmed (--no-warm)" if not w["wanted"] else
            f"not warmed: {w['stored'] / 1e9:.1f} GB of vectors, {w['available'] / 1e9:.1f} GB available")


def _query_rows(r: dict, row) -> None:
    """Recall, latency, the other structure, query_many, refine factors, the split of a query, exact queries."""
    row(f"recall@10, default vs exact ({r['recall_queries']} queries)",
        f"{r['recall']:.4f} (min {r['recall_min']:.2f}; by distance {r['recall_dist']:.4f})", "recall", r["recall"])
    row("exact d_sym of the 1st / 10th neighbour (median over queries)", f"{r['d_first']:.4g} / {r['d_tenth']:.4g}")
    row(f"default query p50 / p99 ({r['latency_queries']} queries)",
        f"{fmt_ms(r['p50_ms'])} / {fmt_ms(r['p99_ms'])}", "p50_ms", r["p50_ms"])
    row("  p99 alone", fmt_ms(r["p99_ms"]), "p99_ms", r["p99_ms"])
    alt = r.get("alternative")
    if alt:
        row(f"the other structure ({alt['kind']}): recall@10, p50 / p99, RAM/row, build",
            f"{alt['recall']:.4f}, {fmt_ms(alt['p50_ms'])} / {fmt_ms(alt['p99_ms'])}, "
            f"{alt['bytes_per_row']:.0f} B, {fmt_s(alt['build_s'])}")
    if "many_s" in r:
        row(f"query_many of {r['many_n']:,} against {r['many_n']:,} single queries",
            f"{fmt_s(r['many_s'])} vs {fmt_s(r['singles_s'])}: {r['many_speedup']:.1f}x "
            f"({r['many_same']} of {r['many_n']} answers identical)", "many_speedup", r["many_speedup"])
    if "device_s" in r:
        row(f"  the same with device={r['device']!r} (torch)",
            f"{fmt_s(r['device_s'])}: {r['singles_s'] / r['device_s']:.1f}x "
            f"({r['device_same']} of {r['many_n']} answers identical to single queries)")
    for sw in r.get("refine", []):
        row(f"  refine={sw['refine']} ({sw['refine'] * K} candidates): recall@10, p50 / p99",
            f"{sw['recall']:.4f} (min {sw['recall_min']:.2f}), {fmt_ms(sw['p50_ms'])} / {fmt_ms(sw['p99_ms'])}")
    bd = r.get("breakdown")
    if bd:
        row("  split (medians): project / FAISS / id map / gather / re-rank / exact top-k / rest",
            f"{bd['project']:.2f} / {bd['faiss']:.2f} / {bd['map_ids']:.2f} / {bd['gather']:.2f} / "
            f"{bd['rerank']:.2f} / {bd['topk_exact']:.2f} / {bd['other']:.2f} ms ({bd['candidates']} candidates)")
    if math.isnan(r["exact_p50_ms"]):
        row("exact answers", "from one sequential scan of the vector files (--scan-truth); exact=True not timed")
    else:
        row(f"exact query p50 / p99 ({r['recall_queries']} queries)", f"{fmt_ms(r['exact_p50_ms'])} / "
            f"{fmt_ms(r['exact_p99_ms'])} ({r['exact_p50_ms'] / r['p50_ms']:.0f}x the default p50)")


def _memory_rows(r: dict, row) -> None:
    """RAM per row: the candidate structure, and a fresh process's RSS growth."""
    row("RAM/row, candidate structure (memory_bytes / rows)", f"{r['cand_bytes_per_row']:.0f} B",
        "cand_bytes_per_row", r["cand_bytes_per_row"])
    rss = r.get("rss")
    if rss:
        anon = rss["opened"]["RssAnon"] - rss["before"]["RssAnon"]
        after = rss["queried"]["VmRSS"] - rss["before"]["VmRSS"]
        filed = rss["queried"]["RssFile"] - rss["before"]["RssFile"]
        row("RAM/row, RSS growth of a fresh process on open (RssAnon)",
            f"{anon / rss['rows']:.0f} B ({anon / 1e6:.0f} MB in all; open {fmt_s(rss['open_s'])})",
            "rss_bytes_per_row", anon / rss["rows"])
        row("RAM/row, VmRSS growth after open + 20 queries",
            f"{after / rss['rows']:.0f} B ({after / 1e6:.0f} MB, of it {filed / 1e6:.0f} MB file-backed pages)")
        row("queries by name/Embedding import torch", "yes (counted in the line above)" if rss["torch"] else "no")


def _baseline_rows(r: dict, row) -> None:
    """The pairwise loop and the brute force, where they were timed."""
    bl = r.get("baselines")
    if bl:
        row(f"pairwise loop (scipy cosine per pair, BLAS 1 thread; {bl['loop_rows']} rows timed, "
            f"extrapolated to {r['n']:,})",
            f"{fmt_s(bl['loop_s'])} per query ({bl['loop_per_row_us']:.0f} us/pair; max abs diff to one_to_many "
            f"{bl['max_diff']:.1e})")
        row("numpy brute force (one_to_many over all raw vectors in RAM)",
            f"{fmt_s(bl['brute_s'])} per query (loading them: {fmt_s(bl['load_s'])})")
        row("speed-up of the default path over the pairwise loop", f"{bl['speedup_loop']:,.0f}x")
        row("speed-up of the default path over the numpy brute force", f"{bl['speedup_brute']:,.0f}x")


def print_results(results: list[dict]) -> None:
    for r in results:
        rows = table_rows(r)
        w0 = max(len(x[0]) for x in rows)
        w1 = max(len(x[1]) for x in rows)
        print(f"\nN = {r['n']:,} rows (load average during build {r['load_build']:.2f}, during latency runs "
              f"{r['load_query']:.2f})")
        for metric, value, target, v in rows:
            tail = f"  [{v}: {target}]" if v else ""
            print(f"  {metric:<{w0}}  {value:<{w1}}{tail}")


def markdown(results: list[dict], skipped: list[str], command: str, machine: str, seeds: str, args, wall: float) -> str:
    md = ["## Performance: query", "",
          f"Synthetic indexes of perturbed real TASK2VEC embeddings (efficientnet_lite0, 21,008 filters; "
          f"row = F_seed x exp(N(0, s)) per filter + prior, s log-uniform in [{args.spread[0]}, {args.spread[1]}]). "
          f"Seeds: {seeds}. Queries are fresh perturbations, not rows of the index.", "",
          f"Command: `{command}`", "", f"Machine: {machine}. Wall time {wall / 60:.1f} min.", ""]
    for r in results:
        md += [f"### N = {r['n']:,}", "", harness.md_row(["metric", "value", "target", ""]), harness.md_rule("llll")]
        md += [harness.md_row([m.strip(), v, t, p]) for m, v, t, p in table_rows(r)]
        md += ["", f"Load average during the latency runs: {r['load_query']:.2f}.", ""]
    md += [f"- {s}" for s in skipped]
    return "\n".join(md) + "\n"
