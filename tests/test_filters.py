"""`where` filters, every operator, through the API (query, query_many) and the CLI (ls, query): each returns
exactly the rows its condition holds for. A row without the column never passes (as SQL's NULL: `!=` too)."""

from __future__ import annotations

import json
import operator

import pytest
from click.testing import CliRunner
from clikit import assert_user_error

from taskindex.index import candidates
from taskindex.cli import cli
from taskindex.errors import TaskIndexError
from taskindex.index.filters import parse_where
from taskindex.index.task_index import TaskIndex
from taskindex._testing.index_harness import Synth, wide_probe

ROWS = 12


def _meta(i: int) -> dict:
    meta = {"owner": ["ana", "bob", "cy"][i % 3], "size": i, "score": 0.5 * i, "flag": i % 2 == 0}
    if i == 11:
        del meta["owner"]  # no owner: passes no condition on it
    return meta


META = {f"r{i}": _meta(i) for i in range(ROWS)}
PY = {"=": operator.eq, "==": operator.eq, "!=": operator.ne, "<": operator.lt, "<=": operator.le,
      ">": operator.gt, ">=": operator.ge}

# (CLI clauses, the API's where, the rows it keeps): every operator, on text, integer, float and boolean columns
CASES = [
    (["owner=ana"], {"owner": "ana"}),
    (["owner==ana"], {"owner": "ana"}),
    (["owner!=ana"], {"owner": ("!=", "ana")}),
    (["size!=4"], {"size": ("!=", 4)}),
    (["flag!=true"], {"flag": ("!=", True)}),
    (["flag=false"], {"flag": False}),
    (["size<4"], {"size": ("<", 4)}),
    (["size<=4"], {"size": ("<=", 4)}),
    (["size>4"], {"size": (">", 4)}),
    (["size>=4"], {"size": (">=", 4)}),
    (["score>2.5"], {"score": (">", 2.5)}),
    (["score<=2.5"], {"score": ("<=", 2.5)}),
    (["owner in ana,cy"], {"owner": ["ana", "cy"]}),
    (["size in 1,5,7,40"], {"size": [1, 5, 7, 40]}),
    (["owner!=bob", "size>=3"], {"owner": ("!=", "bob"), "size": (">=", 3)}),
    (["owner!=nobody"], {"owner": ("!=", "nobody")}),
]


def expected(where: dict) -> set[str]:
    """The rows `where` keeps, worked out on the metadata as written (no pandas, no pyarrow)."""
    def holds(meta, key, cond):
        if key not in meta:
            return False
        if isinstance(cond, list):
            return meta[key] in cond
        op, value = cond if isinstance(cond, tuple) else ("=", cond)
        return PY[op](meta[key], value)

    return {n for n, m in META.items() if all(holds(m, k, c) for k, c in where.items())}


def test_the_expected_sets_are_neither_empty_nor_everything():
    """Each case separates rows, and `!=` keeps what `=` drops (but not the row without the column)."""
    for _, where in CASES:
        assert 0 < len(expected(where)) < ROWS, where
    assert expected({"owner": ("!=", "ana")}) == set(META) - expected({"owner": "ana"}) - {"r11"}
    assert len(expected({"size": [1, 5, 7, 40]})) == 3


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("filters") / "idx"
    with TaskIndex.create(root, probe=wide_probe()) as idx:
        synth = Synth(idx)
        idx.add_many([(n, synth.make(i % 4, name=n), "task", META[n]) for i, n in enumerate(META)])
        query = synth.make(1, name="q")
    return root, query


@pytest.mark.parametrize("clauses,where", CASES, ids=[" & ".join(c) for c, _ in CASES])
def test_cli_clauses_parse_to_the_api_form(clauses, where):
    assert parse_where(clauses) == where


@pytest.mark.parametrize("readonly", [False, True], ids=["writer", "reader"])
def test_query_returns_exactly_the_rows_each_operator_keeps(built, readonly):
    root, q = built
    with TaskIndex.open(root, readonly=readonly) as idx:
        for _, where in CASES:
            want = expected(where)
            hits = idx.query(q, k=50, where=where)
            assert {h.name for h in hits} == want and len(hits) == len(want), where
            assert [h.distance for h in hits] == sorted(h.distance for h in hits)
            assert {h.name for h in idx.query("r3", k=50, where=where)} == want - {"r3"}, where
            assert [{h.name for h in hits} for hits in idx.query_many([q, "r0"], k=50, where=where)] == [
                want, want - {"r0"}], where
        for op in ("=", "=="):  # the tuple forms of equality
            assert {h.name for h in idx.query(q, k=50, where={"owner": (op, "ana")})} == expected({"owner": "ana"})


