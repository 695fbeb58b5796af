"""How an index stores its raw vectors: float32 (exact) or bfloat16 (half the disk), and the upgrade path."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from taskindex import distance
from taskindex.cli import cli
from taskindex.shipped import default_index_path
from taskindex.errors import TaskIndexError
from taskindex.index.task_index import TaskIndex, verify
from taskindex._testing.index_harness import Overlapping, wide_probe
from taskindex.index import storage
from taskindex.index.storage import Store, decode_vectors, encode_vectors, prefetch, read_rows


def test_bfloat16_rounds_to_nearest_and_keeps_every_entry_positive():
    rng = np.random.default_rng(0)
    v = np.exp(rng.uniform(-80, 80, size=(50, 300))).astype(np.float32)
    v[0, :3] = [1e-45, 1.0, 1.0 + 2 ** -8]  # a subnormal float32, an exact value, a tie (rounds to even: 1.0)
    back = decode_vectors(np.frombuffer(encode_vectors(v, "bfloat16"), "<u2").reshape(v.shape))
    assert back.dtype == np.float32 and np.all(back > 0)
    rel = np.abs(back[:, 3:] - v[:, 3:]) / v[:, 3:]
    assert rel.max() <= 2 ** -8  # half a unit of bfloat16's 8-bit significand
    assert back[0, 1] == 1.0 and back[0, 2] == 1.0
    assert np.array_equal(decode_vectors(np.frombuffer(encode_vectors(v, "float32"), "<f4").reshape(v.shape)), v)


def _mapped_kib(path) -> int:
    """Resident KiB of this process's map of `path` (/proc/self/smaps)."""
    lines = open("/proc/self/smaps").read().splitlines()
    for i, line in enumerate(lines):
        if line.endswith(str(path)):
            return next(int(x.split()[1]) for x in lines[i + 1:] if x.startswith("Rss:"))
    raise AssertionError(f"{path} is not mapped")


@pytest.mark.skipif(not hasattr(__import__("os"), "uname") or __import__("os").uname().sysname != "Linux",
                    reason="reads /proc/self/smaps")
