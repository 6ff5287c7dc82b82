"""Heads that are right by default (issue 12): scaling from the encoder's declaration, regularisation chosen by
internal CV, the majority baseline beside every score, loud warnings for heads that learned nothing, `--model auto`,
and compare/curve that report progress, take a budget and agree with `fit`."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest

import heads
from conftest import cli
from embedstore.errors import InputError, WeakHeadWarning
from heads.estimators import make

BASES = np.array(list("ACGT"))


def dna_rows(n: int, seed: int = 0) -> list[dict]:
    """3 unbalanced classes (50/30/20%) whose base composition differs slightly: kmer:4 frequencies are small
    (about 1/117 for 120 bp) and close together, the scale at which a fixed C=1 sees nothing."""
    rng = np.random.default_rng(seed)
    bias = {"a": [0.28, 0.22, 0.22, 0.28], "b": [0.22, 0.28, 0.28, 0.22], "c": [0.25, 0.25, 0.22, 0.28]}
    labels = rng.choice(["a", "b", "c"], size=n, p=[0.5, 0.3, 0.2])
    return [{"id": f"s{i}", "text": "".join(rng.choice(BASES, size=120, p=bias[y])), "label": str(y)}
            for i, y in enumerate(labels)]


@pytest.fixture
def dna(store):
    store.ingest(dna_rows(600), dataset="train", encoder="kmer:4", label_column="label", progress=False)
    store.ingest(dna_rows(300, seed=1), dataset="test", encoder="kmer:4", label_column="label", progress=False)
    return store


def test_encoders_declare_unit_length_and_the_store_records_it(dna):
    from embedstore.encoders import get_encoder
    from embedstore.store import catalog
    assert get_encoder("hashing:32").unit_norm and get_encoder("kmer:2?norm=l2").unit_norm
    assert not get_encoder("kmer:4").unit_norm and not get_encoder("tiara").unit_norm
    dna.ingest(dna_rows(20), dataset="h", encoder="hashing:32", progress=False)
    recs = {r.spec: r.unit_norm for r in catalog.encoder_records(dna)}
    assert recs == {"kmer:4": False, "hashing:32": True}


def test_defaults_do_not_collapse_on_small_unnormalised_features(dna):
    X, y = dna.features("train", encoder="kmer:4")
    Xte, yte = dna.features("test", encoder="kmer:4")
    old = make("logreg", {"C": 1.0, "normalize": "none"}).fit(X, y)  # the defaults before: one class
    assert len(set(old.predict(Xte))) == 1
    for model in ("logreg", "svm", "mlp"):
        est = make(model).fit(X, y)
        pred = est.predict(Xte)
        assert len(set(pred)) == 3, model
        assert np.mean(pred == yte) > 0.6, model  # the majority class is 0.51
    head, scores = heads.fit(dna, "train")
    assert head.meta["auto"]["normalize"] in ("l2", "standard")  # kmer:4 declared not unit length
    assert scores["mcc"] > 0.2 and "warning" not in scores
    assert heads.evaluate(dna, head.name, "test")["mcc"] > 0.2


def test_a_head_forced_to_one_class_warns_loudly(dna, tmp_path):
    with pytest.warns(WeakHeadWarning, match="single class"):
        _, scores = heads.fit(dna, "train", name="weak", params={"C": 1e-6, "normalize": "none"})
    assert scores["predicted_classes"] == 1 and "--search" in scores["warning"]
    assert scores["baseline"]["accuracy"] == pytest.approx(scores["accuracy"])
    with pytest.warns(WeakHeadWarning):
        m = heads.evaluate(dna, "weak", "test")
    assert m["baseline"]["from"] == "the training majority class" and m["baseline"]["predicts"] == "a"
    with warnings.catch_warnings():
        warnings.simplefilter("error", WeakHeadWarning)
        heads.fit(dna, "train", name="fine")  # a good head: no warning
    out = cli("heads", "eval", "--head", "weak", "--dataset", "test", store=dna.path)
    assert "majority_baseline" in out.stdout and "WARNING: the head predicts a single class" in out.stderr
    assert "UserWarning" not in out.stderr  # one WARNING line, not Python's warning too


def test_chosen_parameters_are_stored_shown_and_reloaded(dna):
    head, _ = heads.fit(dna, "train", name="lr")
    tuned = head.meta["auto"]["tuned"]
    assert tuned["param"] == "C" and len(tuned["path"]) >= 3 and tuned["value"] == head.meta["auto"]["C"]
    assert {p["scaling"] for p in tuned["path"]} == {"l2", "standard"}  # both scalings tried for kmer:4
    again = heads.load(dna, "lr")
    X, y = dna.features("train", encoder="kmer:4")
    fresh = make("logreg").fit(X, y)  # the same choice made again in memory, never saved
    def timeless(t: dict) -> dict:
        return {**t, "path": [{k: v for k, v in p.items() if k != "seconds"} for p in t["path"]]}
    assert timeless(again.model.tuning_) == timeless(json.loads(json.dumps(fresh.tuning_)))
    assert again.model.C_ == fresh.C_ == tuned["value"] and again.model.normalize_ == fresh.normalize_
    Xte, _ = dna.features("test", encoder="kmer:4")
    assert (again.predict(Xte) == fresh.predict(Xte)).all()
    out = cli("heads", "fit", "--dataset", "train", "--name", "lr2", store=dna.path)
    assert "chosen from the data: scaling" in out.stdout and "C=" in out.stdout and "majority_baseline" in out.stdout


def test_param_overrides_the_automatic_choice(dna):
    head, _ = heads.fit(dna, "train", name="fixed", params={"C": 0.5, "normalize": "l2"})
    assert head.model.C_ == 0.5 and head.model.normalize_ == "l2" and "tuned" not in head.meta["auto"]
    knn, _ = heads.fit(dna, "train", model="knn", name="k7", params={"n_neighbors": 7})
    assert knn.model.n_neighbors_ == 7
    auto_knn, _ = heads.fit(dna, "train", model="knn", name="kauto")
    assert auto_knn.model.n_neighbors_ in (1, 3, 5, 9, 15, 25, 45, 75)
    out = cli("heads", "fit", "--dataset", "train", "--param", "C=2", "--json", store=dna.path)
    assert json.loads(out.stdout)["auto"] == {"normalize": "standard"}


def test_unit_length_declaration_leaves_features_unscaled(store):
    from test_heads_toolkit import reviews
    store.ingest(reviews(200, 0), dataset="r", encoder="hashing:32", label_column="label", progress=False)
    store.ingest(reviews(200, 0), dataset="r", encoder="hashing:64?ngram=1", label_column="label", progress=False)
    enc = "hashing:32+hashing:64?ngram=1"  # rows of norm sqrt(2), each block declared unit length
    head, _ = heads.fit(store, "r", encoder=enc, params={"C": 1.0})
    assert head.meta["params"]["normalize"] == "none" and head.meta["auto"]["normalize"] == "none"
    X, y = store.features("r", encoder=enc)
    assert make("logreg", {"C": 1.0}).fit(X, y).normalize_ == "standard"  # measured alone: not unit rows
    tuned, _ = heads.fit(store, "r", encoder=enc, name="tuned")  # C tuned: both scalings scored
    assert {p["scaling"] for p in tuned.meta["auto"]["tuned"]["path"]} == {"l2", "standard"}


def test_model_auto_ranks_the_cheap_heads_and_keeps_the_best(dna):
    head, scores = heads.fit(dna, "train", model="auto", name="best")
    ranked = head.meta["models_ranked"]
    assert {"logreg", "svm", "knn"} <= {r["model"] for r in ranked}
    _, held_out = heads.fit(dna, "train", model=head.meta["model"], name="again")  # same protocol, same splits
    kept = {r["model"]: r["macro_f1"] for r in ranked}[head.meta["model"]]
    assert scores["macro_f1"] == pytest.approx(held_out["macro_f1"]) == pytest.approx(kept)
    best = ranked[0]  # the best is kept, or its lead over the default logreg is not significant
    assert head.meta["model"] == best["model"] or (
        head.meta["model"] == "logreg" and best["decision"].startswith("not kept")
        and best["lead_over_default"] <= 1.96 * best["lead_se"])
    assert "selection score" in scores["selection"] and "selection" not in held_out
    out = cli("heads", "fit", "--dataset", "train", "--model", "auto", store=dna.path)
    assert "model auto: ranked" in out.stdout and "selection score" in out.stdout


def test_compare_reports_the_baseline_progress_and_agrees_with_fit(dna):
    seen = []
    rows = heads.compare(dna, "train", model="logreg,knn", cv=3, progress=lambda r, i, n, t: seen.append((i, n)))
    assert seen == [(1, 2), (2, 2)]
    assert rows.baseline["model"] == "majority-baseline" and rows.baseline["cv_mcc"] == 0
    best = rows[0]
    _, scores = heads.fit(dna, "train", model=best["model"], cv=3, name="refit")
    assert scores["macro_f1"] == pytest.approx(best["cv_macro_f1"], abs=1e-12)
    out = cli("heads", "compare", "--dataset", "train", "--encoder", "kmer:4", "--model", "logreg,knn", "--cv", "3",
              store=dna.path)
    assert "[1/2]" in out.stderr and "ETA" in out.stderr and "majority-baseline" in out.stdout


def test_compare_and_curve_budgets_stop_starting_rows(dna):
    rows = heads.compare(dna, "train", model="logreg,svm,knn", cv=3, budget=1e-9)
    assert len(rows) == 1 and "not run: -/svm, -/knn" in rows.notes[0]
    curve = heads.curve(dna, "train", sizes=(30, 60, 120), budget=1e-9, repeats=1)
    assert len(curve) == 1 and "baseline_accuracy" in curve[0]
    with pytest.raises(InputError, match="budget"):
        heads.compare(dna, "train", model="logreg", budget=0)


def test_compare_leaves_lightgbm_out_on_wide_large_feature_sets():
    from heads.comparison import default_models
    assert "lightgbm" in default_models(1000, 64, 2)[0]
    models, note = default_models(60_000, 384, 2)
    assert "lightgbm" not in models and "--model" in note


def test_search_score_is_labelled_a_selection_score(dna):
    _, scores = heads.fit(dna, "train", name="s", search_params=True, budget=30)
    assert "selection score" in scores["selection"]
    _, plain = heads.fit(dna, "train", name="p")
    assert "selection" not in plain


def test_a_store_from_before_the_declaration_reads_and_upgrades(tmp_path):
    import duckdb

    import embedstore
    from embedstore.store import catalog
    path = tmp_path / "old"
    with embedstore.open(path) as s:
        s.ingest(dna_rows(120), dataset="train", encoder="kmer:4", label_column="label", progress=False)
    db_file = path / "embedstore.duckdb"
    con = duckdb.connect(str(db_file))  # as an older embedstore left it: no m003
    con.execute("ALTER TABLE encoders DROP COLUMN unit_norm")
    con.execute("DELETE FROM _migrations WHERE name = 'm003_unit_norm'")
    con.close()
    with embedstore.open(path, read_only=True) as s:
        assert [r.unit_norm for r in catalog.encoder_records(s)] == [None]
        rows = heads.compare(s, "train", model="logreg", cv=2)  # undeclared: the head measures the rows
        assert rows[0]["cv_mcc"] > 0
    with embedstore.open(path) as s:  # a writer applies m003; the next ingest with the encoder declares it
        s.ingest(dna_rows(10, seed=5), dataset="more", encoder="kmer:4", label_column="label", progress=False)
        assert [r.unit_norm for r in catalog.encoder_records(s)] == [False]


def test_tuning_follows_the_best_value_past_the_ends_of_the_grid():
    from heads.tuning import tune
    codes = np.array([0, 1] * 50)
    grid = (0.01, 0.1, 1.0, 10.0)

    def run(curve):
        return tune("C", grid, lambda v, fold, tr, te, state: curve(np.log10(v)), codes, refine=False)
    falling = run(lambda x: -x)
    assert falling.value == 0.0001 and [p["value"] for p in falling.path] == [0.01, 0.1, 1.0, 0.001, 0.0001]
    assert run(lambda x: x).value == 1000.0
    peak = run(lambda x: -abs(x + 1))
    assert peak.value == 0.1 and len(peak.path) == 4
    flat = run(lambda x: 0.5)
    assert flat.value == 0.01 and len(flat.path) == 4  # a flat end is not followed


@pytest.mark.parametrize("model", ["logreg", "svm", "knn", "mlp"])
def test_automatic_choices_survive_tiny_classes(model):
    X = np.random.default_rng(0).normal(size=(20, 4))
    y = np.repeat(list("abcdefghij"), 2)  # ten classes of two items
    est = make(model).fit(X, y)
    assert est.predict(X).shape == (20,)
    est = make(model).fit(X[:4], ["a", "a", "b", "b"])
    assert len(est.predict(X[:4])) == 4


def test_model_auto_refuses_regression_labels_and_ridge_shows_its_choice(store, tmp_path):
    rng = np.random.default_rng(0)
    rows = [{"id": str(i), "text": f"item {i} " + " ".join(rng.choice(list("abcdef"), 5)),
             "score": f"{rng.normal():.4f}"} for i in range(60)]
    store.ingest(rows, dataset="reg", encoder="hashing:32", label_column="score", progress=False)
    with pytest.raises(InputError, match="regression target"):
        heads.fit(store, "reg", label="score", model="auto")
    out = cli("heads", "fit", "--dataset", "reg", "--label", "score", "--model", "ridge", store=store.path)
    assert "alpha=" in out.stdout and "leave-one-out" in out.stdout


def test_compare_on_ctrl_c_prints_the_rows_finished(dna):
    import os
    import signal
    import subprocess
    import sys

    from conftest import REPO
    cmd = [sys.executable, "-m", "embedstore.cli.heads_cmd", "compare", "--dataset", "train", "--model",
           "knn,logreg,svm,mlp,lightgbm", "--cv", "5", "--store", str(dna.path)]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    first = proc.stderr.readline()  # the first finished row, printed as it finishes
    assert first.startswith("[1/5] knn  cv_accuracy"), first
    os.kill(proc.pid, signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "interrupted" in err and "knn" in out and "Traceback" not in err


def test_tuning_refines_around_the_best_with_half_steps():
    from heads.tuning import tune
    t = tune("C", (0.01, 0.1, 1.0, 10.0), lambda v, fold, tr, te, state: -abs(np.log10(v) - 0.4),
             np.array([0, 1] * 50))
    assert [p["value"] for p in t.path][-2:] == [0.316, 3.16] and t.value == 3.16


def test_model_auto_keeps_the_default_unless_the_lead_is_beyond_noise():
    from heads.select import paired_difference
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 4000)
    noisy = lambda p: np.where(rng.random(len(y)) < p, y, 1 - y)  # noqa: E731
    a, b = noisy(0.84), noisy(0.835)
    lead, se = paired_difference(y, a, b)
    from sklearn.metrics import f1_score
    assert lead == pytest.approx(f1_score(y, a, average="macro") - f1_score(y, b, average="macro"))
    assert 0.003 < se < 0.02 and lead < 1.96 * se  # ~sqrt(discordant share / n): the 0.5-point gap is within it
    lead, se = paired_difference(y, noisy(0.95), b)
    assert lead > 5 * se  # a 12-point gap is not


def test_model_auto_table_is_the_compare_table(dna):
    head, _ = heads.fit(dna, "train", model="auto", cv=3, name="auto3")
    ranked = {r["model"]: r["macro_f1"] for r in head.meta["models_ranked"]}
    rows = heads.compare(dna, "train", model=",".join(ranked), cv=3)
    assert {r["model"]: r["cv_macro_f1"] for r in rows} == pytest.approx(ranked, abs=1e-12)


def test_overlap_groups_join_phrases_that_lie_inside_longer_rows():
    from heads.select import overlap_groups
    texts = ["a gorgeous witty seductive movie ever made", "gorgeous witty seductive movie", "witty seductive movie ever",
             "Gorgeous  witty seductive MOVIE", "an entirely different sentence here", "call now to claim your prize",
             "call now to claim a free phone", "short one", "short one", None, ""]
    g = overlap_groups(texts)
    assert g[0] == g[1] == g[2] == g[3]  # inside row 0 (case and spacing aside)
    assert len({g[0], g[4], g[5], g[6]}) == 4  # sharing a run ("call now to claim") without containment: apart
    assert len({g[7], g[8], g[9], g[10]}) == 4  # under 4 words: never joined
    assert overlap_groups(["one two three four", "five six seven eight", "x"]) is None


def phrase_rows(n_sentences: int, seed: int = 0) -> list[dict]:
    """SST-2's shape: each sentence and its sub-phrases are rows of their own, labelled alike."""
    rng = np.random.default_rng(seed)
    words = {"pos": "good great fine warm".split(), "neg": "bad dull poor cold".split()}
    rows = []
    for s in range(n_sentences):
        label = "pos" if s % 2 else "neg"
        sentence = [f"w{s}x{j}" if j % 2 else rng.choice(words[label]) for j in range(10)]
        for start, stop in ((0, 10), (0, 6), (3, 9), (4, 10)):
            rows.append({"id": f"{s}-{start}", "text": " ".join(sentence[start:stop]), "label": label})
    return rows


