"""Part 2 of the embedding benchmark: how many samples each estimator needs to reach Spearman 0.99 with a
converged reference (exact expectation over labels on a large pool): ours (per-sample squares), the
batch-squared estimator, the exact expectation on the first n images, and embed's default estimator."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
import torch
from scipy.stats import spearmanr

from taskindex.embedding.estimators import DEFAULT_ESTIMATOR, FilterEstimator, estimator_id
from taskindex.embedding.fisher import conv_weights, fisher_pass, weight_scale_prior, weights_per_filter
from tools.bench_embed.common import PRIOR_SCALE, Stopwatch, prepared, run_batch_squared, trainable_copy
from tools.harness import Table, log

NAN = (float("nan"),) * 3


@dataclass
class Pool:
    """The part's images in batches, its head and drawn labels, and the per-filter bookkeeping."""

    backbone: torch.nn.Module
    head: torch.nn.Module
    xs: list
    ys: list
    probs: torch.Tensor
    n_classes: int
    m: np.ndarray  # weights per filter
    offsets: np.ndarray  # each conv layer's first filter
    ns: list[int]  # the sample counts where the estimates are read


class Snapshots:
    """Estimates read at the sample counts ns while an estimator runs. The estimator's clock is paused while
    one is taken: the Spearman is not part of its wall time."""

    def __init__(self, ns, device, value):
        self.ns, self.value, self.clock, self.at = ns, value, Stopwatch(device), {}

    def take(self, n: int, estimate) -> None:
        """At a count of ns: value(estimate(), seconds so far) under at[n]."""
        if n in self.ns:
            el = self.clock.pause()
            self.at[n] = self.value(estimate(), el)
            self.clock.resume()


class RunningSum:
    """fisher_pass's sink and on_batch: the running per-filter sum of its squares, per image and weight, to
    snapshots after every batch."""

    def __init__(self, pool: Pool, snaps: Snapshots):
        self.total = np.zeros(int(pool.offsets[-1]))
        self.pool, self.snaps, self.seen = pool, snaps, 0

    def sink(self, layer, sq) -> None:
        o = self.pool.offsets
        self.total[o[layer]:o[layer + 1]] += sq.detach().double().sum(0).cpu().numpy()

    def on_batch(self, nb: int) -> None:
        self.seen += nb
        n = self.seen
        self.snaps.take(n, lambda: self.total / (n * self.pool.m))


class Blocks:
    """Every image's contribution, as embed's estimator receives it."""

    def __init__(self):
        self.rows: list[torch.Tensor] = []

    def update(self, block):
        self.rows.append(block.detach().float().cpu())


def part_convergence(args, device) -> list[Table]:
    S, P, B = args.conv_image_size, args.pool, args.conv_batch
    ns = sorted({n for n in args.conv_ns if n <= P} | {P})
    log(f"[2] samples to Spearman {args.target}: {args.conv_task}, pool {P} at {S}px, batch {B}")
    probe, xs, ys, head, probs, n_classes = prepared(args.conv_task, P, S, B, args.seed, device)
    bb = probe.backbone
    offsets = np.concatenate([[0], np.cumsum([w.shape[0] for w in conv_weights(bb)])])
    pool = Pool(bb, head, xs, ys, probs, n_classes, weights_per_filter(bb), offsets, ns)

    ref, t_ref, exact_snaps, per_image = reference_pass(pool, device)
    mask = ref > 0
    live = ref > weight_scale_prior(bb, PRIOR_SCALE)  # filters the embedding resolves above its prior floor

    def rho(est):
        return (float(spearmanr(est[mask], ref[mask])[0]), float(spearmanr(est[live], ref[live])[0]))

    curves = {"exact": {n: (*rho(est), el) for n, (est, el) in exact_snaps.items()},
              "robust": robust_curve(per_image, exact_snaps, pool, B, P),
              "ours": ours_curve(pool, rho, device), "bsq": batch_squared_curve(pool, rho, device)}
    notes = [f"rho: over the {int(mask.sum())}/{mask.size} filters with reference > 0; rho (live): over the "
             f"{int(live.sum())} filters whose reference exceeds the prior floor t0 "
             f"(PRIOR_SCALE {PRIOR_SCALE:g} / mean w^2), i.e. those the embedding resolves",
             f"reference: exact expectation over labels on all {P} images ({t_ref:.1f}s); both estimators use "
             f"the same images and the same labels drawn once from the head's predictive distribution; "
             "s = cumulative wall time of the estimator alone (Spearman excluded)"]
    return [convergence_table(args, pool, curves, notes)]


