"""The built wheel is the whole product: installed alone in a fresh virtualenv (its dependencies beside it),
the shipped index and the expert error table come with it, and the CLI answers from any folder."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import venv
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    source = tmp_path_factory.mktemp("source")  # a copy: a build/ folder left in the checkout is stale
    for name in ("setup.cfg", "pyproject.toml", "README.md", "LICENSE"):
        shutil.copy2(ROOT / name, source / name)
    shutil.copytree(ROOT / "taskindex", source / "taskindex",
                    ignore=shutil.ignore_patterns("__pycache__", "*.egg-info", "LOCK"))
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", str(out),
                            str(source)], capture_output=True, text=True, timeout=600)
    assert build.returncode == 0, build.stdout + build.stderr
    assert "License classifiers are deprecated" not in build.stdout + build.stderr
    (path,) = out.glob("taskindex-*.whl")
    return path


@pytest.fixture(scope="module")
def fresh(tmp_path_factory, wheel) -> Path:
    """A new virtualenv holding only the wheel; its dependencies are this venv's site-packages, seen through a
    .pth file (which does not run the editable install's own .pth, so the checkout is out of reach)."""
    env = tmp_path_factory.mktemp("venv")
    venv.EnvBuilder(with_pip=False).create(env)
    python = env / "bin" / "python"
    site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip())
    (site / "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    install = subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps",
                              "--no-index", str(wheel)], capture_output=True, text=True, timeout=600)
    assert install.returncode == 0, install.stdout + install.stderr
    return env


def _run(fresh: Path, tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("TASKINDEX_INDEX", "PYTHONPATH")}
    return subprocess.run([str(fresh / "bin" / args[0]), *args[1:]], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=300)


def test_the_wheel_holds_the_shipped_index_the_error_table_and_ranges_not_pins(wheel):
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        metadata = z.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    assert "taskindex/package_data/expert_errors.csv" in names
    assert "taskindex/package_data/default.index/CURRENT" in names
    assert sum(n.startswith("taskindex/package_data/default.index/data/") for n in names) >= 3
    assert not any("/_testing/" in n and n.endswith(".pyc") for n in names)
    requires = [line for line in metadata.splitlines() if line.startswith("Requires-Dist: torch")]
    assert requires and all("==" not in r and ">=" in r for r in requires), requires


def test_the_installed_cli_queries_and_selects_from_the_shipped_index_in_any_folder(fresh, tmp_path):
    where = _run(fresh, tmp_path, "python", "-c", "import taskindex; print(taskindex.__file__)")
    assert where.returncode == 0 and where.stdout.startswith(str(fresh)), where.stdout + where.stderr
    query = _run(fresh, tmp_path, "taskindex", "query", "--name", "fashion-footwear", "-k", "3", "--json")
    assert query.returncode == 0, query.stderr
    answer = json.loads(query.stdout)
    assert answer["index"].startswith(str(fresh)), answer["index"]  # the packaged index, not the checkout's
    assert len(answer["hits"]) == 3 and all(h["name"] != "fashion-footwear" for h in answer["hits"])
    select = _run(fresh, tmp_path, "taskindex", "select", "--name", "fashion-footwear", "--json")
    assert select.returncode == 0, select.stderr
    picks = json.loads(select.stdout)["hits"]
    assert len(picks) == 5 and all(h["kind"] == "model" for h in picks)
    demo = _run(fresh, tmp_path, "python", "-m", "taskindex.cli.demo")
    assert demo.returncode == 0 and "expert" in demo.stdout.lower(), demo.stdout + demo.stderr
    assert list(tmp_path.iterdir()) == []  # nothing written where the user stands
