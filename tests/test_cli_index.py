"""The index commands: results as tables or JSON, and every bad input as one line with exit status 2."""

from __future__ import annotations

import errno
import json

import numpy as np
import pytest
from click.testing import CliRunner
from clikit import FAST_PROBE as PROBE
from clikit import assert_flag_wording, make_image_folder, parse_table
from clikit import assert_user_error as user_error

from taskindex import Embedding
from taskindex.cli import cli


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return make_image_folder(tmp_path_factory.mktemp("imgs") / "data", classes=("a", "b", "c"), per_class=5, size=10)


@pytest.fixture(scope="module")
def built(tmp_path_factory, folder):
    """An index with three rows, made only through the CLI."""
    root = tmp_path_factory.mktemp("cli")
    r = CliRunner()
    assert r.invoke(cli, ["create", str(root / "idx"), *PROBE]).exit_code == 0
    for name, seed in (("one", 0), ("two", 1)):
        emb = root / f"{name}.emb"
        res = r.invoke(cli, ["embed", str(folder), "-o", str(emb), *PROBE, "--seed", str(seed)])
        assert res.exit_code == 0, res.output
        res = r.invoke(cli, ["add", str(root / "idx"), name, "--embedding", str(emb), "--meta", f"seed={seed}",
                             "--meta", "owner=ana"])
        assert res.exit_code == 0, res.output
    res = r.invoke(cli, ["add", str(root / "idx"), "three", str(folder), "--kind", "model", "--meta", "seed=2"])
    assert res.exit_code == 0, res.output
    return root


def test_query_ls_info_json(built, monkeypatch):
    r = CliRunner()
    idx = str(built / "idx")
    out = json.loads(r.invoke(cli, ["query", idx, "--name", "one", "--json"]).output)
    # the other two rows, nearest first, at their d_sym from "one" (worked out here) and as the API's exact query
    from taskindex import distance
    from taskindex.index.task_index import TaskIndex

    with TaskIndex.open(idx, readonly=True) as index:
        one = index.get("one")[0]
        want = sorted((distance.d_sym(one, index.get(n)[0]), n) for n in ("two", "three"))
        api = [(h.name, h.distance) for h in index.query("one", k=10, exact=True)]
    assert want[1][0] - want[0][0] > 1e-4  # the order is not a near tie
    assert [h["name"] for h in out["hits"]] == [n for _, n in want] == [n for n, _ in api]
    assert [h["distance"] for h in out["hits"]] == pytest.approx([d for d, _ in want], abs=1e-9)
    assert [h["distance"] for h in out["hits"]] == [d for _, d in api]
    assert [h["kind"] for h in out["hits"]] == [{"two": "task", "three": "model"}[n] for _, n in want]
    exact = json.loads(r.invoke(cli, ["query", idx, "--embedding", str(built / "one.emb"), "--exact",
                                      "--json"]).output)
    assert exact["hits"][0]["name"] == "one" and exact["hits"][0]["distance"] == pytest.approx(0, abs=1e-9)
    out = json.loads(r.invoke(cli, ["query", idx, "--name", "one", "--where", "seed>=1", "--kind", "task",
                                    "--json"]).output)
    assert [h["name"] for h in out["hits"]] == ["two"]
    text = r.invoke(cli, ["query", idx, "--name", "one"]).output
    assert text.splitlines()[0].split()[:3] == ["name", "kind", "distance"]
    rows = json.loads(r.invoke(cli, ["ls", idx, "--json"]).output)
    assert {x["name"] for x in rows} == {"one", "two", "three"} and rows[0]["owner"] == "ana"
    info = json.loads(r.invoke(cli, ["info", idx, "--json"]).output)
    assert info["rows"] == 3 and info["models"] == 1 and info["dim"] == 4800
    assert info["candidates"] == "exact" and info["refine"] is None  # 3 rows: every row is re-ranked
    from taskindex.index.task_index import TaskIndex

    asked, real_query = [], TaskIndex.query
    monkeypatch.setattr(TaskIndex, "query", lambda self, q, **kw: (asked.append(kw.get("refine")),
                                                                    real_query(self, q, **kw))[1])
    refined = json.loads(r.invoke(cli, ["query", idx, "--name", "one", "--refine", "3", "--json"]).output)
    plain = json.loads(r.invoke(cli, ["query", idx, "--name", "one", "--json"]).output)
    assert asked == [3, None] and [h["name"] for h in refined["hits"]] == [h["name"] for h in plain["hits"]]
    monkeypatch.undo()
    bad = r.invoke(cli, ["query", idx, "--name", "one", "--refine", "0"])
    assert bad.exit_code == 2 and "Invalid value for '--refine'" in bad.output and "Traceback" not in bad.output
    assert r.invoke(cli, ["verify", idx]).output.strip() == "ok"


