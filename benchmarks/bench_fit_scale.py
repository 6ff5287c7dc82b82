"""A head on 10M x 64 features: `heads fit --model sgd` (features memory-mapped from DuckDB, read in chunks) vs
the in-memory way (store.features into RAM, StandardScaler, scikit-learn's SGDClassifier with log loss).

The store: --n seeded clustered 64-d unit vectors (bench_knn's generator) written straight into items and an
embedding table, each labelled with one of 3 classes by a fixed linear rule plus noise (learnable, not
separable), and a test dataset of 100k rows from the same generator. Each way runs in a fresh subprocess, one
after the other (same machine, same run): wall time, peak RSS (VmHWM) and accuracy on the test rows. The
goal: the streaming fit's peak RSS beyond its baseline under one copy of the matrix (rows x 64 x 4 bytes): the
matrix never in RAM, its bookkeeping (ids, keys, hashes, labels: ~100 bytes a row at most) beside it, where the
in-memory way needs the matrix and its float64 scaled copy; accuracy within 0.01 of it.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from _common import import_library, parser, peak_rss_mb, ratio, show, timed, verdict, write_results

DIM, CLASSES, TEST_ROWS = 64, 3, 100_000


def labelled(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    from bench_knn import random_vectors
    X = random_vectors(n, DIM, argparse.Namespace(seed=seed, data="clustered", clusters=1000))
    W = np.random.default_rng(99).standard_normal((DIM, CLASSES)).astype(np.float32)
    y = np.empty(n, dtype=np.int64)
    noise = np.random.default_rng(seed + 7)
    for a in range(0, n, 1_000_000):
        z = X[a:a + 1_000_000] @ W
        y[a:a + 1_000_000] = np.argmax(z + noise.standard_normal(z.shape, dtype=np.float32) * 0.5, axis=1)
    return X, y


def fill(store, dataset: str, X: np.ndarray, y: np.ndarray, first_id: int, rows_per_insert: int = 500_000) -> None:
    """Items (with labels) and vectors written directly (Arrow), as an ingest would leave them."""
    import pyarrow as pa
    fp = hashlib.sha256(b"bench_fit_scale clustered 64").hexdigest()
    enc = SimpleNamespace(fingerprint=fp, dim=DIM, spec=f"random:{DIM}", modality="text",
                          identity=lambda: {"bench": "fit_scale"}, versions=lambda: {}, unit_norm=True)
    record = store.register_encoder(enc)
    with store.transaction() as con:
        con.execute("INSERT INTO datasets (name, modality, source) VALUES (?, 'text', 'bench_fit_scale')", [dataset])
        con.execute("INSERT INTO dataset_encoders VALUES (?, ?)", [dataset, fp])
        for a in range(0, len(X), rows_per_insert):
            b = min(a + rows_per_insert, len(X))
            ids = np.arange(first_id + a, first_id + b, dtype=np.int64)
            con.register("_t", pa.table({"item_id": ids, "key": pa.array([f"r{i}" for i in ids]),
                                         "h": pa.array([f"{i:032x}" for i in ids]),
                                         "label": pa.array([f"c{c}" for c in y[a:b]]),
                                         "v": pa.FixedSizeListArray.from_arrays(X[a:b].reshape(-1), DIM)}))
            con.execute("INSERT INTO items (item_id, dataset, key, content_hash, label) "
                        "SELECT item_id, ?, key, hex_hash(h), label FROM _t", [dataset])
            con.execute(f"INSERT INTO {record.table} (content_hash, vector, device, dtype) "
                        "SELECT hex_hash(h), v, 'cpu', 'float32' FROM _t")
            con.unregister("_t")


def child(way: str, store_path: str) -> None:
    """Runs in the subprocess: one fit, then its figures as JSON on stdout."""
    import embedstore
    import heads
    from sklearn.linear_model import SGDClassifier  # noqa: F401  (imports counted in the baseline RSS)
    from _common import rss_mb
    base = rss_mb()
    with embedstore.open(store_path) as store:
        Xt, yt = store.features("test", encoder=f"random:{DIM}")
        base_with_test = rss_mb()
        with timed() as t:
            if way == "sgd-head":
                head, scores = heads.fit(store, "train", encoder=f"random:{DIM}", model="sgd", test_size=0.2)
                predicted = head.predict(Xt)
                extra = {"holdout": {k: scores[k] for k in ("accuracy", "macro_f1", "protocol") if k in scores},
                         "auto": head.meta["auto"]}
            else:
                from sklearn.linear_model import SGDClassifier
                from sklearn.preprocessing import StandardScaler
                X, y = store.features("train", encoder=f"random:{DIM}")
                scaler = StandardScaler().fit(X)
                model = SGDClassifier(loss="log_loss", random_state=0).fit(scaler.transform(X), y)
                predicted = model.predict(scaler.transform(Xt))
                extra = {"epochs": int(model.n_iter_)}
    print(json.dumps({"way": way, "seconds": t.seconds, "test_accuracy": float(np.mean(predicted == yt)),
                      "rss_after_imports_mb": base, "rss_with_test_features_mb": base_with_test,
                      "peak_rss_mb": peak_rss_mb(), **extra}))


def run_child(way: str, store: Path) -> dict:
    proc = subprocess.run([sys.executable, __file__, "--child", way, str(store)], capture_output=True, text=True)
    if proc.returncode:
        sys.exit(f"child {way} failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = parser(__doc__)
    ap.add_argument("--n", type=int, default=10_000_000, help="training rows (default 10M)")
    ap.add_argument("--tmp", type=Path, help="where the store goes (default: the system temp folder; 10M rows "
                                             "take about 3 GB, and the memory-mapped features 2.6 GB more)")
    ap.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(*args.child)
    import_library("heads", "heads.training", "heads.estimators", "heads.streaming")
    import embedstore
    tmp = Path(tempfile.mkdtemp(prefix="bench_fit_scale_", dir=args.tmp))
    try:
        store_path = tmp / "store"
        print(f"writing {args.n:,} labelled 64-d vectors (+{TEST_ROWS:,} test rows) into a store ...", flush=True)
        with timed() as t_fill, embedstore.open(store_path) as store:
            X, y = labelled(args.n, seed=0)
            fill(store, "train", X, y, first_id=1)
            del X, y
            Xt, yt = labelled(TEST_ROWS, seed=1)
            fill(store, "test", Xt, yt, first_id=args.n + 1)
        matrix_mb = args.n * DIM * 4 / 2**20
        runs = {}
        for way in ("sgd-head", "in-memory"):
            print(f"fitting: {way} (fresh subprocess) ...", flush=True)
            runs[way] = run_child(way, store_path)
        ours, peer = runs["sgd-head"], runs["in-memory"]
        beyond = {w: r["peak_rss_mb"] - r["rss_with_test_features_mb"] for w, r in runs.items()}
        figures = {"n": args.n, "dim": DIM, "classes": CLASSES, "fill_s": t_fill.seconds, "matrix_mb": matrix_mb,
                   "runs": runs, "peak_rss_beyond_base_mb": beyond,
                   "rss_ratio": ratio(beyond["sgd-head"], beyond["in-memory"]),
                   "rss_fraction_of_matrix": beyond["sgd-head"] / matrix_mb,
                   "time_ratio": ratio(ours["seconds"], peer["seconds"]),
                   "accuracy_gap": peer["test_accuracy"] - ours["test_accuracy"]}
        show("store fill, s", t_fill.seconds)
        for w, r in runs.items():
            show(f"{w}: seconds / peak RSS beyond base (MiB) / test accuracy",
                 f"{r['seconds']:.1f} / {beyond[w]:,.0f} / {r['test_accuracy']:.4f}")
        show("matrix (rows x 64 float32), MiB", matrix_mb)
        show("peak RSS beyond base, sgd head / in-memory", figures["rss_ratio"])
        show("sgd head's peak RSS beyond base / matrix", figures["rss_fraction_of_matrix"],
             f"goal < 1: {verdict(figures['rss_fraction_of_matrix'] < 1)}")
        show("accuracy gap (in-memory - sgd head)", figures["accuracy_gap"],
             f"goal <= 0.01: {verdict(figures['accuracy_gap'] <= 0.01)}")
        show("time, sgd head / in-memory", figures["time_ratio"])
        write_results("bench_fit_scale", args, figures)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
