"""Build the shipped default index (taskindex/package_data/default.index) from its manifest, default_index.csv here.

    .venv/bin/python -m tools.experiments.build_default_index [--out DIR] [--image-size 64] [--workers N]
    .venv/bin/python -m tools.experiments.build_default_index --experts-only   # only the experts and the fit

The same as `taskindex rebuild` on that manifest (every named sample task at 100 images per
class and a few at 30 and 300, fixed seeds, real images available offline, the pretrained
EfficientNet-Lite0 shipped on PyPI), then the expert-selection benchmark's experts as model
rows and a MODEL2VEC fit on its errors (taskindex/package_data/expert_errors.csv), into a fresh index beside
--out that is compacted to its one newest version and moved into place at the end: an interrupted build never
leaves a half-built index, and running it again with --resume goes on from the rows already embedded.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

from taskindex.index.task_index import TaskIndex
from taskindex.rebuilds.run import rebuild, staging_dir
from taskindex.shipped import DEFAULT_INDEX
from taskindex.shipped import EXPERT_ERRORS as ERRORS
from tools import harness

MANIFEST = Path(__file__).with_name("default_index.csv")


def add_experts(path: Path, cache: Path | None = None) -> None:
    """The benchmark's experts as model rows (their source tasks' embeddings, not their weights) and a
    MODEL2VEC fit on the benchmark's errors; the experts are trained into the cache (default: the
    benchmark's, expert_zoo.CACHE_DIR) if missing."""
    import pandas as pd

    from tools.experiments import expert_zoo, meta_benchmark  # torch: not for --help

    if not ERRORS.is_file():  # before anything changes
        raise SystemExit(f"{ERRORS} is missing: run `python -m tools.experiments.meta_benchmark --errors-out {ERRORS}` "
                         "first")
    errors = pd.read_csv(ERRORS)
    with TaskIndex.open(path) as index:
        for name, emb, meta in meta_benchmark.expert_rows(cache or expert_zoo.CACHE_DIR, index, progress=True):
            meta["weights"] = ("not shipped: python -m tools.experiments.expert_zoo trains it" if emb is not None
                               else "imagenet")
            meta.pop("weights_file")  # a path on the machine that built it
            index.add_model(name, emb, metadata=meta, replace=True)
        index.add_results(errors, replace=True)  # remembered: select ranks by the nearest tasks' results
        summary = index.fit_model2vec()
        print(f"MODEL2VEC: held-out loss {summary['initial_val_loss']:.4f} -> {summary['val_loss']:.4f}",
              file=sys.stderr)
        index.compact(keep=1)  # the shipped index carries one version: no earlier one to restore or repair to


def main(argv=None) -> int:
    ap = harness.parser("tools.experiments.build_default_index", __doc__)
    ap.add_argument("--out", default=str(DEFAULT_INDEX))
    ap.add_argument("--image-size", type=int, default=64)
    ap.add_argument("--workers", type=int, default=None)
    ap.add_argument("--resume", action="store_true", help="go on from an interrupted build")
    ap.add_argument("--experts-only", action="store_true",
                    help="only (re)add the experts and the MODEL2VEC fit to the index at --out")
    args = ap.parse_args(argv)
    out = Path(args.out)
    if args.experts_only:
        add_experts(out)
        return 0
    building = out.parent / f".{out.name}.building"
    if not args.resume:  # a fresh build: drop what an earlier one left
        shutil.rmtree(building, ignore_errors=True)
        shutil.rmtree(staging_dir(building), ignore_errors=True)
    report = rebuild(building, MANIFEST, workers=args.workers, resume=args.resume, image_size=args.image_size)
    if report.failed:
        print(f"{len(report.failed)} rows failed: {report.failed}", file=sys.stderr)
        return 1
    add_experts(building)
    if out.exists():
        shutil.rmtree(out)
    os.replace(building, out)
    print(f"built {out}: {report.rows} tasks in {report.seconds:.0f} s ({report.workers} workers)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
