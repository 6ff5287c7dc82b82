"""Heads: fit/eval/predict on cached vectors, safe persistence, refusals, and no torch on the fit path."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

import heads
from embedstore.errors import CorruptFileError, FingerprintMismatchError, InputError
from embedstore.store.layout import head_dir
from tests.conftest import REPO

ENC = "hashing:64"
POS = "good great wonderful lovely superb".split()
NEG = "bad awful terrible boring poor".split()


def reviews(n: int, seed: int) -> list[dict]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        label = i % 2
        words = list(rng.choice(POS if label else NEG, 3)) + list(rng.choice(["film", "plot", "cast", "story"], 2))
        out.append({"text": " ".join(words) + f" {seed}-{i}", "label": "pos" if label else "neg"})
    return out


@pytest.fixture
def trained(store):
    store.ingest(reviews(300, 0), dataset="train", encoder=ENC, label_column="label", progress=False)
    store.ingest(reviews(100, 1), dataset="test", encoder=ENC, label_column="label", progress=False)
    return store


@pytest.mark.parametrize("model", ["logreg", "svm", "knn", "mlp", "lightgbm"])
def test_fit_eval_predict_roundtrip(trained, model):
    head, scores = heads.fit(trained, "train", label="label", model=model, encoder=ENC, name="h")
    assert scores["accuracy"] > 0.9 and set(scores) >= {"accuracy", "macro_f1", "mcc"}
    m = heads.evaluate(trained, "h", "test")
    assert m["accuracy"] > 0.9 and m["overlap_with_training"] == 0
    assert heads.evaluate(trained, "h", "train")["overlap_with_training"] == 300
    X, _ = trained.features("test", encoder=ENC)
    reloaded = heads.load(trained, "h")
    assert np.array_equal(reloaded.predict_proba(X), head.predict_proba(X))
    assert reloaded.predict_raw(["superb lovely film", "awful boring plot", "  "]) == ["pos", "neg", None]
    assert [h["name"] for h in heads.list_heads(trained)] == ["h"]


def test_cv_scores_are_deterministic_under_a_seed(trained):
    _, a = heads.fit(trained, "train", label="label", model="logreg", cv=3, seed=7, name="a")
    _, b = heads.fit(trained, "train", label="label", model="logreg", cv=3, seed=7, name="b")
    assert {k: v for k, v in a.items() if k != "fit_seconds"} == {k: v for k, v in b.items() if k != "fit_seconds"}


def test_dimension_and_fingerprint_refusals(trained):
    head, _ = heads.fit(trained, "train", label="label", model="logreg", name="h")
    with pytest.raises(InputError, match="X has 5 features, but head 'h' expects 64"):
        head.predict(np.zeros((2, 5)))
    trained.ingest(reviews(50, 2), dataset="other", encoder="hashing:64?ngram=1", progress=False)
    X, _ = trained.features("other", encoder="hashing:64?ngram=1", label=None)
    other_fp = trained.resolve_encoder("hashing:64?ngram=1").fingerprint
    with pytest.raises(FingerprintMismatchError, match="trained on"):
        head.predict(X, fingerprints=[other_fp])
    with pytest.raises(Exception, match="dataset 'other' has no vectors of encoder 'hashing:64'"):
        heads.evaluate(trained, "h", "other")


@pytest.mark.parametrize("victim", ["model.npz", "model.json", "head.json", "manifest.json", "train_hashes.npy"])
def test_tampered_head_is_refused(trained, victim):
    head, _ = heads.fit(trained, "train", label="label", model="logreg", name="h")
    path = head.path / victim
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(CorruptFileError):
        heads.load(trained, "h")


def test_a_pickle_in_place_of_a_head_is_never_unpickled(trained, tmp_path):
    import hashlib
    import pickle
    d = heads.fit(trained, "train", label="label", model="logreg", name="h")[0].path
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))
    (d / "model.npz").write_bytes(pickle.dumps(Evil()))
    # even with a manifest and database checksum forged to match, the loader never unpickles
    files = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in d.iterdir() if p.name != "manifest.json"}
    manifest = json.dumps({"files": files}, indent=2, sort_keys=True).encode()
    (d / "manifest.json").write_bytes(manifest)
    forged = hashlib.sha256(manifest).hexdigest()
    d.rename(head_dir(trained.path, "h", forged))
    with trained.transaction() as con:
        con.execute("UPDATE heads SET checksum = ? WHERE name = 'h'", [forged])
    with pytest.raises(CorruptFileError, match="model files are unreadable"):
        heads.load(trained, "h")
    assert not marker.exists()


def test_fit_eval_list_never_import_torch(trained):
    heads.fit(trained, "train", label="label", model="logreg", name="h")
    path = trained.path
    trained.close()
    code = (f"import sys, embedstore, heads; s = embedstore.open({str(path)!r}); "
            "heads.fit(s, 'train', label='label', model='lightgbm', name='g'); heads.evaluate(s, 'h', 'test'); "
            "heads.list_heads(s); s.sql('SELECT 1'); s.features('train', encoder='hashing:64'); "
            "print('torch' in sys.modules, 'sentence_transformers' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    assert out.stdout.strip() == "False False"


def test_bad_fit_requests(trained):
    with pytest.raises(InputError, match="unknown model 'forest'; available: logreg, svm, knn, mlp, lightgbm"):
        heads.fit(trained, "train", label="label", model="forest")
    with pytest.raises(Exception, match="no items with a 'nolabel' label"):
        heads.fit(trained, "train", label="nolabel", model="logreg")
    with pytest.raises(Exception, match="no head 'missing'"):
        heads.load(trained, "missing")
