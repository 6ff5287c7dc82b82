"""`heads`: fit, eval, predict, list, compare, curve and export classical heads on cached embeddings."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cli.common import add_store_arg, dump_json, open_store, run, table

EPILOG = """examples:
  heads fit --dataset sst2 --encoder minilm --label label --model logreg --name sst2-lr
  heads fit --dataset sst2 --encoder minilm --model svm --search --budget 60 --dev-dataset sst2-dev
  heads eval --head sst2-lr --dataset sst2-test --label label
  heads predict --head sst2-lr new.tsv --text-column sentence --out preds.csv
  heads compare --dataset trec --encoders minilm,paraphrase-l3,minilm+paraphrase-l3 --test-dataset trec-test
  heads zero-shot --dataset pets --encoder clip:ViT-B-32@laion2b_s34b_b79k --labels "cat,dog"
  heads curve --dataset sst2 --encoder minilm --test-dataset sst2-test --out curve.png
  heads list
"""


def build_parser() -> argparse.ArgumentParser:
    from heads.estimators import MODELS
    p = argparse.ArgumentParser(prog="heads", description="Fit classical heads on cached embeddings in seconds: "
                                "no encoder runs for fit/eval/compare/curve/list.", epilog=EPILOG,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    models_help = "; ".join(f"{k} ({m.task}): {m.help}" for k, m in MODELS.items())

    def data_args(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--dataset", required=True, help="training dataset")
        sp.add_argument("--label", default="label", help="label column: 'label' (the ingest's --label-column) or "
                        "another column kept in the items' metadata")

    f = sub.add_parser("fit", help="fit a head on a dataset's cached vectors and save it in the store")
    data_args(f)
    f.add_argument("--encoder", default="", help="encoder spec as ingested; a+b concatenates; fp:<prefix> picks "
                   "a fingerprint (default: the dataset's only encoder)")
    f.add_argument("--model", default="logreg", choices=list(MODELS), help=models_help)
    f.add_argument("--name", help="head name (default: <dataset>-<model>)")
    f.add_argument("--param", action="append", metavar="NAME=VALUE", help="estimator parameter, repeatable")
    f.add_argument("--cv", type=int, help="score with K-fold CV instead of a hold-out split")
    f.add_argument("--test-size", type=float, default=0.2, help="hold-out fraction for scoring (default 0.2); 0 fits once on all rows "
                   "without a score (the fastest refit)")
    f.add_argument("--group-column", help="keep items sharing this metadata column in the same fold")
    f.add_argument("--search", action="store_true", help="try the model's small parameter grid, keep the best")
    f.add_argument("--budget", type=float, help="seconds the search may spend (default: the whole grid)")
    f.add_argument("--dev-dataset", help="score (and search) on this dataset instead of splitting the training set")
    f.add_argument("--seed", type=int, default=0)
    f.add_argument("--json", action="store_true")
    add_store_arg(f)

    e = sub.add_parser("eval", help="score a saved head on another dataset's cached vectors",
                       description="Score a head once on a dataset (e.g. the test split); writes metrics.json and a "
                       "confusion-matrix PNG to <store>/heads/<head>/eval/<dataset>/ (or --report-dir).")
    e.add_argument("--head", required=True)
    e.add_argument("--dataset", required=True)
    e.add_argument("--label", default="label")
    e.add_argument("--report-dir", help="where to write metrics.json and confusion.png")
    e.add_argument("--json", action="store_true")
    add_store_arg(e)

    pr = sub.add_parser("predict", help="predict for new raw inputs (embeds them with the head's encoder)",
                        description="Embed INPUT with the head's own encoder (through the store's cache, so "
                        "repeated inputs are not re-embedded) and write predictions as CSV.")
    pr.add_argument("input", help="CSV/TSV/JSONL/Parquet file or directory of .txt files (image heads: a folder "
                    "of images, a tar shard, or a table with --path-column)")
    pr.add_argument("--head", required=True)
    pr.add_argument("--text-column", default="text")
    pr.add_argument("--path-column", help="image heads: the table column of image file paths")
    pr.add_argument("--id-column")
    pr.add_argument("--sep")
    pr.add_argument("--encoding", default="utf-8")
    pr.add_argument("--out", help="output CSV (default: stdout)")
    pr.add_argument("--no-cache", action="store_true",
                    help="open the store read-only: new vectors are not saved (works during an ingest)")
    add_store_arg(pr)

    c = sub.add_parser("compare", help="rank encoders x models under one CV protocol",
                       description="Which pretrained encoder (or concatenation) and which head fit this data? Every "
                       "combination is scored with the same folds on the same items; with --test-dataset each is "
                       "also scored once on it. Reads cached vectors only.")
    data_args(c)
    c.add_argument("--encoders", required=True, help="comma-separated specs as ingested, e.g. minilm,b,minilm+b")
    c.add_argument("--models", default="logreg,svm,knn,mlp,lightgbm", help="comma-separated (default: %(default)s)")
    c.add_argument("--cv", type=int, default=5)
    c.add_argument("--test-dataset")
    c.add_argument("--group-column")
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--format", choices=["table", "json", "csv"], default="table")
    add_store_arg(c)

    cu = sub.add_parser("curve", help="accuracy vs number of labelled examples, as a PNG and a table",
                        description="How many labels do I need? Fits the head on stratified subsamples "
                        "(several seeds for small sizes) and scores each on the test dataset (or a 20%% hold-out).")
    data_args(cu)
    cu.add_argument("--encoder", required=True, help="one spec, or several comma-separated (one line each)")
    cu.add_argument("--model", default="logreg")
    cu.add_argument("--sizes", default="16,64,256,1024", help="training sizes; 'all' is always added")
    cu.add_argument("--test-dataset")
    cu.add_argument("--repeats", type=int, default=3)
    cu.add_argument("--out", default="curve.png", help="PNG path (default: %(default)s)")
    cu.add_argument("--seed", type=int, default=0)
    add_store_arg(cu)

    ex = sub.add_parser("export", help="write a self-contained, checksummed head directory")
    ex.add_argument("--head", required=True)
    ex.add_argument("--out", required=True, help="directory to create (heads.load_dir reads it)")
    add_store_arg(ex)

    z = sub.add_parser("zero-shot", help="label images with a CLIP encoder's text tower, no training",
                       description="Score every item's stored CLIP image vector against text prompts made from "
                       "LABELS (their mean text vector per label) and predict the closest; items whose label is one "
                       "of LABELS are scored. Only the prompts run the model.")
    z.add_argument("--dataset", required=True)
    z.add_argument("--encoder", default="", help="the clip: spec as ingested (default: the dataset's only encoder)")
    z.add_argument("--labels", required=True, help="comma-separated label names, e.g. \"fracture,normal\"")
    z.add_argument("--template", action="append", metavar="TEXT",
                   help="prompt with {} for the label (repeatable: prompts are averaged; default: "
                   "\"a photo of a {}.\")")
    z.add_argument("--label", default="label", help="column to score against ('none' to skip scoring)")
    z.add_argument("--out", help="write key, prediction and per-label probabilities as CSV")
    z.add_argument("--json", action="store_true")
    add_store_arg(z)

    ls = sub.add_parser("list", help="saved heads with their metrics")
    ls.add_argument("--json", action="store_true")
    add_store_arg(ls)
    return p


def _print_metrics(m: dict) -> None:
    from heads.select import METRICS
    keys = [k for task in METRICS.values() for k in task if k in m]
    table([{"metric": k, "value": m[k], **({"std": m[f"{k}_std"]} if f"{k}_std" in m else {})}
           for k in dict.fromkeys(keys)])


def cmd_fit(args) -> int:
    import heads
    from heads.estimators import parse_params
    with open_store(args, read_only=False) as store:
        head, scores = heads.fit(store, args.dataset, label=args.label, model=args.model, encoder=args.encoder,
                                 name=args.name, params=parse_params(args.param), cv=args.cv,
                                 test_size=args.test_size, seed=args.seed, group=args.group_column,
                                 search_params=args.search, budget=args.budget, dev_dataset=args.dev_dataset)
    if args.json:
        dump_json({"head": head.name, "params": head.meta["params"], **scores})
        return 0
    print(f"head {head.name}: {args.model} on {head.meta['n_train']:,} x {head.meta['dim']} "
          f"({'+'.join(head.meta['encoders'])}), {len(head.meta['classes']) or 'no'} classes")
    if head.meta["search"]:
        print(f"searched {len(head.meta['search'])} settings; kept {head.meta['params']}")
    if "n" not in scores:
        print(f"{scores['protocol']}; fit time {scores['fit_seconds']:.2f}s")
        return 0
    print(f"scored by {scores['protocol']} (n={scores['n']:,}); fit time {scores['fit_seconds']:.2f}s")
    _print_metrics(scores)
    return 0


def cmd_eval(args) -> int:
    import heads
    with open_store(args, read_only=True) as store:
        report = Path(args.report_dir) if args.report_dir else store.path / "heads" / args.head / "eval" / args.dataset
        m = heads.evaluate(store, args.head, args.dataset, label=args.label, report_dir=report)
    if args.json:
        dump_json(m)
    else:
        print(f"head {m['head']} on {m['dataset']} (n={m['n']:,})")
        _print_metrics(m)
        print(f"report: {report}", file=sys.stderr)
    if m["overlap_with_training"]:
        print(f"warning: {m['overlap_with_training']:,} of {m['n']:,} evaluation items have the same content as "
              "training items; these scores are optimistic", file=sys.stderr)
    if m.get("unseen_labels"):
        print(f"warning: labels never seen in training: {m['unseen_labels']}", file=sys.stderr)
    return 0


def cmd_predict(args) -> int:
    import csv
    import heads
    from embedstore.encoders import get_encoder
    from embedstore.ingest.sources import TableOptions, open_source
    with open_store(args, read_only=args.no_cache) as store:
        head = heads.load(store, args.head)
        opts = TableOptions(text_column=args.text_column, id_column=args.id_column, sep=args.sep,
                            encoding=args.encoding, path_column=args.path_column)
        records = list(open_source(args.input, opts, modality=get_encoder(head.meta["encoders"][0]).modality))
        X, reasons = head.embed([r.content or "" for r in records], no_cache=args.no_cache)
        pred = head.predict_features(X)
        proba = head.predict_proba_features(X) if head.task != "regression" else None
    classes = [str(c) for c in head.classes_]
    out = open(args.out, "w", newline="") if args.out else sys.stdout
    try:
        w = csv.writer(out)
        w.writerow(["key", "prediction", "skipped"] + [f"p_{c}" for c in classes if proba is not None])
        for i, r in enumerate(records):
            why = r.reason or reasons[i]
            value = "" if why else ("|".join(pred[i]) if head.task == "multilabel" else pred[i])
            probs = [] if proba is None else (["" for _ in classes] if why else [f"{v:.6f}" for v in proba[i]])
            w.writerow([r.key, value, why or ""] + probs)
    finally:
        if args.out:
            out.close()
    if args.out:
        print(f"wrote {len(records):,} predictions to {args.out}", file=sys.stderr)
    return 0


def cmd_compare(args) -> int:
    import heads
    with open_store(args, read_only=True) as store:
        rows = heads.compare(store, args.dataset, [e.strip() for e in args.encoders.split(",")],
                             [m.strip() for m in args.models.split(",")], label=args.label, cv=args.cv,
                             seed=args.seed, test_dataset=args.test_dataset, group=args.group_column)
    if args.format == "json":
        dump_json(rows)
    elif args.format == "csv":
        import csv
        w = csv.DictWriter(sys.stdout, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    else:
        table(rows, ["rank", *[k for k in rows[0] if k != "rank"]])
    return 0


def cmd_curve(args) -> int:
    import heads
    from heads.plots import curve_png
    sizes = [int(s) for s in args.sizes.split(",") if s.strip() and s.strip() != "all"]
    with open_store(args, read_only=True) as store:
        rows = heads.curve(store, args.dataset, [e.strip() for e in args.encoder.split(",")], label=args.label,
                           model=args.model, sizes=sizes, test_dataset=args.test_dataset, repeats=args.repeats,
                           seed=args.seed)
    where = args.test_dataset or "a 20% hold-out"
    curve_png(rows, Path(args.out), f"{args.model} on {args.dataset}: accuracy on {where}")
    table(rows)
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


def cmd_zero_shot(args) -> int:
    import csv
    from collections import Counter

    from heads.zeroshot import DEFAULT_TEMPLATES, zero_shot
    with open_store(args, read_only=True) as store:
        r = zero_shot(store, args.dataset, args.labels.split(","), encoder=args.encoder,
                      templates=args.template or DEFAULT_TEMPLATES, label=None if args.label == "none" else args.label)
    if args.out:
        with open(args.out, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["key", "prediction"] + [f"p_{c}" for c in r.labels])
            w.writerows([k, p, *(f"{v:.6f}" for v in row)] for k, p, row in zip(r.keys, r.predictions,
                                                                                   r.probabilities))
    counts = Counter(r.predictions.tolist())
    if args.json:
        dump_json({"n": len(r.keys), "predicted": dict(counts), "metrics": r.metrics, "unmatched": r.n_unmatched})
        return 0
    print(f"zero-shot {args.dataset}: {len(r.keys):,} items labelled with {', '.join(r.labels)}")
    table([{"label": c, "predicted": counts.get(c, 0)} for c in r.labels])
    if r.metrics:
        _print_metrics(r.metrics)
    elif args.label != "none":
        print(f"not scored: no item's {args.label!r} is one of the labels", file=sys.stderr)
    if r.n_unmatched:
        print(f"{r.n_unmatched:,} labelled items have a label outside --labels and were not scored", file=sys.stderr)
    if args.out:
        print(f"wrote {args.out}", file=sys.stderr)
    return 0


def cmd_export(args) -> int:
    import heads
    with open_store(args, read_only=True) as store:
        out = heads.export(store, args.head, args.out)
    print(f"exported head {args.head} to {out} (load with heads.load_dir)")
    return 0


def cmd_list(args) -> int:
    import heads
    with open_store(args, read_only=True) as store:
        rows = heads.list_heads(store)
    dump_json(rows) if args.json else table(rows)
    return 0


COMMANDS = {"fit": cmd_fit, "eval": cmd_eval, "predict": cmd_predict, "compare": cmd_compare, "curve": cmd_curve,
            "export": cmd_export, "list": cmd_list, "zero-shot": cmd_zero_shot}


def main(argv: list[str] | None = None) -> int:
    return run(build_parser, COMMANDS, argv)


if __name__ == "__main__":
    sys.exit(main())
