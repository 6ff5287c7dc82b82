"""The heads toolkit: estimator contract, every model's safe round trip, regression and multi-label targets,
selection protocols, compare/curve/eval reports, export, and the embedding map."""

from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn.utils.estimator_checks import parametrize_with_checks

import heads
from embedstore.errors import CorruptFileError, InputError
from heads.estimators import MODELS, make
from heads.persist import dump_model, load_model
from heads.select import Protocol, search
from tests.conftest import cli
from tests.test_heads import reviews


@parametrize_with_checks([m.cls() for m in MODELS.values()])
def test_sklearn_estimator_contract(estimator, check):
    check(estimator)


def _data(task: str, n: int = 240, seed: int = 0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 12)).astype(np.float32)
    if task == "regression":
        return X, X[:, 0] * 2 - X[:, 1] + rng.normal(scale=0.1, size=n)
    if task == "multilabel":
        return X, np.column_stack([X[:, 0] > 0, X[:, 1] > 0, X[:, 0] + X[:, 2] > 0]).astype(int)
    return X, np.array(["a", "b", "c"])[(X[:, 0] > 0).astype(int) + (X[:, 1] > 0.5).astype(int)]


@pytest.mark.parametrize("name", list(MODELS))
def test_every_model_round_trips_without_pickle(name):
    X, y = _data(MODELS[name].task)
    est = make(name).fit(X, y)
    spec, npz = dump_model(est)
    again = load_model(spec, npz)
    assert type(again) is type(est) and again.get_params() == est.get_params()
    np.testing.assert_array_equal(again.predict(X), est.predict(X))
    if hasattr(est, "predict_proba"):
        np.testing.assert_allclose(again.predict_proba(X), est.predict_proba(X))
    with pytest.raises(ValueError, match="X has 5 features, but .* is expecting 12 features"):
        again.predict(X[:, :5])


def test_load_refuses_classes_outside_the_allowlist():
    X, y = _data("classification")
    spec, npz = dump_model(make("logreg").fit(X, y))
    forged = json.loads(spec)
    forged["class"] = "os.system"
    with pytest.raises(CorruptFileError, match="not a head class"):
        load_model(json.dumps(forged).encode(), npz)


def test_regression_and_multilabel_heads_through_the_store(store):
    rng = np.random.default_rng(0)
    words = "alpha beta gamma delta".split()
    rows = []
    for i in range(200):
        picked = sorted(set(rng.choice(words, 2)))
        rows.append({"text": " ".join(picked) + f" {i}", "score": float(len(picked[0])), "tags": picked})
    store.ingest(rows, dataset="r", encoder="hashing:64", label_column="score", progress=False)
    store.ingest(rows, dataset="m", encoder="hashing:64", label_column="tags", progress=False)
    head, scores = heads.fit(store, "r", label="label", model="ridge", name="reg", cv=3)
    assert scores["r2"] > 0.5 and set(scores) >= {"r2", "mae", "rmse"}
    assert head.task == "regression" and heads.evaluate(store, "reg", "r")["r2"] > 0.5
    head, scores = heads.fit(store, "m", label="label", model="multilabel", name="ml", cv=3)
    assert head.meta["classes"] == sorted(words) and scores["micro_f1"] > 0.8
    pred = heads.load(store, "ml").predict_raw(["alpha gamma"])
    assert set(pred[0]) <= set(words) and "alpha" in pred[0]
    with pytest.raises(InputError, match="must be numeric"):
        store.ingest(reviews(20, 0), dataset="bad", encoder="hashing:64", label_column="label", progress=False)
        heads.fit(store, "bad", label="label", model="ridge")


def test_grouped_cv_keeps_groups_together_and_search_respects_budget():
    y = np.array(["a", "b"] * 30)
    groups = np.repeat(np.arange(12), 5)
    for tr, te in Protocol("classification", cv=3).splits(y, groups):
        assert not set(groups[tr]) & set(groups[te])
    X, y = _data("classification")
    splits = Protocol("classification", cv=3).splits(y)
    best, tried = search("logreg", {}, X, y, "classification", splits, budget=0)
    assert len(tried) == 1 and best == {}
    best, tried = search("logreg", {"max_iter": 500}, X, y, "classification", splits, budget=None)
    assert len(tried) == 1 + int(np.prod([len(v) for v in MODELS["logreg"].grid.values()])) and best["max_iter"] == 500


@pytest.fixture
def two_encoders(store):
    for ds, n, seed in (("train", 300, 0), ("test", 100, 1)):
        for enc in ("hashing:32", "hashing:64?ngram=1"):
            store.ingest(reviews(n, seed), dataset=ds, encoder=enc, label_column="label", progress=False)
    return store


