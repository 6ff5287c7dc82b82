"""`heads`: fit, eval, predict, list, compare, curve and export classical heads on cached embeddings."""

from __future__ import annotations

import sys
from pathlib import Path

from embedstore.errors import InputError

from .common import (add_json_arg, seed, add_store_arg, add_table_args, build, dump_json, inputs, open_store, rows_out,
                     run, table, table_options)

EPILOG = """examples:
  heads fit --dataset sst2 --encoder minilm --label label --model logreg --name sst2-lr
  heads fit --dataset promoters --encoder kmer:6 --model auto  # rank logreg/svm/knn(/lightgbm); logreg unless beaten significantly
  heads fit --dataset sst2 --encoder minilm --param C=10 --param normalize=none   # override the automatic choices
  heads fit --dataset sst2 --encoder minilm --model svm --search --budget 60 --dev-dataset sst2-dev
  heads eval --head sst2-lr --dataset sst2-test --label label
  heads predict --head sst2-lr new.tsv --text-column sentence --out preds.csv
  echo "a warm, funny film" | heads predict --head sst2-lr -
  heads compare --dataset trec --encoder minilm,paraphrase-l3,minilm+paraphrase-l3 --test-dataset trec-test
  heads compare --dataset trec --encoder minilm --budget 300           # stop starting rows after 5 minutes
  heads zero-shot --dataset pets --encoder clip:ViT-B-32@laion2b_s34b_b79k --labels "cat,dog"
  heads curve --dataset sst2 --encoder minilm --test-dataset sst2-test --out curve.png
  heads list
"""


def _label_arg(sp) -> None:
    sp.add_argument("--label", "--label-column", dest="label", default="label",
                    help="label column: 'label' or the name given to the ingest's --label-column, or another column "
                    "kept in the items' metadata (default: label)")


