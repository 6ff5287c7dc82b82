"""kNN: exact against brute-force cosine, filters, and the index's catch-up when stale (corruption: test_corruption.py)."""

from __future__ import annotations

import json

import numpy as np
import pytest

import embedstore
import embedstore.encoders
from embedstore.errors import InputError

ENC = "hashing:32"
WORDS = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi omicron pi rho".split()


def corpus(n: int, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    return [{"text": " ".join(rng.choice(WORDS, size=rng.integers(2, 8))) + f" {i % 7}", "label": str(i % 3)}
            for i in range(n)]


def exact(store, dataset, q, mask=None):
    X, y, fs = store.features(dataset, encoder=ENC, label="label", return_meta=True)
    Xn = X / np.linalg.norm(X, axis=1, keepdims=True)
    s = Xn @ (q / np.linalg.norm(q))
    if mask is not None:
        s = np.where(mask(y), s, -np.inf)
    return np.sort(s)[::-1], fs


@pytest.fixture
def filled(store):
    store.ingest(corpus(500), dataset="c", encoder=ENC, label_column="label", progress=False)
    return store


def test_knn_top10_equals_exact_cosine(filled):
    rng = np.random.default_rng(1)
    for _ in range(5):
        q = rng.normal(size=32).astype(np.float32)
        hits = filled.search("c", vector=q, k=10)
        want, _ = exact(filled, "c", q)
        np.testing.assert_allclose([h.score for h in hits], want[:10], rtol=1e-4, atol=1e-5)  # ties allowed


def test_filtered_search_respects_filter_on_both_paths(filled, monkeypatch):
    import embedstore.search as search_mod
    q = np.random.default_rng(2).normal(size=32).astype(np.float32)
    want, _ = exact(filled, "c", q, mask=lambda y: y == "1")
    for exact_max in (10**9, 0):  # exact-from-DuckDB path, then FAISS id-selector path
        monkeypatch.setattr(search_mod, "EXACT_FILTER_MAX", exact_max)
        for where in ("label = '1'", {"label": "1"}):
            hits = filled.search("c", vector=q, k=10, where=where)
            assert len(hits) == 10 and all(h.label == "1" for h in hits)
            np.testing.assert_allclose([h.score for h in hits], want[:10], rtol=1e-4, atol=1e-5)


def test_search_by_text_key_and_bad_queries(filled):
    top = filled.search("c", "alpha beta gamma", k=3)
    assert len(top) == 3 and top[0].score >= top[-1].score
    key = top[0].key
    by_key = filled.search("c", key=key, k=5)
    assert key not in [h.key for h in by_key] and len(by_key) == 5
    with pytest.raises(InputError, match="3 dimensions, but this encoder's vectors have 32"):
        filled.search("c", vector=[1.0, 2.0, 3.0])
    with pytest.raises(InputError, match="NaN"):
        filled.search("c", vector=np.full(32, np.nan))
    with pytest.raises(InputError, match="single SQL expression|cannot parse filter"):
        filled.search("c", "alpha", where="1=1); DROP TABLE items; --")


def _index_files(store):
    rec = store.resolve_encoder(ENC, "c")
    side = store.index_path("c", rec)
    return rec, side.with_name(json.loads(side.read_text())["file"]), side


def test_stale_index_is_caught_up_from_the_database(filled, tmp_path):
    rec, path, side = _index_files(filled)
    old_index, old_side = path.read_bytes(), side.read_text()
    filled.ingest(corpus(50, seed=9), dataset="c", encoder=ENC, label_column="label", source_name="more",
                  progress=False)
    filled.close()
    path.write_bytes(old_index)  # as if the process died before persisting the new index
    side.write_text(old_side)
    store = embedstore.open(filled.path, read_only=True)
    live = store.index("c", rec)
    assert live.origin == "caught-up" and live.index.ntotal == 550
    store.close()


def test_large_dataset_gets_a_tuned_ivf_index(store, monkeypatch):
    monkeypatch.setenv("EMBEDSTORE_EXACT_INDEX_MAX", "1000")
    store.ingest(corpus(4000, seed=5), dataset="c", encoder=ENC, label_column="label", progress=False)
    live = store.index("c", store.resolve_encoder(ENC, "c"))
    assert live.index.factory.startswith("IVF") and live.index.ntotal == 4000
    assert live.index.params["tuned_recall_at_10"] >= 0.97
    rng = np.random.default_rng(4)
    recalls = []
    for _ in range(20):
        q = rng.normal(size=32).astype(np.float32)
        got = {h.item_id for h in store.search("c", vector=q, k=10)}
        X, _, fs = store.features("c", encoder=ENC, label="label", return_meta=True)
        s = (X / np.linalg.norm(X, axis=1, keepdims=True)) @ (q / np.linalg.norm(q))
        kth = np.sort(s)[::-1][9]
        truth = set(fs.item_ids[s >= kth - 1e-6])  # ties at the 10th score count as correct
        recalls.append(len(got & truth) / 10)
    assert np.mean(recalls) >= 0.9


def test_ivf_that_does_not_pay_falls_back_to_exact(store, monkeypatch):
    """Uniform random vectors have no clusters: IVF would have to scan most lists, so exact search is kept."""
    monkeypatch.setenv("EMBEDSTORE_EXACT_INDEX_MAX", "1000")
    rng = np.random.default_rng(0)
    from embedstore.index.sync import build
    rec = store.register_encoder(embedstore.encoders.get_encoder("hashing:32"))
    rows = [{"text": " ".join(map(str, rng.integers(0, 10**6, 40)))} for _ in range(4000)]  # no ties
    store.ingest(rows, dataset="u", encoder="hashing:32", progress=False)
    with store.connect() as con:
        index = build(con, "u", rec, 4000)
    assert index.factory == "IDMap,Flat" and index.params["ivf_rejected_at"] == 4000
