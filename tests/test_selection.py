"""Expert selection (paper sec. 3.3, 3.4, supp. 4.3): model rows, d_asym ranking, MODEL2VEC fits and the CLI.

Every embedding here is synthetic (Fisher + the index's prior on the tiny 32-filter probe), and every
expectation is computed by hand from those vectors with taskindex.distance.d_sym / complexity, or known
by construction: never the code's own output read back.
"""

from __future__ import annotations

import json
import math
import re
import shutil

import numpy as np
import pandas as pd
import pytest
import torch
from click.testing import CliRunner
from clikit import assert_user_error

from taskindex import Embedding, TaskIndex, TaskIndexError, distance
from taskindex.select import model2vec
from taskindex.cli import cli
from taskindex.errors import IndexCorruptError

FAST = {"max_steps": 20, "patience": 20}  # a fit that only needs to exist, not to be good
pytestmark = pytest.mark.usefixtures("one_torch_thread")


# --- helpers -------------------------------------------------------------------------------------


def make_emb(idx: TaskIndex, fisher: np.ndarray, name: str | None) -> Embedding:
    return Embedding(np.asarray(fisher) + idx.prior, idx.prior, idx.layout, {**idx.space, "task": name})


def rand_fisher(rng, dim: int, scale: float = 1e-4, sigma: float = 1.0) -> np.ndarray:
    return scale * np.exp(rng.normal(0.0, sigma, dim))


def hand_asym(query: np.ndarray, source: np.ndarray, prior: np.ndarray, alpha: float) -> float:
    """d_asym(source -> query) = d_sym(source, query) - alpha c(source), from the public distance functions."""
    q, s, p = (np.asarray(x, np.float64) for x in (query, source, prior))
    return distance.d_sym(s, q) - alpha * float(distance.complexity(s, p))


def small_index(tmp_path, tiny_probe, n_tasks: int = 6, seed: int = 0):
    """Tasks t0..t{n-1} and a query task q; returns (index, {name: stored vector (float32)})."""
    idx = TaskIndex.create(tmp_path / "i", probe=tiny_probe)
    rng = np.random.default_rng(seed)
    embs = {f"t{i}": make_emb(idx, rand_fisher(rng, idx.dim), f"t{i}") for i in range(n_tasks)}
    embs["q"] = make_emb(idx, rand_fisher(rng, idx.dim), "q")
    idx.add_many([(n, e, "task") for n, e in embs.items()])
    return idx, {n: e.vector.copy() for n, e in embs.items()}


