"""Heads on cached text features: which encoder and which head, how many labels, and what a refit costs.

  SST-2   train -> test, hyper-parameters chosen on dev (heads.fit search on the dev dataset; test scored once)
  TREC    coarse labels, train -> test (heads.compare: the same 5 folds for every combination, then test)
  SMS     spam vs ham, a seeded stratified 80/20 split (heads.compare)
Encoders: minilm (all-MiniLM-L6-v2), paraphrase-l3 (paraphrase-MiniLM-L3-v2, ONNX) and their concatenation;
SMS uses minilm only. Heads: logreg, svm, knn, mlp, lightgbm.

Also: logreg and LightGBM (early stopping) refitted on the 60,614 x 384 SST-2 vectors vs re-embedding them
(measured on the dev set's 6,735 sentences and scaled by count), and the SST-2 learning curve (PNG + table).
The store is kept in benchmarks/out/heads-store (heads-store-quick for --quick), so a rerun embeds nothing. First run: about 15 minutes.
"""

from __future__ import annotations

import random
import time
from pathlib import Path

import embedstore
import heads
from _common import RESULTS, dataset_path, parser, ratio, read_sst2, show, timed, write_results
from heads.plots import curve_png

ENCODERS = ["minilm", "paraphrase-l3"]
MODELS = ["logreg", "svm", "knn", "mlp", "lightgbm"]
OUT = Path(__file__).resolve().parent / "out"


def trec_rows(path: Path) -> list[dict]:
    rows = []
    for i, line in enumerate(path.read_bytes().decode("latin-1").splitlines(), 1):
        label, _, text = line.partition(" ")
        rows.append({"id": f"{path.name}:{i}", "text": text.strip(), "label": label.split(":")[0]})
    return rows


def sms_split(path: Path, seed: int = 0) -> tuple[list[dict], list[dict]]:
    """A stratified 80/20 split of label<TAB>text lines (seeded)."""
    rows = []
    for i, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
        label, _, text = line.partition("\t")
        rows.append({"id": f"sms:{i}", "text": text, "label": label})
    rng = random.Random(seed)
    train, test = [], []
    for label in sorted({r["label"] for r in rows}):
        group = [r for r in rows if r["label"] == label]
        rng.shuffle(group)
        cut = int(0.8 * len(group))
        train += group[:cut]
        test += group[cut:]
    return train, test


def ingest_all(store, quick: bool, tmp: Path) -> dict:
    sst2 = dataset_path("text", "sst2")
    limit = 3000 if quick else None
    seconds = {}
    for split in ("train", "dev", "test"):
        path = sst2 / f"{split}.tsv"
        if limit and split != "test":
            lines = path.read_text(encoding="utf-8").splitlines()[: limit + 1]
            path = tmp / f"sst2-{split}-{limit}.tsv"
            path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        for enc in ENCODERS:
            name = f"sst2-{split}" if split != "train" else "sst2"
            rep = store.ingest(path, dataset=name, encoder=enc, text_column="sentence", label_column="label",
                               progress=False)
            seconds[f"{name}/{enc}"] = {"seconds": rep.seconds, "embedded": rep.embedded}
    trec = dataset_path("text", "trec")
    for fname, name in (("train_5500.label", "trec"), ("TREC_10.label", "trec-test")):
        for enc in ENCODERS:
            store.ingest(trec_rows(trec / fname), dataset=name, encoder=enc, id_column="id", label_column="label",
                         source_name=fname, progress=False)
    train, test = sms_split(dataset_path("text", "sms_spam", "SMSSpamCollection"))
    store.ingest(train, dataset="sms", encoder="minilm", id_column="id", label_column="label", progress=False)
    store.ingest(test, dataset="sms-test", encoder="minilm", id_column="id", label_column="label", progress=False)
    return seconds


def sst2_selected_on_dev(store, budget: float, models: list[str]) -> list[dict]:
    rows = []
    for enc in [*ENCODERS, "+".join(ENCODERS)]:
        for model in models:
            searched = model in ("logreg", "svm")  # the rest keep their defaults (MLP/LightGBM early-stop)
            with timed() as t:
                head, dev = heads.fit(store, "sst2", "label", model, encoder=enc, name=f"sst2-{model}-{enc}",
                                      dev_dataset="sst2-dev", search_params=searched, budget=budget)
            test = heads.evaluate(store, head.name, "sst2-test")
            rows.append({"encoder": enc, "model": model, "params": head.meta["params"] if searched else "defaults",
                         "dev_macro_f1": dev["macro_f1"], "test_accuracy": test["accuracy"],
                         "test_macro_f1": test["macro_f1"], "fit_and_select_s": t.seconds})
            print(f"  sst2 {enc:<22} {model:<9} test acc {test['accuracy']:.4f}  macro-F1 {test['macro_f1']:.4f}",
                  flush=True)
    return sorted(rows, key=lambda r: -r["dev_macro_f1"])  # chosen on dev; test is only reported