def reference_pass(pool: Pool, device):
    """The exact expectation over labels on the whole pool: (reference, its seconds, the running exact
    estimates {n: (estimate, seconds)} on its first n images, every image's contribution)."""
    log(f"    reference: exact expectation over {pool.n_classes} labels on {pool.ns[-1]} images")
    snaps = Snapshots(pool.ns, device, lambda est, el: (est, el))
    running, blocks = RunningSum(pool, snaps), Blocks()
    fisher_pass(pool.backbone, pool.head, ((x, None) for x in pool.xs[:1]))  # warm-up
    snaps.clock.resume()
    ref = fisher_pass(pool.backbone, pool.head, ((x, None) for x in pool.xs), sink=running.sink,
                      on_batch=running.on_batch, estimator=blocks) / (pool.ns[-1] * pool.m)
    t_ref = snaps.clock.pause()
    return ref, t_ref, snaps.at, torch.cat(blocks.rows)


def robust_curve(per_image: torch.Tensor, exact_snaps: dict, pool: Pool, B: int, P: int) -> dict:
    """embed's default estimator on the first n images against its own value on all P (what it converges to:
    a trimmed mean of the pool, not the mean): {n: (rho, seconds of the exact pass and the estimator)}."""
    robust = estimator_id(DEFAULT_ESTIMATOR)

    def estimate(n):
        est = FilterEstimator(robust, n, per_image.shape[1])
        for i in range(0, n, B):
            est.update(per_image[i:i + B])
        return est.result().numpy() / pool.m

    robust_ref = estimate(P)
    out = {}
    for n, (_, el) in exact_snaps.items():
        start = time.perf_counter()
        est = estimate(n)
        el += time.perf_counter() - start
        keep = robust_ref > 0
        out[n] = (float(spearmanr(est[keep], robust_ref[keep])[0]), el)
    return out


def ours_curve(pool: Pool, rho, device) -> dict:
    """Ours (per-sample squares, sampled labels), its running estimate read off the sink after every batch."""
    log("    ours: per-sample sampled-label estimate, running")
    snaps = Snapshots(pool.ns, device, lambda est, el: (*rho(est), el))
    running = RunningSum(pool, snaps)
    fisher_pass(pool.backbone, pool.head, zip(pool.xs[:1], pool.ys[:1]))  # warm up, then the timed running pass
    snaps.clock.resume()
    total = fisher_pass(pool.backbone, pool.head, zip(pool.xs, pool.ys), sink=running.sink, on_batch=running.on_batch)
    if not np.allclose(total, running.total, rtol=1e-6, atol=0):
        log("    WARNING: the sink's running sum differs from fisher_pass's total")
    return snaps.at


def batch_squared_curve(pool: Pool, rho, device) -> dict:
    """The batch-squared estimator's running estimate, on the same images and labels."""
    log("    batch-squared: running estimate")
    net, ws = trainable_copy(pool.backbone, device)
    snaps = Snapshots(pool.ns, device, lambda est, el: (*rho(est), el))
    run_batch_squared(net, ws, pool.head, pool.xs[:1], pool.ys[:1])
    snaps.clock.resume()
    run_batch_squared(net, ws, pool.head, pool.xs, pool.ys, snapshot=lambda n, est: snaps.take(n, lambda: est / pool.m))
    return snaps.at


def n_needed(at: dict, ns: list[int], target: float) -> float:
    """Samples an estimator needs for rho >= target: log-linear interpolation of its curve."""
    pts = [(n, at[n][0]) for n in ns if n in at]
    for (n0, r0), (n1, r1) in zip(pts, pts[1:]):
        if r0 >= target:
            return float(n0)
        if r0 < target <= r1:
            return float(n0 * (n1 / n0) ** ((target - r0) / (r1 - r0)))
    return float(pts[0][0]) if pts and pts[0][1] >= target else float("inf")


