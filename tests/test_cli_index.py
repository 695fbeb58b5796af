"""The index commands: results as tables or JSON, and every bad input as one line with exit status 2."""

from __future__ import annotations

import errno
import json

import pytest
from click.testing import CliRunner
from clikit import FAST_PROBE as PROBE
from clikit import assert_user_error as user_error
from clikit import make_image_folder

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


def test_query_ls_info_json(built):
    r = CliRunner()
    idx = str(built / "idx")
    out = json.loads(r.invoke(cli, ["query", idx, "--name", "one", "--json"]).output)
    assert [h["name"] for h in out["hits"]][0] in ("two", "three") and len(out["hits"]) == 2
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
    assert r.invoke(cli, ["verify", idx]).output.strip() == "ok"


def test_rm_and_compact(built, tmp_path):
    import shutil

    idx = tmp_path / "copy"
    shutil.copytree(built / "idx", idx)
    r = CliRunner()
    assert json.loads(r.invoke(cli, ["rm", str(idx), "two", "--json"]).output)["rows"] == 2
    assert json.loads(r.invoke(cli, ["compact", str(idx), "--json"]).output)["files_removed"] > 0
    assert json.loads(r.invoke(cli, ["info", str(idx), "--json"]).output)["segments"] == 1


def test_default_index_is_used_without_an_index_argument(built, monkeypatch):
    monkeypatch.setenv("TASKINDEX_INDEX", str(built / "idx"))
    out = json.loads(CliRunner().invoke(cli, ["query", "--name", "two", "--json"]).output)
    assert out["index"] == str(built / "idx") and out["hits"]


def test_bad_inputs(built, tmp_path, monkeypatch):
    r = CliRunner()
    idx = str(built / "idx")
    user_error(r.invoke(cli, ["query", str(tmp_path / "nowhere"), "--name", "one"]), "does not exist")
    (tmp_path / "plain").mkdir()
    user_error(r.invoke(cli, ["ls", str(tmp_path / "plain")]), "not a taskindex index")
    user_error(r.invoke(cli, ["add", idx, "one", "--embedding", str(built / "one.emb")]), "already exists")
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
    user_error(r.invoke(cli, ["create", idx]), "already exists")

    import taskindex.storage as storage

    real_open = storage.os.open

    def refuse(path, *args, **kwargs):
        if str(path).endswith("LOCK"):
            raise PermissionError(errno.EROFS, "Read-only file system", str(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(storage.os, "open", refuse)
    user_error(r.invoke(cli, ["rm", idx, "one"]), "read-only")
    monkeypatch.undo()
    assert json.loads(r.invoke(cli, ["info", idx, "--json"]).output)["rows"] == 3  # nothing was changed