@pytest.mark.parametrize("populate", [True, False], ids=["populate", "touch"])
def test_warm_maps_every_page_of_a_vector_file(tmp_path, monkeypatch, populate):
    """A fresh map of a segment holds nothing (MADV_RANDOM, nothing read); after warm() every page is mapped
    in this process, by the kernel's populate call or, on older kernels, by touching each page."""
    if not populate:
        monkeypatch.setattr(storage, "MADV_POPULATE_READ", None)
    monkeypatch.setattr(storage, "WARM_CHUNK", 1 << 20)  # several chunks
    v = np.exp(np.random.default_rng(0).normal(size=(300, 21008))).astype(np.float32)
    store = Store(tmp_path)
    ref = store.new_file(".bf16", encode_vectors(v, "bfloat16"))
    rows = store.memmap(ref, 21008)
    assert _mapped_kib(store.path(ref)) == 0
    told, advice = [], []
    real = rows._mmap

    class Spy:  # the real map, with each madvise recorded
        def madvise(self, option, *args):
            advice.append(option)
            return real.madvise(option, *args)

    rows._mmap = Spy()
    assert storage.warm(rows, told.append) == rows.nbytes == ref["size"]
    assert (storage.MADV_POPULATE_READ in advice) == populate
    assert sum(told) == rows.nbytes and len(told) == -(-rows.nbytes // (1 << 20))
    assert _mapped_kib(store.path(ref)) * 1024 >= rows.nbytes - 4096


def test_prefetch_asks_for_each_row_from_its_page_start(tmp_path):
    """Rows of a real probe's width (42,016 bytes as bfloat16) start off page boundaries; madvise refuses
    those, so each row's range must begin on its page and reach its last byte."""
    import mmap

    v = np.exp(np.random.default_rng(0).normal(size=(40, 21008))).astype(np.float32)
    store = Store(tmp_path)
    ref = store.new_file(".bf16", encode_vectors(v, "bfloat16"))
    rows = store.memmap(ref, 21008)
    pos = np.array([0, 1, 2, 7, 30, 31])
    prefetch(rows, pos)  # the real call: raises on a misaligned range
    assert np.array_equal(decode_vectors(rows[pos]), decode_vectors(np.frombuffer(
        encode_vectors(v[pos], "bfloat16"), "<u2").reshape(len(pos), -1)))

    class Recorder:
        def __init__(self):
            self.calls = []

        def madvise(self, advice, start, length):
            self.calls.append((advice, start, length))

    fake = type("Rows", (), {"_mmap": Recorder(), "strides": rows.strides})()
    prefetch(fake, pos)
    row, page = rows.strides[0], mmap.PAGESIZE
    want = []
    for first in pos:
        start = int(first) * row
        want.append((mmap.MADV_WILLNEED, start - start % page, start % page + row))
    assert fake._mmap.calls == want


@pytest.mark.parametrize("vectors", ["float32", "bfloat16"])
def test_read_rows_gives_the_rows_dense_or_scattered(tmp_path, vectors):
    """A dense stretch is read with one read call, scattered rows through the map: both give the rows."""
    v = np.exp(np.random.default_rng(1).normal(size=(500, 301))).astype(np.float32)
    store = Store(tmp_path)
    rows = store.memmap(store.new_file(".f32" if vectors == "float32" else ".bf16", encode_vectors(v, vectors)), 301)
    want = decode_vectors(np.asarray(rows))
    for pos in (np.arange(500), np.arange(37, 300), np.flatnonzero(np.arange(500) % 3 != 1),  # dense, with gaps
                np.array([3, 4, 90, 91, 92, 400]), np.arange(0, 500, 7), np.array([9, 2, 5]), np.array([], int)):
        out = np.full((len(pos), 301), np.nan, np.float32)
        read_rows(rows, pos, out)
        assert np.array_equal(out, want[pos]), pos[:5]


def _copy(src: TaskIndex, path, vectors: str) -> TaskIndex:
    idx = TaskIndex.create(path, probe=src.probe(), method=src.space["method"], vectors=vectors,
                           **{k: v for k, v in src.embed_options().items() if k in ("estimator", "trim")})
    frame = src.to_pandas().set_index("name")
    own = [c for c in frame.columns if c not in ("id", "kind", "complexity", "created", "task", "source",
                                                  "n_samples", "n_classes", "method")]
    idx.add_many([(n, src.get(n)[0], frame.at[n, "kind"],
                   {c: v for c in own if (v := src.metadata(src._v.row(n)).get(c)) is not None}) for n in src.names()])
    return idx


@pytest.fixture(scope="module")
def shipped():
    with TaskIndex.open(default_index_path(), readonly=True) as idx:
        yield idx


def test_bfloat16_and_float32_give_the_same_answers_on_the_real_embeddings(shipped, tmp_path):
    """The shipped index's 66 real embeddings, each row as a query: measured max |d_sym difference| 4e-5 and
    the same top-10 list (names and order) for every row."""
    with _copy(shipped, tmp_path / "f32", "float32") as a, _copy(shipped, tmp_path / "bf16", "bfloat16") as b:
        names = a.names()
        assert a.info()["vectors"] == "float32" and b.info()["vectors"] == "bfloat16"
        gap = np.abs(distance.pairwise(a.vectors(names)) - distance.pairwise(b.vectors(names))).max()
        assert 0 < gap < 1e-3
        for n in names:
            assert [h.name for h in a.query(n, k=10)] == [h.name for h in b.query(n, k=10)]
        # half the disk for the vectors
        size = {idx: sum(s["vectors"]["size"] for s in idx._v.manifest.segments) for idx in (a, b)}
        assert size[b] * 2 == size[a]


def test_formats_on_disk_and_the_upgrade_through_compact(tmp_path):
    probe = wide_probe()
    path = tmp_path / "idx"
    with TaskIndex.create(path, probe=probe) as idx:
        rows = Overlapping(idx)
        embs = [rows.make() for _ in range(600)]  # past EXACT_ROWS: the projection is trained too
        idx.add_many([(f"r{i}", e) for i, e in enumerate(embs)])
        before = [(h.name, h.distance) for h in idx.query(embs[3], k=5)]
    manifest = json.loads((path / (path / "CURRENT").read_text().split()[0]).read_text())
    assert manifest["format_version"] == 1 and manifest["vectors"] == "float32"  # older readers still open it
    with TaskIndex.open(path) as idx:
        idx.compact(vectors="bfloat16")
        assert idx.vector_type == "bfloat16" and idx.info()["candidates"] == "flat"
        after = [(h.name, h.distance) for h in idx.query(embs[3], k=5)]
        assert [n for n, _ in after] == [n for n, _ in before]
        assert np.allclose([d for _, d in after], [d for _, d in before], atol=1e-3)
        assert np.max(np.abs(idx.get("r7")[0].vector - embs[7].vector) / embs[7].vector) <= 2 ** -8
        idx.add("late", embs[0])  # new rows go to bfloat16 segments
    manifest = json.loads((path / (path / "CURRENT").read_text().split()[0]).read_text())
    assert manifest["format_version"] == 2 and all(s["vectors"]["name"].endswith(".bf16")
                                                   for s in manifest["segments"])
    assert verify(path) == []
    with TaskIndex.open(path) as idx:
        assert len(idx) == 601 and idx.vector_type == "bfloat16"
        idx.compact(vectors="float32")  # and back: the values stay the rounded ones
        assert idx.vector_type == "float32"
        assert np.max(np.abs(idx.get("r7")[0].vector - embs[7].vector) / embs[7].vector) <= 2 ** -8
    manifest = json.loads((path / (path / "CURRENT").read_text().split()[0]).read_text())
    assert manifest["format_version"] == 1


def test_unknown_vector_storage_is_one_clear_error(tmp_path):
    with pytest.raises(TaskIndexError, match="unknown vector storage 'float16'.*bfloat16"):
        TaskIndex.create(tmp_path / "x", probe=wide_probe(), vectors="float16")


def test_cli_creates_and_converts(tmp_path):
    runner = CliRunner()
    out = runner.invoke(cli, ["create", str(tmp_path / "i"), "--probe", "efficientnet_lite0", "--weights", "random",
                              "--image-size", "16", "--vectors", "bfloat16", "--json"])
    assert out.exit_code == 0, out.output
    assert json.loads(out.output)["vectors"] == "bfloat16"
    out = runner.invoke(cli, ["compact", str(tmp_path / "i"), "--vectors", "float32", "--json"])
    assert out.exit_code == 0 and json.loads(out.output)["vectors"] == "float32"
    out = runner.invoke(cli, ["create", str(tmp_path / "j"), "--vectors", "half"])
    assert out.exit_code == 2 and "half" in out.output
