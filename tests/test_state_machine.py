"""A hypothesis state machine: random ingest / re-ingest / delete / gc / search / fit / reopen sequences against
an in-memory reference model (in the style of Chroma's persistence state machine).

The model follows the store's semantics (README, "Ingest" and "Encoders"):
- items belong to a dataset and are keyed by `key` there, whatever encoder ingested them: re-ingesting a key
  with other text updates the item, for every encoder;
- a vector belongs to (content hash, encoder fingerprint) and is shared by every dataset holding that content;
  `gc` drops the vectors no item references any more;
- a dataset's items "of encoder E" (what search, features and the FAISS index see) are its items whose content
  has an E vector; search needs the dataset to have been ingested with E at least once.

Two weight-free encoders of the same dimension but different fingerprints (`hashing:32` and
`hashing:32?ngram=1`) give different vectors for the same text, so every hit's score is checked against the
hit's text embedded by the encoder searched with: a vector of the other encoder (or of an item's old text)
in a result would show.

Reproducible: derandomized with no example database.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import warnings
from functools import lru_cache

import numpy as np
import pytest
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

import embedstore
import heads
from embedstore.encoders.registry import get_encoder
from embedstore.errors import NotFoundError
from embedstore.index.sync import db_state
from tests.conftest import REPO

ENCODERS = ("hashing:32", "hashing:32?ngram=1")
DATASETS = ("a", "b")
LABELS = ("pos", "neg", "mid")
KEYS = tuple(f"k{i:02d}" for i in range(12))
WORDS = ("alpha beta gamma delta epsilon zeta theta kappa lambda omicron sigma omega red green blue amber "
         "violet river stone cloud").split()
TOL = 2e-5


def _pool(n: int = 40) -> tuple[str, ...]:
    """n distinct short texts whose vectors are non-zero under both encoders and differ between them."""
    rng = np.random.default_rng(7)
    out: list[str] = []
    while len(out) < n:
        text = " ".join(rng.choice(WORDS, size=int(rng.integers(2, 6)), replace=False))
        if text in out:
            continue
        va, vb = (get_encoder(e).embed([text]).vectors[0] for e in ENCODERS)
        if np.linalg.norm(va) > 0.5 and np.linalg.norm(vb) > 0.5 and not np.allclose(va, vb, atol=1e-3):
            out.append(text)
    return tuple(out)


TEXTS = _pool()


@lru_cache(maxsize=None)
def reference_vectors(spec: str) -> dict[str, np.ndarray]:
    """Every pool text embedded by a fresh encoder object of `spec`, L2-normalised."""
    X = get_encoder(spec).embed(list(TEXTS)).vectors.astype(np.float64)
    X /= np.maximum(np.linalg.norm(X, axis=1, keepdims=True), 1e-12)
    return dict(zip(TEXTS, X))


def query_vector(spec: str, text: str) -> np.ndarray:
    q = get_encoder(spec).embed([text]).vectors[0].astype(np.float64)
    return q / max(np.linalg.norm(q), 1e-12)


def exact_scores(spec: str, members: dict[str, tuple[str, str]], q: np.ndarray) -> dict[str, float]:
    """key -> cosine(q, the key's text embedded by `spec`)."""
    vecs = reference_vectors(spec)
    qn = np.asarray(q, np.float64) / max(np.linalg.norm(q), 1e-12)
    return {key: float(vecs[text] @ qn) for key, (text, _) in members.items()}


def check_hits(hits: list[tuple[str, float]], expected: dict[str, float], k: int, what: str) -> None:
    """Hits == exact top-k over `expected`, with ties: scores match position by position, every hit's score is
    its own true score, and every key scoring clearly above the k-th score is present."""
    ref = sorted(expected.items(), key=lambda kv: -kv[1])
    keys = [key for key, _ in hits]
    assert len(hits) == min(k, len(ref)), f"{what}: {len(hits)} hits, expected {min(k, len(ref))}: {hits}"
    assert len(set(keys)) == len(keys), f"{what}: a key returned twice: {keys}"
    for key, score in hits:
        assert key in expected, f"{what}: hit {key!r} is not an item of this dataset with this encoder's vector"
        assert abs(score - expected[key]) <= TOL, \
            f"{what}: hit {key!r} scored {score:.6f}, its text under this encoder scores {expected[key]:.6f}"
    np.testing.assert_allclose([s for _, s in hits], [s for _, s in ref[:len(hits)]], atol=TOL, err_msg=what)
    if hits:
        kth = ref[len(hits) - 1][1]
        must = {key for key, s in ref if s > kth + TOL}
        assert must <= set(keys), f"{what}: missing {sorted(must - set(keys))} (scores above the k-th)"


CHILD = r"""
import json, sys
import embedstore
from embedstore.index.sync import db_state
args = json.loads(sys.argv[1])
out = {"datasets": {}, "hits": None}
with embedstore.open(args["path"], read_only=True) as s:
    for d in s.dataset_names():
        with s.connect() as con:
            n = con.execute("SELECT count(*) FROM items WHERE dataset = ?", [d]).fetchall()[0][0]
        encs = {}
        for rec in s.encoder_records(d):
            with s.connect() as con:
                count = db_state(con, d, rec)["count"]
            encs[rec.spec] = {"db": count, "index": s.index(d, rec).index.ntotal}
        out["datasets"][d] = {"items": n, "encoders": encs}
    q = args.get("search")
    if q:
        hits = s.search(q["dataset"], q["query"], k=q["k"], encoder=q["encoder"])
        out["hits"] = [[h.key, h.score] for h in hits]
print(json.dumps(out))
"""

rows_strategy = st.lists(st.tuples(st.sampled_from(KEYS), st.sampled_from(TEXTS), st.sampled_from(LABELS)),
                         min_size=1, max_size=8, unique_by=lambda r: r[0])


class StoreMachine(RuleBasedStateMachine):
    def __init__(self):
        super().__init__()
        self.tmp = tempfile.mkdtemp(prefix="embedstore-sm-")
        self.path = os.path.join(self.tmp, "store")
        self.store = embedstore.open(self.path)
        self.items: dict[str, dict[str, tuple[str, str]]] = {}   # dataset -> key -> (text, label)
        self.links: dict[str, set[str]] = {}                     # dataset -> encoders it was ingested with
        self.vectors: dict[str, set[str]] = {e: set() for e in ENCODERS}  # encoder -> texts with a vector
        self.registered: set[str] = set()
        self.heads: dict[str, tuple[int, list[str], str]] = {}   # name -> (n_train, classes, fingerprint)

    def teardown(self):
        try:
            self.store.close()
        finally:
            shutil.rmtree(self.tmp, ignore_errors=True)

    # -- the model -------------------------------------------------------------------------------------------
    def members(self, dataset: str, spec: str) -> dict[str, tuple[str, str]]:
        """The dataset's items that have a vector of `spec`: what its index, search and features hold."""
        return {k: v for k, v in self.items.get(dataset, {}).items() if v[0] in self.vectors[spec]}

    def linked(self) -> list[tuple[str, str]]:
        return [(d, e) for d in sorted(self.links) for e in ENCODERS if e in self.links[d]]

    def _ingest(self, dataset: str, spec: str, rows: list[tuple[str, str, str]], as_frame: bool):
        old = self.items.get(dataset, {})
        fresh = {t for _, t, _ in rows} - self.vectors[spec]
        expect = {"rows": len(rows), "new_items": sum(k not in old for k, _, _ in rows),
                  "updated_items": sum(k in old and old[k] != (t, lab) for k, t, lab in rows),  # label too
                  # each new text is embedded once; every other row (a repeat in the chunk too) is cached
                  "embedded": len(fresh), "cached": len(rows) - len(fresh), "skipped": {}}
        expect["unchanged_items"] = len(rows) - expect["new_items"] - expect["updated_items"]
        data = [{"key": k, "text": t, "label": lab} for k, t, lab in rows]
        if as_frame:
            import pandas as pd
            data = pd.DataFrame(data)
        report = self.store.ingest(data, dataset=dataset, encoder=spec, id_column="key", label_column="label",
                                   progress=False)
        got = {f: getattr(report, f) for f in expect}
        assert got == expect, f"ingest report {got} != expected {expect}"
        self.items.setdefault(dataset, {}).update({k: (t, lab) for k, t, lab in rows})
        self.links.setdefault(dataset, set()).add(spec)
        self.vectors[spec] |= fresh
        self.registered.add(spec)

    # -- rules -----------------------------------------------------------------------------------------------
    @initialize(dataset=st.sampled_from(DATASETS), spec=st.sampled_from(ENCODERS), rows=rows_strategy,
                as_frame=st.booleans())
    def first_ingest(self, dataset, spec, rows, as_frame):
        self._ingest(dataset, spec, rows, as_frame)

    @rule(dataset=st.sampled_from(DATASETS), spec=st.sampled_from(ENCODERS), rows=rows_strategy,
          as_frame=st.booleans())
    def ingest(self, dataset, spec, rows, as_frame):
        self._ingest(dataset, spec, rows, as_frame)

    @precondition(lambda self: self.links)
    @rule(data=st.data(), as_frame=st.booleans())
    def reingest_same_rows(self, data, as_frame):
        """The dataset's rows that already have vectors of the encoder: nothing is embedded, new or updated."""
        dataset, spec = data.draw(st.sampled_from(self.linked()))
        rows = [(k, t, lab) for k, (t, lab) in sorted(self.members(dataset, spec).items())]
        if not rows:
            return
        self._ingest(dataset, spec, rows, as_frame)

    @precondition(lambda self: self.items)
    @rule(data=st.data())
    def delete_dataset(self, data):
        dataset = data.draw(st.sampled_from(sorted(self.items)))
        out = self.store.delete_dataset(dataset)
        assert out["items_deleted"] == len(self.items[dataset])
        del self.items[dataset], self.links[dataset]
        with pytest.raises(NotFoundError):
            self.store.search(dataset, TEXTS[0])

    def garbage(self) -> dict[str, int]:
        referenced = {t for rows in self.items.values() for t, _ in rows.values()}
        return {spec: len(self.vectors[spec] - referenced) for spec in self.registered}

    @precondition(lambda self: any(self.garbage().values()))  # (a gc with nothing to collect is a poor step)
    @rule()
    def gc(self):
        expect = self.garbage()
        out = self.store.gc()
        assert out["vectors_deleted"] == expect, f"gc deleted {out['vectors_deleted']}, expected {expect}"
        referenced = {t for rows in self.items.values() for t, _ in rows.values()}
        for spec in self.registered:
            self.vectors[spec] &= referenced

    @precondition(lambda self: self.links)
    @rule(data=st.data(), k=st.integers(1, 8), seed=st.none() | st.integers(0, 2**16),
          query=st.sampled_from(TEXTS + ("alpha omega river", "blue stone cloud")))
    def search(self, data, k, query, seed):
        """By text (embedded here by a fresh encoder object) or by a random vector: exact cosine, ties allowed."""
        dataset, spec = data.draw(st.sampled_from(self.linked()))
        if seed is None:
            q = query_vector(spec, query)
            hits = self.store.search(dataset, query, k=k, encoder=spec)
        else:
            q = np.random.default_rng(seed).normal(size=32).astype(np.float32)
            hits = self.store.search(dataset, vector=q, k=k, encoder=spec)
        members = self.members(dataset, spec)
        check_hits([(h.key, h.score) for h in hits], exact_scores(spec, members, q), k,
                   f"search {dataset}/{spec} {query if seed is None else f'vector seed {seed}'} k={k}")
        for h in hits:
            assert (h.text, h.label) == members[h.key]

    @precondition(lambda self: self.links)
    @rule(data=st.data())
    def fit_head(self, data):
        dataset, spec = data.draw(st.sampled_from(self.linked()))
        members = self.members(dataset, spec)
        counts: dict[str, int] = {}
        for _, lab in members.values():
            counts[lab] = counts.get(lab, 0) + 1
        if sum(n >= 2 for n in counts.values()) < 2:
            return
        name = f"h-{dataset}-{ENCODERS.index(spec)}"
        with warnings.catch_warnings():  # sklearn: "least populated class has only 1 member" (a third label)
            warnings.simplefilter("ignore", UserWarning)
            head, _ = heads.fit(self.store, dataset, label="label", model="logreg", encoder=spec, name=name, cv=2)
        fp = self.store.resolve_encoder(spec).fingerprint
        assert head.meta["n_train"] == len(members)
        assert head.meta["classes"] == sorted(counts)
        assert head.fingerprints == [fp]
        X, y = self.store.features(dataset, encoder=spec, label="label")
        assert X.shape == (len(members), 32) and sorted(y.tolist()) == sorted(lab for _, lab in members.values())
        assert set(head.predict(X)) <= set(counts)
        self.heads[name] = (len(members), sorted(counts), fp)

    @rule(data=st.data(), fresh_process=st.booleans())
    def reopen(self, data, fresh_process):
        """Close; (half the time) a fresh process must see the same counts and search results; reopen here."""
        self.store.close()
        if fresh_process:
            self._check_in_fresh_process(data)
        self.store = embedstore.open(self.path)
        for name, (n, classes, fp) in self.heads.items():
            head = heads.load(self.store, name)
            assert (head.meta["n_train"], head.meta["classes"], head.fingerprints) == (n, classes, [fp])

    def _check_in_fresh_process(self, data):
        search = None
        if self.links:
            dataset, spec = data.draw(st.sampled_from(self.linked()))
            search = {"dataset": dataset, "encoder": spec, "k": 5, "query": data.draw(st.sampled_from(TEXTS))}
        proc = subprocess.run([sys.executable, "-c", CHILD, json.dumps({"path": self.path, "search": search})],
                              capture_output=True, text=True, cwd=REPO, timeout=120)
        assert proc.returncode == 0, proc.stderr
        seen = json.loads(proc.stdout)
        want = {d: {"items": len(rows), "encoders": {e: {"db": len(self.members(d, e)),
                                                         "index": len(self.members(d, e))} for e in self.links[d]}}
                for d, rows in self.items.items()}
        assert seen["datasets"] == want, f"fresh process saw {seen['datasets']}, expected {want}"
        if search:
            q = query_vector(search["encoder"], search["query"])
            check_hits([tuple(h) for h in seen["hits"]],
                       exact_scores(search["encoder"], self.members(search["dataset"], search["encoder"]), q), 5,
                       f"fresh-process search {search}")

    # -- invariants ------------------------------------------------------------------------------------------
    @invariant()
    def datasets_and_items_match(self):
        assert self.store.dataset_names() == sorted(self.items)
        with self.store.connect() as con:
            rows = con.execute("SELECT dataset, key, text, label FROM items").fetchall()
            assert not con.execute("SELECT * FROM item_status WHERE status = 'skipped'").fetchall()
        got: dict[str, dict[str, tuple[str, str]]] = {}
        for dataset, key, text, label in rows:
            assert key not in got.get(dataset, {})
            got.setdefault(dataset, {})[key] = (text, label)
        assert {d: len(r) for d, r in got.items()} == {d: len(r) for d, r in self.items.items()}
        assert got == self.items

    @invariant()
    def vectors_per_encoder_match(self):
        for spec in self.registered:
            rec = self.store.resolve_encoder(spec)
            with self.store.connect() as con:
                n = con.execute(f"SELECT count(*) FROM {rec.table}").fetchall()[0][0]
            assert n == len(self.vectors[spec]), f"{spec}: {n} vectors stored, model has {len(self.vectors[spec])}"

    @invariant()
    def index_equals_database_and_encoders_never_mix(self):
        probe = np.random.default_rng(123).normal(size=32).astype(np.float32)
        for dataset in sorted(self.items):
            for spec in ENCODERS:
                if spec not in self.links[dataset]:  # never answered from another encoder's vectors
                    with pytest.raises(NotFoundError):
                        self.store.search(dataset, vector=probe, encoder=spec)
                    continue
                rec = self.store.resolve_encoder(spec, dataset)
                members = self.members(dataset, spec)
                with self.store.connect() as con:
                    count = db_state(con, dataset, rec)["count"]
                ntotal = self.store.index(dataset, rec).index.ntotal
                assert ntotal == count == len(members), \
                    f"{dataset}/{spec}: index {ntotal}, database {count}, model {len(members)}"
                # all of them, each scored with this encoder's vector of its current text
                hits = self.store.search(dataset, vector=probe, k=len(KEYS) + 1, encoder=spec)
                check_hits([(h.key, h.score) for h in hits], exact_scores(spec, members, probe), len(KEYS) + 1,
                           f"full scan {dataset}/{spec}")


# Deterministic (derandomized, no example database) and bounded (~45 s on 2 busy cores). Shrinking is off: one
# example costs up to seconds, so shrinking a failure runs into Hypothesis' 5-minute cap; the unshrunk falsifying
# example (at most 10 steps) is printed anyway. EMBEDSTORE_SM_SHRINK=1 turns it on.
PHASES = [Phase.explicit, Phase.reuse, Phase.generate]
if os.environ.get("EMBEDSTORE_SM_SHRINK") == "1":
    PHASES.append(Phase.shrink)
StoreMachine.TestCase.settings = settings(max_examples=20, stateful_step_count=10, deadline=None,
                                          derandomize=True, database=None, phases=PHASES,
                                          suppress_health_check=[HealthCheck.too_slow])
TestStoreStateMachine = StoreMachine.TestCase


# -- two cases the machine found (an ingest through one encoder must keep the other encoders' indexes right) --
def _rows(*pairs):
    return [{"key": k, "text": t, "label": "x"} for k, t in pairs]


def _keys(store, dataset, spec, query):
    return sorted(h.key for h in store.search(dataset, query, k=10, encoder=spec))


def test_second_encoder_on_unchanged_rows_is_searchable_in_process(store):
    a, b = ENCODERS
    rows = _rows(("k1", "red apple"), ("k2", "green pear"))
    store.ingest(rows, dataset="d", encoder=a, id_column="key", progress=False)
    store.ingest(rows, dataset="d", encoder=b, id_column="key", progress=False)  # same items, new encoder
    assert _keys(store, "d", b, "red apple") == ["k1", "k2"]


def test_update_through_one_encoder_reaches_the_others_index(store):
    a, b = ENCODERS
    rows = _rows(("k1", "red apple"), ("k2", "green pear"))
    store.ingest(rows, dataset="d", encoder=a, id_column="key", progress=False)
    store.ingest(rows, dataset="d", encoder=b, id_column="key", progress=False)
    store.close()
    store = embedstore.open(store.path)
    try:
        assert _keys(store, "d", b, "red apple") == ["k1", "k2"]
        store.ingest(_rows(("k3", "blue plum")), dataset="e", encoder=b, id_column="key", progress=False)
        # k1 changes to text that has a b vector (from dataset e): d's b index must now hold the new k1
        store.ingest(_rows(("k1", "blue plum")), dataset="d", encoder=a, id_column="key", progress=False)
        rec = store.resolve_encoder(b, "d")
        with store.connect() as con:
            assert db_state(con, "d", rec)["count"] == 2
        assert store.index("d", rec).index.ntotal == 2
        assert _keys(store, "d", b, "blue plum") == ["k1", "k2"]
    finally:
        store.close()
