"""The neighbours selector: experts ranked by their results on the known tasks nearest to the query."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from taskindex import TaskIndex, TaskIndexError
from taskindex._testing.index_harness import Synth, wide_probe
from taskindex.cli import cli
from taskindex.errors import IndexUsageError
from taskindex.select import neighbors


def test_scores_follow_the_nearest_tasks_and_standardise_each_task():
    # task 0 (near) prefers expert 0; task 1 (far) prefers expert 1 with much larger errors
    err = np.array([[0.10, 0.20, 0.30], [0.90, 0.10, 0.50]])
    score, support = neighbors.scores(np.array([0.01, 0.30]), err, k=2, tau=0.05)
    assert np.argmin(score) == 0 and np.allclose(support, 1.0)
    score, _ = neighbors.scores(np.array([0.30, 0.01]), err, k=2, tau=0.05)
    assert np.argmin(score) == 1
    # standardised: scaling one task's errors by 100 changes nothing
    assert np.allclose(neighbors.scores(np.array([0.3, 0.01]), err * [[100], [1]], k=2, tau=0.05)[0], score)


def test_an_expert_unmeasured_near_the_query_leans_on_its_fallback():
    err = np.array([[0.1, np.nan, 0.3], [0.2, 0.9, 0.4]])
    score, support = neighbors.scores(np.array([0.0, 1.0]), err, fallback=np.array([0.5, -2.0, 0.5]), k=2, tau=0.05)
    assert support[1] < 1e-6 and support[0] > 0.8  # the fallback, a neighbour at fallback_d, has the rest
    assert np.argmin(score) == 1  # never measured near: its (best) fallback decides
    with np.errstate(all="raise"):
        neighbors.scores(np.array([0.0, 1.0]), err, fallback=np.array([0.5, np.nan, 0.5]))


class Zoo:
    """Tasks in three families (tight clusters of embeddings, far apart); expert e{f} is best on family f by
    construction but was trained on a task of family f-1, so d_asym alone points at the wrong expert."""

    def __init__(self, index, families=3, per_family=6, seed=0):
        self.rows = Synth(index, clusters=families, seed=seed)
        self.tasks = [(f"f{f}-t{j}", f, self.make(f)) for f in range(families) for j in range(per_family)]

    def make(self, family: int):
        noise = self.rows.rng.normal(0.0, 0.1, self.rows.dim)
        return self.rows.embedding(self.rows.centres[family] * np.exp(noise), f"f{family}")

    def errors(self, rng, families) -> pd.DataFrame:
        out = []
        for name, f, _ in self.tasks:
            if f in families:
                for e in range(3):
                    out.append({"task": name, "model": f"e{e}", "error": (0.05 if e == f else 0.3) + rng.uniform(0, .02)})
        return pd.DataFrame(out)


@pytest.fixture
def zoo_index(tmp_path):
    with TaskIndex.create(tmp_path / "zoo", probe=wide_probe()) as idx:
        zoo = Zoo(idx)
        idx.add_many([(n, e) for n, _, e in zoo.tasks])
        for e in range(3):
            idx.add_model(f"e{e}", zoo.tasks[((e + 2) % 3) * 6][0])  # e{f}: trained on a task of family f-1
        idx.add_results(zoo.errors(np.random.default_rng(0), families={0, 1}))  # family 2 has no results
        yield idx, zoo


def test_the_best_expert_of_each_family_is_found_and_evidence_names_the_neighbours(zoo_index):
    idx, zoo = zoo_index
    for f in (0, 1):
        query = zoo.make(f)
        hits = idx.select_model(query, k=3, by="neighbors")
        assert hits[0].name == f"e{f}" and hits[0].ranked_by == "neighbors"
        assert hits[0].evidence and all(e["task"].startswith(f"f{f}-") for e in hits[0].evidence[:3])
        assert 0.9 < sum(e["weight"] for e in hits[0].evidence) < 1.0  # the rest is the fallback's share
    assert idx.select_model(zoo.make(0), k=3)[0].ranked_by == "neighbors"  # auto: results held


def test_a_family_without_results_falls_back_to_d_asym(zoo_index):
    """Family 2's nearest tasks with results are far: the experts lean on d_asym, which points at e0 (trained
    on a family-2 task), not at what the far results say; near family 0, the results overrule d_asym's e1."""
    idx, zoo = zoo_index
    far = zoo.make(2)
    asym = {h.name: h.distance for h in idx.select_model(far, k=3, by="asym")}
    assert min(asym, key=asym.get) == "e0"
    pick = idx.select_model(far, k=1, by="neighbors")[0]
    assert pick.name == "e0" and sum(e["weight"] for e in pick.evidence) < 0.5  # the fallback has the most
    near = zoo.make(0)
    assert idx.select_model(near, k=1, by="asym")[0].name == "e1"
    assert idx.select_model(near, k=1, by="neighbors")[0].name == "e0"


