"""Checking a shortlist with LogME on the target's own images, for the experts whose weights are at hand.

A model row carries a loadable feature extractor when its metadata names a registered probe architecture
(`architecture`) and a local state_dict (`weights_file`, read with torch.load(weights_only=True)), and
optionally the `image_size` it was trained at (else the architecture's default: an expert fine-tuned on small
images reads them at that size, and at a fraction of the cost). LogME of
its features on the task's images re-ranks the shortlisted rows that have one, among the places they hold;
the others keep their place, and each hit's evidence says which were checked.
"""

from __future__ import annotations

import os

import numpy as np

from taskindex.errors import TaskIndexError

SAMPLES = 300  # class-balanced images of the task LogME sees per expert


def loadable(meta: dict) -> str | None:
    """Why a model row cannot be checked (None: it can)."""
    if not meta.get("architecture") or not meta.get("weights_file"):
        return "no architecture and weights_file in its metadata"
    if not os.path.isfile(str(meta["weights_file"])):
        return f"weights_file {meta['weights_file']!r} is not a file here"
    if meta.get("image_size") is not None and not str(meta["image_size"]).isdigit():
        return f"image_size {meta['image_size']!r} is not a positive integer"
    return None


def logme_shortlist(hits: list, task, shortlist: int) -> list:
    """`hits` with their first `shortlist` re-ranked by LogME where an expert can be loaded (higher first)."""
    from taskindex.data.task import Task
    from taskindex.embedding.probes import load_probe
    from taskindex.select.logme import logme

    if not isinstance(task, Task):
        raise TaskIndexError("verify='logme' needs the task's images: pass a Task as the query or as task=",
                             cli="--verify logme needs the task's images: pass DATA, not --name or --embedding")
    head, rows = list(hits[:shortlist]), task.balanced_indices(SAMPLES, seed=0)
    scored = {}
    for i, hit in enumerate(head):
        why, bad = loadable(hit.metadata), []
        if why is None:
            size = hit.metadata.get("image_size")
            probe = load_probe(hit.metadata["architecture"], weights=str(hit.metadata["weights_file"]),
                               image_size=None if size is None else int(size), device="cpu")
            # an image that cannot be decoded is left out: embedding the query already named or skipped it
            images = task.load(rows, probe.image_size, bad)
            scored[i] = logme(probe.features(images), np.delete(task.labels[rows], [b[0] for b in bad]))
        hit.evidence = [*hit.evidence, {"logme": scored.get(i), **({"not_checked": why} if why else {}),
                                        **({"unreadable_images": len(bad)} if bad else {})}]
    ranked = [head[i] for i in sorted(scored, key=lambda i: -scored[i])]  # the checked rows, best LogME first
    for slot, hit in zip(sorted(scored), ranked):
        head[slot] = hit
    return head + list(hits[shortlist:])
