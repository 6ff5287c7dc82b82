"""`embedstore`: ingest, search, sql, info, delete, gc, encoders, index."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from cli.common import add_store_arg, dump_json, open_store, run, table
from embedstore.errors import InputError

EPILOG = """examples:
  embedstore ingest train.tsv --dataset sst2 --text-column sentence --label-column label --encoder minilm
  embedstore search --dataset sst2 --text "a warm, funny film" -k 5
  embedstore ingest ./photos/ --dataset pets --encoder efficientnet-lite0      # label = parent folder
  embedstore search --dataset pets --image query.jpg -k 10
  embedstore sql "SELECT label, count(*) FROM items WHERE dataset='sst2' GROUP BY label"
  embedstore info
"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="embedstore", description="Embed data with frozen pretrained encoders into a "
                                "local DuckDB + FAISS store; search it and query it with SQL.", epilog=EPILOG,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    ing = sub.add_parser("ingest", help="embed a file, directory or table into a dataset",
                         description="Read SOURCE (CSV/TSV/JSONL/Parquet or FASTA/FASTQ, optionally .gz, or a "
                         "directory of .txt files), embed what is not cached yet, and store items, vectors and the index. "
                         "Re-running updates by key and embeds only changed content.")
    ing.add_argument("source", help="file or directory to ingest")
    ing.add_argument("--dataset", required=True, help="dataset name (letters, digits, _ - .)")
    ing.add_argument("--encoder", required=True, help="encoder spec, e.g. minilm, st:/path, hf:/path?pooling=cls, "
                     "hashing:256 (see `embedstore encoders`)")
    ing.add_argument("--text-column", default="text", help="column holding the text (default: text)")
    ing.add_argument("--sequence-column", dest="text_column", help="column holding DNA/RNA sequences (the same "
                     "as --text-column; FASTA/FASTQ files need neither)")
    ing.add_argument("--path-column", help="image encoders: the table column holding image file paths (relative "
                     "to the table's folder); folders of images and tar shards (.tar, .tar.gz) need none")
    ing.add_argument("--label-column", help="column holding the label, if any")
    ing.add_argument("--id-column", help="column holding a unique id (default key: <file name>:<row>)")
    ing.add_argument("--sep", help="field separator (default: tab for .tsv, comma for .csv)")
    ing.add_argument("--quoting", choices=["auto", "none", "minimal"], default="auto",
                     help="CSV quoting (auto: none for TSV, minimal for CSV)")
    ing.add_argument("--no-header", dest="header", action="store_false", help="the file has no header row")
    ing.add_argument("--columns", help="comma-separated column names (with --no-header, or to rename)")
    ing.add_argument("--encoding", default="utf-8", help="text encoding of the file (default: utf-8)")
    ing.add_argument("--format", choices=["csv", "tsv", "jsonl", "parquet", "dir", "fasta", "fastq"],
                     help="input format when the suffix does not tell")
    ing.add_argument("--chunk-size", type=int, help="rows per transaction (default: adaptive, about 2 s of work "
                     "each; a crash loses at most the chunk in flight)")
    ing.add_argument("--quiet", action="store_true", help="no progress bar")
    ing.add_argument("--json", action="store_true", help="print the report as JSON")
    add_store_arg(ing)

    se = sub.add_parser("search", help="nearest neighbours by text, item key or vector",
                        description="Cosine nearest neighbours within one dataset and encoder.")
    se.add_argument("--dataset", required=True)
    q = se.add_mutually_exclusive_group(required=True)
    q.add_argument("--text", help="query text (embedded with the dataset's encoder, or taken from the cache)")
    q.add_argument("--sequence", dest="text", help="query DNA/RNA sequence (for datasets of a DNA encoder)")
    q.add_argument("--image", metavar="FILE", help="query image (for datasets of an image encoder; --text on a "
                   "clip: dataset searches images by text)")
    q.add_argument("--key", help="an item's key: its neighbours (itself excluded)")
    q.add_argument("--vector", metavar="FILE", help="query vector: .npy, or a JSON/whitespace list of numbers")
    se.add_argument("-k", type=int, default=10, help="number of neighbours (default 10)")
    se.add_argument("--where", help="SQL predicate over items columns, e.g. \"label = '1'\"")
    se.add_argument("--encoder", default="", help="which encoder, when the dataset has several")
    se.add_argument("--format", choices=["table", "json", "csv"], default="table")
    add_store_arg(se)

    sq = sub.add_parser("sql", help="read-only SQL over the store's tables and views",
                        description="Run SQL in DuckDB over: items, datasets, encoders, heads, embeddings (view: "
                        "dataset, key, label, text, encoder, vector FLOAT[]), and emb_<fingerprint16> tables. "
                        "Queries only unless --allow-writes.")
    sq.add_argument("query")
    sq.add_argument("--format", choices=["table", "csv", "json", "parquet"], default="table")
    sq.add_argument("--out", help="write the result to this file (required for parquet)")
    sq.add_argument("--allow-writes", action="store_true", help="allow statements that modify the store")
    add_store_arg(sq)

    inf = sub.add_parser("info", help="datasets, encoders, counts, index state and sizes")
    inf.add_argument("--json", action="store_true")
    add_store_arg(inf)

    de = sub.add_parser("delete", help="delete a dataset (its vectors stay until `gc`)")
    de.add_argument("--dataset", required=True)
    add_store_arg(de)

    gc = sub.add_parser("gc", help="delete vectors no item references and compact the database")
    add_store_arg(gc)

    enc = sub.add_parser("encoders", help="list encoder aliases and spec schemes")
    enc.add_argument("--json", action="store_true")

    mp = sub.add_parser("map", help="draw a 2-D projection of a dataset's vectors coloured by label (PNG)")
    mp.add_argument("--dataset", required=True)
    mp.add_argument("--encoder", default="")
    mp.add_argument("--label", default="label", help="colour by this column ('none' for no colours)")
    mp.add_argument("--method", choices=["pca", "umap"], default="pca", help="umap needs umap-learn installed")
    mp.add_argument("--out", default="map.png")
    add_store_arg(mp)

    ix = sub.add_parser("index", help="check or rebuild a dataset's FAISS index from the database")
    ix.add_argument("--dataset", required=True)
    ix.add_argument("--encoder", default="")
    ix.add_argument("--rebuild", action="store_true", help="rebuild from the database even if it looks fine")
    add_store_arg(ix)
    return p