def test_filters_past_exact_rows_go_through_the_candidate_search_and_still_keep_exactly_their_rows(tmp_path):
    """From EXACT_ROWS rows the filter becomes FAISS's id selector: `!=` and the comparisons must pass it the
    rows they keep, not those `=` keeps."""
    with TaskIndex.create(tmp_path / "idx", probe=wide_probe()) as idx:
        synth = Synth(idx)
        n = candidates.EXACT_ROWS + 40
        owners = ["ana"] * (n - 30) + ["bob"] * 20 + ["cy"] * 10
        idx.add_many([(f"r{i}", synth.make(i % 20), "task", {"owner": owners[i], "size": i}) for i in range(n)])
        assert idx.info()["candidates"] == "flat"
        q = synth.make(3)
        rest = {f"r{i}" for i in range(n) if owners[i] != "ana"}
        assert {h.name for h in idx.query(q, k=30, where={"owner": ("!=", "ana")})} == rest
        assert {h.name for h in idx.query_many([q], k=30, where={"owner": ("!=", "ana")})[0]} == rest
        assert {h.name for h in idx.query(q, k=30, where={"size": (">=", n - 30)})} == {
            f"r{i}" for i in range(n - 30, n)}
        assert {h.name for h in idx.query(q, k=30, where={"size": ("<", 30)})} == {f"r{i}" for i in range(30)}


@pytest.mark.parametrize("clauses,where", CASES, ids=[" & ".join(c) for c, _ in CASES])
def test_cli_ls_and_query_return_exactly_the_rows_each_clause_keeps(built, clauses, where):
    root, _ = built
    flags = [x for c in clauses for x in ("--where", c)]
    r = CliRunner()
    res = r.invoke(cli, ["ls", str(root), *flags, "--json"])
    assert res.exit_code == 0, res.output
    assert sorted(x["name"] for x in json.loads(res.output)) == sorted(expected(where))
    res = r.invoke(cli, ["query", str(root), "--name", "r3", "-k", "50", *flags, "--json"])
    assert res.exit_code == 0, res.output
    assert sorted(h["name"] for h in json.loads(res.output)["hits"]) == sorted(expected(where) - {"r3"})


def test_comparing_a_text_column_with_a_number_is_a_task_index_error(built):
    """`owner>=3` on a text column (pandas raises a TypeError underneath): a TaskIndexError naming the column."""
    root, q = built
    with TaskIndex.open(root, readonly=True) as idx:
        for where in ({"owner": (">=", 3)}, {"owner": ("<", 2.5)}, {"size": (">", "big")}):
            with pytest.raises(TaskIndexError, match=rf"cannot compare column '{next(iter(where))}' .*compare "
                                                     "numbers with numbers"):
                idx.query(q, k=5, where=where)
            with pytest.raises(TaskIndexError, match="cannot compare column"):
                idx.query_many([q], k=5, where=where)


def test_cli_comparing_a_text_column_with_a_number_exits_2_with_one_line(built):
    """`--where owner>=3` on a text column: exit status 2, one line naming the column, no traceback."""
    root, _ = built
    r = CliRunner()
    for args in (["ls", str(root), "--where", "owner>=3"],
                 ["query", str(root), "--name", "r1", "--where", "owner>=3"],
                 ["query", str(root), "--name", "r1", "--where", "size<big"],
                 ["plot", str(root), "--where", "owner>=3", "-o", str(root.parent / "x.png")]):
        line = assert_user_error(r.invoke(cli, args), "cannot compare column")
        assert "compare numbers with numbers" in line, line


def test_a_bad_condition_form_is_one_clear_error(built):
    root, q = built
    with TaskIndex.open(root, readonly=True) as idx:
        with pytest.raises(TaskIndexError, match=r"bad condition \('~', 3\) for 'size'"):
            idx.query(q, where={"size": ("~", 3)})
        with pytest.raises(TaskIndexError, match="where must be a dict"):
            idx.query(q, where=[("size", 3)])
    assert_user_error(CliRunner().invoke(cli, ["ls", str(root), "--where", "size=>3"]), "cannot parse --where")
