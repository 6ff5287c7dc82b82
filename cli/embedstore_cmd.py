"""`embedstore`: ingest, embed, search, sql, info, check, delete, gc, export, import, encoders, index, map."""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from pathlib import Path

from embedstore.errors import InputError, NotFoundError

from .common import (add_json_arg, add_store_arg, add_table_args, build, dump_json, inputs, open_store, rows_out,
                     run, table, table_options)

EPILOG = """examples:
  embedstore ingest train.tsv --dataset sst2 --text-column sentence --label-column label --encoder minilm
  embedstore ingest 'data/*.csv' --dataset reviews --encoder minilm,paraphrase-l3     # several files, two encoders
  cat notes.txt | embedstore ingest - --dataset notes --encoder minilm                # one text per line
  embedstore search --dataset sst2 --text "a warm, funny film" -k 5
  embedstore embed "a warm, funny film" --encoder minilm                              # the vector, as JSON
  embedstore ingest ./photos/ --dataset pets --encoder efficientnet-lite0             # label = parent folder
  embedstore ingest big.parquet --dataset web --encoder minilm --engine ray --workers 2  # on Ray Data
  embedstore search --dataset pets --image query.jpg -k 10
  embedstore sql "SELECT label, count(*) FROM items WHERE dataset='sst2' GROUP BY label"
  embedstore info
"""


