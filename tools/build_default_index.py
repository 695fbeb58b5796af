"""Build the shipped default index (index_data/) from its manifest, tools/default_index.csv.

    .venv/bin/python tools/build_default_index.py [--out index_data] [--image-size 64] [--workers N]

The same as `taskindex rebuild` on that manifest (every named sample task at 100 images per
class and a few at 30 and 300, fixed seeds, real images available offline, the pretrained
EfficientNet-Lite0 shipped on PyPI), into a fresh index beside --out that is compacted and
moved into place at the end: an interrupted build never leaves a half-built index, and
running it again with --resume goes on from the rows already embedded.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path

from taskindex.index import TaskIndex
from taskindex.rebuilds import rebuild, staging_dir

MANIFEST = Path(__file__).with_name("default_index.csv")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="index_data")
    ap.add_argument("--image-size", type=int, default=64)
    ap.add_argument("--workers", type=int, default=None)
    ap.add_argument("--resume", action="store_true", help="go on from an interrupted build")
    args = ap.parse_args(argv)
    out = Path(args.out)
    building = out.parent / f".{out.name}.building"
    if not args.resume:  # a fresh build: drop what an earlier one left
        shutil.rmtree(building, ignore_errors=True)
        shutil.rmtree(staging_dir(building), ignore_errors=True)
    report = rebuild(building, MANIFEST, workers=args.workers, resume=args.resume, image_size=args.image_size)
    if report.failed:
        print(f"{len(report.failed)} rows failed: {report.failed}", file=sys.stderr)
        return 1
    with TaskIndex.open(building) as index:
        index.compact()
    if out.exists():
        shutil.rmtree(out)
    os.replace(building, out)
    print(f"built {out}: {report.rows} tasks in {report.seconds:.0f} s ({report.workers} workers)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
