"""README.md and the docs/ pages are the product's manual: every code block in them runs as written, offline.

Each page's ```bash and ```python blocks are taken in document order and run in that page's own empty
temporary folder, as a reader of that page would run them: bash blocks with `bash -e -u -o pipefail` and
this venv's bin/ first on PATH (so `taskindex` is the installed command), python blocks in one namespace
per page, like one Python session. A page that needs an index or embedding files makes them in its own
blocks; no page depends on another. One test per page (`test_code_blocks_run_in_order[docs/cli.md]`), and
a failure names the page and the line of the block. Left out: the lines `make demo` and `make test` (they
set up the venv, which needs the network for pip, and `make test` runs this suite itself).

Cheap checks beside them: the README stays short (at most README_MAX_LINES lines), every docs page starts
with its title, a one-line summary and a link back to the README, and every relative link or image in
README.md and docs/*.md points to a file of the repository that exists (and a `#anchor` into a Markdown
page to one of its headings).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import traceback
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DOCS = ROOT / "docs"
README_MAX_LINES = 350

FENCE = re.compile(r"^```([^\n`]*)\n(.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)
RUN = ("bash", "python")
NOT_RUN = {"", "text", "csv", "yaml", "json"}  # shown, not run; any other tag (sh, shell, py, console) is refused
COMMAND = re.compile(r"^\s*(\$ |taskindex |python|\.venv/|make |import |from \S+ import )", re.MULTILINE)
SKIPPED_LINES = re.compile(r"^make (demo|test)\b")
LINK = re.compile(r"\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")  # [text](target), ![alt](target)
REFERENCE = re.compile(r"^ {0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s.*)?$", re.MULTILINE)  # [label]: target
HEADING = re.compile(r"^ {0,3}(#{1,6})[ \t]+(.+?)[ \t]*#*[ \t]*$", re.MULTILINE)

# Pages another change is writing: until one lands, a link to it may dangle (it is checked like any other
# after), and its layout is its own (no summary line asked of it). Empty: docs/architecture.md has landed.
PENDING: set[str] = set()

# What each page's blocks promise to leave in its folder: {glob: how many}.
EXPECTED = {
    "README.md": {"tops.emb": 1, "footwear.emb": 1, "my.index": 1, "tasks.index": 1, "matrix.png": 1},
    "docs/cli.md": {"tops.emb": 1, "photos.emb": 1, "footwear.emb": 1, "footwear.parquet": 1, "my.index": 1,
                    "photos/*/*.png": 60},
    "docs/index.md": {"tasks.index": 1, "big.index": 1},
    "docs/selection.md": {"tasks.index": 1, "errors.csv": 1, "zoo.index": 1, "sandals.emb": 1},
    "docs/plots.md": {"plots.index": 1, "map.png": 1, "matrix.png": 1, "map.svg": 1, "complexity.pdf": 1},
    "docs/rebuilds.md": {"rows.csv": 1, "rows.yaml": 1, "rebuilt.index": 1},
}


def rel(page: Path) -> str:
    return page.relative_to(ROOT).as_posix()


def pages() -> list[Path]:
    return [README, *sorted(DOCS.glob("*.md"))]


def fences(text: str) -> list[tuple[str, int, str]]:
    """(language, line number of the opening fence, code) of every fenced block."""
    return [(m.group(1).strip(), text.count("\n", 0, m.start()) + 1, m.group(2)) for m in FENCE.finditer(text)]


def code_blocks(page: Path) -> list[tuple[str, int, str]]:
    """(language, line number, code) of each bash/python block, `make demo` / `make test` lines removed."""
    blocks = []
    for lang, line, code in fences(page.read_text()):
        if lang == "bash":
            code = "".join(line for line in code.splitlines(keepends=True) if not SKIPPED_LINES.match(line))
        if lang in RUN and code.strip():
            blocks.append((lang, line, code))
    return blocks


PAGES_WITH_CODE = [page for page in pages() if code_blocks(page)]


def test_blocks_are_found():
    langs = [lang for lang, _, _ in code_blocks(README)]
    assert langs.count("python") >= 3 and langs.count("bash") >= 3, langs
    for page in pages():
        text = page.read_text()
        found = fences(text)
        # every fence opened at the start of a line is parsed (an indented or unclosed one would not run)
        openings = len(re.findall(r"^ *```", text, re.MULTILINE))
        assert openings == 2 * len(found), f"{rel(page)}: {openings} fence lines, {len(found)} blocks parsed"
        for lang, line, code in found:
            assert lang in RUN or lang in NOT_RUN, f"{rel(page)}:{line}: a ```{lang} block would not be run"
            assert lang in RUN or not COMMAND.search(code), (f"{rel(page)}:{line}: commands in a ```{lang} "
                                                            "block are not run: tag it bash or python")
        for lang, line, code in code_blocks(page):
            assert not (lang == "bash" and "make " in code), f"{rel(page)}:{line}: runs make"
    with_code = {rel(page) for page in PAGES_WITH_CODE}
    assert set(EXPECTED) <= with_code, set(EXPECTED) - with_code  # these pages keep their runnable blocks
    assert with_code - {"README.md"}, "no docs page has code"


def test_readme_is_short():
    lines = len(README.read_text().splitlines())
    assert lines <= README_MAX_LINES, f"README.md has {lines} lines; move detail to docs/ (at most {README_MAX_LINES})"


def test_docs_pages_start_with_a_summary_and_link_back():
    for page in sorted(DOCS.glob("*.md")):
        if rel(page) in PENDING:
            continue
        head = [line for line in page.read_text().splitlines()[:5] if line.strip()]
        assert head and head[0].startswith("# "), f"{rel(page)}: no title on its first line"
        assert len(head) > 1 and not head[1].startswith("#"), f"{rel(page)}: no summary under its title"
        assert "](../README.md)" in "\n".join(head[:3]), f"{rel(page)}: no link back to ../README.md at the top"


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: link text kept, lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading).strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def _without_fences(text: str) -> str:
    """The text with its fenced blocks blanked out, line count kept."""
    return FENCE.sub(lambda m: "\n" * m.group(0).count("\n"), text)


def anchors(page: Path) -> set[str]:
    """The `#anchor` of each heading of a Markdown page (a repeated heading gets -1, -2, ...)."""
    found, counts = set(), {}
    for m in HEADING.finditer(_without_fences(page.read_text())):
        base = slug(m.group(2))
        found.add(f"{base}-{counts[base]}" if base in counts else base)
        counts[base] = counts.get(base, 0) + 1
    return found


def links(page: Path) -> list[tuple[int, str]]:
    """(line, target) of each link and image outside code, in page order."""
    text = re.sub(r"`[^`\n]*`", "", _without_fences(page.read_text()))  # code spans too
    found = [(m.start(1), m.group(1)) for m in LINK.finditer(text)]
    found += [(m.start(1), m.group(1)) for m in REFERENCE.finditer(text)]
    return [(text.count("\n", 0, pos) + 1, target) for pos, target in sorted(found)]


def broken_links(page: Path, root: Path = ROOT, pending: set[str] = PENDING) -> list[str]:
    """'page:line: target (why)' for each relative link of `page` that does not resolve inside `root`."""
    root = root.resolve()
    broken = []
    for line, target in links(page):
        if re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*:", target):  # https:, mailto: ...: not ours to check
            continue
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page.resolve()
        where = f"{page.relative_to(root).as_posix()}:{line}: {target}"
        if not dest.is_relative_to(root):
            broken.append(f"{where} (outside the repository)")
        elif not dest.exists():
            if dest.relative_to(root).as_posix() not in pending:
                broken.append(f"{where} (no such file)")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            broken.append(f"{where} (no heading with that anchor)")
    return broken


def test_relative_links_point_to_existing_files():
    assert links(README), "README.md has no links"
    broken = [b for page in pages() for b in broken_links(page)]
    assert not broken, "\n".join(broken)


def test_link_check_finds_broken_links(tmp_path):
    (tmp_path / "docs" / "figures").mkdir(parents=True)
    (tmp_path / "docs" / "figures" / "a.png").write_bytes(b"")
    (tmp_path / "docs" / "a.md").write_text("# A page\n\n## Search (`x.py`, v1.0)\n\nSee [the top](#a-page).\n")
    (tmp_path / "README.md").write_text(
        "# t\n\n[a](docs/a.md) [s](docs/a.md#search-xpy-v10) ![f](docs/figures/a.png) [web](https://x.org/y)\n"
        "[gone](docs/gone.md) [bad anchor](docs/a.md#nope) ![old path](figures/a.png)\n"
        "`[code](not/a/link.md)` [pending](docs/later.md) [up](../outside.md)\n\n[ref]: docs/missing.md\n")
    assert broken_links(tmp_path / "README.md", tmp_path, {"docs/later.md"}) == [
        "README.md:4: docs/gone.md (no such file)",
        "README.md:4: docs/a.md#nope (no heading with that anchor)",
        "README.md:4: figures/a.png (no such file)",
        "README.md:5: ../outside.md (outside the repository)",
        "README.md:7: docs/missing.md (no such file)",
    ]
    assert broken_links(tmp_path / "docs" / "a.md", tmp_path, set()) == []


@pytest.fixture(scope="module")
def warm_cli(tmp_path_factory):
    """A folder whose `taskindex` runs the CLI in a fork of a process that has imported it (tests/cli_server.py)."""
    from cli_server import CliServer

    with CliServer(tmp_path_factory.mktemp("cli")) as folder:
        yield folder


def _cli_env(first: Path) -> dict:
    bin_dir = Path(sys.executable).parent
    assert (bin_dir / "taskindex").exists(), f"no taskindex command next to {sys.executable}"
    env = {k: v for k, v in os.environ.items() if k != "TASKINDEX_INDEX"}
    env["PATH"] = os.pathsep.join(dict.fromkeys([str(first), str(bin_dir), env.get("PATH", "")]))
    return env


@pytest.mark.parametrize("args", [["query", "--name", "fashion-footwear", "-k", "3", "--json"],
                                  ["query", "--name", "no-such-row"], ["info"], ["probes"]])
def test_the_warm_cli_answers_as_the_installed_command(args, warm_cli, tmp_path):
    """The docs' commands run through the fork server: output, errors and exit status as the installed entry
    point gives them, run from another folder."""
    runs = [subprocess.run(["taskindex", *args], cwd=tmp_path, env=_cli_env(first), capture_output=True,
                           text=True, timeout=120) for first in (Path(sys.executable).parent, warm_cli)]
    installed, warm = runs
    assert installed.stdout or installed.stderr
    if "--json" in args:  # the same answer; its "seconds" are the one field that differs between runs
        installed.stdout, warm.stdout = ({k: v for k, v in json.loads(r.stdout).items() if k != "seconds"}
                                         for r in runs)
    assert (warm.returncode, warm.stdout, warm.stderr) == (installed.returncode, installed.stdout, installed.stderr)


@pytest.mark.slow
@pytest.mark.parametrize("page", PAGES_WITH_CODE, ids=rel)
def test_code_blocks_run_in_order(page, tmp_path, monkeypatch, warm_cli):
    from taskindex import TaskIndex

    name = rel(page)
    env = _cli_env(warm_cli)
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": "__readme__"}
    timings = []
    try:
        for lang, line, code in code_blocks(page):
            start = time.perf_counter()
            # padded so that tracebacks and bash's messages give the line numbers of the page itself
            if lang == "python":
                failure = None
                try:
                    exec(compile("\n" * line + code, str(page), "exec"), namespace)
                except Exception:
                    failure = traceback.format_exc()
                if failure:
                    pytest.fail(f"{name}, python block at line {line} failed:\n{failure}", pytrace=False)
            else:
                trap = f"trap 'echo \"{name}, line $LINENO: $BASH_COMMAND: status $?\" >&2' ERR"
                run = subprocess.run(["bash", "-e", "-u", "-o", "pipefail", "-c", trap + "\n" * line + code],
                                     cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
                assert run.returncode == 0, (f"{name}, bash block at line {line} failed "
                                             f"(status {run.returncode}):\n{run.stdout}\n{run.stderr}")
            timings.append(f"{name} line {line} ({lang}): {time.perf_counter() - start:.1f} s")
    finally:
        for value in namespace.values():
            if isinstance(value, TaskIndex):
                value.close()
        print("\n".join(timings))
    for pattern, count in EXPECTED.get(name, {}).items():  # what the blocks promise exists
        assert len(list(tmp_path.glob(pattern))) == count, f"{name}: {pattern}"