def convergence_table(args, pool: Pool, curves: dict, ref_notes: list[str]) -> Table:
    """Table 2, a row per sample count, and its notes (ref_notes: the two on the reference)."""
    S, P, B, ns = args.conv_image_size, args.pool, args.conv_batch, pool.ns
    robust = estimator_id(DEFAULT_ESTIMATOR)
    t = Table(f"2. Spearman rho with the converged reference ({args.conv_task}, {S}px, batch {B})",
              ["n images", "ours rho", "batch-sq rho", "batch-sq n / ours n", "ours rho (live)", "batch-sq rho (live)",
               "ours s", "batch-sq s", "exact-expectation rho", "exact s", f"default ({robust}) rho", "default s"])
    for n in ns:
        o, b, e, r = (curves["ours"].get(n, NAN), curves["bsq"].get(n, NAN), curves["exact"].get(n, NAN),
                      curves["robust"].get(n, NAN[:2]))
        need = n_needed(curves["bsq"], ns, o[0])
        eq = f"{need / n:.1f}x" if math.isfinite(need) else f"> {P / n:.1f}x"
        t.add(n, f"{o[0]:.4f}", f"{b[0]:.4f}", eq, f"{o[1]:.4f}", f"{b[1]:.4f}", o[2], b[2], f"{e[0]:.4f}", e[2],
              f"{r[0]:.4f}", r[1])
    drawn_off = 100 * (pool.probs.argmax(1) != torch.cat(pool.ys).cpu()).float().mean()
    t.notes += [
        ref_notes[0],
        "batch-sq n / ours n: images the batch-squared estimator needs for the rho ours reaches with n "
        "(log-linear interpolation of its curve): the sample-efficiency ratio at that accuracy",
        ref_notes[1],
        f"head confidence on the pool: mean max p = {pool.probs.max(1).values.mean():.3f}; labels drawn "
        f"differ from the head's argmax for {drawn_off:.1f}% "
        "of the images (the rare draws that carry most of a confident head's Fisher)",
        f"exact-expectation rho: ours with expectation='exact' (sum over the {pool.n_classes} labels, "
        f"{pool.n_classes} backward passes per batch) on the first n images, read off the reference pass; "
        "it is nested in the reference, so it reaches 1 at n = pool by construction: it isolates the "
        "image-sampling part of the error from the label-sampling part",
        f"default: embed's defaults (exact expectation, {robust} estimator) on the same pass: the "
        f"{robust} estimate of the first n images against the same estimate of all {P} (the value it "
        "converges to), over the filters where that is > 0; s = the exact pass plus the estimator",
        "the reference is computed on the same pool, so every estimator reaches it as n -> pool: "
        "'smallest n' below is bounded by the pool size; the ratio column above is the fairer comparison"]
    t.notes += [smallest_n(curves, ns, col, what, args.target, P) for col, what in ((0, "rho"), (1, "rho (live)"))]
    return t


def smallest_n(curves: dict, ns: list[int], col: int, what: str, target: float, P: int) -> str:
    """The note on the smallest n at which ours and the batch-squared estimator reach the target."""
    def first(at):
        for n in ns:
            if n in at and at[n][col] >= target:
                return n, at[n][2]
        return None, None

    no, to = first(curves["ours"])
    nb, tb = first(curves["bsq"])
    s_o = f"n = {no} ({to:.2f}s)" if no else f"> {P}"
    s_b = f"n = {nb} ({tb:.2f}s)" if nb else f"> {P}"
    line = f"smallest n with {what} >= {target}: ours {s_o}, batch-squared {s_b}"
    if no and nb:
        line += f"; batch-squared / ours = {nb / no:.1f}x the samples, {tb / to:.1f}x the wall time"
    elif no:
        line += f"; batch-squared / ours > {P / no:.1f}x the samples"
    elif nb:
        line += f"; ours / batch-squared > {P / nb:.1f}x the samples (ours WORSE)"
    return line + " (target: ours >= 5x better)"
