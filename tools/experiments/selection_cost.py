"""What one expert-selection query costs, side by side in one process on the benchmark's index and zoo.

TASK2VEC pays once per query (embed the target) and then ranks from what the index holds; LogME pays a forward
pass and a score per expert, so its cost grows with the zoo. Timed per target: the embedding, `select_model`
given it (by d_asym and by the neighbours), the neighbours' shortlist checked by LogME (`verify="logme"`, which
loads each shortlisted expert from its weights file), and LogME over every expert (models loaded beforehand,
which favours LogME), each expert's share timed apart.
"""

from __future__ import annotations

import time

import numpy as np
import pandas as pd
import torch

from taskindex import TaskIndex, embed, load_probe
from taskindex.select.logme import logme
from tools.experiments import expert_zoo
from tools.experiments.finetune import PROBE

SHORTLIST = 3


def _logme_per_expert(experts: dict, task, image_size: int) -> dict[str, float]:
    """Seconds per expert: its forward pass over the task's training images and the LogME score."""
    images = task.load(np.arange(len(task)), image_size)
    out = {}
    for name, probe in experts.items():
        start = time.perf_counter()
        logme(probe.features(images, batch_size=256), task.labels)
        out[name] = time.perf_counter() - start
    return out


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _one_target(idx: TaskIndex, experts: dict, target, image_size: int) -> dict:
    start = time.perf_counter()
    emb = embed(target.train, idx.probe(), progress=False, threads=torch.get_num_threads(), **idx.embed_options())
    row = {"target": target.name, "images": len(target.train), "embed": time.perf_counter() - start}
    row["select_asym"] = _timed(lambda: idx.select_model(emb, k=1, by="asym"))
    row["select_neighbors"] = _timed(lambda: idx.select_model(emb, k=1, by="neighbors"))
    row["verify_shortlist"] = _timed(lambda: idx.select_model(emb, k=1, by="neighbors", verify="logme",
                                                              shortlist=SHORTLIST, task=target.train))
    per_expert = _logme_per_expert(experts, target.train, image_size)
    row["logme"] = sum(per_expert.values())
    row["logme_per_expert"] = float(np.median(list(per_expert.values())))
    return row


def timing(root, idx: TaskIndex, table: pd.DataFrame, image_size: int, quick: bool, n_targets: int) -> dict:
    """Medians over n_targets targets; the index is given the table's errors as results first (one commit)."""
    weights = expert_zoo.train_experts(root, image_size, quick, progress=False)
    experts = {name: load_probe(PROBE, weights=w or "imagenet", image_size=image_size) for name, w in weights.items()}
    idx.add_results(table.assign(task=table["task"] + "@" + table["seed"].astype(str))[["task", "model", "seed",
                                                                                       "error"]])
    every = expert_zoo.targets(0, quick)
    picked = every[:: max(1, len(every) // n_targets)][:n_targets]
    frame = pd.DataFrame([_one_target(idx, experts, t, image_size) for t in picked])
    med = frame.drop(columns=["target", "images"]).median()
    n = len(experts)
    return {"targets": len(frame), "experts": n, "threads": torch.get_num_threads(), "shortlist": SHORTLIST,
            **{f"{k}_seconds": float(v) for k, v in med.items()},
            "logme_over_neighbors": float((frame["logme"] / frame["select_neighbors"]).median()),
            "logme_over_embed_and_neighbors": float((frame["logme"] / (frame["embed"] + frame["select_neighbors"]))
                                                    .median()),
            "verify_over_logme": float((frame["verify_shortlist"] / frame["logme"]).median()),
            "experts_to_break_even": float(med["embed"] / med["logme_per_expert"]),
            "per_target": frame.to_dict(orient="records")}


def summary(t: dict) -> str:
    """The printed lines."""
    return (f"per query, median of {t['targets']} targets, {t['experts']} experts, {t['threads']} threads: "
            f"embedding the target {t['embed_seconds']:.2f} s; select_model given it: d_asym "
            f"{t['select_asym_seconds'] * 1000:.1f} ms, neighbours {t['select_neighbors_seconds'] * 1000:.1f} ms, "
            f"neighbours + LogME on {t['shortlist']} {t['verify_shortlist_seconds']:.2f} s; LogME over every expert "
            f"{t['logme_seconds']:.2f} s ({t['logme_per_expert_seconds']:.3f} s per expert)\n"
            f"LogME / neighbours {t['logme_over_neighbors']:.0f}x; LogME / (embedding + neighbours) "
            f"{t['logme_over_embed_and_neighbors']:.1f}x; shortlist check / LogME {t['verify_over_logme']:.2f}; "
            f"LogME costs more than the embedding from {t['experts_to_break_even']:.1f} experts on")