def test_compare_ranks_every_encoder_and_model_under_one_protocol(two_encoders):
    encs = ["hashing:32", "hashing:64?ngram=1", "hashing:32+hashing:64?ngram=1"]
    rows = heads.compare(two_encoders, "train", encoder=encs, model=["logreg", "knn", "lightgbm"], cv=3, test_dataset="test")
    assert len(rows) == 9 and [r["rank"] for r in rows] == list(range(1, 10))
    assert {r["dim"] for r in rows} == {32, 64, 96}
    primary = [r["cv_macro_f1"] for r in rows]  # ranked on the training folds, never on test
    assert primary == sorted(primary, reverse=True)
    assert [r["test_macro_f1"] for r in rows] != sorted((r["test_macro_f1"] for r in rows), reverse=True)
    assert all(0.5 < r["test_accuracy"] <= 1 and r["fit_seconds"] > 0 for r in rows)


def test_search_on_dev_and_eval_report(two_encoders, tmp_path):
    head, scores = heads.fit(two_encoders, "train", label="label", model="svm", encoder="hashing:32", name="svm",
                             search_params=True, dev_dataset="test")
    grid = 1 + int(np.prod([len(v) for v in MODELS["svm"].grid.values()]))  # the defaults, then the grid
    assert scores["protocol"] == "dev dataset test" and len(head.meta["search"]) == grid
    m = heads.evaluate(two_encoders, "svm", "test", report_dir=tmp_path / "report")
    from PIL import Image
    with Image.open(m["confusion_png"]) as im:
        assert im.size[0] > 200
    assert json.loads((tmp_path / "report" / "metrics.json").read_text())["accuracy"] == m["accuracy"]


def test_curve_cli_writes_png_and_table(two_encoders, tmp_path):
    path = two_encoders.path
    two_encoders.close()
    out = tmp_path / "curve.png"
    res = cli("heads", "curve", "--dataset", "train", "--encoder", "hashing:32,hashing:64?ngram=1", "--sizes",
              "16,64", "--test-dataset", "test", "--out", str(out), store=path)
    lines = res.stdout.strip().splitlines()
    assert len(lines) == 2 + 6  # header, rule, (16, 64, all) x 2 encoders
    from PIL import Image
    with Image.open(out) as im:
        assert im.size == (715, 495)
    rows = heads.curve(__import__("embedstore").open(path, read_only=True), "train", encoder=["hashing:32"],
                       sizes=(16, 64), test_dataset="test")
    assert [r["n_train"] for r in rows] == [16, 64, 300] and rows[-1]["repeats"] == 1


def test_export_and_load_dir(two_encoders, tmp_path):
    head, _ = heads.fit(two_encoders, "train", label="label", model="mlp", encoder="hashing:32", name="m")
    dest = heads.export(two_encoders, "m", tmp_path / "exported")
    loaded = heads.load_dir(dest)
    X, _ = two_encoders.features("test", encoder="hashing:32")
    np.testing.assert_array_equal(loaded.predict(X), head.predict(X))
    with pytest.raises(InputError, match="loaded without a store"):
        loaded.predict_raw(["raw text"])
    (dest / "model.npz").write_bytes(b"tampered")
    with pytest.raises(CorruptFileError):
        heads.load_dir(dest)


def test_map_png(two_encoders, tmp_path):
    path = two_encoders.path
    two_encoders.close()
    out = tmp_path / "map.png"
    cli("embedstore", "map", "--dataset", "train", "--encoder", "hashing:32", "--out", str(out), store=path)
    from PIL import Image
    with Image.open(out) as im:
        assert im.size[0] > 500


def test_test_size_zero_fits_once_on_all_rows(two_encoders, monkeypatch):
    """The fastest refit: no hold-out score, one fit; the model equals the final model of a scored fit."""
    import heads.training
    import heads.select
    fits = []
    real = heads.training.make
    for module in (heads.training, heads.select):  # the hold-out fit is made in select, the final one in training
        monkeypatch.setattr(module, "make", lambda *a, **k: fits.append(a) or real(*a, **k))
    scored, s1 = heads.fit(two_encoders, "train", label="label", model="logreg", encoder="hashing:32", name="a")
    n_scored = len(fits)
    quick, s0 = heads.fit(two_encoders, "train", label="label", model="logreg", encoder="hashing:32", name="b", test_size=0)
    assert n_scored == 2 and len(fits) - n_scored == 1
    assert "accuracy" in s1 and "accuracy" not in s0 and s0["protocol"].startswith("none")
    X, _ = two_encoders.features("test", encoder="hashing:32", label=None)
    assert (quick.predict(X) == scored.predict(X)).all()
    with pytest.raises(Exception, match="search needs a score"):
        heads.fit(two_encoders, "train", label="label", model="logreg", encoder="hashing:32", test_size=0, search_params=True)
