"""Are the default heads as good as the script a careful data scientist writes? (issue 12)

For each task: train and test splits are ingested into one store; then, on the same items,
  default    heads.fit(store, train) with no options (logreg: scaling and C chosen from the data), then
             heads.evaluate on test, scored once;
  auto       heads.fit(store, train, model="auto") (logreg / svm / knn, + lightgbm on small sets, ranked by the
             hold-out split of train), then heads.evaluate on test;
  script     the hand-written pipeline: DNA: sklearn CountVectorizer(char 6-grams) + LogisticRegression(max_iter=2000)
             on the raw sequences; text and images: the same encoder's vectors (read from the store: what
             SentenceTransformer.encode / the timm forward gives) + StandardScaler + LogisticRegressionCV(max_iter=2000);
  majority   always answering the training set's most frequent class.
Goal: default >= script - 0.01 and auto >= script (test macro-F1; accuracy shown too).

Tasks (../shared/datasets): text with minilm (all-MiniLM-L6-v2): sst2 (60,614 -> 872), trec (coarse, 5,452 -> 500),
sms (5,574, stratified 80/20); DNA with kmer:6: GUE prom_core_all, tf/0, tf/1 (train -> test), splice
(reconstructed_devtest_only: dev -> test, 3 classes), ecoli promoters (nucleic_transformer, 5,720, 80/20); images
with efficientnet-lite0: cifar10 (1,000/200 per class) and fashion (Fashion-MNIST, 300/100 per class).

    python benchmarks/bench_heads_defaults.py --store /tmp/heads_defaults_store           # all tasks, ~1.5 h on 2 cores
    python benchmarks/bench_heads_defaults.py --tasks trec,splice --store /tmp/s         # some tasks (merged into the JSON)
    python benchmarks/bench_heads_defaults.py --smoke                                    # CI-sized: 300 rows of trec and splice

Results merge into results/bench_heads_defaults.json (one entry per task, so tasks can be run separately).
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import tarfile
import tempfile
import warnings
from pathlib import Path

import numpy as np

from _common import RESULTS, dataset_path, import_library, parser, show, timed, write_results

TEXT = ("sst2", "trec", "sms")
DNA = ("prom_core_all", "tf0", "tf1", "splice", "ecoli")
IMAGES = ("cifar10", "fashion")
ENCODER = {**{t: "minilm" for t in TEXT}, **{t: "kmer:6" for t in DNA}, **{t: "efficientnet-lite0" for t in IMAGES}}
GUE = {"prom_core_all": ("prom/prom_core_all", "train"), "tf0": ("tf/0", "train"), "tf1": ("tf/1", "train"),
       "splice": ("splice/reconstructed_devtest_only", "dev")}


# -- data: (train rows, test rows) as {"id", "text", "label"} dicts, or image tar paths ----------------------------
def _split(rows: list[dict], seed: int = 0) -> tuple[list[dict], list[dict]]:
    from sklearn.model_selection import train_test_split
    tr, te = train_test_split(rows, test_size=0.2, stratify=[r["label"] for r in rows], random_state=seed)
    return tr, te


def _rows(texts, labels, prefix: str) -> list[dict]:
    return [{"id": f"{prefix}{i}", "text": t, "label": str(y)} for i, (t, y) in enumerate(zip(texts, labels))]


def load_task(task: str, tmp: Path, limit: int | None):
    if task == "sst2":
        from _common import read_sst2
        out = [_rows(*read_sst2(dataset_path("text", "sst2", f"{s}.tsv")), s) for s in ("train", "test")]
    elif task == "trec":
        def read(name: str, prefix: str) -> list[dict]:
            lines = dataset_path("text", "trec", name).read_bytes().decode("latin-1").splitlines()
            return _rows([ln.split(" ", 1)[1] for ln in lines if ln.strip()],
                         [ln.split(":", 1)[0] for ln in lines if ln.strip()], prefix)
        out = [read("train_5500.label", "train"), read("TREC_10.label", "test")]
    elif task == "sms":
        lines = dataset_path("text", "sms_spam", "SMSSpamCollection").read_text(encoding="utf-8").splitlines()
        pairs = [ln.split("\t", 1) for ln in lines if "\t" in ln]
        out = list(_split(_rows([p[1] for p in pairs], [p[0] for p in pairs], "")))
    elif task in GUE:
        folder, train_split = GUE[task]

        def read(split: str) -> list[dict]:
            with open(dataset_path("dna", "gue", *folder.split("/"), f"{split}.csv"), newline="") as f:
                rows = list(csv.DictReader(f))
            return _rows([r["sequence"] for r in rows], [r["label"] for r in rows], split)
        out = [read(train_split), read("test")]
    elif task == "ecoli":
        with open(dataset_path("dna", "nucleic_transformer", "ecoli_promoters", "v9d3.csv"), newline="") as f:
            rows = list(csv.DictReader(f))
        out = list(_split(_rows([r["seqs"] for r in rows], [r["labels"] for r in rows], "")))
    elif task == "cifar10":
        from embedstore.sources.media import tar_subset
        root = dataset_path("image", "cifar10")
        per = (limit or 1000, max((limit or 1000) // 5, 20))
        return [tar_subset(root / f"{s}.tar.gz", tmp / f"cifar-{s}.tar.gz", n) for s, n in zip(("train", "test"), per)]
    elif task == "fashion":
        per = (limit or 300, max((limit or 300) // 3, 20))
        return [fashion_tar(prefix, tmp / f"fashion-{prefix}.tar.gz", n) for prefix, n in zip(("train", "t10k"), per)]
    else:
        raise SystemExit(f"unknown task {task!r}; available: {', '.join(ENCODER)}")
    if limit:
        out = [_split(out[0] + out[1])[0][:limit], _split(out[0] + out[1])[1][:max(limit // 3, 50)]]
    return out


def fashion_tar(prefix: str, dst: Path, per_class: int) -> Path:
    """The first `per_class` Fashion-MNIST images of each class (IDX files) as PNGs in a tar: `<class>/<i>.png`."""
    from PIL import Image
    root = dataset_path("image", "fashion_mnist")
    with gzip.open(root / f"{prefix}-images-idx3-ubyte.gz") as f:
        images = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 28, 28)
    with gzip.open(root / f"{prefix}-labels-idx1-ubyte.gz") as f:
        labels = np.frombuffer(f.read(), np.uint8, offset=8)
    with tarfile.open(dst, "w:gz") as tf:
        for c in range(10):
            for i in np.flatnonzero(labels == c)[:per_class]:
                buf = io.BytesIO()
                Image.fromarray(images[i]).save(buf, format="PNG")
                info = tarfile.TarInfo(f"{prefix}/{c}/{i:05d}.png")
                info.size = buf.tell()
                buf.seek(0)
                tf.addfile(info, buf)
    return dst


# -- the three sides --------------------------------------------------------------------------------------------
def scores(y_true, y_pred) -> dict:
    from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef
    return {"accuracy": float(accuracy_score(y_true, y_pred)),
            "macro_f1": float(f1_score(y_true, y_pred, average="macro", zero_division=0)),
            "mcc": float(matthews_corrcoef(y_true, y_pred))}


def script(task: str, store, data) -> dict:
    """The careful hand-written pipeline (see the module docstring), train -> test."""
    from sklearn.linear_model import LogisticRegression, LogisticRegressionCV
    from sklearn.preprocessing import StandardScaler
    with timed() as t, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if task in DNA:
            from sklearn.feature_extraction.text import CountVectorizer
            train, test = data
            vec = CountVectorizer(analyzer="char", ngram_range=(6, 6), lowercase=True)
            clf = LogisticRegression(max_iter=2000).fit(vec.fit_transform([r["text"] for r in train]),
                                                         [r["label"] for r in train])
            pred, y = clf.predict(vec.transform([r["text"] for r in test])), [r["label"] for r in test]
            how = "CountVectorizer(char 6-grams) + LogisticRegression(max_iter=2000)"
        else:
            Xtr, ytr = store.features(f"{task}-train", encoder=ENCODER[task])
            Xte, y = store.features(f"{task}-test", encoder=ENCODER[task])
            scaler = StandardScaler().fit(Xtr)
            clf = LogisticRegressionCV(max_iter=2000).fit(scaler.transform(Xtr), ytr)
            pred = clf.predict(scaler.transform(Xte))
            how = f"{ENCODER[task]} vectors + StandardScaler + LogisticRegressionCV(max_iter=2000)"
    return {**scores(y, pred), "how": how, "seconds": t.seconds}


def ours(task: str, store, model: str) -> dict:
    import heads
    name = f"{task}-{model}"
    with timed() as t, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        head, fit_scores = heads.fit(store, f"{task}-train", model=model, name=name)
        test = heads.evaluate(store, name, f"{task}-test")
    return {"accuracy": test["accuracy"], "macro_f1": test["macro_f1"], "mcc": test["mcc"],
            "baseline": test["baseline"], "model": head.meta["model"], "auto": head.meta["auto"],
            "models_ranked": head.meta.get("models_ranked"), "holdout_macro_f1": fit_scores.get("macro_f1"),
            "warnings": [str(w.message) for w in caught if "head" in str(w.message)], "seconds": t.seconds}


def run_task(task: str, store, tmp: Path, limit: int | None) -> dict:
    data = load_task(task, tmp, limit)
    ingest = {}
    for split, part in zip(("train", "test"), data):
        with timed() as t:
            r = store.ingest(part, dataset=f"{task}-{split}", encoder=ENCODER[task], progress=False,
                             **({"replace": True} if task in IMAGES else {"label_column": "label"}))
        # (images: the slice is rewritten into a new temporary folder on every run; same files, cached vectors)
        ingest[split] = {"rows": r.rows, "embedded": r.embedded, "skipped": r.skipped, "seconds": t.seconds}
    print(f"{task}: ingested {ingest['train']['rows']:,} + {ingest['test']['rows']:,} with {ENCODER[task]}", flush=True)
    out = {"encoder": ENCODER[task], "ingest": ingest, "script": script(task, store, data)}
    for model in ("logreg", "auto"):
        out["default" if model == "logreg" else "auto"] = ours(task, store, model)
    d, a, s = out["default"], out["auto"], out["script"]
    out["majority"] = d["baseline"]
    out["goal_default"] = d["macro_f1"] >= s["macro_f1"] - 0.01
    out["goal_auto"] = a["macro_f1"] >= s["macro_f1"]
    print(f"  macro-F1  default {d['macro_f1']:.4f} ({d['auto'].get('normalize')}, C={d['auto'].get('C')})  "
          f"auto {a['macro_f1']:.4f} ({a['model']})  script {s['macro_f1']:.4f}  majority "
          f"{d['baseline']['macro_f1']:.4f}", flush=True)
    return out


def table(figures: dict) -> None:
    print(f"\n{'task':<15}{'encoder':<20}{'default':>9}{'auto':>9}{'script':>9}{'majority':>10}   "
          f"{'acc default/auto/script':<26} goals")
    for task, f in figures.items():
        d, a, s = f["default"], f["auto"], f["script"]
        print(f"{task:<15}{f['encoder']:<20}{d['macro_f1']:>9.4f}{a['macro_f1']:>9.4f}{s['macro_f1']:>9.4f}"
              f"{f['majority']['macro_f1']:>10.4f}   {d['accuracy']:.3f}/{a['accuracy']:.3f}/{s['accuracy']:.3f}"
              f"{'':<9} {'ok' if f['goal_default'] else 'MISSED'}/{'ok' if f['goal_auto'] else 'MISSED'}")


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--tasks", default=",".join(ENCODER), help="comma-separated (default: all)")
    p.add_argument("--store", help="store to keep (ingests happen once across runs); default: a temporary one")
    p.add_argument("--limit", type=int, help="train rows (images: per class) per task, for a quick check")
    p.add_argument("--smoke", action="store_true", help="CI-sized run: trec and splice, 300 rows, no result file")
    args = p.parse_args()
    import_library("heads.training", "heads.estimators", "heads.tuning", "heads.comparison")
    import embedstore
    tasks = ["trec", "splice"] if args.smoke else args.tasks.split(",")
    limit = 300 if args.smoke else args.limit
    path = RESULTS / "bench_heads_defaults.json"
    figures = json.loads(path.read_text())["figures"] if path.exists() and not (args.smoke or limit) else {}
    with tempfile.TemporaryDirectory() as tmp, embedstore.open(args.store or Path(tmp) / "store") as store:
        for task in tasks:
            figures[task] = run_task(task, store, Path(tmp), limit)
            if not args.smoke:
                write_results("bench_heads_defaults" + ("_quick" if limit else ""), args, figures)
    table({t: figures[t] for t in tasks if t in figures} if args.smoke else figures)
    if args.smoke:
        show("smoke run", "ok (figures from a 300-row slice are not evidence)")


if __name__ == "__main__":
    main()
