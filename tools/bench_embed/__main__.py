#!/usr/bin/env python
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

Usage:
    .venv/bin/python tools/bench_embed.py                 # ~3.5 min on 2 idle CPU cores
    .venv/bin/python tools/bench_embed.py --quick         # ~30 s
    .venv/bin/python tools/bench_embed.py --parts 1 --image-size 224 --samples 64
    .venv/bin/python tools/bench_embed.py --markdown out/perf.md --device cuda

Plain-text tables go to stdout, progress to stderr. The footer says how much CPU
other processes took during the run: with two threads on two cores, a busy
neighbour slows torch's small ops many times over (a default run took 10 minutes
and more with 25-45% of the CPUs taken), so rerun on an idle machine before
quoting numbers.
"""

from __future__ import annotations

import argparse
import copy
import math
import os
import platform
import shlex
import sys
import time
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from scipy.stats import spearmanr

import taskindex
from machine import cpu_name
from taskindex.embedding import fisher as tfisher
from taskindex.data import samples
from taskindex.distance import d_sym
from taskindex.embedding.estimators import DEFAULT_ESTIMATOR, FilterEstimator, estimator_id
from taskindex.embedding.fisher import conv_weights, fisher_pass, weight_scale_prior, weights_per_filter
from taskindex.embedding.head import fit_head
from taskindex._testing.reference import naive_per_sample

PROBE = "efficientnet_lite0"
try:
    from taskindex.embedding.vector import PRIOR_SCALE
except ImportError:  # moved
    PRIOR_SCALE = 1e-8


# --------------------------------------------------------------------------- output


def log(*parts) -> None:
    print(*parts, file=sys.stderr, flush=True)


@dataclass
class Table:
    title: str
    headers: list[str]
    rows: list[list] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def add(self, *row) -> None:
        self.rows.append([_fmt(v) for v in row])

    def text(self) -> str:
        cells = [self.headers] + self.rows
        widths = [max(len(str(r[i])) for r in cells) for i in range(len(self.headers))]
        line = "  ".join("-" * w for w in widths)
        out = [self.title, "=" * len(self.title)]
        out.append("  ".join(str(h).ljust(w) for h, w in zip(self.headers, widths)))
        out.append(line)
        for r in self.rows:
            out.append("  ".join(str(c).rjust(w) if _numeric(c) else str(c).ljust(w) for c, w in zip(r, widths)))
        out += [f"  * {n}" for n in self.notes]
        return "\n".join(out) + "\n"

    def markdown(self) -> str:
        out = [f"**{self.title}**", ""]
        out.append("| " + " | ".join(self.headers) + " |")
        first = self.rows[0] if self.rows else [""] * len(self.headers)
        out.append("|" + "|".join("---:" if _numeric(c) else "---" for c in first) + "|")
        for r in self.rows:
            out.append("| " + " | ".join(str(c) for c in r) + " |")
        if self.notes:
            out.append("")
            out += [f"* {n}" for n in self.notes]
        return "\n".join(out) + "\n"


def _numeric(c) -> bool:
    s = str(c).lstrip("<>=~ ").rstrip("x%s ")
    try:
        float(s)
        return True
    except ValueError:
        return False


def _fmt(v):
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


# --------------------------------------------------------------------------- helpers


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device: torch.device, repeats: int) -> tuple[float, list[float]]:
    """Warm up once, then `repeats` timed calls; returns (best seconds, all).

    The best run, not the median: on a shared machine other processes only ever add time.
    """
    fn()
    times = []
    for _ in range(repeats):
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return min(times), times


class Stopwatch:
    """Accumulates wall time between resume() and pause() (synchronising the device)."""

    def __init__(self, device: torch.device):
        self.device, self.total, self.t0 = device, 0.0, None

    def resume(self) -> None:
        sync(self.device)
        self.t0 = time.perf_counter()

    def pause(self) -> float:
        sync(self.device)
        self.total += time.perf_counter() - self.t0
        return self.total


def load_pool(name: str, n: int, size: int, seed: int):
    """n class-balanced images (uint8, size x size) of a sample task and their labels."""
    spec = samples.spec(name)
    per_class = math.ceil(n / len(spec.groups)) + 1
    task = samples.load(name, max_per_class=per_class, seed=seed)
    idx = task.balanced_indices(n, seed)
    if len(idx) < n:
        raise SystemExit(f"sample task {name!r} has only {len(idx)} images; asked for {n}")
    return task.load(idx, size), torch.as_tensor(task.labels[idx], dtype=torch.long), len(spec.groups)


def trainable_copy(backbone: torch.nn.Module, device: torch.device) -> tuple[torch.nn.Module, list[torch.Tensor]]:
    """A deep copy whose conv weights (the Fisher's parameters, and only those) require grad."""
    net = copy.deepcopy(backbone).eval()
    if device.type == "cpu":
        net = net.to(memory_format=torch.channels_last)
    for p in net.parameters():
        p.requires_grad_(False)
    ws = conv_weights(net)
    for w in ws:
        w.requires_grad_(True)
    return net, ws


def setup(probe, images: torch.Tensor, labels: torch.Tensor, n_classes: int, batch: int, seed: int):
    """Normalised batches, a head fitted on the probe's features, labels drawn from it, its probabilities."""
    dev = probe.device
    xs = [probe.normalize(images[i:i + batch]) for i in range(0, len(images), batch)]
    with torch.no_grad():
        feats = torch.cat([probe.backbone(x).float().cpu() for x in xs])
    head = fit_head(feats, labels, n_classes, seed=seed).to(dev)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        probs = torch.softmax(head(feats.to(dev)).float(), 1).cpu()
    draws = torch.multinomial(probs, 1, generator=gen).flatten().to(dev)
    ys = [draws[i:i + batch] for i in range(0, len(images), batch)]
    return xs, ys, head, probs


def per_filter(sq_by_layer: list[torch.Tensor]) -> np.ndarray:
    return torch.cat([s.detach().double().cpu().flatten() for s in sq_by_layer]).numpy()


def conv_kind(call) -> str:
    kh, kw = call.weight.shape[-2:]
    s = call.stride[0]
    if call.weight.shape[1] == 1 and call.groups > 1:
        return f"depthwise {kh}x{kw} s{s}"
    if kh == 1 and kw == 1:
        return f"pointwise 1x1 s{s}"
    return f"dense {kh}x{kw} s{s} (groups {call.groups})"


# --------------------------------------------------------------------------- estimators


def run_ours(backbone, head, xs, ys):
    return fisher_pass(backbone, head, zip(xs, ys))


def run_floor(net, head, xs, ys):
    """One batched forward+backward to the conv weights: loss = sum_n -log p(y_n|x_n)."""
    for x, y in zip(xs, ys):
        lp = torch.log_softmax(head(net(x)).float(), 1)
        (-lp.gather(1, y[:, None]).sum()).backward()
    for w in conv_weights(net):
        w.grad = None


def run_activation_only(backbone, head, xs, ys):
    """Forward + backward of the frozen backbone to the input: the base that fisher_pass builds on."""
    for x, y in zip(xs, ys):
        x = x.detach().requires_grad_(True)
        lp = torch.log_softmax(head(backbone(x)).float(), 1)
        (-lp.gather(1, y[:, None]).sum()).backward()


def run_naive(net, head, xs, ys, n: int):
    """Per image: forward, autograd.grad of log p(y|x) w.r.t. every conv weight, square, sum per filter
    (taskindex._testing.reference.naive_per_sample, the reference the tests check fisher_pass against)."""
    return naive_per_sample(net, head, torch.cat(xs)[:n], torch.cat(ys)[:n])


def run_batch_squared(net, ws, head, xs, ys=None, snapshot=None):
    """The reference repository's montecarlo estimator: square the gradient of the batch-MEAN loss.

    Per batch: labels drawn from the model's predictive distribution (or the given ys),
    loss = cross-entropy averaged over the batch, grad**2 accumulated; divided by the
    number of batches at the end. snapshot(n_images, per-filter estimate) sees the
    running estimate after every batch.
    """
    acc = [torch.zeros_like(w) for w in ws]
    seen = 0
    for b, x in enumerate(xs):
        logits = head(net(x)).float()
        if ys is None:
            y = torch.multinomial(torch.softmax(logits.detach(), 1), 1).flatten()
        else:
            y = ys[b]
        loss = F.cross_entropy(logits, y)
        grads = torch.autograd.grad(loss, ws)
        for a, g in zip(acc, grads):
            a += g.square()
        seen += x.shape[0]
        if snapshot is not None:
            snapshot(seen, per_filter([a.flatten(1).sum(1) for a in acc]) / (b + 1))
    return [a / len(xs) for a in acc]


# --------------------------------------------------------------------------- part 1


def part_throughput(args, device) -> list[Table]:
    tables = []
    S, N, B = args.image_size, args.samples, args.batch_size
    log(f"[1] throughput: {PROBE} at {S}px, {N} images of {args.task}, batch {B}")
    probe = taskindex.load_probe(PROBE, image_size=S, device=device)
    images, labels, n_classes = load_pool(args.task, N, S, args.seed)
    xs, ys, head, probs = setup(probe, images, labels, n_classes, B, args.seed)
    bb = probe.backbone
    net, ws = trainable_copy(bb, device)
    n_naive = min(args.naive_samples, N)
    R = args.repeats

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

    ips = {k: (n_naive if k == "naive" else N) / t for k, t in res.items()}
    ours = ips["ours"]
    t = Table(f"1. Fisher throughput: {PROBE} {S}px, {N} images (naive: {n_naive}), batch {B}, {device.type}",
              ["estimator", "images/s", "ms/image", "time vs ours"])
    names = [("ours", "ours: fisher_pass, per-sample squares"),
             ("floor", "(a) floor: batched fwd+bwd, conv weight grads"),
             ("act", "(a') batched fwd+bwd, activation grads only"),
             ("naive", "(b) naive per-sample autograd.grad loop"),
             ("batchsq", "(c) batch-squared (reference montecarlo)")]
    for k, label in names:
        t.add(label, ips[k], 1000 / ips[k], f"{ours / ips[k]:.2f}x")
    r_floor = ips["floor"] / ours
    r_naive = ours / ips["naive"]
    t.notes.append(f"ours / floor time = {r_floor:.2f}x (target <= 2x: {'met' if r_floor <= 2 else 'NOT met'})")
    t.notes.append(f"naive / ours time = {r_naive:.1f}x speed-up (target >= 10x: {'met' if r_naive >= 10 else 'NOT met'})")
    t.notes.append(f"naive / floor time = {ips['floor'] / ips['naive']:.1f}x: the most any per-sample method can gain "
                   "over the naive loop while it costs at least one batched backward")
    t.notes.append(f"ours / batch-squared time = {ips['batchsq'] / ours:.2f}x; best of {R} timed runs after one warm-up")
    tables.append(t)

    # where the per-sample work goes, by conv kind
    main_stats = (res["ours"], {})
    if args.profile:
        table, main_stats = profile_kinds(bb, head, xs, ys, device, res)
        tables.append(table)

    # ours/floor as a function of image size
    sizes = [s for s in args.sweep_sizes if s != S]
    if sizes:
        t2 = Table(f"1b. ours / floor across image sizes ({args.sweep_samples} images, batch {B}, {device.type})",
                   ["image size", "ours img/s", "floor img/s", "act-only img/s", "ours/floor", "ours/act-only",
                    "per-sample share", "costliest kind (share of ours)"])
        rows = {S: (N / res["ours"], N / res["floor"], N / res["act"], main_stats)}
        for s in sizes:
            log(f"    size sweep: {s}px")
            p = taskindex.load_probe(PROBE, image_size=s, device=device)
            im, lb, nc = load_pool(args.task, args.sweep_samples, s, args.seed)
            xs2, ys2, head2, _ = setup(p, im, lb, nc, B, args.seed)
            net2, _ = trainable_copy(p.backbone, device)
            n2 = len(im)
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
        tables.append(t2)
    return tables


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


# --------------------------------------------------------------------------- part 2


def part_convergence(args, device) -> list[Table]:
    S, P, B = args.conv_image_size, args.pool, args.conv_batch
    ns = sorted({n for n in args.conv_ns if n <= P} | {P})
    log(f"[2] samples to Spearman {args.target}: {args.conv_task}, pool {P} at {S}px, batch {B}")
    probe = taskindex.load_probe(PROBE, image_size=S, device=device)
    images, labels, n_classes = load_pool(args.conv_task, P, S, args.seed)
    xs, ys, head, probs = setup(probe, images, labels, n_classes, B, args.seed)
    bb = probe.backbone
    m = weights_per_filter(bb)

    sizes = [w.shape[0] for w in conv_weights(bb)]
    offsets = np.concatenate([[0], np.cumsum(sizes)])

    # the reference pass also leaves running exact-expectation estimates on its first n images
    log(f"    reference: exact expectation over {n_classes} labels on {P} images")
    run_exact = np.zeros(int(offsets[-1]))
    exact_snaps: dict[int, tuple[np.ndarray, float]] = {}
    seen_exact = [0]
    eclock = Stopwatch(device)

    def sink_exact(layer, sq):
        run_exact[offsets[layer]:offsets[layer + 1]] += sq.detach().double().sum(0).cpu().numpy()

    def on_batch_exact(nb):
        seen_exact[0] += nb
        if seen_exact[0] in ns:
            el = eclock.pause()
            exact_snaps[seen_exact[0]] = (run_exact / (seen_exact[0] * m), el)
            eclock.resume()

    class Blocks:  # every image's contribution, as embed's estimator receives it
        def __init__(self):
            self.rows: list[torch.Tensor] = []

        def update(self, block):
            self.rows.append(block.detach().float().cpu())

    blocks = Blocks()

    fisher_pass(bb, head, ((x, None) for x in xs[:1]))  # warm-up
    eclock.resume()
    ref = fisher_pass(bb, head, ((x, None) for x in xs), sink=sink_exact, on_batch=on_batch_exact,
                      estimator=blocks) / (P * m)
    t_ref = eclock.pause()
    per_image = torch.cat(blocks.rows)
    robust = estimator_id(DEFAULT_ESTIMATOR)

    def robust_estimate(n):
        est = FilterEstimator(robust, n, per_image.shape[1])
        for i in range(0, n, B):
            est.update(per_image[i:i + B])
        return est.result().numpy() / m
    mask = ref > 0
    t0_prior = weight_scale_prior(bb, PRIOR_SCALE)
    live = ref > t0_prior  # filters the embedding resolves above its prior floor

    def rho(est):
        return (float(spearmanr(est[mask], ref[mask])[0]), float(spearmanr(est[live], ref[live])[0]))

    exact_at = {n: (*rho(est), el) for n, (est, el) in exact_snaps.items()}
    # the default estimator converges to its own value (a trimmed mean of the pool), not to the mean's
    robust_ref = robust_estimate(P)
    robust_at = {}
    for n, (_, el) in exact_snaps.items():
        start = time.perf_counter()
        est = robust_estimate(n)
        el += time.perf_counter() - start
        keep = robust_ref > 0
        robust_at[n] = (float(spearmanr(est[keep], robust_ref[keep])[0]), el)

    # ours: running per-sample estimate after every batch, via the sink
    log("    ours: per-sample sampled-label estimate, running")
    running = np.zeros(int(offsets[-1]))
    ours_at: dict[int, tuple[float, float]] = {}
    seen = [0]
    clock = Stopwatch(device)

    def sink(layer, sq):
        running[offsets[layer]:offsets[layer + 1]] += sq.detach().double().sum(0).cpu().numpy()

    def on_batch(nb):
        seen[0] += nb
        if seen[0] in ns:
            el = clock.pause()  # the Spearman is not part of the estimator's wall time
            ours_at[seen[0]] = (*rho(running / (seen[0] * m)), el)
            clock.resume()

    # warm up, then the timed running pass
    fisher_pass(bb, head, zip(xs[:1], ys[:1]))
    clock.resume()
    total = fisher_pass(bb, head, zip(xs, ys), sink=sink, on_batch=on_batch)
    if not np.allclose(total, running, rtol=1e-6, atol=0):
        log("    WARNING: the sink's running sum differs from fisher_pass's total")

    log("    batch-squared: running estimate")
    net, ws = trainable_copy(bb, device)
    bsq_at: dict[int, tuple[float, float]] = {}
    bclock = Stopwatch(device)

    def snap(n, est):
        if n in ns:
            el = bclock.pause()
            bsq_at[n] = (*rho(est / m), el)
            bclock.resume()

    run_batch_squared(net, ws, head, xs[:1], ys[:1])
    bclock.resume()
    run_batch_squared(net, ws, head, xs, ys, snapshot=snap)

    nan = (float("nan"),) * 3
    t = Table(f"2. Spearman rho with the converged reference ({args.conv_task}, {S}px, batch {B})",
              ["n images", "ours rho", "batch-sq rho", "batch-sq n / ours n", "ours rho (live)", "batch-sq rho (live)",
               "ours s", "batch-sq s", "exact-expectation rho", "exact s", f"default ({robust}) rho", "default s"])
    def n_needed(at, target):
        """Samples an estimator needs for rho >= target: log-linear interpolation of its curve."""
        pts = [(n, at[n][0]) for n in ns if n in at]
        for (n0, r0), (n1, r1) in zip(pts, pts[1:]):
            if r0 >= target:
                return float(n0)
            if r0 < target <= r1:
                return float(n0 * (n1 / n0) ** ((target - r0) / (r1 - r0)))
        return float(pts[0][0]) if pts and pts[0][1] >= target else float("inf")

    for n in ns:
        o, b, e, r = ours_at.get(n, nan), bsq_at.get(n, nan), exact_at.get(n, nan), robust_at.get(n, nan[:2])
        need = n_needed(bsq_at, o[0])
        eq = f"{need / n:.1f}x" if math.isfinite(need) else f"> {P / n:.1f}x"
        t.add(n, f"{o[0]:.4f}", f"{b[0]:.4f}", eq, f"{o[1]:.4f}", f"{b[1]:.4f}", o[2], b[2], f"{e[0]:.4f}", e[2], f"{r[0]:.4f}",
              r[1])

    def first(at, col):
        for n in ns:
            if n in at and at[n][col] >= args.target:
                return n, at[n][2]
        return None, None

    t.notes.append(f"rho: over the {int(mask.sum())}/{mask.size} filters with reference > 0; rho (live): over the "
                   f"{int(live.sum())} filters whose reference exceeds the prior floor t0 "
                   f"(PRIOR_SCALE {PRIOR_SCALE:g} / mean w^2), i.e. those the embedding resolves")
    t.notes.append("batch-sq n / ours n: images the batch-squared estimator needs for the rho ours reaches with n "
                   "(log-linear interpolation of its curve): the sample-efficiency ratio at that accuracy")
    t.notes.append(f"reference: exact expectation over labels on all {P} images ({t_ref:.1f}s); both estimators use "
                   f"the same images and the same labels drawn once from the head's predictive distribution; "
                   "s = cumulative wall time of the estimator alone (Spearman excluded)")
    t.notes.append(f"head confidence on the pool: mean max p = {probs.max(1).values.mean():.3f}; labels drawn "
                   f"differ from the head's argmax for {100 * (probs.argmax(1) != torch.cat(ys).cpu()).float().mean():.1f}% "
                   "of the images (the rare draws that carry most of a confident head's Fisher)")
    t.notes.append(f"exact-expectation rho: ours with expectation='exact' (sum over the {n_classes} labels, "
                   f"{n_classes} backward passes per batch) on the first n images, read off the reference pass; "
                   "it is nested in the reference, so it reaches 1 at n = pool by construction: it isolates the "
                   "image-sampling part of the error from the label-sampling part")
    t.notes.append(f"default: embed's defaults (exact expectation, {robust} estimator) on the same pass: the "
                   f"{robust} estimate of the first n images against the same estimate of all {P} (the value it "
                   "converges to), over the filters where that is > 0; s = the exact pass plus the estimator")
    t.notes.append("the reference is computed on the same pool, so every estimator reaches it as n -> pool: "
                   "'smallest n' below is bounded by the pool size; the ratio column above is the fairer comparison")
    for col, what in ((0, "rho"), (1, "rho (live)")):
        no, to = first(ours_at, col)
        nb, tb = first(bsq_at, col)
        s_o = f"n = {no} ({to:.2f}s)" if no else f"> {P}"
        s_b = f"n = {nb} ({tb:.2f}s)" if nb else f"> {P}"
        line = f"smallest n with {what} >= {args.target}: ours {s_o}, batch-squared {s_b}"
        if no and nb:
            line += f"; batch-squared / ours = {nb / no:.1f}x the samples, {tb / to:.1f}x the wall time"
        elif no:
            line += f"; batch-squared / ours > {P / no:.1f}x the samples"
        elif nb:
            line += f"; ours / batch-squared > {P / nb:.1f}x the samples (ours WORSE)"
        t.notes.append(line + " (target: ours >= 5x better)")
    return [t]


# --------------------------------------------------------------------------- part 3


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
                   f"(embed's default, {taskindex.task2vec.LABEL_PASSES} label directions); estimator: 'mean' = the "
                   f"paper's plain mean over images, {robust} = embed's default")
    t.notes.append("no prior: d_sym on embedding.fisher + 1e-30 (the prior floor removed); zero-Fisher filters: "
                   "mean over the embeddings of (embedding.fisher == 0).mean(); s/embedding includes the head fit")
    per_task.notes.append("with a confident head the sampled-label Fisher hinges on the few images whose drawn label "
                          "is not the head's argmax: a half that draws one such label more than the other differs "
                          "from it by a large factor in whole layers")
    return [t, per_task]