def _on_disk(root) -> set[str]:
    """The index's data files and manifests, relative to it."""
    return {str(p.relative_to(root)) for p in [*(root / "data").iterdir(), *root.glob("manifest-*.json")]}


def test_rm_and_compact(built, tmp_path):
    """compact --keep 1 removes exactly the files the new version does not reference: every old segment file and
    every old manifest (the prior is kept); the rows, their vectors and metadata are those before it."""
    import shutil

    from taskindex.index.task_index import TaskIndex
    from taskindex.index.storage import referenced_files

    idx = tmp_path / "copy"
    shutil.copytree(built / "idx", idx)
    r = CliRunner()
    assert json.loads(r.invoke(cli, ["rm", str(idx), "two", "--json"]).output)["rows"] == 2
    with TaskIndex.open(idx, readonly=True) as index:
        old = index._v.manifest.to_json()
        rows = {n: (index.get(n)[0].vector.copy(), index.metadata(index._v.row(n))) for n in index.names()}
    before = _on_disk(idx)
    assert len(old["segments"]) == 3 and len(old["deleted"]) == 1 and old["version"] == 5
    res = r.invoke(cli, ["compact", str(idx), "--keep", "1", "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    with TaskIndex.open(idx, readonly=True) as index:
        new = index._v.manifest.to_json()
        assert set(index.names()) == set(rows) == {"one", "three"}
        for n, (vector, meta) in rows.items():
            assert np.array_equal(index.get(n)[0].vector, vector)
            assert index.metadata(index._v.row(n)) == meta
    kept = {f"data/{n}" for n in referenced_files(new)} | {f"manifest-{new['version']:08d}.json"}
    gone = before - _on_disk(idx)
    # the 3 segments' vectors, Parquet and JSON records, and the 5 manifests of versions 1-5
    assert gone == {f"data/{n}" for n in referenced_files(old)} - {f"data/{old['prior']['name']}"} | {
        f"manifest-{v:08d}.json" for v in range(1, 6)}
    assert out["files_removed"] == len(gone) == 3 * 3 + 5
    assert _on_disk(idx) == kept  # nothing unreferenced is left
    assert out["rows"] == 2 and out["version"] == 6 == new["version"]
    assert out["kept"] == [6] and out["versions_removed"] == [1, 2, 3, 4, 5]
    assert json.loads(r.invoke(cli, ["info", str(idx), "--json"]).output)["segments"] == 1
    assert r.invoke(cli, ["verify", str(idx)]).output.strip() == "ok"


def test_rm_of_several_rows_is_one_commit_and_an_unknown_name_among_them_removes_none(built, tmp_path):
    import shutil

    from taskindex.index import TaskIndex

    r = CliRunner()
    idx = tmp_path / "copy"
    shutil.copytree(built / "idx", idx)
    version = json.loads(r.invoke(cli, ["info", str(idx), "--json"]).output)["version"]
    user_error(r.invoke(cli, ["rm", str(idx), "one", "uno", "three"]), "no row named 'uno'")
    with TaskIndex.open(idx, readonly=True) as index:  # not even "one", named before the unknown one
        assert sorted(index.names()) == ["one", "three", "two"] and index.version == version
    res = r.invoke(cli, ["rm", str(idx), "one", "two", "three", "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.output) == {"removed": ["one", "two", "three"], "rows": 0, "version": version + 1}
    with TaskIndex.open(idx, readonly=True) as index:
        assert list(index.names()) == [] and index.version == version + 1
    assert r.invoke(cli, ["rm", str(idx), "one"]).output.startswith("Error: no row named 'one'")


def test_ls_where_and_kind_are_to_pandas_where_and_kind(built):
    from taskindex.index import TaskIndex

    r = CliRunner()
    idx = str(built / "idx")
    cases = [((), {}), (("--kind", "task"), {"kind": "task"}), (("--kind", "model"), {"kind": "model"}),
             (("--where", "seed>=1"), {"where": {"seed": (">=", 1)}}),
             (("--where", "owner in ana", "--kind", "task", "--where", "seed!=0"),
              {"where": {"owner": ["ana"], "seed": ("!=", 0)}, "kind": "task"}),
             (("--where", "seed=2", "--kind", "task"), {"where": {"seed": 2}, "kind": "task"})]
    kept = []
    with TaskIndex.open(idx, readonly=True) as index:
        for flags, kwargs in cases:
            res = r.invoke(cli, ["ls", idx, *flags, "--json"])
            assert res.exit_code == 0, res.output
            want = json.loads(index.to_pandas(**kwargs).to_json(orient="records"))
            assert json.loads(res.output) == want, flags
            kept.append(sorted(row["name"] for row in want))
    # each case keeps other rows: a flag ls ignored would show
    assert kept == [["one", "three", "two"], ["one", "two"], ["three"], ["three", "two"], ["two"], []]


def test_warm_reads_every_vector_file_of_the_committed_version(built):
    """`taskindex warm` (TaskIndex.warm) reads each segment's vectors once: the bytes are the manifest's."""
    from taskindex.index.task_index import TaskIndex

    idx = str(built / "idx")
    with TaskIndex.open(idx, readonly=True) as index:
        stored = sum(s["vectors"]["size"] for s in index._v.manifest.segments)
    out = CliRunner().invoke(cli, ["warm", idx, "--json"])
    assert out.exit_code == 0, out.output
    assert json.loads(out.output)["bytes"] == stored > 0
    assert CliRunner().invoke(cli, ["warm", idx]).output.startswith("warmed ")
    user_error(CliRunner().invoke(cli, ["warm", str(built / "nowhere")]), "does not exist")


def test_default_index_is_used_without_an_index_argument(built, monkeypatch):
    monkeypatch.setenv("TASKINDEX_INDEX", str(built / "idx"))
    out = json.loads(CliRunner().invoke(cli, ["query", "--name", "two", "--json"]).output)
    assert out["index"] == str(built / "idx") and out["hits"]


def test_bad_inputs(built, tmp_path, monkeypatch):
    r = CliRunner()
    idx = str(built / "idx")
    line = assert_flag_wording(r.invoke(cli, ["query", str(tmp_path / "nowhere"), "--name", "one"]), "does not exist")
    assert line.endswith(f"create an index with `taskindex create {tmp_path / 'nowhere'}`")
    (tmp_path / "plain").mkdir()
    user_error(r.invoke(cli, ["ls", str(tmp_path / "plain")]), "not a taskindex index")
    user_error(r.invoke(cli, ["query", idx, "--name", "uno"]), "no row named 'uno'")
    user_error(r.invoke(cli, ["rm", idx, "uno"]), "no row named 'uno'")
    user_error(r.invoke(cli, ["add", idx, "x", "--embedding", str(built / "one.emb"), "--meta", "novalue"]),
               "cannot parse --meta 'novalue'")
    user_error(r.invoke(cli, ["query", idx, "--name", "one", "--where", "seed>>1"]), "cannot parse --where")
    user_error(r.invoke(cli, ["query", idx, "--name", "one", "--where", "colour=red"]),
               "unknown metadata column 'colour'")
    junk = tmp_path / "junk.emb"
    junk.write_bytes(b"PK\x03\x04 not really")
    user_error(r.invoke(cli, ["query", idx, "--embedding", str(junk)]), "not a taskindex embedding")
    good = Embedding.load(built / "one.emb")
    short = Embedding(good.vector[:100], good.prior[:100], [("conv", 100)], good.meta)
    short.save(tmp_path / "short.emb")
    user_error(r.invoke(cli, ["query", idx, "--embedding", str(tmp_path / "short.emb")]), "100 filters")
    assert "`taskindex add`" in assert_flag_wording(r.invoke(cli, ["create", idx]), "already exists")

    import taskindex.index.storage as storage

    real_open = storage.os.open

    def refuse(path, *args, **kwargs):
        if str(path).endswith("LOCK"):
            raise PermissionError(errno.EROFS, "Read-only file system", str(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(storage.os, "open", refuse)
    assert "`taskindex query`, `ls`, `info` and `verify` only read it" in assert_flag_wording(
        r.invoke(cli, ["rm", idx, "one"]), "read-only")
    monkeypatch.undo()
    assert json.loads(r.invoke(cli, ["info", idx, "--json"]).output)["rows"] == 3  # nothing was changed


def test_add_refuses_an_existing_name_before_embedding_and_names_the_flag(built, folder, tmp_path):
    import shutil

    r = CliRunner()
    idx = tmp_path / "copy"
    shutil.copytree(built / "idx", idx)
    # DATA does not exist: the name is checked first, so the error is about the name, not about DATA
    line = assert_flag_wording(r.invoke(cli, ["add", str(idx), "one", str(tmp_path / "nowhere")]),
                               "a row named 'one' already exists")
    assert "pass --replace to replace it" in line
    assert_flag_wording(r.invoke(cli, ["add", str(idx), "one", "--embedding", str(built / "two.emb")]),
                        "pass --replace")
    res = r.invoke(cli, ["add", str(idx), "one", "--embedding", str(built / "two.emb"), "--replace", "--json"])
    assert res.exit_code == 0 and json.loads(res.output)["rows"] == 3, res.output
    got = json.loads(r.invoke(cli, ["query", str(idx), "--embedding", str(built / "two.emb"), "--exact",
                                    "--json"]).output)["hits"]
    assert {h["name"] for h in got[:2]} == {"one", "two"} and got[1]["distance"] == pytest.approx(0, abs=1e-9)


def test_where_with_a_comma_is_an_error_and_in_means_any_of(built):
    r = CliRunner()
    idx = str(built / "idx")
    line = assert_flag_wording(r.invoke(cli, ["ls", idx, "--where", "owner=ana,bob"]), "is ambiguous")
    assert "use 'owner in ana,bob'" in line
    assert_flag_wording(r.invoke(cli, ["query", idx, "--name", "one", "--where", "seed=1,2"]), "'seed in 1,2'")
    assert_flag_wording(r.invoke(cli, ["ls", idx, "--where", "seed>=1,5"]), ">= takes one value")
    assert_flag_wording(r.invoke(cli, ["ls", idx, "--where", "seed>=1", "--where", "seed<=2"]),
                        "--where names 'seed' twice")
    rows = json.loads(r.invoke(cli, ["ls", idx, "--where", "seed in 0,2", "--json"]).output)
    assert sorted(x["name"] for x in rows) == ["one", "three"]
    out = json.loads(r.invoke(cli, ["query", idx, "--name", "two", "--where", "owner in ana,bob", "--json"]).output)
    assert [h["name"] for h in out["hits"]] == ["one"]


def test_source_column_is_the_source_and_dataset_its_own_column(built, folder, tmp_path):
    import shutil

    r = CliRunner()
    idx = tmp_path / "copy"
    shutil.copytree(built / "idx", idx)
    res = r.invoke(cli, ["add", str(idx), "four", "--embedding", str(built / "one.emb"), "--meta", "dataset=toys"])
    assert res.exit_code == 0, res.output
    table = parse_table
    header, rows = table(r.invoke(cli, ["ls", str(idx)]).output)
    assert header[-2:] == ["dataset", "source"]
    assert rows["four"]["dataset"] == "toys" and rows["four"]["source"] == str(folder)
    assert rows["one"]["source"] == str(folder) and rows["one"]["dataset"] == ""  # blank, not the source
    header, rows = table(r.invoke(cli, ["query", str(idx), "--name", "two", "--exact"]).output)
    assert header[-2:] == ["dataset", "source"] and rows["four"]["source"] == str(folder)
    header, _ = table(r.invoke(cli, ["ls", str(built / "idx")]).output)
    assert "dataset" not in header and header[-1] == "source"


def test_verify_names_the_damaged_file_and_exits_1(built, tmp_path):
    import shutil

    r = CliRunner()
    idx = tmp_path / "copy"
    shutil.copytree(built / "idx", idx)
    victim = max((p for p in (idx / "data").iterdir()), key=lambda p: p.stat().st_size)
    raw = bytearray(victim.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    victim.write_bytes(bytes(raw))
    res = r.invoke(cli, ["verify", str(idx)])
    assert res.exit_code == 1, res.output
    assert res.output.strip() == f"{victim}: checksum mismatch (altered)"
    out = json.loads(r.invoke(cli, ["verify", str(idx), "--json"]).output)
    assert out["ok"] is False and [victim.name in p for p in out["problems"]] == [True]
    victim.write_bytes(bytes(raw[:100]))
    res = r.invoke(cli, ["verify", str(idx)])
    assert res.exit_code == 1 and str(victim) in res.output and "truncated" in res.output
    user_error(r.invoke(cli, ["ls", str(idx)]), victim.name)  # other commands refuse it in one line
    assert r.invoke(cli, ["verify", str(built / "idx")]).exit_code == 0


def test_probe_errors_speak_in_flags(folder, tmp_path, tiny_probe):
    import torch
    import torchvision

    from taskindex import TaskIndex

    r = CliRunner()
    TaskIndex.create(tmp_path / "tiny", probe=tiny_probe).close()  # a Python-only probe: the CLI cannot rebuild it
    for args in (["query", str(tmp_path / "tiny"), str(folder)], ["add", str(tmp_path / "tiny"), "x", str(folder)]):
        line = assert_flag_wording(r.invoke(cli, args), "cannot rebuild this index's probe")
        assert line.endswith("embed the task with that probe in Python and pass --embedding FILE")
    weights = tmp_path / "w.pt"
    torch.manual_seed(0)
    torch.save(torchvision.models.resnet18().state_dict(), weights)
    res = r.invoke(cli, ["create", str(tmp_path / "w"), "--probe", "resnet18", "--weights", str(weights),
                         "--image-size", "16"])
    assert res.exit_code == 0, res.output
    torch.manual_seed(1)
    torch.save(torchvision.models.resnet18().state_dict(), weights)  # the weights file changed since
    line = assert_flag_wording(r.invoke(cli, ["add", str(tmp_path / "w"), "x", str(folder)]), "was built with")
    assert line.endswith("embed the task with the original probe in Python and pass --embedding FILE")


def test_data_from_parquet_takes_column_flags(built, folder, tmp_path):
    import shutil

    import pyarrow as pa
    import pyarrow.parquet as pq

    r = CliRunner()
    idx = tmp_path / "copy"
    shutil.copytree(built / "idx", idx)
    pngs = sorted(folder.rglob("*.png"))
    pq.write_table(pa.table({"img": [str(p) for p in pngs], "y": [p.parent.name for p in pngs]}),
                   tmp_path / "t.parquet")
    line = assert_flag_wording(r.invoke(cli, ["add", str(idx), "pq", str(tmp_path / "t.parquet")]), "'image' not found")
    assert "pass --image-column/--label-column" in line
    cols = ["--image-column", "img", "--label-column", "y"]
    res = r.invoke(cli, ["add", str(idx), "pq", str(tmp_path / "t.parquet"), *cols])
    assert res.exit_code == 0, res.output
    res = r.invoke(cli, ["query", str(idx), str(tmp_path / "t.parquet"), *cols, "--max-samples", "6", "--json"])
    assert res.exit_code == 0 and len(json.loads(res.output)["hits"]) == 4, res.output