def _read_vector(path: str):
    import numpy as np
    p = Path(path)
    if p.suffix == ".npy":
        return np.load(p, allow_pickle=False)
    text = p.read_text().strip()
    try:
        return np.asarray(json.loads(text) if text.startswith("[") else text.split(), dtype=np.float32)
    except ValueError as e:
        raise InputError(f"query vector file {path}: expected numbers (a JSON list, whitespace-separated, or a .npy "
                         f"file), found {text[:40]!r}... ({e})") from None


def cmd_ingest(args) -> int:
    with open_store(args, read_only=False) as store:
        report = store.ingest(args.source, dataset=args.dataset, encoder=args.encoder,
                              text_column=args.text_column, label_column=args.label_column,
                              path_column=args.path_column,
                              id_column=args.id_column, sep=args.sep, quoting=args.quoting, header=args.header,
                              columns=args.columns.split(",") if args.columns else None,
                              encoding=args.encoding, format=args.format, chunk_size=args.chunk_size,
                              progress=not args.quiet)
    if args.json:
        dump_json(report.to_dict())
    else:
        print(report.summary())
    return 0


def cmd_search(args) -> int:
    with open_store(args, read_only=True) as store:
        hits = store.search(args.dataset, Path(args.image) if args.image else args.text, k=args.k, key=args.key,
                            vector=_read_vector(args.vector) if args.vector else None, where=args.where,
                            encoder=args.encoder)
    rows = [{"rank": i + 1, "score": h.score, "key": h.key, "label": h.label, "text": h.text}
            for i, h in enumerate(hits)]
    if args.format == "json":
        dump_json(rows)
    elif args.format == "csv":
        import csv
        w = csv.DictWriter(sys.stdout, fieldnames=["rank", "score", "key", "label", "text"])
        w.writeheader()
        w.writerows(rows)
    else:
        table(rows)
    return 0