def build_parser():
    p, sub = build("embedstore", "Embed data with frozen pretrained encoders into a local DuckDB + FAISS store; "
                   "search it and query it with SQL.", EPILOG)

    ing = sub.add_parser("ingest", help="embed files, a directory, a glob or stdin into a dataset",
                         description="Read SOURCE (CSV/TSV/JSONL/Parquet, .txt with one text per line, FASTA/FASTQ, "
                         "optionally .gz; a directory of .txt files, images or audio files; a tar shard of images or "
                         "audio; several "
                         "files or a quoted glob; - for standard input), embed what is not cached yet, and store "
                         "items, vectors and the index. Re-running updates by key and embeds only changed content.")
    ing.add_argument("source", nargs="+", help="file(s), directory, quoted glob, or - (stdin)")
    ing.add_argument("--dataset", required=True, help="dataset name (letters, digits, _ - . +)")
    ing.add_argument("--encoder", required=True, help="encoder spec, or several comma-separated (each is ingested "
                     "in turn), e.g. minilm, st:/path, hf:/path?pooling=cls, hashing:256 (see `embedstore encoders`)")
    add_table_args(ing)
    ing.add_argument("--chunk-size", type=int, help="rows per transaction (default: adaptive, from 1,024 rows, 128 "
                     "for images, 32 for audio, doubled while a chunk takes under 2 s and halved when one takes over "
                     "8 s; a crash loses at most the chunk in flight)")
    ing.add_argument("--replace", action="store_true", help="let this source replace items of the same keys that "
                     "another source file put in the dataset (e.g. v1/data.csv then v2/data.csv: keys are "
                     "<file name>:<row>); without it such an ingest is refused")
    ing.add_argument("--quiet", action="store_true", help="no progress bar")
    ray = ing.add_argument_group("Ray Data engine (pip install 'embedstore[ray]')")
    ray.add_argument("--engine", choices=("local", "ray"), default="local", help="local: this process (default); "
                     "ray: encoder actors on Ray Data, results staged as Parquet shards and merged into this store "
                     "(same items and vectors)")
    ray.add_argument("--ray-address", help="an existing Ray cluster (e.g. auto, ray://head:10001); default: the "
                     "cluster RAY_ADDRESS names, else a local Ray on this machine")
    ray.add_argument("--workers", type=int, default=1, help="encoder actors (each loads the model once; default 1)")
    ray.add_argument("--gpus-per-worker", type=float, default=0, help="GPUs per actor (default 0: CPU actors)")
    ray.add_argument("--batch-size", type=int, default=256, help="rows an actor embeds at a time (default 256); "
                     "results are staged in shards of up to 4 MB")
    ray.add_argument("--staging", help="folder for the staged shards (default <store>/staging/ray; on a cluster: "
                     "shared storage the workers and this machine both see)")
    add_json_arg(ing)
    add_store_arg(ing)

    em = sub.add_parser("embed", help="print the vector of a text, sequence or image (cache-aware)",
                        description="Embed INPUT(s) with an encoder and print one JSON list of floats per input "
                        "(one line each). Vectors the store already holds for this content and encoder are read "
                        "from it; nothing is written.")
    em.add_argument("input", nargs="*", help="texts or sequences (- reads one per line from stdin)")
    em.add_argument("--image", "--audio", dest="image", action="append", metavar="FILE",
                    help="an image or audio file (repeatable)")
    em.add_argument("--encoder", required=True, help="encoder spec (see `embedstore encoders`)")
    em.add_argument("--npy", metavar="FILE", help="also write the vectors as an [n, dim] float32 .npy file")
    add_json_arg(em)
    add_store_arg(em)

    se = sub.add_parser("search", help="nearest neighbours by text, item key or vector",
                        description="Cosine nearest neighbours within one dataset and encoder.")
    se.add_argument("--dataset", required=True)
    q = se.add_mutually_exclusive_group(required=True)
    q.add_argument("--text", help="query text (embedded with the dataset's encoder, or taken from the cache)")
    q.add_argument("--sequence", help="query DNA/RNA sequence (for datasets of a DNA encoder)")
    q.add_argument("--image", "--audio", dest="image", metavar="FILE",
                   help="query image or audio file (for datasets of an image or audio encoder; --text on a clip: "
                   "dataset searches images by text)")
    q.add_argument("--key", help="an item's key: its neighbours (itself excluded)")
    q.add_argument("--vector", metavar="FILE", help="query vector: .npy, or a JSON/whitespace list of numbers")
    se.add_argument("-k", type=int, help="number of neighbours (default 10; more than the dataset holds returns all)")
    se.add_argument("--where", help="SQL predicate over items columns, e.g. \"label = '1'\"")
    se.add_argument("--encoder", default="", help="which encoder, when the dataset has several")
    se.add_argument("--output-format", choices=["table", "json", "csv"], default="table",
                    help="how hits are printed (default: table; --json is json)")
    add_json_arg(se)
    add_store_arg(se)

    sq = sub.add_parser("sql", help="read-only SQL over the store's tables and views",
                        description="Run SQL in DuckDB over: items, datasets, encoders, heads, embeddings (view: "
                        "dataset, key, label, text, encoder, vector FLOAT[]), and emb_<fingerprint16> tables. "
                        "Queries only unless --allow-writes; no file access unless --allow-files.")
    sq.add_argument("query")
    sq.add_argument("--output-format", choices=["table", "csv", "json", "parquet"], default="table",
                    help="how the result is written (default: table; --json is json)")
    sq.add_argument("--out", help="write the result to this file (required for parquet)")
    sq.add_argument("--allow-writes", action="store_true", help="allow statements that modify the store")
    sq.add_argument("--allow-files", action="store_true", help="let SQL read and write files (read_csv, COPY, "
                    "glob, ...); off by default, so a query reaches nothing outside the store")
    add_json_arg(sq)
    add_store_arg(sq)

    inf = sub.add_parser("info", help="datasets, encoders, counts, index state and sizes")
    inf.add_argument("--migrate", action="store_true", help="first apply the schema migrations this version adds "
                     "(takes the write lock briefly); readers work without the optional ones meanwhile")
    add_json_arg(inf)
    add_store_arg(inf)

    ck = sub.add_parser("check", help="read and verify the whole store (database blocks, index and head files)",
                        description="Read every row of every table (DuckDB checks each block's checksum), every "
                        "index file against its sidecar and every head against its checksums; exit 2 if anything "
                        "is damaged, saying what can still be done.")
    add_json_arg(ck)
    add_store_arg(ck)

    de = sub.add_parser("delete", help="delete a dataset (its vectors stay until `gc`)")
    de.add_argument("--dataset", required=True)
    add_json_arg(de)
    add_store_arg(de)

    gc = sub.add_parser("gc", help="delete vectors no item references and compact the database")
    add_json_arg(gc)
    add_store_arg(gc)

    ex = sub.add_parser("export", help="write a dataset's vectors of one encoder as Parquet shards + manifest",
                        description="Write the dataset's items with vectors (key, content_hash, label, text, meta, "
                        "vector, ...) as Parquet shards of about 256 MB that DuckDB, polars, pandas or Spark read, and "
                        "embedstore-export.json with the encoder's fingerprint record and each file's checksum. "
                        "Streamed from the database; written to a temporary folder, then renamed. Skipped items "
                        "(no vector) are not exported.",
                        epilog="example:\n  embedstore export --dataset sst2 --encoder minilm ./sst2-minilm\n"
                        "  embedstore import ./sst2-minilm --store other.store",
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    ex.add_argument("out", help="a new (or empty) folder")
    ex.add_argument("--dataset", required=True)
    ex.add_argument("--encoder", default="", help="one encoder spec (default: the dataset's only encoder)")
    ex.add_argument("--format", default="parquet", choices=["parquet"], help="the shards' format (parquet)")
    add_json_arg(ex)
    add_store_arg(ex)

    im = sub.add_parser("import", help="load a folder written by `embedstore export` (idempotent)",
                        description="Load the shards of an `embedstore export` folder into a dataset, with the "
                        "exported encoder's fingerprint: vectors bit-identical, keys, labels and metadata kept, the "
                        "index updated, one transaction per chunk like an ingest. Checksums are verified first. "
                        "Importing the same folder again changes nothing.",
                        epilog="example:\n  embedstore import ./sst2-minilm --dataset sst2-copy",
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    im.add_argument("folder")
    im.add_argument("--dataset", help="the dataset to load into (default: the exported dataset's name)")
    im.add_argument("--replace", action="store_true", help="let these keys replace items another source wrote")
    im.add_argument("--no-progress", action="store_true")
    add_json_arg(im)
    add_store_arg(im)

    enc = sub.add_parser("encoders", help="list encoder aliases and spec schemes (--options: their options)")
    enc.add_argument("--options", metavar="SCHEME", help="the spec options one scheme takes, e.g. kmer")
    add_json_arg(enc)

    mp = sub.add_parser("map", help="draw a 2-D projection of a dataset's vectors coloured by label (PNG)")
    mp.add_argument("--dataset", required=True)
    mp.add_argument("--encoder", default="")
    mp.add_argument("--label", "--label-column", dest="label", default="label",
                    help="colour by this column ('none' for no colours)")
    mp.add_argument("--method", choices=["pca", "umap"], default="pca", help="umap needs umap-learn installed")
    mp.add_argument("--out", default="map.png")
    add_json_arg(mp)
    add_store_arg(mp)

    ix = sub.add_parser("index", help="check or rebuild a dataset's FAISS index from the database")
    ix.add_argument("--dataset", required=True)
    ix.add_argument("--encoder", default="")
    ix.add_argument("--rebuild", action="store_true", help="rebuild from the database even if it looks fine")
    add_json_arg(ix)
    add_store_arg(ix)
    return p


def _read_vector(path: str):
    import numpy as np
    p = Path(path)
    if p.suffix == ".npy":
        try:
            return np.load(p, allow_pickle=False)
        except ValueError as e:
            raise InputError(f"query vector file {path}: not a numeric .npy array ({e})") from None
    try:
        text = p.read_text().strip()
    except UnicodeDecodeError:
        raise InputError(f"query vector file {path}: expected numbers (a JSON list, whitespace-separated, or a "
                         ".npy file), found binary data") from None
    try:
        return np.asarray(json.loads(text) if text.startswith("[") else text.split(), dtype=np.float32)
    except ValueError as e:
        raise InputError(f"query vector file {path}: expected numbers (a JSON list, whitespace-separated, or a .npy "
                         f"file), found {text[:40]!r}... ({e})") from None


def engine_options(args) -> dict:
    """The engine and its sizing as store.ingest takes them; a Ray-only flag without --engine ray is refused."""
    ray_flags = {"ray_address": None, "workers": 1, "gpus_per_worker": 0, "batch_size": 256, "staging": None}
    if args.engine == "ray":
        if args.chunk_size is not None:
            raise InputError("--chunk-size sizes the local engine's transactions; with --engine ray use --batch-size")
        return {"engine": "ray", **{k: getattr(args, k) for k in ray_flags}}
    given = [f"--{k.replace('_', '-')}" for k, default in ray_flags.items() if getattr(args, k) != default]
    if given:
        raise InputError(f"{', '.join(given)} size the Ray engine: add --engine ray")
    return {"chunk_size": args.chunk_size}


@contextlib.contextmanager
def stdout_to_stderr():
    """With --json, stdout holds the report alone: whatever is written to it meanwhile, by Python or by a
    library's own threads and C code (Ray's messages about its workers), goes to stderr."""
    import os
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    try:
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def cmd_ingest(args) -> int:
    from embedstore.validate import split_names
    reports, engine = [], engine_options(args)  # a misused flag is refused before the store is created
    with open_store(args, read_only=False, create=True) as store, inputs(args.source, args.format) as (source, name), \
            stdout_to_stderr() if args.json else contextlib.nullcontext():
        for spec in split_names(args.encoder, "encoder specs"):
            report = store.ingest(source, dataset=args.dataset, encoder=spec, **vars(table_options(args)),
                                  source_name=name, progress=not args.quiet, replace=args.replace, **engine)
            reports.append(report)
            if not args.json:
                print(report.summary())
        if engine.get("engine") == "ray":
            from embedstore.ingest.ray_engine import shutdown
            shutdown()  # Ray's late messages about retried tasks are printed now, not after the report
    if args.json:
        dump_json(reports[0].to_dict() if len(reports) == 1 else [r.to_dict() for r in reports])
    return 0


def cmd_embed(args) -> int:
    import numpy as np

    import embedstore
    from embedstore.ingest import encode
    texts = [line.rstrip("\r\n") for line in sys.stdin] if args.input == ["-"] else list(args.input)
    contents = texts + [Path(f).read_bytes() for f in (args.image or [])]
    if not contents:
        raise InputError("nothing to embed: give texts, - (one per line on stdin) or --image FILE")
    try:  # the store's cache where there is a store; nothing is created or written
        store = embedstore.open(getattr(args, "store", None), read_only=True)
    except NotFoundError:
        store = None
    try:
        vectors = encode(store, contents, args.encoder)
    finally:
        if store is not None:
            store.close()
    ok = np.isfinite(vectors).all(axis=1)
    rows = [v.tolist() if good else None for v, good in zip(vectors, ok)]
    if args.npy:
        np.save(args.npy, vectors, allow_pickle=False)
    if args.json:
        dump_json({"encoder": args.encoder, "dim": int(vectors.shape[1]), "vectors": rows})
    else:
        for r in rows:
            print(json.dumps(r))
    for i in np.flatnonzero(~ok):
        print(f"warning: input {i + 1} was not embedded (empty, unreadable or not this encoder's modality)",
              file=sys.stderr)
    return 0 if ok.all() else 2


def cmd_search(args) -> int:
    with open_store(args, read_only=True) as store:
        if args.sequence is not None:
            modality = store.resolve_encoder(args.encoder, args.dataset).modality
            if modality != "dna":
                raise InputError(f"--sequence queries a dataset of DNA vectors; {args.dataset!r} holds {modality} "
                                 "vectors: use --text (or --image)")
        query = Path(args.image) if args.image else (args.sequence if args.text is None else args.text)
        hits = store.search(args.dataset, query, k=10 if args.k is None else args.k, key=args.key,
                            vector=_read_vector(args.vector) if args.vector else None, where=args.where,
                            encoder=args.encoder)
    rows_out(hits.rows(), "json" if args.json else args.output_format, ["rank", "score", "key", "label", "text"])
    if hits.note and args.k is not None:
        print(f"note: {hits.note}", file=sys.stderr)
    return 0


def cmd_sql(args) -> int:
    from embedstore.sql import run_sql
    fmt = "json" if args.json else args.output_format
    if fmt == "parquet" and not args.out:
        raise InputError("--output-format parquet needs --out FILE")
    with open_store(args, read_only=not args.allow_writes, files=args.allow_files) as store:
        result = run_sql(store, args.query, allow_writes=args.allow_writes)
    if fmt == "parquet":
        import pyarrow.parquet as pq
        pq.write_table(result, args.out)
        print(f"wrote {result.num_rows:,} rows to {args.out}", file=sys.stderr)
        return 0
    out = open(args.out, "w", newline="") if args.out else sys.stdout
    try:
        if fmt == "csv":
            import csv
            w = csv.writer(out)
            w.writerow(result.column_names)
            w.writerows(zip(*(c.to_pylist() for c in result.columns)) if result.num_rows else [])
        elif fmt == "json":
            dump_json(result.to_pylist(), out)
        else:
            table(result.to_pylist(), result.column_names, out)
    finally:
        if args.out:
            out.close()
    return 0


def cmd_info(args) -> int:
    if args.migrate:
        open_store(args, read_only=False).close()  # a writable open applies what is missing
    with open_store(args, read_only=True) as store:
        info = store.info()
    if args.json:
        dump_json(info)
        return 0
    sizes = info["size_bytes"]
    print(f"store {info['path']}: database {sizes['database'] / 1e6:.1f} MB, indexes {sizes['indexes'] / 1e6:.1f} MB, "
          f"heads {sizes['heads'] / 1e6:.1f} MB")
    print("\ndatasets")
    table([{"dataset": d["name"], "modality": d["modality"], "items": d["items"], "encoder": e.get("spec"),
             "fp": e.get("fingerprint"), "vectors": e.get("vectors"), "skipped": e.get("skipped"),
             "index": e.get("index")}
           for d in info["datasets"] for e in (d["encoders"] or [{}])])
    print("\nencoders")
    table(info["encoders"])
    if info["heads"]:
        print("\nheads")
        table(info["heads"])
    return 0


def cmd_check(args) -> int:
    from embedstore.errors import CORRUPT_ADVICE, StoreCorruptError
    try:
        with open_store(args, read_only=True) as store:
            out = store.check()
    except StoreCorruptError as e:  # not even the catalog reads: that is the finding
        out = {"path": getattr(args, "store", None), "tables": [], "indexes": [], "heads": [],
               "damaged": [f"database: {str(e).split('. What can be done')[0]}"]}
    if args.json:
        dump_json(out)
    else:
        for title, rows in (("tables", out["tables"]), ("indexes", out["indexes"]), ("heads", out["heads"])):
            if rows:
                print(f"\n{title}")
                table(rows)
    if out["damaged"]:
        print(f"error: the store is damaged: {'; '.join(out['damaged'][:5])}. {CORRUPT_ADVICE}", file=sys.stderr)
        return 2
    print("\nstore ok: every table, index and head read and verified", file=sys.stderr)
    return 0


def cmd_delete(args) -> int:
    with open_store(args, read_only=False) as store:
        out = store.delete_dataset(args.dataset)
    if args.json:
        dump_json(out)
    else:
        print(f"deleted dataset {out['dataset']} ({out['items_deleted']:,} items); run `embedstore gc` to drop "
              "vectors no other dataset uses")
    return 0


def cmd_gc(args) -> int:
    with open_store(args, read_only=False) as store:
        out = store.gc()
    if args.json:
        dump_json(out)
        return 0
    for spec, n in out["vectors_deleted"].items():
        print(f"{spec}: deleted {n:,} unreferenced vectors")
    return 0


def cmd_export(args) -> int:
    with open_store(args, read_only=True) as store:
        out = store.export_parquet(args.dataset, args.out, encoder=args.encoder)
    if args.json:
        dump_json(out)
    else:
        print(f"exported {out['rows']:,} items of {out['dataset']} <- {out['encoder']['spec']} "
              f"(fp:{out['encoder']['fingerprint'][:12]}, {out['encoder']['dim']} dims) to {args.out}: "
              f"{len(out['files'])} Parquet file(s) + embedstore-export.json")
    return 0


def cmd_import(args) -> int:
    with open_store(args, read_only=False, create=True) as store:
        report = store.import_parquet(args.folder, dataset=args.dataset, replace=args.replace,
                                      progress=not args.no_progress and not args.json)
    dump_json(report.to_dict()) if args.json else print(report.summary())
    return 0


def cmd_encoders(args) -> int:
    from embedstore.encoders.registry import list_encoders, scheme_options
    rows = scheme_options(args.options) if args.options else list_encoders()
    dump_json(rows) if args.json else table(rows)
    return 0


def cmd_index(args) -> int:
    with open_store(args, read_only=False) as store, store.writing():
        record = store.resolve_encoder(args.encoder, args.dataset)
        if args.rebuild:
            store.index_path(args.dataset, record).unlink(missing_ok=True)  # its data file goes at the next save
        live = store.index(args.dataset, record)
    out = {"dataset": args.dataset, "encoder": record.spec, "fingerprint": record.short, "factory": live.index.factory,
           "vectors": live.index.ntotal, "origin": live.origin, "params": live.index.params}
    if args.json:
        dump_json(out)
    else:
        print(f"{args.dataset} / {record.spec} (fp:{record.short}): {live.index.factory}, "
              f"{live.index.ntotal:,} vectors, {live.origin}; params {live.index.params}")
    return 0


def cmd_map(args) -> int:
    from heads.plots import map_png
    label = None if args.label == "none" else args.label
    with open_store(args, read_only=True) as store:
        X, y = store.features(args.dataset, encoder=args.encoder, label=label)
    out, used = map_png(X, y, Path(args.out), f"{args.dataset} ({args.encoder or 'encoder'}): {len(X):,} items",
                        method=args.method)
    dump_json({"out": str(out), "method": used, "items": len(X)}) if args.json else print(f"wrote {out}")
    return 0


COMMANDS = {"ingest": cmd_ingest, "embed": cmd_embed, "search": cmd_search, "sql": cmd_sql, "info": cmd_info,
            "check": cmd_check, "delete": cmd_delete, "gc": cmd_gc, "export": cmd_export, "import": cmd_import,
            "encoders": cmd_encoders, "index": cmd_index, "map": cmd_map}


def main(argv: list[str] | None = None) -> int:
    return run(build_parser(), COMMANDS, argv)


if __name__ == "__main__":
    sys.exit(main())
