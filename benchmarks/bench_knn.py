"""kNN search: the store's FAISS index vs exact cosine (recall@10) and vs DuckDB SQL kNN (time per query).

  (a) sst2    real all-MiniLM-L6-v2 vectors of SST-2 train (ingested here, or reused with --store PATH, e.g.
              the store `bench_sst2.py --keep-store PATH` kept); queries are the sst2-test vectors when the
              store has them, else perturbed train vectors.
  (b) random  N (default 1M) seeded random unit vectors of --dim (default 384), written straight into a real store's
              `items` and embeddings tables with Arrow; the index is then built by `store.index()`, i.e.
              embedstore.index.sync.build (choose_factory -> train -> add -> tune) and persisted, exactly as
              after an ingest. Queries: random unit vectors and perturbed stored vectors, batches of 100.

Peers, measured in the same run: exact top-10 by numpy brute force (recall is tie-tolerant: a hit counts when
its exact cosine reaches the exact 10th best), and `ORDER BY array_cosine_similarity(vector, ?::FLOAT[dim])
DESC LIMIT 10` over an in-memory DuckDB FLOAT[dim] table of the same vectors (time per query).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from _common import (import_library, parser, peak_rss_mb, ratio, rss_mb, show, sst2_file, timed, verdict,
                     wait_quiet, write_results)

K = 10
BATCH = 100


def index_file_mb(sidecar: Path) -> float:
    """Size of the data file an index sidecar names."""
    return sidecar.with_name(json.loads(sidecar.read_text())["file"]).stat().st_size / 2**20


def unit(x: np.ndarray) -> np.ndarray:
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


def perturbed(X: np.ndarray, n: int, rng: np.random.Generator, noise: float = 0.5) -> np.ndarray:
    """Stored vectors plus a random direction of norm `noise`, renormalised."""
    base = X[rng.choice(len(X), size=n, replace=False)]
    g = unit(rng.standard_normal(base.shape, dtype=np.float32))
    return unit(unit(base.copy()) + noise * g)


def exact_kth(X: np.ndarray, Q: np.ndarray, k: int = K, block_floats: int = 50_000_000) -> np.ndarray:
    """The exact k-th best cosine per query (numpy brute force over unit rows of X, queries in blocks)."""
    step = max(1, block_floats // len(X))
    out = []
    for i in range(0, len(Q), step):
        s = Q[i:i + step] @ X.T
        out.append(-np.partition(-s, k - 1, axis=1)[:, k - 1])
    return np.concatenate(out)


def recall(got: np.ndarray, ids: np.ndarray, X: np.ndarray, Q: np.ndarray, kth: np.ndarray) -> float:
    """Mean fraction of the k returned item ids whose exact cosine reaches the exact k-th best (-1 = miss)."""
    rows = np.clip(np.searchsorted(ids, got), 0, len(ids) - 1)
    valid = (got >= 0) & (ids[rows] == got)
    s = np.einsum("qd,qkd->qk", Q, X[rows])
    return float(((s >= kth[:, None] - 1e-5) & valid).sum() / got.size)


def sql_table(X: np.ndarray, ids: np.ndarray):
    """The peer: an in-memory DuckDB table vecs(id BIGINT, vector FLOAT[dim]) of the same vectors."""
    import duckdb
    import pyarrow as pa
    con = duckdb.connect()
    dim = X.shape[1]
    con.register("_v", pa.table({"id": ids, "vector": pa.FixedSizeListArray.from_arrays(X.reshape(-1), dim)}))
    con.execute(f"CREATE TABLE vecs AS SELECT id, vector::FLOAT[{dim}] AS vector FROM _v")
    con.unregister("_v")
    return con


def sql_search(con, Q: np.ndarray):
    sql = f"SELECT id FROM vecs ORDER BY array_cosine_similarity(vector, ?::FLOAT[{Q.shape[1]}]) DESC LIMIT {K}"
    got = np.full((len(Q), K), -1, np.int64)
    with timed() as t:
        for j, q in enumerate(Q):
            got[j] = [r[0] for r in con.execute(sql, [q.tolist()]).fetchall()]
    return t, got


def store_search(store, dataset: str, Q: np.ndarray):
    got = np.full((len(Q), K), -1, np.int64)
    store.search(dataset, vector=Q[0], k=K)  # loads the index (timed separately by the caller)
    with timed() as t:
        for j, q in enumerate(Q):
            hits = store.search(dataset, vector=q, k=K)
            got[j, :len(hits)] = [h.item_id for h in hits]
    return t, got


def index_search(live, Q: np.ndarray, nprobe: int | None = None):
    got = np.empty((len(Q), K), np.int64)
    with timed() as t:
        for i in range(0, len(Q), BATCH):
            got[i:i + BATCH] = live.index.search(Q[i:i + BATCH], K, nprobe=nprobe)[1]
    return t, got


def measured(t, got: np.ndarray, ids: np.ndarray, X: np.ndarray, Q: np.ndarray, kth: np.ndarray, **extra) -> dict:
    """Time per query, recall@10 and other processes' CPU use of one timed search loop over Q[:len(got)]."""
    n = len(got)
    return {"queries": n, "per_query_s": t.seconds / n, "recall_at_10": recall(got, ids, X, Q[:n], kth[:n]),
            "others_cores": t.others, **extra}