def refit_vs_reembed(store) -> dict:
    """Refit from cached vectors vs re-embedding the training sentences (scaled from the dev set)."""
    from embedstore.encoders import get_encoder
    with timed() as load:
        X, y = store.features("sst2", encoder="minilm", label="label")
    out = {"n": len(y), "dim": X.shape[1], "features_load_s": load.seconds}
    for model in ("logreg", "lightgbm"):
        est = heads.estimators.make(model)
        with timed() as t:
            est.fit(X, y.astype(str))
        out[f"{model}_refit_s"] = t.seconds
    sentences, _ = read_sst2(dataset_path("text", "sst2", "dev.tsv"))
    enc = get_encoder("minilm")
    enc.embed(sentences[:64])  # load the model outside the timing
    with timed() as t:
        enc.embed(sentences)
    out["reembed_s_estimated"] = t.seconds * len(y) / len(sentences)
    out["reembed_measured_on"] = f"{len(sentences)} dev sentences, scaled by {len(y) / len(sentences):.2f}"
    for model in ("logreg", "lightgbm"):
        peer = out["reembed_s_estimated"] + out[f"{model}_refit_s"]
        out[f"{model}_speedup_vs_reembed_then_fit"] = ratio(peer, out[f"{model}_refit_s"] + load.seconds)
    return out


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--quick", action="store_true", help="3,000-row SST-2 train/dev slices (checks the script)")
    p.add_argument("--budget", type=float, default=120, help="seconds of search per (encoder, model) on SST-2")
    p.add_argument("--sst2-models", default=",".join(MODELS), help="heads for the SST-2 table (default: all)")
    p.add_argument("--cv", type=int, default=5, help="folds for the TREC and SMS comparisons")
    p.add_argument("--store", type=Path, help="store to use (default: benchmarks/out/heads-store[-quick]); "
                   "one that already holds the SST-2 minilm vectors saves their embedding")
    args = p.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    path = args.store or OUT / ("heads-store-quick" if args.quick else "heads-store")
    with embedstore.open(path) as store:
        print("ingesting (cached after the first run)...", flush=True)
        figures: dict = {"ingest": ingest_all(store, args.quick, OUT)}
        print("SST-2: selection on dev, test once", flush=True)
        figures["sst2"] = sst2_selected_on_dev(store, args.budget, args.sst2_models.split(","))
        print("TREC coarse: compare", flush=True)
        figures["trec"] = heads.compare(store, "trec", [*ENCODERS, "+".join(ENCODERS)], MODELS, cv=args.cv,
                                        test_dataset="trec-test")
        print("SMS spam: compare", flush=True)
        figures["sms"] = heads.compare(store, "sms", encoder=["minilm"], model=MODELS, cv=args.cv, test_dataset="sms-test")
        print("refit vs re-embed", flush=True)
        figures["refit"] = refit_vs_reembed(store)
        print("SST-2 learning curve", flush=True)
        curve = heads.curve(store, "sst2", encoder=ENCODERS, sizes=(16, 64, 256, 1024, 4096), test_dataset="sst2-test")
        png = curve_png(curve, RESULTS / "sst2_curve.png", "logreg on SST-2: accuracy on the test split")
        figures["curve"] = {"png": str(png.relative_to(RESULTS.parent.parent)), "rows": curve}
    for name in ("sst2", "trec", "sms"):
        print(f"\n{name}: best {figures[name][0]}")
    r = figures["refit"]
    show("logreg refit on cached 60k x 384 (s)", r["logreg_refit_s"])
    show("LightGBM refit, early stopping (s)", r["lightgbm_refit_s"])
    show("re-embed 60k with minilm, estimated (s)", r["reembed_s_estimated"])
    show("logreg: re-embed+fit / (load+refit)", r["logreg_speedup_vs_reembed_then_fit"], "x")
    show("LightGBM: re-embed+fit / (load+refit)", r["lightgbm_speedup_vs_reembed_then_fit"], "x")
    figures["total_seconds"] = time.perf_counter() - t0
    write_results("bench_heads_text" + ("_quick" if args.quick else ""), args, figures)


if __name__ == "__main__":
    main()