# --------------------------------------------------------------------------- main


def machine(device: torch.device) -> str:
    cpu = cpu_name()
    s = (f"{os.cpu_count()} CPU cores ({cpu}), torch {torch.__version__} with {torch.get_num_threads()} threads, "
         f"device {device}")
    if device.type == "cuda":
        s += f" ({torch.cuda.get_device_name(device)})"
    return s + f", Python {platform.python_version()}, taskindex {taskindex.__version__}"


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


def _load() -> float:
    try:
        return os.getloadavg()[0]
    except OSError:
        return float("nan")


def ints(s: str) -> list[int]:
    return [int(v) for v in s.split(",") if v.strip()]


def parse(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:N")
    p.add_argument("--quick", action="store_true", help="smaller settings: about 30 s on 2 idle CPU cores (2 minutes on a busy one)")
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
    g.add_argument("--stab-exact-size", type=int, help="also run expectation='exact' at this size (0: skip; default 64)")
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
    command = "python " + " ".join(shlex.quote(v) for v in ([sys.argv[0]] + (sys.argv[1:] if argv is None else argv)))
    mach = machine(device)
    load0 = _load()
    share = CpuShare()
    log(f"bench_embed: {mach}; load average {load0:.2f}")
    t_all = time.perf_counter()
    tables: list[Table] = []
    parts = {1: part_throughput, 2: part_convergence, 3: part_stability}
    for k in args.parts:
        t0 = time.perf_counter()
        new = parts[k](args, device)
        log(f"    part {k}: {time.perf_counter() - t0:.1f}s (other processes so far: {100 * share.others():.0f}% of the CPUs)")
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
        md = ["### Embedding benchmark (`tools/bench_embed.py`)", "",
              f"Command: `{command}`  ", f"Machine: {mach}  ", f"Total wall time: {wall:.0f} s ({load})", ""]
        md += [t.markdown() for t in tables]
        os.makedirs(os.path.dirname(os.path.abspath(args.markdown)), exist_ok=True)
        with open(args.markdown, "w") as f:
            f.write("\n".join(md))
        log(f"wrote {args.markdown}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