def build_parser():
    from heads.estimators import MODELS
    p, sub = build("heads", "Fit classical heads on cached embeddings in seconds: no encoder runs for "
                   "fit/eval/compare/curve/list.", EPILOG)
    models_help = "; ".join(f"{k} ({m.task}): {m.help}" for k, m in MODELS.items())

    def data_args(sp) -> None:
        sp.add_argument("--dataset", required=True, help="training dataset")
        _label_arg(sp)

    f = sub.add_parser("fit", help="fit a head on a dataset's cached vectors and save it in the store",
                       description="Fit a head and save it. Defaults are chosen from the data: features that are not "
                       "unit length are scaled (l2 or standardised), and logreg's/svm's C, knn's k and mlp's alpha "
                       "are picked by internal CV on the training rows (printed and stored; --param NAME=VALUE "
                       "overrides any of them). The score is printed beside the majority-class baseline, with a "
                       "warning when the head does not beat it.")
    data_args(f)
    f.add_argument("--encoder", default="", help="encoder spec as ingested; a+b concatenates; fp:<prefix> picks "
                   "a fingerprint (default: the dataset's only encoder)")
    f.add_argument("--model", default="logreg", choices=[*MODELS, "auto"],
                   help=f"{models_help}; auto: rank logreg, svm, knn (and lightgbm on small sets) under the scoring "
                   "protocol and keep the best when its lead over logreg is significant (over 1.96 standard errors "
                   "of the paired difference), else logreg (default: logreg)")
    f.add_argument("--name", help="head name (default: <dataset>-<model>)")
    f.add_argument("--param", action="append", metavar="NAME=VALUE", help="estimator parameter, repeatable")
    f.add_argument("--cv", type=int, help="score with K-fold CV instead of a hold-out split")
    f.add_argument("--test-size", type=float, default=0.2, help="hold-out fraction for scoring (default 0.2); 0 fits once on all rows "
                   "without a score (the fastest refit)")
    f.add_argument("--group-column", help="keep items sharing this metadata column in the same fold")
    f.add_argument("--search", action="store_true", help="try the model's small parameter grid, keep the best")
    f.add_argument("--budget", type=float, help="seconds the search may spend (default: the whole grid)")
    f.add_argument("--dev-dataset", help="score (and search) on this dataset instead of splitting the training set")
    f.add_argument("--seed", type=seed, default=0)
    add_json_arg(f)
    add_store_arg(f)

    e = sub.add_parser("eval", help="score a saved head on another dataset's cached vectors",
                       description="Score a head once on a dataset (e.g. the test split); writes metrics.json and a "
                       "confusion-matrix PNG to <store>/heads/<head>/eval/<dataset>/ (or --report-dir).")
    e.add_argument("--head", required=True)
    e.add_argument("--dataset", required=True)
    _label_arg(e)
    e.add_argument("--report-dir", help="where to write metrics.json and confusion.png")
    add_json_arg(e)
    add_store_arg(e)

    pr = sub.add_parser("predict", help="predict for new raw inputs (embeds them with the head's encoder)",
                        description="Read INPUT as `embedstore ingest` reads it (tables, .txt with one text per "
                        "line, FASTA/FASTQ, image or audio folders and tar shards, several files or a glob, - for "
                        "stdin), "
                        "embed it with the head's own encoder (vectors the store holds for the same content are "
                        "reused; nothing is written) and write key, input, prediction, skip reason and class "
                        "probabilities as CSV (or JSON).")
    pr.add_argument("input", nargs="+", help="file(s), directory, quoted glob, or - (stdin)")
    pr.add_argument("--head", required=True)
    add_table_args(pr, labels=False)
    pr.add_argument("--out", help="output file (default: stdout)")
    add_json_arg(pr)
    add_store_arg(pr)

    c = sub.add_parser("compare", help="rank encoders x models under one CV protocol",
                       description="Which pretrained encoder (or concatenation) and which head fit this data? Every "
                       "combination is scored with the same folds on the same items; with --test-dataset each is "
                       "also scored once on it. Reads cached vectors only.")
    data_args(c)
    c.add_argument("--encoder", "--encoders", dest="encoder", default="",
                   help="one spec or several comma-separated, as ingested, e.g. minilm,b,minilm+b (default: the "
                   "dataset's only encoder)")
    c.add_argument("--model", "--models", dest="model", default=None,
                   help="one model or several comma-separated (default: logreg,svm,knn,mlp,lightgbm, without lightgbm "
                   f"on large wide feature sets); available: {', '.join(MODELS)}")
    c.add_argument("--cv", type=int, default=5)
    c.add_argument("--budget", type=float, help="seconds: start no new row once spent (rows not run are listed)")
    c.add_argument("--test-dataset")
    c.add_argument("--group-column")
    c.add_argument("--seed", type=seed, default=0)
    c.add_argument("--output-format", choices=["table", "json", "csv"], default="table",
                   help="how the table is printed (default: table; --json is json)")
    add_json_arg(c)
    add_store_arg(c)

    cu = sub.add_parser("curve", help="accuracy vs number of labelled examples, as a PNG and a table",
                        description="How many labels do I need? Fits the head on stratified subsamples "
                        "(several seeds for small sizes) and scores each on the test dataset (or a 20%% hold-out).")
    data_args(cu)
    cu.add_argument("--encoder", "--encoders", dest="encoder", required=True,
                    help="one spec, or several comma-separated (one line each)")
    cu.add_argument("--model", default="logreg", choices=[k for k, m in MODELS.items() if m.task == "classification"])
    cu.add_argument("--sizes", default="16,64,256,1024", help="training sizes; 'all' is always added")
    cu.add_argument("--test-dataset")
    cu.add_argument("--repeats", type=int, default=3)
    cu.add_argument("--budget", type=float, help="seconds: start no new training size once spent")
    cu.add_argument("--out", default="curve.png", help="PNG path (default: %(default)s)")
    cu.add_argument("--seed", type=seed, default=0)
    add_json_arg(cu)
    add_store_arg(cu)

    ex = sub.add_parser("export", help="write a self-contained, checksummed head directory")
    ex.add_argument("--head", required=True)
    ex.add_argument("--out", required=True, help="directory to create (heads.load_dir reads it)")
    add_json_arg(ex)
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
    z.add_argument("--label", "--label-column", dest="label", default="label",
                   help="column to score against ('none' to skip scoring)")
    z.add_argument("--out", help="write key, prediction and per-label probabilities as CSV")
    add_json_arg(z)
    add_store_arg(z)

    ls = sub.add_parser("list", help="saved heads with their metrics")
    add_json_arg(ls)
    add_store_arg(ls)
    return p


def _print_metrics(m: dict) -> None:
    """The scores, each beside the majority-class baseline's (chance MCC and R2 are 0)."""
    from heads.select import METRICS
    keys = [k for task in METRICS.values() for k in task if k in m]
    base = m.get("baseline") or {}
    table([{"metric": k, "value": m[k], **({"std": m[f"{k}_std"]} if f"{k}_std" in m else {}),
            **({"majority_baseline": base.get(k)} if base else {})} for k in dict.fromkeys(keys)])
    if base.get("predicts"):
        print(f"(majority baseline: always {base['predicts']!r})")


