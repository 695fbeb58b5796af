"""verify="logme": LogME on the target's images re-ranks the shortlist only, for the experts whose weights
are at hand; the others keep their place and say why they were not checked."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import taskindex as ti
from taskindex import TaskIndex
from taskindex.embedding import probes, registry
from taskindex.errors import TaskIndexError
from taskindex.select.logme import logme

from conftest import make_tiny_cnn

ARCH = "tiny-verify"


@pytest.fixture(autouse=True)
def tiny_architecture():
    def build(weights, size):
        net = make_tiny_cnn(0)
        if weights not in (None, "imagenet"):
            net.load_state_dict(torch.load(weights, weights_only=True))
        return net, 16

    probes.register_probe(probes.ProbeSpec(ARCH, build, 16, (0.5,) * 3, (0.25,) * 3, "none"))
    yield
    registry._REGISTRY.pop(ARCH)


@pytest.fixture
def zoo(tmp_path):
    tiny_probe = ti.load_probe(ARCH, device="cpu")  # registered, so the CLI can rebuild the index's probe
    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, (60, 16, 16, 3), dtype=np.uint8)
    labels = np.repeat([0, 1, 2], 20)
    images[labels == 1, :, :8] //= 3  # classes a CNN can tell apart
    images[labels == 2, 8:] = 255 - images[labels == 2, 8:]
    task = ti.Task.from_arrays(images, labels, name="target")
    index = TaskIndex.create(tmp_path / "zoo", probe=tiny_probe, estimator="mean")
    source = index.embed(task, max_samples=30, probe=tiny_probe, progress=False)
    for j in range(4):  # four experts with weights on disk, one without
        path = tmp_path / f"e{j}.pt"
        torch.save(make_tiny_cnn(10 + j).state_dict(), path)
        index.add_model(f"e{j}", source, metadata={"architecture": ARCH, "weights_file": str(path), "j": j})
    index.add_model("blackbox", None)
    yield index, task, tiny_probe
    index.close()


def _logme_of(hit, task):
    probe = ti.load_probe(ARCH, weights=hit.metadata["weights_file"], device="cpu")
    rows = task.balanced_indices(300, seed=0)
    return logme(probe.features(task.load(rows, 16)), task.labels[rows])


def test_only_the_shortlist_is_checked_and_it_is_reranked_by_logme(zoo, monkeypatch):
    index, task, probe = zoo
    plain = index.select_model(task, k=5, probe=probe, by="asym")
    loads = []
    real = probes.load_probe
    monkeypatch.setattr(probes, "load_probe", lambda *a, **kw: loads.append(a[0]) or real(*a, **kw))
    checked = index.select_model(task, k=5, probe=probe, by="asym", verify="logme", shortlist=3)
    head = plain[:3]
    loadable = [h for h in head if h.name != "blackbox"]
    assert loads == [ARCH] * len(loadable)  # one forward pass per checked expert, none beyond the shortlist
    assert [h.name for h in checked[3:]] == [h.name for h in plain[3:]]
    scores = {h.name: _logme_of(h, task) for h in loadable}
    slots = [i for i, h in enumerate(head) if h.name != "blackbox"]
    assert [checked[i].name for i in slots] == sorted(scores, key=lambda n: -scores[n])
    assert all(h.evidence[-1]["logme"] == pytest.approx(scores[h.name]) for h in checked[:3])
    everyone = index.select_model(task, k=5, probe=probe, by="asym", verify="logme", shortlist=5)
    names = [h.name for h in everyone]
    assert names.index("blackbox") == [h.name for h in plain].index("blackbox")  # unchecked: it keeps its place
    note = everyone[names.index("blackbox")].evidence[-1]
    assert note["logme"] is None and "no architecture" in note["not_checked"]


def test_an_experts_image_size_is_the_size_its_features_are_read_at(zoo, monkeypatch):
    index, task, probe = zoo
    path = index.get("e0")[1]["weights_file"]
    index.add_model("small", index.get("e0")[0], metadata={"architecture": ARCH, "weights_file": path,
                                                           "image_size": "12"})
    index.add_model("odd", index.get("e0")[0], metadata={"architecture": ARCH, "weights_file": path,
                                                         "image_size": "big"})
    sizes = []
    real = probes.load_probe
    monkeypatch.setattr(probes, "load_probe", lambda *a, **kw: sizes.append(kw.get("image_size")) or real(*a, **kw))
    hits = index.select_model(task, k=7, probe=probe, by="asym", verify="logme", shortlist=7)
    assert sorted(sizes, key=str) == [12, None, None, None, None]  # the 5 loadable ones; "odd" is not loaded
    odd = next(h for h in hits if h.name == "odd").evidence[-1]
    assert odd["logme"] is None and "image_size 'big' is not a positive integer" in odd["not_checked"]


def test_a_missing_weights_file_or_a_query_without_images_is_said(zoo, tmp_path):
    index, task, probe = zoo
    emb = index.embed(task, max_samples=30, probe=probe, progress=False)
    with pytest.raises(TaskIndexError, match="needs the task's images"):
        index.select_model(emb, verify="logme")
    assert index.select_model(emb, k=2, verify="logme", task=task, by="asym")  # images passed beside
    index.add_model("gone", emb, metadata={"architecture": ARCH, "weights_file": str(tmp_path / "nope.pt")})
    hits = index.select_model(task, k=6, probe=probe, by="asym", verify="logme", shortlist=6)
    gone = next(h for h in hits if h.name == "gone")
    assert "is not a file here" in gone.evidence[-1]["not_checked"]
    with pytest.raises(TaskIndexError, match="unknown verify 'LogME'"):
        index.select_model(task, probe=probe, verify="LogME")


def test_the_cli_checks_the_shortlist_of_data(zoo, tmp_path):
    import json

    from PIL import Image

    from taskindex.cli import cli

    index, task, _ = zoo
    folder = tmp_path / "data"
    for i in range(len(task)):
        (folder / f"c{task.labels[i]}").mkdir(parents=True, exist_ok=True)
        Image.fromarray(task.load([i], 16)[0].permute(1, 2, 0).numpy()).save(folder / f"c{task.labels[i]}" / f"{i}.png")
    path = str(index._v.store.root)
    index.embed(task, max_samples=30, progress=False).save(tmp_path / "t.emb")
    index.close()
    r = CliRunner().invoke(cli, ["select", path, str(folder), "--by", "asym", "--verify", "logme", "--shortlist", "2",
                                 "--json"])
    assert r.exit_code == 0, r.output
    hits = json.loads(r.output)["hits"]
    assert all(isinstance(h["evidence"][-1]["logme"], float) for h in hits[:2])
    assert all("evidence" not in h for h in hits[2:])
    bad = CliRunner().invoke(cli, ["select", path, "--embedding", str(tmp_path / "t.emb"), "--verify", "logme"])
    assert bad.exit_code == 2 and "--verify logme needs the task's images: pass DATA" in bad.output


def test_unreadable_images_are_left_out_of_logme_and_counted(zoo, tmp_path):
    """A target with two files that cannot be decoded, embedded with on_error='skip': LogME scores each
    checked expert on the readable images only, and its evidence says how many were left out."""
    from clikit import make_image_folder

    index, _, probe = zoo
    folder = make_image_folder(tmp_path / "target", classes=("a", "b", "c"), per_class=8, size=16)
    (folder / "a" / "9.png").write_bytes(b"not an image")
    (folder / "c" / "9.png").write_bytes(b"")
    target = ti.Task.from_folder(folder)
    emb = index.embed(target, probe=probe, on_error="skip", progress=False)
    hits = index.select_model(emb, k=2, by="asym", verify="logme", shortlist=2, task=target)
    rows = target.balanced_indices(300, seed=0)
    readable = np.array([r for r in rows if _decodes(target, r)])
    assert len(readable) == len(rows) - 2
    for hit in hits:
        note = hit.evidence[-1]
        expert = ti.load_probe(ARCH, weights=hit.metadata["weights_file"], device="cpu")
        want = logme(expert.features(target.load(readable, 16)), target.labels[readable])
        assert note["unreadable_images"] == 2 and note["logme"] == pytest.approx(want)


def _decodes(task, row) -> bool:
    try:
        task.load([row], 16)
        return True
    except Exception:
        return False