def nprobe_sweep(live, Q: np.ndarray, ids: np.ndarray, X: np.ndarray, kth: np.ndarray) -> list[dict]:
    """IVF only: recall@10 and time per query at nprobe 1, 4, 16, ... nlist (what the tuned nprobe trades)."""
    if not live.index.factory.startswith("IVF"):
        return []
    nlist = live.index.index.nlist
    out = []
    for p in sorted({4 ** i for i in range(20) if 4 ** i < nlist} | {nlist}):
        out.append({"nprobe": p, **measured(*index_search(live, Q, nprobe=p), ids, X, Q, kth)})
    return out


def compare(store_path: Path, dataset: str, X: np.ndarray, ids: np.ndarray, queries: dict, args,
            goals: bool) -> dict:
    """Recall@10 and time per query of store.search (writable, then read-only open), of the store's index
    directly (batches of 100) and of DuckDB SQL, for each query set. `goals`: print the part (b) verdicts."""
    goal = (lambda ok, text: verdict(ok) + ": " + text) if goals else (lambda ok, text: "")
    import embedstore
    out = {}
    sql = sql_table(X, ids)
    for name, Q in queries.items():
        kth = exact_kth(X, Q)
        r: dict = {"queries": len(Q), "others_cores_before": wait_quiet(60)}
        for mode in ("writable", "read_only"):
            with timed() as t:
                store = embedstore.open(store_path, read_only=mode == "read_only")
                live = store.index(dataset, store.resolve_encoder("", dataset))
            r[f"store_search_{mode}"] = measured(*store_search(store, dataset, Q[:args.search_queries]), ids, X, Q,
                                                 kth, open_and_load_index_s=t.seconds)
            if mode == "writable":
                r["index_batched"] = measured(*index_search(live, Q), ids, X, Q, kth, factory=live.index.factory,
                                              params=live.index.params,
                                              nprobe_sweep=nprobe_sweep(live, Q, ids, X, kth))
            store.close()
            del live
        r["duckdb_sql"] = measured(*sql_search(sql, Q[:args.sql_queries]), ids, X, Q, kth)
        whos = ("index_batched", "store_search_writable", "store_search_read_only")
        for who in whos:
            r[f"speedup_{who}_vs_sql"] = ratio(r["duckdb_sql"]["per_query_s"], r[who]["per_query_s"])
        out[name] = r
        print(f"\n[{dataset}] {name} queries ({len(Q):,}) over {len(X):,} vectors; index "
              f"{r['index_batched']['factory']} {r['index_batched']['params']}")
        show("recall@10 index (batches of 100)", r["index_batched"]["recall_at_10"],
             goal(r["index_batched"]["recall_at_10"] >= 0.95, ">= 0.95"))
        show("recall@10 store.search / DuckDB SQL", f"{r['store_search_writable']['recall_at_10']:.4f} / "
             f"{r['duckdb_sql']['recall_at_10']:.4f}")
        show("ms/query: index batched / store.search / read-only / SQL",
             " / ".join(f"{1000 * r[w]['per_query_s']:.3f}" for w in
                        ("index_batched", "store_search_writable", "store_search_read_only", "duckdb_sql")))
        for who in whos:
            sp = r[f"speedup_{who}_vs_sql"]
            show(f"speedup vs DuckDB SQL: {who}", sp, goal(sp >= 100, ">= 100x"))
        if r["index_batched"]["nprobe_sweep"]:
            show("nprobe sweep: nprobe recall@10 ms/query", "; ".join(
                f"{x['nprobe']} {x['recall_at_10']:.3f} {1000 * x['per_query_s']:.2f}"
                for x in r["index_batched"]["nprobe_sweep"]))
        show("other processes' CPU use during timings (cores, max)",
             max(r[w]["others_cores"] for w in (*whos, "duckdb_sql")), "should be ~0")
        show("open store + load index: writable / read-only (s)",
             f"{r['store_search_writable']['open_and_load_index_s']:.2f} / "
             f"{r['store_search_read_only']['open_and_load_index_s']:.2f}")
    sql.close()
    return out


