"""`make demo`: query the shipped index by a known task and by a freshly embedded one."""

from __future__ import annotations

import time

from taskindex.data import samples
from taskindex.index import TaskIndex
from taskindex.select.noise import difference_se, within_noise
from taskindex.shipped import EXPERT_ERRORS as ERRORS
from taskindex.shipped import default_index


def show(title: str, hits, seconds: float) -> None:
    print(f"\n{title}  ({seconds * 1000:.1f} ms)")
    width = max([4] + [len(h.name) for h in hits])
    print(f"  {'name':{width}s} {'d_sym':>7s} {'complexity':>10s}  dataset")
    for h in hits:
        print(f"  {h.name:{width}s} {h.distance:7.4f} {h.complexity:10.4f}  {h.metadata.get('dataset', '')}")


def main() -> None:
    with default_index() as index:
        info = index.info()
        print(f"index {info['path']}: {info['tasks']} tasks, {info['models']} experts, {info['probe']} @ "
              f"{info['image_size']} px, {info['method']}")
        start = time.perf_counter()
        hits = index.query("fashion-footwear", k=5, kind="task")
        show("nearest to the indexed task 'fashion-footwear'", hits, time.perf_counter() - start)

        task = samples.load("fashion-sandal-vs-rest", max_per_class=60, seed=7)  # images the index has not seen
        probe = index.probe()
        start = time.perf_counter()
        emb = index.embed(task, probe=probe)
        embedded = time.perf_counter() - start
        start = time.perf_counter()
        hits = index.query(emb, k=5, kind="task")
        show(f"nearest to a new sample of 'fashion-sandal-vs-rest' (embedded in {embedded:.1f} s)", hits,
             time.perf_counter() - start)
        rank = next((i + 1 for i, h in enumerate(hits) if h.name == task.name), None)
        print("  -> the new sample found its own task " + ("first" if rank == 1 else f"at rank {rank}" if rank
                                                            else "nowhere in the top 5"))
        start = time.perf_counter()
        hits = index.query(emb, k=5, kind="task", where={"dataset": "mnist"})
        show("the same, only MNIST tasks (where dataset=mnist)", hits, time.perf_counter() - start)
        if info["models"]:
            pick_expert(index, emb, task.name)


def pick_expert(index: TaskIndex, emb, target: str) -> None:
    """The expert for the new sample, and where the benchmark's measured errors rank it on that task."""
    start = time.perf_counter()
    hits = index.select_model(emb, k=3)
    seconds = time.perf_counter() - start
    print(f"\nbest experts for the new sample ({seconds * 1000:.1f} ms, ranked by {hits[0].ranked_by})")
    width = max(len(h.name) for h in hits)
    print(f"  {'expert':{width}s} {'score':>8s}  trained on")
    for h in hits:
        print(f"  {h.name:{width}s} {h.distance:8.4f}  {h.metadata.get('source_task')}")
    if hits[0].evidence:
        print(f"  {hits[0].name}: its errors on the nearest known tasks (the rest of the weight is d_asym's)")
    for e in hits[0].evidence:
        print(f"     {e['task']:28s} d_sym {e['d_sym']:.3f}  weight {e['weight']:.2f}  its error there {e['error']:.3f}")
    if ERRORS.is_file():
        import pandas as pd

        errors = pd.read_csv(ERRORS)
        mine = errors[errors["task"] == target].set_index("model")
        if hits[0].name in mine.index:
            print(measured_rank(mine["error"], hits[0].name, int(mine["n_test"].iloc[0]), target))


def measured_rank(errors, pick: str, n_test: int, target: str) -> str:
    """Where the benchmark's measured errors put the pick, and whether its test images can tell it from the best."""
    rank = int(errors.rank(method="min")[pick])  # ties share the better rank
    best, gap = errors.idxmin(), errors[pick] - errors.min()
    noise = difference_se(errors[pick], errors.min(), n_test)
    verdict = (f"within noise of the best: {gap:.3f} apart, one standard error of the difference on {n_test} test "
               f"images is {noise:.3f}" if within_noise(errors[pick], errors.min(), n_test) else
               f"worse than the best by {gap:.3f}, more than one standard error ({noise:.3f} on {n_test} test images)")
    return (f"  -> {pick} is number {rank} of {len(errors)} experts on {target} by the test error measured by "
            f"tools/experiments/meta_benchmark.py ({errors[pick]:.3f}; the best, {best}: {errors.min():.3f}), "
            f"{verdict}. That task's errors are among those the index learned from; docs/selection.md measures "
            "picks for targets whose own errors are left out.")


if __name__ == "__main__":
    main()