def test_splits_keep_the_phrases_of_one_sentence_together(store):
    from embedstore.features import features_for
    from heads.select import Protocol, split_groups
    store.ingest(phrase_rows(40), dataset="phr", encoder="hashing:64", label_column="label", progress=False)
    fs = features_for(store, "phr", "", "label")
    groups, by = split_groups(store, "phr", fs, None)
    assert "inside longer rows" in by and len(np.unique(groups)) == 40
    sentence = np.array([k.split("-")[0] for k in fs.keys])
    for tr, te in Protocol("classification", cv=3).splits(fs.y, groups) + Protocol("classification", cv=None).splits(
            fs.y, groups):
        assert not set(sentence[tr]) & set(sentence[te])
    head, scores = heads.fit(store, "phr", model="auto", name="phr-auto")
    assert "grouped by containment" in scores["protocol"]
    rows = heads.compare(store, "phr", model="logreg,knn", cv=3)
    assert any("inside longer rows" in n for n in rows.notes)
    _, refit = heads.fit(store, "phr", model=rows[0]["model"], cv=3, name="phr-refit")
    assert refit["macro_f1"] == pytest.approx(rows[0]["cv_macro_f1"], abs=1e-12)


@pytest.mark.parametrize("model", ["logreg", "sgd"])
def test_standardising_keeps_tiny_but_varying_dimensions(model):
    """all-MiniLM-L6-v2 has dimensions near 1e-33 that carry signal (the careful script's StandardScaler uses them):
    only a feature constant within its own rounding is left unscaled, whatever its magnitude."""
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 600)
    X = rng.normal(size=(600, 4))                        # noise...
    X[:, 1] = (y * 2 - 1 + rng.normal(0, 0.3, 600)) * 1e-33   # ...and the label, at 1e-33
    X[:, 2] = 5.0                                        # a constant column stays harmless
    head = make(model, {"normalize": "standard"}).fit(X, y)
    assert head.scale_[2] == 1.0 and head.scale_[1] < 1e-30
    assert (head.predict(X) == y).mean() > 0.9
