"""The Ray Data engine against the local engine on the same rows, on this machine (issue 15).

  corpus      --rows real sentences (SST-2 train/dev/test, AG News, MR, SUBJ, TREC, SMS; numbered repeats if
              more are asked), as 4 TSV files: both engines read the same file list
  local       store.ingest(files, encoder=minilm) into a fresh store
  ray         the same with engine="ray" (a local Ray with every core, --workers actors), into another fresh
              store; vectors compared with the local ones (cosine per item) and item counts
  merge       shards staged by Ray without merging (hashing:384, the width of minilm: what made the vectors does
              not matter to the merge), then merged alone into a fresh store: the driver's rows/s into DuckDB and
              the index, the single writer every Ray run ends in
  held        the held-hash filter at 10M: 10M hashes read from DuckDB into the sorted array, put in Ray's object
              store (what each actor gets), and 1M queried hashes filtered
  projection  100M rows on N GPU actors: wall = 100M / min(N x actor rate, merge rate), with the actor rates
              measured on an H200 before (sentence-transformers encode 4,115 sentences/s; bf16 model-only
              172,518/s): the bottleneck named

    python benchmarks/bench_ray.py                  # 100k rows: ~15 min on 2 cores
    python benchmarks/bench_ray.py --smoke          # CI-sized: 2,000 rows, hashing:384 for both engines, no file
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from _common import dataset_path, import_library, parser, ratio, show, timed, write_results

GPU_RATES = {"sentence-transformers encode (H200, measured)": 4_115, "bf16 model-only (H200, measured)": 172_518}


def corpus(n: int) -> list[str]:
    texts: list[str] = []
    for parts, sep_first in ((("text", "sst2", "train.tsv"), True), (("text", "sst2", "dev.tsv"), True),
                             (("text", "sst2", "test.tsv"), True), (("text", "ag_news", "test.tsv"), False),
                             (("text", "ag_news", "dev.tsv"), False)):
        lines = dataset_path(*parts).read_text(encoding="utf-8").splitlines()[1 if sep_first else 0:]
        texts += [ln.split("\t")[0] for ln in lines if ln.strip()]
    for parts in (("text", "mr_polarity", "rt-polarity.pos"), ("text", "mr_polarity", "rt-polarity.neg")):
        p = dataset_path(*parts)
        if p.exists():
            texts += [ln.strip() for ln in p.read_bytes().decode("latin-1").splitlines() if ln.strip()]
    texts = [t.replace("\t", " ") for t in texts if t.strip()]
    out, i = list(texts[:n]), 0
    while len(out) < n:  # numbered repeats: new content, real words
        out.append(f"{texts[i % len(texts)]} ({i // len(texts) + 1})")
        i += 1
    return out


def write_files(texts: list[str], folder: Path, parts: int = 4) -> list[str]:
    paths = []
    for k in range(parts):
        p = folder / f"part{k}.tsv"
        p.write_text("text\n" + "\n".join(texts[k::parts]) + "\n", encoding="utf-8")
        paths.append(str(p))
    return paths


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--rows", type=int, default=100_000)
    p.add_argument("--workers", type=int, default=2, help="Ray encoder actors (default 2: one a core here)")
    p.add_argument("--encoder", default="minilm")
    p.add_argument("--held", type=int, default=10_000_000, help="hashes for the held-filter figure")
    p.add_argument("--smoke", action="store_true", help="2,000 rows, hashing:384, 100k held hashes; no result file")
    args = p.parse_args()
    if args.smoke:
        args.rows, args.encoder, args.held = 2_000, "hashing:384", 100_000
    import_library("embedstore.ingest.ray_engine")
    import duckdb
    import ray

    import embedstore
    from embedstore.encoders import get_encoder
    from embedstore.ingest import ray_engine
    from embedstore.sources import Files, TableOptions
    figures: dict = {"rows": args.rows, "encoder": args.encoder, "workers": args.workers}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        files = Files(write_files(corpus(args.rows), tmp))
        print(f"corpus: {args.rows:,} sentences in {len(files.paths)} files; encoder {args.encoder}", flush=True)
        with embedstore.open(tmp / "local") as store, timed() as t_local:
            local = store.ingest(files, dataset="d", encoder=args.encoder, progress=False)
        show("local engine: seconds", t_local.seconds)
        with timed() as t_init:
            ray.init(include_dashboard=False, log_to_driver=False, logging_level="warning")
        show("ray.init (local, every core): seconds", t_init.seconds)
        with embedstore.open(tmp / "ray") as store, timed() as t_ray:
            got = store.ingest(files, dataset="d", encoder=args.encoder, progress=False, engine="ray",
                               workers=args.workers, batch_size=256)
        show("ray engine: seconds", t_ray.seconds)
        with embedstore.open(tmp / "local", read_only=True) as a, embedstore.open(tmp / "ray", read_only=True) as b:
            _, _, fa = a.features("d", encoder=args.encoder, label=None, return_meta=True)
            _, _, fb = b.features("d", encoder=args.encoder, label=None, return_meta=True)
            ia, ib = np.argsort(fa.keys), np.argsort(fb.keys)
            Xa, Xb = fa.X[ia], fb.X[ib]
            cos = (Xa * Xb).sum(1) / np.linalg.norm(Xa, axis=1) / np.linalg.norm(Xb, axis=1)
            same_keys = bool(np.array_equal(fa.keys[ia], fb.keys[ib]))
        figures["engines"] = {
            "local_seconds": t_local.seconds, "ray_seconds": t_ray.seconds, "ray_init_seconds": t_init.seconds,
            "ray_over_local": ratio(t_ray.seconds, t_local.seconds),
            "local_rows_per_s": args.rows / t_local.seconds, "ray_rows_per_s": args.rows / t_ray.seconds,
            "ray_rows_per_s_per_actor": args.rows / t_ray.seconds / args.workers,
            "items": [local.new_items, got.new_items], "embedded": [local.embedded, got.embedded],
            "same_keys": same_keys, "cosine_min": float(cos.min()), "fingerprints_equal": local.fingerprint == got.fingerprint}
        show("ray / local wall time", figures["engines"]["ray_over_local"], "expected > 1 on 2 cores")
        show("cosine per item, min", float(cos.min()), ">= 0.9999")

        # merge alone: stage shards with a cheap encoder of the same width, then merge them into a fresh store
        stage_enc = "hashing:384"
        folder = tmp / "staged"
        folder.mkdir()
        ds, _ = ray_engine.source_dataset(files, TableOptions(), None, "text")
        written = ray_engine.embed_dataset(ds, stage_enc, workers=args.workers, batch_size=256).map_batches(
            ray_engine._write_shard, fn_kwargs={"folder": str(folder)}, batch_size=None, batch_format="pyarrow",
            num_cpus=0.1)
        names = [n for b in written.iter_batches(batch_size=None, batch_format="pyarrow")
                 for n in b.column("shard").to_pylist()]
        with embedstore.open(tmp / "merge") as store, store.writing(), timed() as t_merge:
            merged = ray_engine.merge_shards(store, get_encoder(stage_enc), folder, iter(names), "d", None, False,
                                             False, "staged", None)
        rate = merged.rows / t_merge.seconds
        figures["merge"] = {"rows": merged.rows, "shards": len(names), "seconds": t_merge.seconds,
                            "rows_per_s": rate, "dim": 384}
        show("merge of staged shards into DuckDB + index: rows/s", rate)

        # the held-hash filter at --held hashes
        con = duckdb.connect(str(tmp / "held.duckdb"))
        con.execute("CREATE TABLE t AS SELECT ((random() * 1.8e19)::UBIGINT::UHUGEINT << 64) | "
                    f"(random() * 1.8e19)::UBIGINT::UHUGEINT AS content_hash FROM range({args.held})")
        with timed() as t_read:
            held = ray_engine.read_hashes(con, "t")
        con.close()
        with timed() as t_put:
            ref = ray.put(held)
            back = ray.get(ref)
        rng = np.random.default_rng(0)
        rows16 = held.view(np.uint8).reshape(-1, 16)  # (element access of "S16" drops trailing zero bytes)
        queries = [rows16[i].tobytes().hex() for i in rng.integers(0, len(held), 500_000)] + \
            [rng.bytes(16).hex() for _ in range(500_000)]
        with timed() as t_filter:
            hits = ray_engine.is_held(back, queries)
        assert hits[:500_000].all() and hits[500_000:].sum() < 5
        figures["held"] = {"hashes": args.held, "bytes": int(held.nbytes), "read_seconds": t_read.seconds,
                           "put_get_seconds": t_put.seconds, "queries": len(queries),
                           "filter_per_s": len(queries) / t_filter.seconds}
        show(f"held filter: read {args.held:,} hashes from DuckDB, seconds", t_read.seconds)
        show("held filter: ray.put + get of the array, seconds", t_put.seconds)
        show("held filter: hashes checked per second", len(queries) / t_filter.seconds)
        ray.shutdown()

    projection = {}
    for what, per_actor in GPU_RATES.items():
        for n in (1, 8, 64):
            embed = n * per_actor
            wall = 1e8 / min(embed, rate)
            projection[f"{what}, {n} actors"] = {"hours": wall / 3600,
                                                 "bottleneck": "merge (single writer)" if rate < embed else "actors"}
    figures["projection_100m"] = projection
    for k, v in projection.items():
        show(f"100M rows, {k}", f"{v['hours']:.1f} h ({v['bottleneck']})")
    if not args.smoke:
        write_results("bench_ray", args, figures)
    else:
        show("smoke run", "ok (figures from 2,000 rows are not evidence)")


if __name__ == "__main__":
    main()