def _warn(m: dict) -> None:
    if m.get("warning"):
        print(f"\nWARNING: {m['warning']}", file=sys.stderr)


def _eta(done: int, total: int, elapsed: float) -> str:
    left = elapsed / max(done, 1) * (total - done)
    return f"{elapsed:.0f} s elapsed, ETA {left / 60:.1f} min" if total > done else f"{elapsed:.0f} s"


def _row_line(row: dict, done: int, total: int, elapsed: float) -> None:
    scores = "  ".join(f"{k} {v:.4f}" for k, v in row.items() if isinstance(v, float) and k.startswith(
        ("cv_", "test_", "accuracy", "macro_f1")) and not k.endswith("_std"))
    what = "/".join(str(row[k]) for k in ("encoder", "model", "n_train") if row.get(k) not in (None, ""))
    flag = f"  [{row['warning']}]" if row.get("warning") else ""
    print(f"[{done}/{total}] {what or '-'}  {scores}  ({_eta(done, total, elapsed)}){flag}", file=sys.stderr,
          flush=True)


def cmd_fit(args) -> int:
    import heads
    from heads.estimators import parse_params
    with open_store(args, read_only=False) as store:
        head, scores = heads.fit(store, args.dataset, encoder=args.encoder, label=args.label, model=args.model,
                                 name=args.name, params=parse_params(args.param), cv=args.cv,
                                 test_size=args.test_size, seed=args.seed, group=args.group_column,
                                 search_params=args.search, budget=args.budget, dev_dataset=args.dev_dataset)
    if args.json:
        dump_json({"head": head.name, "model": head.meta["model"], "params": head.meta["params"],
                   "auto": head.meta.get("auto"), "models_ranked": head.meta.get("models_ranked"), **scores})
        _warn(scores)
        return 0
    print(f"head {head.name}: {head.meta['model']} on {head.meta['n_train']:,} x {head.meta['dim']} "
          f"({'+'.join(head.meta['encoders'])}), {len(head.meta['classes']) or 'no'} classes")
    if head.meta.get("models_ranked"):
        print("model auto: ranked by the scoring protocol")
        table(head.meta["models_ranked"])
    auto = head.meta.get("auto") or {}
    chosen = [f"scaling {auto['normalize']}"] if "normalize" in auto else []
    if auto.get("tuned"):
        from heads.tuning import Tuning
        chosen.append(Tuning(**auto["tuned"]).describe())
    if chosen:
        print("chosen from the data: " + "; ".join(chosen) + " (override with --param)")
    if head.meta["search"]:
        print(f"searched {len(head.meta['search'])} settings; kept {head.meta['params']}")
    if "n" not in scores:
        print(f"{scores['protocol']}; fit time {scores['fit_seconds']:.2f}s")
        return 0
    print(f"scored by {scores['protocol']} (n={scores['n']:,}); fit time {scores['fit_seconds']:.2f}s")
    if scores.get("selection"):
        print(f"note: {scores['selection']}")
    _print_metrics(scores)
    _warn(scores)
    return 0


def cmd_eval(args) -> int:
    import heads
    from embedstore.store.layout import head_eval_dir
    with open_store(args, read_only=True) as store:
        report = Path(args.report_dir) if args.report_dir else head_eval_dir(store.path, args.head, args.dataset)
        m = heads.evaluate(store, args.head, args.dataset, label=args.label, report_dir=report)
    if args.json:
        dump_json(m)
    else:
        print(f"head {m['head']} on {m['dataset']} (n={m['n']:,})")
        _print_metrics(m)
        if m.get("per_class"):
            print()
            table(m["per_class"])
        print(f"report: {report}", file=sys.stderr)
    _warn(m)
    if m["overlap_with_training"]:
        print(f"warning: {m['overlap_with_training']:,} of {m['n']:,} evaluation items have the same content as "
              "training items; these scores are optimistic", file=sys.stderr)
    if m.get("unseen_labels"):
        print(f"warning: labels never seen in training: {m['unseen_labels']}", file=sys.stderr)
    return 0


