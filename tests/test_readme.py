"""README.md is the product's front page: every code block in it runs as written, in order, offline.

The ```bash and ```python blocks are taken from README.md in document order and run in one empty
temporary folder: bash blocks with `bash -e -u -o pipefail` and this venv's bin/ first on PATH (so
`taskindex` is the installed command), python blocks in one shared namespace, like one Python
session. Left out: the lines `make demo` and `make test` (they set up the venv, which needs the
network for pip, and `make test` runs this suite itself).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"
BLOCK = re.compile(r"^```(bash|python)\n(.*?)^```", re.MULTILINE | re.DOTALL)
SKIPPED_LINES = re.compile(r"^make (demo|test)\b")


def readme_blocks() -> list[tuple[str, int, str]]:
    """(language, line number, code) of each bash/python block, `make demo` / `make test` lines removed."""
    text = README.read_text()
    blocks = []
    for m in BLOCK.finditer(text):
        lang, code = m.group(1), m.group(2)
        if lang == "bash":
            code = "".join(line for line in code.splitlines(keepends=True) if not SKIPPED_LINES.match(line))
        if code.strip():
            blocks.append((lang, text.count("\n", 0, m.start()) + 1, code))
    return blocks


def test_blocks_are_found():
    langs = [lang for lang, _, _ in readme_blocks()]
    assert langs.count("python") >= 3 and langs.count("bash") >= 3, langs
    assert not any("make " in code for lang, _, code in readme_blocks() if lang == "bash")


@pytest.mark.slow
def test_readme_code_blocks_run_in_order(tmp_path, monkeypatch):
    from taskindex import TaskIndex

    bin_dir = Path(sys.executable).parent
    assert (bin_dir / "taskindex").exists(), f"no taskindex command next to {sys.executable}"
    env = {k: v for k, v in os.environ.items() if k != "TASKINDEX_INDEX"}
    env["PATH"] = f"{bin_dir}{os.pathsep}{env.get('PATH', '')}"
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": "__readme__"}
    timings = []
    try:
        for lang, line, code in readme_blocks():
            start = time.perf_counter()
            if lang == "python":
                exec(compile(code, f"README.md, block at line {line}", "exec"), namespace)
            else:
                run = subprocess.run(["bash", "-e", "-u", "-o", "pipefail", "-c", code], cwd=tmp_path, env=env,
                                     capture_output=True, text=True, timeout=600)
                assert run.returncode == 0, (f"README.md bash block at line {line} failed "
                                             f"(status {run.returncode}):\n{run.stdout}\n{run.stderr}")
            timings.append(f"line {line} ({lang}): {time.perf_counter() - start:.1f} s")
    finally:
        for value in namespace.values():
            if isinstance(value, TaskIndex):
                value.close()
        print("\n".join(timings))
    # what the blocks promise exists
    for name in ("tops.emb", "photos.emb", "footwear.emb", "footwear.parquet", "my.index", "tasks.index"):
        assert (tmp_path / name).exists(), name
    assert len(list((tmp_path / "photos").glob("*/*.png"))) == 60
