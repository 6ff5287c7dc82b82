"""`heads`: fit, eval, predict and list classical heads on cached embeddings."""

from __future__ import annotations

import argparse
import sys

from cli.common import add_store_arg, dump_json, open_store, run, table

EPILOG = """examples:
  heads fit --dataset sst2 --encoder minilm --label label --model logreg --name sst2-lr
  heads eval --head sst2-lr --dataset sst2-test --label label
  heads predict --head sst2-lr new.tsv --text-column sentence --out preds.csv
  heads list
"""


def build_parser() -> argparse.ArgumentParser:
    from heads.estimators import MODELS
    p = argparse.ArgumentParser(prog="heads", description="Fit classical heads on cached embeddings in seconds: "
                                "no encoder runs for fit/eval/list.", epilog=EPILOG,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    f = sub.add_parser("fit", help="fit a head on a dataset's cached vectors and save it in the store")
    f.add_argument("--dataset", required=True)
    f.add_argument("--label", default="label", help="label column: 'label' (the ingest's --label-column) or "
                   "another column kept in the items' metadata")
    f.add_argument("--encoder", default="", help="encoder spec as ingested; a+b concatenates; fp:<prefix> picks "
                   "a fingerprint (default: the dataset's only encoder)")
    f.add_argument("--model", default="logreg", choices=sorted(MODELS),
                   help="; ".join(f"{k}: {m.help}" for k, m in MODELS.items()))
    f.add_argument("--name", help="head name (default: <dataset>-<model>)")
    f.add_argument("--param", action="append", metavar="NAME=VALUE", help="estimator parameter, repeatable")
    f.add_argument("--cv", type=int, help="score with K-fold stratified CV instead of a hold-out split")
    f.add_argument("--test-size", type=float, default=0.2, help="hold-out fraction for scoring (default 0.2)")
    f.add_argument("--seed", type=int, default=0)
    f.add_argument("--json", action="store_true")
    add_store_arg(f)

    e = sub.add_parser("eval", help="score a saved head on another dataset's cached vectors")
    e.add_argument("--head", required=True)
    e.add_argument("--dataset", required=True)
    e.add_argument("--label", default="label")
    e.add_argument("--json", action="store_true")
    add_store_arg(e)

    pr = sub.add_parser("predict", help="predict labels for new raw inputs (embeds them with the head's encoder)",
                        description="Embed INPUT with the head's own encoder (through the store's cache, so "
                        "repeated inputs are not re-embedded) and write predictions as CSV.")
    pr.add_argument("input", help="CSV/TSV/JSONL/Parquet file or directory of .txt files")
    pr.add_argument("--head", required=True)
    pr.add_argument("--text-column", default="text")
    pr.add_argument("--id-column")
    pr.add_argument("--sep")
    pr.add_argument("--encoding", default="utf-8")
    pr.add_argument("--out", help="output CSV (default: stdout)")
    pr.add_argument("--no-cache", action="store_true",
                    help="open the store read-only: new vectors are not saved (works during an ingest)")
    add_store_arg(pr)

    ls = sub.add_parser("list", help="saved heads with their metrics")
    ls.add_argument("--json", action="store_true")
    add_store_arg(ls)
    return p


def _print_metrics(m: dict) -> None:
    keys = [k for k in ("accuracy", "macro_f1", "mcc") if k in m]
    table([{"metric": k, "value": m[k], **({"std": m[f"{k}_std"]} if f"{k}_std" in m else {})} for k in keys])


def cmd_fit(args) -> int:
    import heads
    from heads.estimators import parse_params
    with open_store(args, read_only=False) as store:
        head, scores = heads.fit(store, args.dataset, label=args.label, model=args.model, encoder=args.encoder,
                                 name=args.name, params=parse_params(args.param), cv=args.cv,
                                 test_size=args.test_size, seed=args.seed)
    if args.json:
        dump_json({"head": head.name, **scores})
        return 0
    print(f"head {head.name}: {args.model} on {head.meta['n_train']:,} x {head.meta['dim']} "
          f"({'+'.join(head.meta['encoders'])}), classes {head.meta['classes']}")
    print(f"scored by {scores['protocol']} (n={scores['n']:,}); fit time {scores['fit_seconds']:.2f}s")
    _print_metrics(scores)
    return 0


def cmd_eval(args) -> int:
    import heads
    with open_store(args, read_only=True) as store:
        m = heads.evaluate(store, args.head, args.dataset, label=args.label)
    if args.json:
        dump_json(m)
    else:
        print(f"head {m['head']} on {m['dataset']} (n={m['n']:,})")
        _print_metrics(m)
    if m["overlap_with_training"]:
        print(f"warning: {m['overlap_with_training']:,} of {m['n']:,} evaluation items have the same content as "
              "training items; these scores are optimistic", file=sys.stderr)
    if m["unseen_labels"]:
        print(f"warning: labels never seen in training: {m['unseen_labels']}", file=sys.stderr)
    return 0


def cmd_predict(args) -> int:
    import csv
    import heads
    from embedstore.ingest.sources import TableOptions, open_source
    with open_store(args, read_only=args.no_cache) as store:
        head = heads.load(store, args.head)
        records = list(open_source(args.input, TableOptions(text_column=args.text_column, id_column=args.id_column,
                                                            sep=args.sep, encoding=args.encoding)))
        X, reasons = head.embed([r.content or "" for r in records], no_cache=args.no_cache)
        proba = head.predict_proba_features(X)
    classes = [str(c) for c in head.classes_]
    out = open(args.out, "w", newline="") if args.out else sys.stdout
    try:
        w = csv.writer(out)
        w.writerow(["key", "prediction", "probability", "skipped"] + [f"p_{c}" for c in classes])
        for r, p, why in zip(records, proba, reasons):
            why = r.reason or why
            w.writerow([r.key, "" if why else classes[p.argmax()], "" if why else f"{p.max():.6f}", why or ""]
                       + (["" for _ in classes] if why else [f"{v:.6f}" for v in p]))
    finally:
        if args.out:
            out.close()
    if args.out:
        print(f"wrote {len(records):,} predictions to {args.out}", file=sys.stderr)
    return 0


def cmd_list(args) -> int:
    import heads
    with open_store(args, read_only=True) as store:
        rows = heads.list_heads(store)
    dump_json(rows) if args.json else table(rows)
    return 0


COMMANDS = {"fit": cmd_fit, "eval": cmd_eval, "predict": cmd_predict, "list": cmd_list}


def _main(argv: list[str] | None) -> int:
    args = build_parser().parse_args(argv)
    return COMMANDS[args.command](args)


def main(argv: list[str] | None = None) -> int:
    return run(_main, argv)


if __name__ == "__main__":
    sys.exit(main())