def part_sst2(args, tmp: Path) -> dict:
    import embedstore
    path = Path(args.store) if args.store else tmp / "sst2-store"
    with embedstore.open(path) as store:
        if not args.store:
            print("ingesting SST-2 train with minilm ...", flush=True)
            store.ingest(sst2_file("train.tsv", args.limit, tmp), dataset="sst2", encoder="minilm",
                         text_column="sentence", label_column="label", progress=False)
        X, _, fs = store.features("sst2", encoder="minilm", label=None, return_meta=True)
        has_test = "sst2-test" in store.dataset_names()
        Q = store.features("sst2-test", encoder="minilm", label=None)[0] if has_test else \
            perturbed(X, 200, np.random.default_rng(1), noise=0.3)
    return compare(path, "sst2", unit(X), fs.item_ids, {"sst2-test" if has_test else "perturbed": unit(Q)}, args,
                   goals=False)


def fill_store(store, X: np.ndarray, dataset: str, rows_per_insert: int = 100_000) -> None:
    """Items and vectors written directly (Arrow), as an ingest would leave them; no index yet."""
    import pyarrow as pa
    n, dim = X.shape
    fp = hashlib.sha256(f"bench_knn random unit {dim}".encode()).hexdigest()  # names the table: hex only
    enc = SimpleNamespace(fingerprint=fp, dim=dim, spec=f"random:{dim}",
                          modality="text", identity=lambda: {"bench": "random"}, versions=lambda: {}, unit_norm=True)
    record = store.register_encoder(enc)
    with store.transaction() as con:  # the dataset and its link to the encoder, as an ingest records them
        con.execute("INSERT INTO datasets (name, modality, source) VALUES (?, 'text', 'bench_knn')", [dataset])
        con.execute("INSERT INTO dataset_encoders VALUES (?, ?)", [dataset, fp])
    with store.transaction() as con:
        for a in range(0, n, rows_per_insert):
            ids = np.arange(a + 1, min(a + rows_per_insert, n) + 1, dtype=np.int64)
            hashes = pa.array([f"{i:032x}" for i in ids])
            con.register("_t", pa.table({"item_id": ids, "key": pa.array([f"r{i}" for i in ids]), "h": hashes,
                                         "v": pa.FixedSizeListArray.from_arrays(X[ids - 1].reshape(-1), dim)}))
            con.execute("INSERT INTO items (item_id, dataset, key, content_hash) "
                        "SELECT item_id, ?, key, hex_hash(h) FROM _t", [dataset])
            con.execute(f"INSERT INTO {record.table} (content_hash, vector, device, dtype) "
                        "SELECT hex_hash(h), v, 'cpu', 'float32' FROM _t")
            con.unregister("_t")


