"""Part 1 of the embedding benchmark: throughput of fisher_pass against the floor, the activation-only
backward, the naive per-sample loop and the batch-squared estimator; where its time goes by conv kind; and
ours / floor across image sizes."""

from __future__ import annotations

import time


from taskindex.embedding import fisher as tfisher
from tools.bench_embed.common import (PROBE, conv_kind, prepared, run_activation_only, run_batch_squared, run_floor,
                                      run_naive, run_ours, sync, timed, trainable_copy)
from tools.harness import Table, log

ESTIMATORS = [("ours", "ours: fisher_pass, per-sample squares"),
              ("floor", "(a) floor: batched fwd+bwd, conv weight grads"),
              ("act", "(a') batched fwd+bwd, activation grads only"),
              ("naive", "(b) naive per-sample autograd.grad loop"),
              ("batchsq", "(c) batch-squared (reference montecarlo)")]


def part_throughput(args, device) -> list[Table]:
    S, N, B = args.image_size, args.samples, args.batch_size
    log(f"[1] throughput: {PROBE} at {S}px, {N} images of {args.task}, batch {B}")
    probe, xs, ys, head, _, _ = prepared(args.task, N, S, B, args.seed, device)
    bb = probe.backbone
    n_naive = min(args.naive_samples, N)
    res = time_estimators(bb, head, xs, ys, device, n_naive, args.repeats)
    tables = [throughput_table(res, args, device, n_naive)]

    # where the per-sample work goes, by conv kind
    main_stats = (res["ours"], {})
    if args.profile:
        table, main_stats = profile_kinds(bb, head, xs, ys, device, res)
        tables.append(table)
    if [s for s in args.sweep_sizes if s != S]:  # ours/floor as a function of image size
        tables.append(size_sweep(args, device, {S: (N / res["ours"], N / res["floor"], N / res["act"], main_stats)}))
    return tables


def time_estimators(bb, head, xs, ys, device, n_naive: int, R: int) -> dict[str, float]:
    """Best seconds of each estimator on the same batches (the naive loop on the first n_naive images)."""
    net, ws = trainable_copy(bb, device)
    res = {}
    log("    ours (fisher_pass, per-sample squares)")
    res["ours"] = timed(lambda: run_ours(bb, head, xs, ys), device, R)[0]
    log("    (a) floor: batched forward+backward to the conv weights")
    res["floor"] = timed(lambda: run_floor(net, head, xs, ys), device, R)[0]
    log("    (a') forward+backward, activation gradients only")
    res["act"] = timed(lambda: run_activation_only(bb, head, xs, ys), device, R)[0]
    log(f"    (b) naive per-sample autograd loop on {n_naive} images")
    res["naive"] = timed(lambda: run_naive(net, head, xs, ys, n_naive), device, max(1, R - 1))[0]
    log("    (c) batch-squared (reference repository's montecarlo)")
    res["batchsq"] = timed(lambda: run_batch_squared(net, ws, head, xs), device, R)[0]
    return res


def throughput_table(res: dict[str, float], args, device, n_naive: int) -> Table:
    S, N, B, R = args.image_size, args.samples, args.batch_size, args.repeats
    ips = {k: (n_naive if k == "naive" else N) / t for k, t in res.items()}
    ours = ips["ours"]
    t = Table(f"1. Fisher throughput: {PROBE} {S}px, {N} images (naive: {n_naive}), batch {B}, {device.type}",
              ["estimator", "images/s", "ms/image", "time vs ours"])
    for k, label in ESTIMATORS:
        t.add(label, ips[k], 1000 / ips[k], f"{ours / ips[k]:.2f}x")
    r_floor = ips["floor"] / ours
    r_naive = ours / ips["naive"]
    t.notes.append(f"ours / floor time = {r_floor:.2f}x (target <= 2x: {'met' if r_floor <= 2 else 'NOT met'})")
    t.notes.append(f"naive / ours time = {r_naive:.1f}x speed-up (target >= 10x: "
                   f"{'met' if r_naive >= 10 else 'NOT met'})")
    t.notes.append(f"naive / floor time = {ips['floor'] / ips['naive']:.1f}x: the most any per-sample method can gain "
                   "over the naive loop while it costs at least one batched backward")
    t.notes.append(f"ours / batch-squared time = {ips['batchsq'] / ours:.2f}x; best of {R} timed runs after one warm-up")
    return t