def cmd_sql(args) -> int:
    from embedstore.sql import run_sql
    if args.format == "parquet" and not args.out:
        raise InputError("--format parquet needs --out FILE")
    with open_store(args, read_only=not args.allow_writes) as store:
        result = run_sql(store, args.query, allow_writes=args.allow_writes)
    if args.format == "parquet":
        import pyarrow.parquet as pq
        pq.write_table(result, args.out)
        print(f"wrote {result.num_rows:,} rows to {args.out}", file=sys.stderr)
        return 0
    out = open(args.out, "w", newline="") if args.out else sys.stdout
    try:
        if args.format == "csv":
            import csv
            w = csv.writer(out)
            w.writerow(result.column_names)
            w.writerows(zip(*(c.to_pylist() for c in result.columns)) if result.num_rows else [])
        elif args.format == "json":
            out.write(json.dumps(result.to_pylist(), indent=2, default=str) + "\n")
        else:
            table(result.to_pylist(), result.column_names, out)
    finally:
        if args.out:
            out.close()
    return 0


def cmd_info(args) -> int:
    with open_store(args, read_only=True) as store:
        info = store.info()
    if args.json:
        dump_json(info)
        return 0
    sizes = info["size_bytes"]
    print(f"store {info['path']}: database {sizes['database'] / 1e6:.1f} MB, indexes {sizes['indexes'] / 1e6:.1f} MB, "
          f"heads {sizes['heads'] / 1e6:.1f} MB")
    print("\ndatasets")
    table([{"dataset": d["name"], "modality": d["modality"], "items": d["items"], "ok": d["ok"],
             "skipped": d["skipped"], "encoder": e["spec"], "fp": e["fingerprint"], "vectors": e["vectors"],
             "index": e["index"]} for d in info["datasets"] for e in (d["encoders"] or [{}])])
    print("\nencoders")
    table(info["encoders"])
    if info["heads"]:
        print("\nheads")
        table(info["heads"])
    return 0


def cmd_delete(args) -> int:
    with open_store(args, read_only=False) as store:
        out = store.delete_dataset(args.dataset)
    print(f"deleted dataset {out['dataset']} ({out['items_deleted']:,} items); run `embedstore gc` to drop "
          "vectors no other dataset uses")
    return 0


def cmd_gc(args) -> int:
    with open_store(args, read_only=False) as store:
        out = store.gc()
    for spec, n in out["vectors_deleted"].items():
        print(f"{spec}: deleted {n:,} unreferenced vectors")
    return 0


def cmd_encoders(args) -> int:
    from embedstore.encoders import list_encoders
    rows = list_encoders()
    dump_json(rows) if args.json else table(rows)
    return 0


def cmd_index(args) -> int:
    with open_store(args, read_only=False) as store:
        record = store.resolve_encoder(args.encoder, args.dataset)
        if args.rebuild:
            store.index_path(args.dataset, record).unlink(missing_ok=True)  # its data file goes at the next save
        live = store.index(args.dataset, record)
        print(f"{args.dataset} / {record.spec} (fp:{record.short}): {live.index.factory}, "
              f"{live.index.ntotal:,} vectors, {live.origin}; params {live.index.params}")
    return 0


def cmd_map(args) -> int:
    from heads.plots import map_png
    label = None if args.label == "none" else args.label
    with open_store(args, read_only=True) as store:
        X, y = store.features(args.dataset, args.encoder, label=label)
    out, used = map_png(X, y, Path(args.out), f"{args.dataset} ({args.encoder or 'encoder'}): {len(X):,} items",
                        method=args.method)
    if used != args.method:
        print("umap-learn is not installed; drew PCA instead (pip install umap-learn)", file=sys.stderr)
    print(f"wrote {out}")
    return 0


COMMANDS = {"ingest": cmd_ingest, "search": cmd_search, "sql": cmd_sql, "info": cmd_info, "delete": cmd_delete,
            "gc": cmd_gc, "encoders": cmd_encoders, "index": cmd_index, "map": cmd_map}


def main(argv: list[str] | None = None) -> int:
    return run(build_parser, COMMANDS, argv)


if __name__ == "__main__":
    sys.exit(main())