def random_vectors(n: int, dim: int, args) -> np.ndarray:
    """Seeded unit vectors: uniform on the sphere, or (--data clustered) around --clusters random centres."""
    rng = np.random.default_rng(args.seed)
    centres = unit(rng.standard_normal((args.clusters, dim), dtype=np.float32)) if args.data == "clustered" else None
    X = np.empty((n, dim), np.float32)
    for a in range(0, n, 100_000):  # no float64 temporary of the full size
        m = min(100_000, n - a)
        X[a:a + m] = rng.standard_normal((m, dim), dtype=np.float32)
        if centres is not None:
            X[a:a + m] = centres[rng.integers(0, len(centres), m)] + X[a:a + m] * (0.5 / np.sqrt(dim))
    return unit(X)


def part_random(args, tmp: Path) -> dict:
    import embedstore
    n, dim = args.n, args.dim
    X = random_vectors(n, dim, args)
    path = tmp / "random-store"
    print(f"\nwriting {n:,} random unit vectors ({args.data}) into a store ...", flush=True)
    with timed() as fill, embedstore.open(path) as store:
        fill_store(store, X, "random")
    with embedstore.open(path) as store:
        rss0 = rss_mb()
        print("building the index with store.index() (sync.build: choose_factory, train, add, tune; persist)",
              flush=True)
        with timed() as build:
            live = store.index("random", store.resolve_encoder("", "random"))
        built = {"seconds": build.seconds, "factory": live.index.factory, "params": live.index.params,
                 "ntotal": live.index.ntotal, "rss_before_mb": rss0, "rss_after_mb": rss_mb(),
                 "peak_rss_mb": peak_rss_mb(), "vectors_mb": X.nbytes / 2**20,
                 "file_mb": index_file_mb(store.index_path("random", live.record))}
    show("store fill (items + vectors via Arrow), s", fill.seconds)
    show("index build + persist, s", build.seconds)
    show("index", f"{built['factory']} {built['params']}")
    show("RSS before / after build / peak (MiB)", f"{rss0:.0f} / {built['rss_after_mb']:.0f} / "
         f"{built['peak_rss_mb']:.0f} (vectors alone {built['vectors_mb']:.0f}, file {built['file_mb']:.0f})")
    qrng = np.random.default_rng(args.seed + 1)
    queries = {"random": unit(qrng.standard_normal((args.queries, dim), dtype=np.float32)),
               "perturbed": perturbed(X, args.queries, qrng)}
    res = compare(path, "random", X, np.arange(1, n + 1, dtype=np.int64), queries, args, goals=True)
    return {"data": args.data, "n": n, "build": built, "fill_s": fill.seconds, **res}


def main() -> None:
    ap = parser(__doc__)
    ap.add_argument("--part", choices=["sst2", "random", "both"], default="both")
    ap.add_argument("--store", metavar="PATH", help="(a) reuse this store's sst2 minilm vectors instead of ingesting")
    ap.add_argument("--limit", type=int, help="(a) ingest only the first N SST-2 train rows (without --store)")
    ap.add_argument("--n", type=int, default=1_000_000, help="(b) number of random vectors (default 1M)")
    ap.add_argument("--dim", type=int, default=384, help="(b) dimension of the random vectors (default 384)")
    ap.add_argument("--queries", type=int, default=1000, help="(b) queries per query set (default 1000)")
    ap.add_argument("--search-queries", type=int, default=200,
                    help="queries timed one by one through store.search (default 200)")
    ap.add_argument("--sql-queries", type=int, default=5, help="queries timed through DuckDB SQL (default 5)")
    ap.add_argument("--data", choices=["uniform", "clustered"], default="uniform",
                    help="(b) uniform on the sphere (default: the worst case for IVF) or clustered")
    ap.add_argument("--clusters", type=int, default=1000, help="(b) centres for --data clustered (default 1000)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    import_library("embedstore.encoders.text.st")
    tmp = Path(tempfile.mkdtemp(prefix="bench_knn_"))
    figures = {}
    try:
        if args.part in ("sst2", "both"):
            figures["sst2"] = part_sst2(args, tmp)
        if args.part in ("random", "both"):
            figures["random"] = part_random(args, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    suffix = ("" if args.part == "both" else f"_{args.part}") + ("" if args.data == "uniform" else f"_{args.data}") \
        + ("" if args.dim == 384 else f"_{args.n // 1_000_000}m_x{args.dim}")
    write_results("bench_knn" + suffix, args, figures)


if __name__ == "__main__":
    main()