def size_sweep(args, device, rows: dict) -> Table:
    """Table 1b: ours, the floor and the activation-only backward at the other image sizes; `rows` holds the
    main size's (ours, floor, act-only images/s, (profiled seconds, stats by conv kind))."""
    B = args.batch_size
    t2 = Table(f"1b. ours / floor across image sizes ({args.sweep_samples} images, batch {B}, {device.type})",
               ["image size", "ours img/s", "floor img/s", "act-only img/s", "ours/floor", "ours/act-only",
                "per-sample share", "costliest kind (share of ours)"])
    for s in [s for s in args.sweep_sizes if s != args.image_size]:
        log(f"    size sweep: {s}px")
        p, xs2, ys2, head2, _, _ = prepared(args.task, args.sweep_samples, s, B, args.seed, device)
        net2, _ = trainable_copy(p.backbone, device)
        n2 = sum(len(x) for x in xs2)
        run_ours(p.backbone, head2, xs2, ys2)  # warm-up
        tot, st = min((profiled_pass(p.backbone, head2, xs2, ys2, device) for _ in range(2)), key=lambda r: r[0])
        rows[s] = (n2 / tot,
                   n2 / timed(lambda: run_floor(net2, head2, xs2, ys2), device, 2)[0],
                   n2 / timed(lambda: run_activation_only(p.backbone, head2, xs2, ys2), device, 2)[0],
                   (tot, st))
    for s in sorted(rows):
        o, f, a, (tot, st) = rows[s]
        share = top = ""
        if st:
            share = f"{100 * sum(v[3] for v in st.values()) / tot:.0f}%"
            k, v = max(st.items(), key=lambda kv: kv[1][3])
            top = f"{k} ({100 * v[3] / tot:.0f}%)"
        t2.add(s, o, f, a, f"{f / o:.2f}x", f"{a / o:.2f}x", share, top)
    t2.notes.append("per size: one warm-up, then the faster of 2 runs (ours: 2 profiled passes; at the main size "
                    "the best timed run and the profiled pass of table 1a)")
    return t2


def profiled_pass(bb, head, xs, ys, device) -> tuple[float, dict[str, list]]:
    """One fisher_pass with its per-sample square-norm step timed per conv kind (wraps the function).

    Returns (total seconds, {kind: [layers, filters, kernel offsets, seconds]}); the dict is empty
    when taskindex.embedding.fisher no longer has per_sample_filter_sq.
    """
    orig = getattr(tfisher, "per_sample_filter_sq", None)
    stats: dict[str, list] = {}
    seen_layers: set = set()

    def wrapped(call, grad_out):
        sync(device)
        t0 = time.perf_counter()
        out = orig(call, grad_out)
        sync(device)
        st = stats.setdefault(conv_kind(call), [0, 0, 0, 0.0])
        if id(call.weight) not in seen_layers:
            seen_layers.add(id(call.weight))
            st[0] += 1
            st[1] += call.weight.shape[0]
            st[2] += call.weight.shape[-2] * call.weight.shape[-1]
        st[3] += time.perf_counter() - t0
        return out

    if orig is not None:
        tfisher.per_sample_filter_sq = wrapped
    try:
        sync(device)
        t0 = time.perf_counter()
        run_ours(bb, head, xs, ys)
        sync(device)
        total = time.perf_counter() - t0
    finally:
        if orig is not None:
            tfisher.per_sample_filter_sq = orig
    return total, stats


def profile_kinds(bb, head, xs, ys, device, res) -> tuple[Table, tuple[float, dict]]:
    """Time spent in the per-sample square-norm step of fisher_pass, by conv kind."""
    log("    profile: per-sample work by conv kind")
    t = Table("1a. Where fisher_pass's time goes (one pass, per-sample work by conv kind)",
              ["conv kind", "layers", "filters", "kernel offsets", "seconds", "% of ours"])
    total, stats = min((profiled_pass(bb, head, xs, ys, device) for _ in range(2)), key=lambda r: r[0])
    if not stats:
        t.notes.append("taskindex.fisher.per_sample_filter_sq not found: breakdown skipped")
        return t, (total, stats)
    inside = sum(v[3] for v in stats.values())
    for k, (layers, filters, offs, sec) in sorted(stats.items(), key=lambda kv: -kv[1][3]):
        t.add(k, layers, filters, offs, sec, f"{100 * sec / total:.1f}%")
    t.add("all per-sample work", sum(v[0] for v in stats.values()), sum(v[1] for v in stats.values()),
          sum(v[2] for v in stats.values()), inside, f"{100 * inside / total:.1f}%")
    t.add("rest (forward + activation backward)", "", "", "", total - inside, f"{100 * (total - inside) / total:.1f}%")
    n = sum(x.shape[0] for x in xs)
    t.notes.append(f"profiled pass (faster of 2): {total:.2f}s for {n} images ({n / total:.1f} img/s; best timed run "
                   f"{n / res['ours']:.1f} img/s). Batched weight gradients cost plain autograd "
                   f"floor - act-only = {res['floor'] - res['act']:.2f}s; ours costs "
                   f"{res['ours'] - res['act']:.2f}s over act-only")
    t.notes.append("'kernel offsets' = sum of kh*kw over the layers: per batch, the per-offset loop runs that many "
                   "batched GEMMs (dense/pointwise) or products (depthwise)")
    return t, (total, stats)