def cmd_predict(args) -> int:
    import csv
    import json

    import heads
    from embedstore.encoders import get_encoder
    from embedstore.sources import open_source
    with open_store(args, read_only=True) as store, inputs(args.input, args.format) as (source, _):
        head = heads.load(store, args.head)
        modality = get_encoder(head.meta["encoders"][0]).modality
        records = list(open_source(source, table_options(args), modality=modality))
        X, reasons = head.embed([r.content if r.reason is None else None for r in records])
        pred = head.predict(X)
        proba = head.predict_proba(X) if head.task != "regression" else None
    classes = [str(c) for c in head.classes_] if proba is not None else []
    rows = []
    for i, r in enumerate(records):
        why = r.reason or reasons[i]
        shown = r.content if isinstance(r.content, str) else (r.meta or {}).get("path", r.key)
        value = None if why else ("|".join(pred[i]) if head.task == "multilabel" else pred[i])
        rows.append({"key": r.key, "input": shown, "prediction": None if value is None else str(value) if
                     head.task != "regression" else float(value), "skipped": why or "",
                     **{f"p_{c}": (None if why else float(proba[i, j])) for j, c in enumerate(classes)}})
    out = open(args.out, "w", newline="") if args.out else sys.stdout
    try:
        if args.json:
            out.write(json.dumps(rows, indent=2) + "\n")
        else:
            w = csv.DictWriter(out, fieldnames=["key", "input", "prediction", "skipped", *[f"p_{c}" for c in classes]])
            w.writeheader()
            w.writerows({k: (f"{v:.6f}" if k.startswith("p_") and v is not None else "" if v is None else v)
                         for k, v in row.items()} for row in rows)
    finally:
        if args.out:
            out.close()
    if args.out:
        print(f"wrote {len(records):,} predictions to {args.out}", file=sys.stderr)
    return 0


def cmd_compare(args) -> int:
    """Each row on stderr as it finishes; the ranked table (majority baseline first) on stdout at the end, or on
    Ctrl-C with the rows finished so far (exit 130)."""
    import heads
    from heads.comparison import BASELINE
    from heads.select import ADVICE
    done: list[dict] = []
    result = None
    try:
        with open_store(args, read_only=True) as store:
            result = heads.compare(store, args.dataset, encoder=args.encoder, label=args.label, model=args.model,
                                   cv=args.cv, seed=args.seed, test_dataset=args.test_dataset,
                                   group=args.group_column, budget=args.budget,
                                   progress=lambda row, i, n, t: (done.append(row), _row_line(row, i, n, t)))
    except KeyboardInterrupt:
        print(f"\ninterrupted: {len(done)} row(s) finished; they are printed below (not ranked: no baseline "
              "computed)", file=sys.stderr)
        if done:
            rows_out(done, "json" if args.json else args.output_format)
        return 130
    rows = list(result)
    if result.baseline:
        rows = [result.baseline, *rows]
    cols = ["rank", *dict.fromkeys(k for r in rows for k in r if k not in ("rank", "warning")), "warning"]
    rows_out(rows, "json" if args.json else args.output_format,
             [c for c in cols if c != "warning" or any(r.get("warning") for r in rows)])
    for note in result.notes:
        print(f"note: {note}", file=sys.stderr)
    weak = [r for r in result if r.get("warning")]
    if weak:
        print(f"WARNING: {len(weak)} row(s) do not beat the {BASELINE} row ({weak[0]['warning']}); {ADVICE}",
              file=sys.stderr)
    return 0


def cmd_curve(args) -> int:
    import heads
    from heads.plots import curve_png
    try:
        sizes = [int(s) for s in args.sizes.split(",") if s.strip() and s.strip() != "all"]
    except ValueError:
        raise InputError(f"--sizes takes comma-separated whole numbers (and 'all'), not {args.sizes!r}") from None
    rows: list[dict] = []
    interrupted = False
    try:
        with open_store(args, read_only=True) as store:
            heads.curve(store, args.dataset, encoder=args.encoder, label=args.label, model=args.model, sizes=sizes,
                        test_dataset=args.test_dataset, repeats=args.repeats, seed=args.seed, budget=args.budget,
                        progress=lambda row, i, n, t: (rows.append(row), _row_line(row, i, n, t)))
    except KeyboardInterrupt:
        print(f"\ninterrupted: {len(rows)} row(s) finished; the plot and table hold those", file=sys.stderr)
        interrupted = True
        if not rows:
            return 130
    where = args.test_dataset or "a 20% hold-out"
    curve_png(rows, Path(args.out), f"{args.model} on {args.dataset}: accuracy on {where}")
    dump_json(rows) if args.json else table(rows)
    print(f"wrote {args.out}", file=sys.stderr)
    return 130 if interrupted else 0


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
    if args.json:
        dump_json({"head": args.head, "out": str(out)})
    else:
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
    import warnings

    from embedstore.errors import WeakHeadWarning
    warnings.simplefilter("ignore", WeakHeadWarning)  # the commands print their own WARNING line
    return run(build_parser(), COMMANDS, argv)


if __name__ == "__main__":
    sys.exit(main())