def error_table(tasks, models, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame([(t, m, float(rng.uniform(0.05, 0.6))) for t in tasks for m in models],
                        columns=["task", "model", "error"])


# --- 1. MODEL2VEC beats d_asym where d_asym is misled ----------------------------------------------


def misled_zoo(tmp_path, tiny_probe, seed: int, n_clusters: int = 3, per_cluster: int = 3, mix: float = 0.4):
    """Tasks in clusters (log-normal Fisher around cluster centres); one expert per cluster.

    Expert j was trained on a task near cluster j: its source embedding sits in log space at
    (1 - mix) log c_j + mix log c_{j+1}, i.e. nearest to cluster j. But its observed errors say it is
    best on cluster j+1 (error 0.1), middling on its own cluster (0.3) and bad elsewhere (0.5), plus
    noise below the gaps. So d_asym picks expert c for a task of cluster c, while the best is expert
    c-1: a consistent per-model bias that a per-model MODEL2VEC shift can learn.
    """
    idx = TaskIndex.create(tmp_path / f"zoo{seed}", probe=tiny_probe)
    rng = np.random.default_rng(seed)
    log_c = rng.normal(0.0, 1.0, (n_clusters, idx.dim))
    tasks, best, task_vec = [], {}, {}
    items = []
    for c in range(n_clusters):
        for q in range(per_cluster):
            name = f"c{c}-{q}"
            e = make_emb(idx, 1e-4 * np.exp(log_c[c] + rng.normal(0, 0.3, idx.dim)), name)
            items.append((name, e, "task"))
            tasks.append(name)
            task_vec[name] = e.vector.copy()
            best[name] = f"m{(c - 1) % n_clusters}"
    idx.add_many(items)
    src_vec = {}
    for j in range(n_clusters):
        log_s = (1 - mix) * log_c[j] + mix * log_c[(j + 1) % n_clusters]
        e = make_emb(idx, 1e-4 * np.exp(log_s + rng.normal(0, 0.3, idx.dim)), f"source-of-m{j}")
        idx.add_model(f"m{j}", e)  # the source is no task row here: no model is excluded in leave-one-out
        src_vec[f"m{j}"] = e.vector.copy()
    rows = []
    for t in tasks:
        c = int(t[1])
        for j in range(n_clusters):
            err = 0.1 if (j + 1) % n_clusters == c else 0.3 if j == c else 0.5
            rows.append((t, f"m{j}", err + 0.03 * rng.random()))
    return idx, pd.DataFrame(rows, columns=["task", "model", "error"]), tasks, best, task_vec, src_vec


@pytest.mark.parametrize("seed", [0, pytest.param(1, marks=pytest.mark.slow), pytest.param(2, marks=pytest.mark.slow)])
def test_model2vec_recovers_the_best_expert_where_d_asym_is_misled(tmp_path, tiny_probe, seed):
    idx, errors, tasks, best, task_vec, src_vec = misled_zoo(tmp_path, tiny_probe, seed)
    # the best expert by construction is the argmin of the table
    wide = errors.pivot(index="task", columns="model", values="error")
    assert all(wide.loc[t].idxmin() == best[t] for t in tasks)
    # d_asym by hand picks the wrong expert on most tasks: the construction misleads it
    models = sorted(src_vec)
    hand_pick = {t: min(models, key=lambda m: hand_asym(task_vec[t], src_vec[m], idx.prior, idx.alpha))
                 for t in tasks}
    hand_top1 = np.mean([hand_pick[t] == best[t] for t in tasks])
    assert hand_top1 <= 0.5

    report = idx.evaluate_selection(errors, progress=False)  # leave-one-out, the fit's own defaults
    s = report.summary
    per = report.per_task.set_index("task")
    assert s["tasks"] == len(tasks) and s["models"] == len(models)
    # the evaluation's d_asym is the hand d_asym
    assert per["asym_model"].to_dict() == hand_pick
    assert s["asym_top1"] == pytest.approx(hand_top1)
    # MODEL2VEC, never trained on the task it picks for, finds the best expert far more often
    m2v_top1 = np.mean([per.at[t, "model2vec_model"] == best[t] for t in tasks])
    assert s["model2vec_top1"] == pytest.approx(m2v_top1)
    assert m2v_top1 >= 0.8, (seed, s)
    assert s["model2vec_error"] < s["asym_error"] - 0.05  # the construction's gaps are 0.2
    assert s["optimal_error"] == pytest.approx(np.mean([wide.loc[t, best[t]] for t in tasks]))
    assert s["chance_error"] == pytest.approx(wide.to_numpy().mean())


def test_fit_starts_from_d_asym_and_learns_the_bias(tmp_path, tiny_probe):
    idx, errors, tasks, best, task_vec, src_vec = misled_zoo(tmp_path, tiny_probe, seed=0)
    models = sorted(src_vec)
    summary = idx.fit_model2vec(errors)
    # theta = 0 is exactly d_asym: top-1 before the fit is the hand d_asym top-1
    hand = np.mean([min(models, key=lambda m: hand_asym(task_vec[t], src_vec[m], idx.prior, idx.alpha)) == best[t]
                    for t in tasks])
    assert summary["top1_before"] == pytest.approx(hand)
    assert summary["top1_after"] >= hand + 0.5 and summary["val_loss"] < summary["initial_val_loss"]
    # every task's own query now gets its best expert, ranked by the fitted embeddings
    for t in tasks:
        hits = idx.select_model(t, k=1)
        assert hits[0].ranked_by == "model2vec"
    assert np.mean([idx.select_model(t, k=1)[0].name == best[t] for t in tasks]) >= hand + 0.5


def test_evaluation_never_picks_a_model_for_its_own_training_task_or_an_excluded_one(tmp_path, tiny_probe):
    idx, _ = small_index(tmp_path, tiny_probe, n_tasks=5)
    idx.add_model("m0", "t0")  # trained on t0 itself
    idx.add_model("m1", "t1")
    idx.add_model("m2", None)
    table = error_table([f"t{i}" for i in range(5)], ["m0", "m1", "m2"], seed=1)
    table.loc[table["model"] == "m0", "error"] = 0.01  # m0 is the best everywhere, t0 included
    table.loc[(table["task"] == "t2") & (table["model"] == "m1"), "error"] = 0.02
    wide = table.pivot(index="task", columns="model", values="error")
    report = idx.evaluate_selection(table, exclude={"t2": ["m0"]}, progress=False, **FAST)
    per = report.per_task.set_index("task")
    for method in ("optimal", "asym", "model2vec"):
        assert per.at["t0", f"{method}_model"] != "m0"  # its own training task
        assert per.at["t2", f"{method}_model"] != "m0"  # excluded
        assert per.at["t3", "optimal_model"] == "m0"
    assert per.at["t0", "optimal_model"] == wide.loc["t0", ["m1", "m2"]].idxmin()
    assert per.at["t2", "optimal_model"] == "m1"
    assert per.at["t0", "chance_error"] == pytest.approx(wide.loc["t0", ["m1", "m2"]].mean())
    assert per.at["t4", "chance_error"] == pytest.approx(wide.loc["t4"].mean())
    with pytest.raises(TaskIndexError, match="every model is excluded for task 't1'"):
        idx.evaluate_selection(table, exclude={"t1": ["m0", "m2"]}, progress=False, **FAST)


def test_a_tasks_own_errors_never_move_its_leave_one_out_model2vec_scores(tmp_path, tiny_probe):
    """Leave-one-out: the fit that scores the models for task t0 is trained on the other tasks only, so
    rewriting t0's own errors leaves its MODEL2VEC scores bit for bit as they were, while every other
    task's fit, which does learn from t0's errors, moves. m1 is the best model on the other tasks, so
    each fit has something to learn (black boxes: only the fit tells them apart)."""
    idx, _ = small_index(tmp_path, tiny_probe, n_tasks=6)
    for j in range(3):
        idx.add_model(f"m{j}", None)
    tasks, models = [f"t{i}" for i in range(6)], ["m0", "m1", "m2"]
    table = error_table(tasks, models, seed=2)
    table.loc[table["model"] == "m1", "error"] = 0.01
    rewritten = table.copy()
    own = rewritten["task"] == "t0"
    rewritten.loc[own, "error"] = [0.3, 0.9, 0.01]  # on t0 alone, m2 is best and m1 worst
    a = idx.evaluate_selection(table, progress=False, **FAST).scores["model2vec"]
    b = idx.evaluate_selection(rewritten, progress=False, **FAST).scores["model2vec"]
    assert np.ptp(a[0]) > 1e-3  # t0's fit moved the models: not the invariance of a fit that stayed at 0
    assert np.array_equal(a[0], b[0])
    assert np.all(np.abs(a[1:] - b[1:]).max(axis=1) > 1e-6)  # t0's errors do reach the other folds


def test_each_leave_one_out_fit_trains_on_every_task_but_the_one_it_scores(tmp_path, tiny_probe, monkeypatch):
    """The folds watched: every call of the fit gets the vectors and errors of all tasks but one, each task
    is left out once, and the MODEL2VEC scores the report gives a task are those of the fit that left it out."""
    idx, vec = small_index(tmp_path, tiny_probe, n_tasks=6)
    for j in range(3):
        idx.add_model(f"m{j}", f"t{j}")
    tasks, models = [f"t{i}" for i in range(6)], ["m0", "m1", "m2"]
    table = error_table(tasks, models, seed=3)
    wide = table.pivot(index="task", columns="model", values="error").loc[tasks, models].to_numpy()
    tv = np.stack([vec[t] for t in tasks])
    mv = np.stack([vec[f"t{j}"] for j in range(3)])
    folds = []
    real_fit = model2vec.fit

    def spy(task_vectors, model_vectors, err, *args, **kwargs):
        f = real_fit(task_vectors, model_vectors, err, *args, **kwargs)
        folds.append((np.array(task_vectors), np.array(err), f))
        return f

    monkeypatch.setattr(model2vec, "fit", spy)
    report = idx.evaluate_selection(table, progress=False, **FAST)
    left_out = []
    for trained_vectors, trained_err, f in folds:
        assert len(trained_vectors) == len(tasks) - 1 == len(trained_err)
        seen = [i for i in range(len(tasks)) if any(np.array_equal(tv[i], v) for v in trained_vectors)]
        assert len(seen) == len(tasks) - 1
        assert np.array_equal(trained_vectors, tv[seen]) and np.array_equal(trained_err, wide[seen])
        (i,) = set(range(len(tasks))) - set(seen)
        m = mv.astype(np.float64) * np.exp(f.theta.astype(np.float64))
        scores = report.scores["model2vec"][i]
        allowed = ~np.isnan(scores)
        assert np.allclose(scores[allowed], distance.asym_to_target(m[allowed], tv[i], idx.alpha, idx.prior),
                           rtol=0, atol=1e-9)
        left_out.append(i)
    assert sorted(left_out) == list(range(len(tasks)))


# --- soft labels and the fit's parametrisation --------------------------------------------------------


def test_soft_labels_match_a_hand_computation():
    err = np.array([[0.1, 0.2, 0.4, 0.3],
                    [0.25, 0.25, 0.25, 0.25],   # a tie: no information, uniform labels
                    [0.5, 0.1, 0.1, 0.9]])

    def hand(row, a):
        mean = sum(row) / len(row)
        sd = math.sqrt(sum((x - mean) ** 2 for x in row) / len(row))
        if sd == 0:
            return [1 / len(row)] * len(row)
        logits = [-a * (x - mean) / sd for x in row]
        top = max(logits)
        ex = [math.exp(v - top) for v in logits]
        return [v / sum(ex) for v in ex]

    got = model2vec.soft_labels(err)  # alpha_s defaults to supp. 4.3's 20
    assert model2vec.ALPHA_S == 20
    for row, g in zip(err, got):
        assert g == pytest.approx(hand(list(row), 20.0), rel=1e-9, abs=1e-12)
    assert got[1] == pytest.approx([0.25] * 4)
    assert got[0].argmax() == 0 and got[0][0] > 0.99  # alpha >> 1: nearly one-hot on the best model
    soft = model2vec.soft_labels(err, alpha_s=1.0)
    for row, g in zip(err, soft):
        assert g == pytest.approx(hand(list(row), 1.0), rel=1e-9)
    assert soft[2][1] == pytest.approx(soft[2][2]) and soft[0][0] < 0.9  # ties share, low alpha is soft


@pytest.mark.parametrize("lr", [0.05, 2.0])
def test_fit_keeps_model_embeddings_positive_and_finite_and_learns_a_planted_bias(lr):
    """Even at a step of 2.0 in log scale the fitted embeddings stay positive and finite, and the fit still
    learns what the errors say: model b is the best on every task, which d_asym alone rarely ranks first."""
    rng = np.random.default_rng(3)
    dim, prior = 32, np.full(32, 1e-6)
    tasks = prior + 1e-4 * np.exp(rng.normal(0, 1.5, (8, dim)))
    models = np.vstack([prior + 1e-4 * np.exp(rng.normal(0, 1.5, (3, dim))), prior])  # the last: a black box
    err = rng.uniform(0.3, 0.9, (8, 4))
    err[:, 1] = rng.uniform(0.05, 0.1, 8)
    f = model2vec.fit(tasks, models, err, prior, 0.15, ["a", "b", "c", "box"], lr=lr, weight_decay=0.0,
                      max_steps=60, patience=60)
    assert f.theta.shape == models.shape and np.isfinite(f.theta).all()
    m = models * np.exp(f.theta.astype(np.float64))
    assert np.isfinite(m).all() and (m > 0).all()
    assert np.isfinite(f.gamma) and f.gamma > 0
    assert f.models == ["a", "b", "c", "box"] and f.alpha == 0.15
    # the distances it ranks with are defined for every (task, model) pair, and rank b first far more often
    before = [distance.asym_to_target(models, t, alpha=0.15, prior=prior) for t in tasks]
    after = [distance.asym_to_target(m, t, alpha=0.15, prior=prior) for t in tasks]
    assert all(np.isfinite(d).all() for d in after)
    assert sum(d.argmin() == 1 for d in before) <= 2
    assert sum(d.argmin() == 1 for d in after) >= 6


# --- 2. select_model ranks by d_asym, or by MODEL2VEC where a fit covers the model ---------------------


def test_select_model_ranks_by_hand_d_asym_with_filters(tmp_path, tiny_probe):
    idx, vec = small_index(tmp_path, tiny_probe)
    rng = np.random.default_rng(11)
    ext = make_emb(idx, rand_fisher(rng, idx.dim, 3e-4), "external")
    idx.add_model("m0", "t0", metadata={"family": "conv"})
    idx.add_model("m1", "t1", metadata={"family": "vit"})
    idx.add_model("m2", "t2", metadata={"family": "conv"})
    idx.add_model("m3", ext, metadata={"family": "vit"})
    idx.add_model("box", None, metadata={"family": "conv"})
    src = {"m0": vec["t0"], "m1": vec["t1"], "m2": vec["t2"], "m3": ext.vector, "box": idx.prior}
    assert idx.alpha == distance.ALPHA == 0.15
    expected = sorted(src, key=lambda m: hand_asym(vec["q"], src[m], idx.prior, 0.15))

    hits = idx.select_model("q", k=10)
    assert [h.name for h in hits] == expected  # only model rows, all of them, best first
    for h in hits:
        assert h.kind == "model" and h.ranked_by == "asym"
        assert h.distance == pytest.approx(hand_asym(vec["q"], src[h.name], idx.prior, 0.15), abs=1e-9)
        assert h.complexity == pytest.approx(float(distance.complexity(src[h.name].astype(np.float64),
                                                                       idx.prior.astype(np.float64))), abs=1e-9)
    assert [h.name for h in idx.select_model("q", k=2)] == expected[:2]
    # an Embedding query ranks the same as its row name
    q_emb = idx.get("q")[0]
    assert [h.name for h in idx.select_model(q_emb, k=10)] == expected
    conv = [m for m in expected if m in ("m0", "m2", "box")]
    got = idx.select_model("q", k=10, where={"family": "conv"})
    assert [h.name for h in got] == conv and all(h.metadata["family"] == "conv" for h in got)
    assert idx.select_model("q", where={"family": "none-such"}) == []
    with pytest.raises(TaskIndexError, match="positive integer"):
        idx.select_model("q", k=0)


def test_select_model_uses_the_fit_only_for_the_models_it_covers(tmp_path, tiny_probe):
    idx, vec = small_index(tmp_path, tiny_probe)
    for j in range(3):
        idx.add_model(f"m{j}", f"t{j}")
    errors = error_table([f"t{i}" for i in range(6)], ["m0", "m1", "m2"])
    before = {h.name: h.distance for h in idx.select_model("q")}
    idx.fit_model2vec(errors, max_steps=30, patience=30, weight_decay=0.0)
    hits = idx.select_model("q")
    assert {h.name for h in hits} == {"m0", "m1", "m2"} and all(h.ranked_by == "model2vec" for h in hits)
    assert any(abs(h.distance - before[h.name]) > 1e-6 for h in hits)  # the fit moved the models
    assert sorted(idx.model2vec["models"]) == ["m0", "m1", "m2"]

    rng = np.random.default_rng(5)
    late = make_emb(idx, rand_fisher(rng, idx.dim), "late-task")
    idx.add_model("late", late)  # added after the fit: plain d_asym
    idx.add_model("m1", "t3", replace=True)  # replaced after the fit: its fitted bias no longer applies
    hits = {h.name: h for h in idx.select_model("q", k=10)}
    assert hits["late"].ranked_by == "asym" and hits["m1"].ranked_by == "asym"
    assert hits["m0"].ranked_by == "model2vec" and hits["m2"].ranked_by == "model2vec"
    assert hits["late"].distance == pytest.approx(hand_asym(vec["q"], late.vector, idx.prior, idx.alpha), abs=1e-9)
    assert hits["m1"].distance == pytest.approx(hand_asym(vec["q"], vec["t3"], idx.prior, idx.alpha), abs=1e-9)
    assert hits["m1"].metadata["source_task"] == "t3"
    order = [h.distance for h in idx.select_model("q", k=10)]
    assert order == sorted(order)


# --- 3. the fit persists ---------------------------------------------------------------------------


def test_fit_persists_across_reopen_and_compact(tmp_path, tiny_probe):
    idx, _ = small_index(tmp_path, tiny_probe)
    for j in range(3):
        idx.add_model(f"m{j}", f"t{j}")
    idx.fit_model2vec(error_table([f"t{i}" for i in range(6)], ["m0", "m1", "m2"]), **FAST)
    fit = idx.model2vec
    assert fit["models"] == ["m0", "m1", "m2"] and "theta" not in fit and fit["alpha"] == idx.alpha
    key = lambda hits: [(h.name, h.distance, h.ranked_by) for h in hits]  # noqa: E731
    hits = key(idx.select_model("q"))
    assert all(r == "model2vec" for _, _, r in hits)
    idx.close()

    idx = TaskIndex.open(tmp_path / "i")
    assert idx.model2vec == fit and key(idx.select_model("q")) == hits
    idx.remove("t5")  # something for compact to fold away
    removed = idx.compact()
    assert removed > 0
    assert idx.verify() == []
    theta = tmp_path / "i" / "data" / idx._v.manifest.model2vec["theta"]["name"]
    assert theta.is_file()
    assert idx.model2vec == fit and key(idx.select_model("q")) == hits
    assert json.loads(json.dumps(idx.info()))["model2vec"].startswith("3 of 3 fitted models live")
    idx.close()
    with TaskIndex.open(tmp_path / "i", readonly=True) as again:
        assert again.model2vec == fit and key(again.select_model("q")) == hits and again.verify() == []


def test_an_altered_fit_file_fails_the_selection_that_reads_it_not_a_plain_query(tmp_path, tiny_probe):
    """MODEL2VEC's parameters are read, and checked, on the first selection: a query never pays for them."""
    idx, _ = small_index(tmp_path, tiny_probe)
    for j in range(3):
        idx.add_model(f"m{j}", f"t{j}")
    idx.fit_model2vec(error_table([f"t{i}" for i in range(6)], ["m0", "m1", "m2"]), **FAST)
    theta = tmp_path / "i" / "data" / idx._v.manifest.model2vec["theta"]["name"]
    idx.close()
    raw = bytearray(theta.read_bytes())
    raw[-1] ^= 0x01  # same size, one bit flipped in the last float
    theta.write_bytes(bytes(raw))
    with TaskIndex.open(tmp_path / "i", readonly=True) as again:
        assert again.query("q", k=2)
        with pytest.raises(IndexCorruptError, match=re.escape(theta.name)):
            again.select_model("q")
        assert any(theta.name in problem for problem in again.verify())


# --- 4. alpha ------------------------------------------------------------------------------------------


def test_alpha_moves_more_complex_sources_up_and_set_alpha_persists(tmp_path, tiny_probe):
    idx = TaskIndex.create(tmp_path / "i", probe=tiny_probe)
    rng = np.random.default_rng(7)
    simple_f = 1e-6 * np.exp(rng.normal(0, 0.5, idx.dim))  # barely above the prior: low complexity
    simple = make_emb(idx, simple_f, "simple")
    query = make_emb(idx, simple_f * np.exp(rng.normal(0, 0.3, idx.dim)), "query")
    rich = make_emb(idx, rand_fisher(rng, idx.dim, 1e-3), "rich")  # far from the query, very complex
    idx.add_many([("simple", simple), ("query", query), ("rich", rich)])
    idx.add_model("simple-model", "simple")
    idx.add_model("rich-model", "rich")
    p = idx.prior.astype(np.float64)
    d_s, d_r = (distance.d_sym(e.vector.astype(np.float64), query.vector.astype(np.float64)) for e in (simple, rich))
    c_s, c_r = (float(distance.complexity(e.vector.astype(np.float64), p)) for e in (simple, rich))
    assert d_s < d_r and c_r > c_s  # the simpler source is nearer, the richer one more complex
    flip = (d_r - d_s) / (c_r - c_s)  # the alpha where the two scores cross
    big = 2 * flip + 0.5

    assert [h.name for h in idx.select_model("query", alpha=0.0)] == ["simple-model", "rich-model"]
    hits = idx.select_model("query", alpha=big)
    assert [h.name for h in hits] == ["rich-model", "simple-model"]
    assert [h.distance for h in hits] == pytest.approx([d_r - big * c_r, d_s - big * c_s], abs=1e-9)
    default = [h.name for h in idx.select_model("query")]
    assert default == (["rich-model", "simple-model"] if idx.alpha > flip else ["simple-model", "rich-model"])

    version = idx.version
    idx.set_alpha(big)
    assert idx.alpha == big and idx.version == version + 1
    idx.close()
    with TaskIndex.open(tmp_path / "i") as idx:
        assert idx.alpha == big and idx.info()["alpha"] == big
        hits = idx.select_model("query")
        assert [h.name for h in hits] == ["rich-model", "simple-model"]
        assert hits[0].distance == pytest.approx(d_r - big * c_r, abs=1e-9)
        for bad in (-0.1, float("nan"), float("inf"), "0.3", True, None):
            with pytest.raises(TaskIndexError, match="alpha must be a finite number >= 0"):
                idx.set_alpha(bad)
        assert idx.alpha == big
        idx.set_alpha(0)
        assert idx.alpha == 0.0 and idx.select_model("query")[0].name == "simple-model"


def test_select_model_refuses_a_bad_alpha(tmp_path, tiny_probe):
    idx, _ = small_index(tmp_path, tiny_probe)
    idx.add_model("m0", "t0")
    idx.add_model("m1", "t1")
    for bad in (-1.0, float("nan"), "0.3"):
        with pytest.raises(TaskIndexError, match="alpha"):
            idx.select_model("q", alpha=bad)


# --- 5. add_model ----------------------------------------------------------------------------------------


def test_add_model_sources(tmp_path, tiny_probe):
    idx, vec = small_index(tmp_path, tiny_probe)
    idx.add_model("from-row", "t0", metadata={"arch": "cnn"})
    stored, meta = idx.get("from-row")
    assert np.array_equal(idx.vectors(["from-row"])[0], vec["t0"]) and np.array_equal(stored.vector, vec["t0"])
    assert meta["kind"] == "model" and meta["source_task"] == "t0" and meta["arch"] == "cnn"
    assert meta["complexity"] == pytest.approx(float(distance.complexity(vec["t0"].astype(np.float64),
                                                                         idx.prior.astype(np.float64))), abs=1e-7)

    rng = np.random.default_rng(2)
    ext = make_emb(idx, rand_fisher(rng, idx.dim), "imagenet-birds")
    idx.add_model("from-emb", ext)
    assert np.array_equal(idx.vectors(["from-emb"])[0], ext.vector)
    assert idx.get("from-emb")[1]["source_task"] == "imagenet-birds"
    assert "imagenet-birds" not in idx  # no task row is made for it

    idx.add_model("box", None)
    assert np.array_equal(idx.vectors(["box"])[0], idx.prior)
    meta = idx.get("box")[1]
    assert meta["kind"] == "model" and "source_task" not in meta
    assert meta["complexity"] == pytest.approx(0.0, abs=1e-12)
    assert sorted(idx.names("model")) == ["box", "from-emb", "from-row"]
    assert "from-row" not in idx.names("task")

    idx.remove("t0")  # the model keeps a copy of its source
    assert np.array_equal(idx.vectors(["from-row"])[0], vec["t0"])

    n = len(idx)
    with pytest.raises(TaskIndexError, match="source task 'nope' is not a task row"):
        idx.add_model("x", "nope")
    with pytest.raises(TaskIndexError, match="source task 'box' is not a task row"):
        idx.add_model("x", "box")  # a model row is no training task
    with pytest.raises(TaskIndexError, match="source must be a task row name, an Embedding or None; got int"):
        idx.add_model("x", 3)
    with pytest.raises(TaskIndexError, match="got ndarray"):
        idx.add_model("x", vec["t1"])
    with pytest.raises(TaskIndexError, match="already exists"):
        idx.add_model("box", "t1")
    assert len(idx) == n and "x" not in idx


# --- 6. errors tables ---------------------------------------------------------------------------------


def test_bad_errors_tables_are_one_line_errors(tmp_path, tiny_probe):
    idx, _ = small_index(tmp_path, tiny_probe, n_tasks=5)
    idx.add_model("m0", "t0")
    idx.add_model("m1", "t1")
    idx.add_model("m2", None)
    tasks, models = [f"t{i}" for i in range(5)], ["m0", "m1", "m2"]
    good = error_table(tasks, models)

    def with_error(i, value):
        t = good.astype({"error": object})
        t.loc[i, "error"] = value
        return t

    missing = tmp_path / "nope.csv"
    junk = tmp_path / "junk.parquet"
    junk.write_bytes(b"not parquet at all")
    cases = [
        (pd.concat([good, pd.DataFrame([("nope", "m0", 0.1)], columns=good.columns)]),
         r"names 1 task\(s\) that are not task rows of the index \(e\.g\. nope\)"),
        (pd.concat([good, pd.DataFrame([("t0", "ghost", 0.1)], columns=good.columns)]),
         r"names 1 model\(s\) that are not model rows .*\(e\.g\. ghost\).*add_model"),
        (pd.concat([good, pd.DataFrame([("m0", "m1", 0.1)], columns=good.columns)]),
         r"task\(s\) that are not task rows .*\(e\.g\. m0\)"),  # a model row named as a task
        (good.drop(index=5), r"no error for \('t1', 'm2'\)"),
        (with_error(0, np.nan), r"error for \('t0', 'm0'\) is nan: errors must be finite numbers >= 0"),
        (with_error(4, -0.5), r"error for \('t1', 'm1'\) is -0\.5: errors must be finite numbers >= 0"),
        (with_error(1, "high"), r"is 'high': errors must be finite numbers >= 0"),
        (good[good["model"] == "m0"], r"errors table has one model \(m0\)"),
        (pd.concat([good, good.iloc[[3]]]), r"\('t1', 'm0'\) appears 2 times"),
        (good[good["task"].isin(tasks[:3])], r"errors table has 3 task\(s\): MODEL2VEC needs at least 4"),
        (good.drop(columns="error"), r"lacks column\(s\) error"),
        (good.rename(columns={"model": "expert"}), r"lacks column\(s\) model"),
        (str(missing), r"errors table '.*nope\.csv' does not exist"),
        (junk, r"cannot read errors table"),
        (good.to_dict("records"), r"errors must be a DataFrame or a \.csv/\.parquet path; got list"),
    ]
    version = idx.version
    for table, pattern in cases:
        for call in (idx.fit_model2vec, idx.evaluate_selection):
            with pytest.raises(TaskIndexError, match=pattern) as info:
                call(table, **FAST)
            assert "\n" not in str(info.value), str(info.value)
    assert idx.version == version and idx.model2vec is None  # nothing was committed


def test_csv_parquet_and_dataframe_give_the_same_fit(tmp_path, tiny_probe):
    idx, _ = small_index(tmp_path, tiny_probe, n_tasks=5)
    idx.add_model("m0", "t0")
    idx.add_model("m1", None)
    table = error_table([f"t{i}" for i in range(5)], ["m0", "m1"], seed=4)
    table.to_csv(tmp_path / "e.csv", index=False)
    table.sample(frac=1.0, random_state=0).to_parquet(tmp_path / "e.parquet")  # row order does not matter
    summaries = []
    for source in (table, str(tmp_path / "e.csv"), tmp_path / "e.parquet"):
        s = idx.fit_model2vec(source, **FAST)
        s.pop("seconds")
        summaries.append(s)
    assert summaries[0] == summaries[1] == summaries[2]
    assert summaries[0]["tasks"] == 5 and summaries[0]["models"] == 2


def test_selecting_without_model_rows_names_add_model(tmp_path, tiny_probe):
    idx, _ = small_index(tmp_path, tiny_probe, n_tasks=4)
    with pytest.raises(TaskIndexError, match=r"no model rows: add experts with add_model") as info:
        idx.select_model("q")
    assert "\n" not in str(info.value)
    with pytest.raises(TaskIndexError, match="not model rows"):
        idx.fit_model2vec(error_table(["t0", "t1", "t2", "t3"], ["a", "b"]))


def test_an_infinite_error_is_refused(tmp_path, tiny_probe):
    idx, _ = small_index(tmp_path, tiny_probe, n_tasks=4)
    idx.add_model("m0", "t0")
    idx.add_model("m1", "t1")
    table = error_table(["t0", "t1", "t2", "t3"], ["m0", "m1"])
    table.loc[0, "error"] = np.inf
    with pytest.raises(TaskIndexError, match="errors must be"):
        idx.fit_model2vec(table, **FAST)


# --- 7. the CLI -------------------------------------------------------------------------------------------


def test_cli_add_select_fit_eval_mirror_the_api(tmp_path, tiny_probe):
    idx, vec = small_index(tmp_path, tiny_probe, n_tasks=5)
    idx.add_model("m0", "t0")
    idx.add_model("m1", "t1", metadata={"family": "conv"})
    idx.close()
    path = str(tmp_path / "i")
    r = CliRunner()

    res = r.invoke(cli, ["add", path, "m2", "--kind", "model", "--source", "t2", "--meta", "family=conv", "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.output)["kind"] == "model"
    with TaskIndex.open(path, readonly=True) as idx:
        assert np.array_equal(idx.vectors(["m2"])[0], vec["t2"])
        assert idx.get("m2")[1]["source_task"] == "t2" and idx.get("m2")[1]["kind"] == "model"
        api = idx.select_model("q", k=2)
        api_conv = idx.select_model("q", k=5, where={"family": "conv"})
    hand = sorted(["m0", "m1", "m2"], key=lambda m: hand_asym(vec["q"], vec["t" + m[1]], tiny_prior(path), 0.15))

    res = r.invoke(cli, ["select", path, "--name", "q", "-k", "2", "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)["hits"]
    assert [h["name"] for h in out] == [h.name for h in api] == hand[:2]
    assert [h["distance"] for h in out] == pytest.approx([h.distance for h in api], abs=1e-12)
    assert [h["ranked_by"] for h in out] == ["asym", "asym"]
    out = json.loads(r.invoke(cli, ["select", path, "--name", "q", "--where", "family=conv", "--json"]).output)
    assert [h["name"] for h in out["hits"]] == [h.name for h in api_conv] == [m for m in hand if m != "m0"]

    errors = error_table([f"t{i}" for i in range(4)], ["m0", "m1"], seed=9)
    errors.to_csv(tmp_path / "errors.csv", index=False)
    shutil.copytree(path, tmp_path / "api-copy")
    res = r.invoke(cli, ["model2vec", "fit", path, str(tmp_path / "errors.csv"), "--json"])
    assert res.exit_code == 0, res.output
    cli_fit = json.loads(res.output)
    with TaskIndex.open(tmp_path / "api-copy") as copy:
        api_fit = copy.fit_model2vec(str(tmp_path / "errors.csv"))
        api_eval = copy.evaluate_selection(str(tmp_path / "errors.csv"), progress=False)
    with TaskIndex.open(path, readonly=True) as idx:
        stored = idx.model2vec
        assert cli_fit["version"] == idx.version
        hits = {h.name: h.ranked_by for h in idx.select_model("q")}
    assert set(cli_fit) - {"version"} == set(api_fit) == set(stored["summary"])
    assert {k: v for k, v in cli_fit.items() if k not in ("version", "seconds")} == \
        {k: v for k, v in api_fit.items() if k != "seconds"}
    assert stored["summary"] == {k: v for k, v in cli_fit.items() if k != "version"}
    assert stored["models"] == ["m0", "m1"]
    # a fit that lowered its held-out loss ranks the models it covers; one that did not says d_asym ranked them
    covered = "model2vec" if stored["summary"]["improved"] else "asym"
    assert stored["summary"]["improved"] == (stored["summary"]["best_step"] > 0)
    assert hits == {"m0": covered, "m1": covered, "m2": "asym"}

    res = r.invoke(cli, ["model2vec", "eval", path, str(tmp_path / "errors.csv"), "--json"])
    assert res.exit_code == 0, res.output
    cli_eval = json.loads(res.output)
    assert cli_eval["summary"] == pytest.approx(api_eval.summary)
    assert [row["task"] for row in cli_eval["per_task"]] == ["t0", "t1", "t2", "t3"]
    text = r.invoke(cli, ["model2vec", "eval", path, str(tmp_path / "errors.csv")])
    assert text.exit_code == 0 and "model2vec" in text.output and "Traceback" not in text.output


def tiny_prior(path) -> np.ndarray:
    with TaskIndex.open(path, readonly=True) as idx:
        return idx.prior.copy()


def test_cli_user_errors_are_one_line_with_status_2(tmp_path, tiny_probe):
    idx, _ = small_index(tmp_path, tiny_probe, n_tasks=4)
    idx.add_model("m0", "t0")
    idx.add_model("m1", "t1")
    idx.close()
    path = str(tmp_path / "i")
    bare, _ = small_index(tmp_path / "bare", tiny_probe, n_tasks=4)
    bare.close()
    bad = error_table(["t0", "t1", "t2", "t3"], ["m0", "m1"])
    bad.loc[2, "error"] = -1.0
    bad.to_csv(tmp_path / "bad.csv", index=False)
    r = CliRunner()

    assert_user_error(r.invoke(cli, ["add", path, "x", "--source", "t0"]),
                      "--source names a model's training task: add it with --kind model")
    assert_user_error(r.invoke(cli, ["add", path, "x", "--kind", "model", "--source", "nope"]),
                      "source task 'nope' is not a task row")
    assert_user_error(r.invoke(cli, ["add", path, "x", "--kind", "model", "--source", "m0"]),
                      "source task 'm0' is not a task row")
    assert_user_error(r.invoke(cli, ["select", path, "--name", "nope"]), "no row named 'nope'")
    assert_user_error(r.invoke(cli, ["select", str(tmp_path / "bare" / "i"), "--name", "q"]),
                      "the index has no model rows")
    for command in ("fit", "eval"):
        assert_user_error(r.invoke(cli, ["model2vec", command, path, str(tmp_path / "none.csv")]), "does not exist")
        assert_user_error(r.invoke(cli, ["model2vec", command, path, str(tmp_path / "bad.csv")]),
                          "errors must be finite numbers >= 0")
    res = r.invoke(cli, ["select", path, "--name", "q", "--alpha", "-1"])
    assert res.exit_code == 2 and "Traceback" not in res.output
    with TaskIndex.open(path, readonly=True) as idx:
        assert "x" not in idx and idx.model2vec is None and len(idx.names("model")) == 2


def test_model2vec_gradient_equals_autograd_of_the_same_loss():
    """The fit's hand-written gradient of d_asym against torch autograd of distance.py's formula."""
    import torch

    from taskindex.select.model2vec import _Asym

    gen = torch.Generator().manual_seed(0)
    lt = torch.randn(5, 40, generator=gen, dtype=torch.float64)
    lp = torch.randn(40, generator=gen, dtype=torch.float64)
    lm = torch.randn(3, 40, generator=gen, dtype=torch.float64)
    g = torch.randn(4, 3, generator=gen, dtype=torch.float64)
    rows = torch.tensor([0, 2, 3, 4])
    asym = _Asym(lt, lp, 0.15)
    d = asym(lm)
    hand = asym.grad(rows, g)

    def dsym(a, b):  # distance.py: cosine distance of r and 1 - r, r = m / (m + t)
        ma, mb = a.exp(), b.exp()
        r = ma / (ma + mb)
        return 1 - torch.nn.functional.cosine_similarity(r, 1 - r, dim=-1)

    x = lm.clone().requires_grad_()
    ref = dsym(x[None, :, :], lt[:, None, :]) - 0.15 * dsym(x, lp[None, :])[None, :]
    assert torch.allclose(d, ref.detach(), atol=1e-12)
    (ref[rows] * g).sum().backward()
    assert torch.allclose(hand, x.grad, rtol=1e-8, atol=1e-10)


def test_fitted_models_keep_the_alpha_of_their_fit(tmp_path, tiny_probe):
    idx, vec = small_index(tmp_path, tiny_probe, n_tasks=6)
    for m in ("m0", "m1"):
        idx.add_model(m, "t" + m[1])
    idx.fit_model2vec(error_table([f"t{i}" for i in range(6)], ["m0", "m1"]))
    idx.add_model("late", "t2")  # after the fit: scored with the call's alpha
    fitted = {h.name: h.distance for h in idx.select_model("q", alpha=0.15) if h.ranked_by == "model2vec"}
    moved = {h.name: h.distance for h in idx.select_model("q", alpha=2.0)}
    for name, score in fitted.items():
        assert moved[name] == pytest.approx(score, abs=1e-12)
    assert moved["late"] == pytest.approx(hand_asym(vec["q"], vec["t2"], idx.prior, 2.0), abs=1e-9)
    assert idx.info()["model2vec"].startswith("2 of 2 fitted models live")
    idx.add_model("m1", "t3", replace=True)  # a replaced model is no longer the row the fit learned
    assert idx.info()["model2vec"].startswith("1 of 2 fitted models live")


def test_fit_options_are_checked(tmp_path, tiny_probe):
    idx, _ = small_index(tmp_path, tiny_probe, n_tasks=6)
    idx.add_model("m0", "t0")
    idx.add_model("m1", "t1")
    table = error_table([f"t{i}" for i in range(6)], ["m0", "m1"])
    version = idx.version
    for options, pattern in (({"epochs": 3}, "unknown MODEL2VEC option"), ({"holdout": 1.0}, "holdout=1.0"),
                             ({"holdout": 0.9}, "leaves 1 of 6 tasks"), ({"lr": 0}, "lr=0"),
                             ({"max_steps": 0}, "max_steps=0")):
        with pytest.raises(TaskIndexError, match=pattern):
            idx.fit_model2vec(table, **options)
    assert idx.version == version and idx.model2vec is None


def test_cli_alpha_shows_and_stores_the_index_alpha(tmp_path, tiny_probe):
    from click.testing import CliRunner

    from taskindex.cli import cli

    idx, _ = small_index(tmp_path, tiny_probe)
    idx.close()
    r = CliRunner()
    out = r.invoke(cli, ["alpha", str(tmp_path / "i"), "--json"])
    assert out.exit_code == 0 and json.loads(out.output)["alpha"] == 0.15
    out = r.invoke(cli, ["alpha", str(tmp_path / "i"), "0.4", "--json"])
    assert out.exit_code == 0, out.output
    with TaskIndex.open(tmp_path / "i", readonly=True) as again:
        assert again.alpha == 0.4
    assert r.invoke(cli, ["alpha", str(tmp_path / "i"), "-1"]).exit_code == 2