def test_a_row_name_query_leaves_its_own_results_out(zoo_index):
    idx, zoo = zoo_index
    before = [(h.name, h.distance) for h in idx.select_model("f0-t3", k=3, by="neighbors")]
    own = pd.DataFrame([{"task": "f0-t3", "model": m, "error": e} for m, e in (("e0", 0.9), ("e1", 0.0),
                                                                                ("e2", 0.5))])
    idx.add_results(own, replace=True)
    after = [(h.name, h.distance) for h in idx.select_model("f0-t3", k=3, by="neighbors")]
    assert after == before
    assert all(e["task"] != "f0-t3" for h in idx.select_model("f0-t3", k=3) for e in h.evidence)


def test_without_results_auto_ranks_as_before_and_neighbors_says_why_not(tmp_path):
    with TaskIndex.create(tmp_path / "plain", probe=wide_probe()) as idx:
        zoo = Zoo(idx)
        idx.add_many([(n, e) for n, _, e in zoo.tasks])
        idx.add_model("e0", "f0-t0")
        idx.add_model("e1", "f1-t0")
        q = zoo.make(0)
        assert [(h.name, h.distance, h.ranked_by) for h in idx.select_model(q)] == \
            [(h.name, h.distance, h.ranked_by) for h in idx.select_model(q, by="model2vec")]
        with pytest.raises(IndexUsageError, match="holds no results"):
            idx.select_model(q, by="neighbors")
        with pytest.raises(TaskIndexError, match="unknown by 'nearest'"):
            idx.select_model(q, by="nearest")


def test_leave_one_out_never_uses_the_target_s_own_errors(tmp_path):
    """Rewriting task i's errors leaves task i's neighbours and static scores unchanged, as it must."""
    from taskindex.select import evaluation

    rng = np.random.default_rng(1)
    n, k = 8, 4
    tv = rng.uniform(0.5, 2.0, (n, 64))
    mv = tv[:k] * 1.1
    err = rng.uniform(0.05, 0.5, (n, k))
    args = ([f"t{i}" for i in range(n)], [f"m{j}" for j in range(k)])
    base = evaluation.evaluate(*args, err, tv, mv, np.full(64, 1e-3), 0.15, [None] * k, fit_options={"max_steps": 2})
    changed = err.copy()
    changed[3] = changed[3][::-1] * 3
    again = evaluation.evaluate(*args, changed, tv, mv, np.full(64, 1e-3), 0.15, [None] * k,
                                fit_options={"max_steps": 2})
    for method in ("neighbors", "static"):
        assert np.array_equal(base.scores[method][3], again.scores[method][3]), method
        assert not np.array_equal(base.scores[method][4], again.scores[method][4]), method
    assert {"neighbors_error", "static_error", "neighbors_relative_increase"} <= set(base.summary)


def test_the_cli_select_by_and_its_evidence(zoo_index):
    idx, zoo = zoo_index
    path = str(idx._v.store.root)
    idx.close()
    r = CliRunner().invoke(cli, ["select", path, "--name", "f1-t2", "-k", "2", "--json"])
    assert r.exit_code == 0, r.output
    hits = json.loads(r.output)["hits"]
    assert hits[0]["name"] == "e1" and hits[0]["ranked_by"] == "neighbors" and hits[0]["evidence"]
    text = CliRunner().invoke(cli, ["select", path, "--name", "f1-t2", "-k", "2"]).output
    assert "e1: f1-" in text and "d_sym" in text
    bad = CliRunner().invoke(cli, ["select", path, "--name", "f1-t2", "--by", "neighbours"])
    assert bad.exit_code == 2
