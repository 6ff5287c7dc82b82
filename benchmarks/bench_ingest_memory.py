"""Ingest memory and the cache-hit path.

  streaming  `hashing:384` ingest of seeded synthetic text CSVs of 60k and 600k rows, each in a fresh
             subprocess; peak RSS (the child's VmHWM) beyond the index's own rows x 384 x 4 bytes, and how
             much that excess grows from 60k to 600k rows (goal <= 30%: memory must not scale with the input).
  cache hit  minilm on the first 5k SST-2 train rows: re-ingesting the same unchanged file vs the first
             ingest (goal >= 20x faster). The hashing encoder is too cheap to be the peer here.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from _common import import_library, parser, peak_rss_mb, ratio, rss_mb, show, sst2_file, timed, verdict, write_results

DIM = 384


def synthetic_csv(path: Path, rows: int, seed: int = 0, vocab: int = 20_000) -> Path:
    """`text,label` rows of 5-40 random pseudo-words (letters only: no quoting needed)."""
    rng = np.random.default_rng(seed)
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
    words = ["".join(rng.choice(letters, size=rng.integers(2, 10))) for _ in range(vocab)]
    with open(path, "w") as f:
        f.write("text,label\n")
        for a in range(0, rows, 10_000):
            m = min(10_000, rows - a)
            lengths = rng.integers(5, 41, size=m)
            picks = rng.integers(0, vocab, size=int(lengths.sum()))
            labels = rng.integers(0, 2, size=m)
            ends = np.cumsum(lengths)
            f.writelines(f"{' '.join(words[w] for w in picks[e - n:e])},{y}\n"
                         for n, e, y in zip(lengths, ends, labels))
    return path


def child(csv_path: str, store_path: str) -> None:
    """Runs in the subprocess: one ingest, then its own figures as JSON on stdout."""
    import embedstore
    from embedstore.ingest import pipeline  # noqa: F401  (imports counted in the baseline RSS)
    base = rss_mb()
    with embedstore.open(store_path) as store:
        with timed() as t:
            rep = store.ingest(csv_path, dataset="synthetic", encoder=f"hashing:{DIM}", label_column="label",
                               progress=False)
    print(json.dumps({"rows": rep.rows, "embedded": rep.embedded, "seconds": t.seconds, "index": rep.index,
                      "rss_after_imports_mb": base,
                      "peak_rss_mb": peak_rss_mb()}))


def streaming(sizes: list[int], tmp: Path, exact_index_max: int | None) -> dict:
    out = {}
    for rows in sizes:
        csv_path = synthetic_csv(tmp / f"synthetic_{rows}.csv", rows)
        print(f"ingesting {rows:,} synthetic rows with hashing:{DIM} in a subprocess ...", flush=True)
        env = dict(os.environ, **({"EMBEDSTORE_EXACT_INDEX_MAX": str(exact_index_max)} if exact_index_max else {}))
        proc = subprocess.run([sys.executable, __file__, "--child", str(csv_path), str(tmp / f"store_{rows}")],
                              capture_output=True, text=True, env=env)
        if proc.returncode:
            sys.exit(f"child ingest failed:\n{proc.stderr}")
        r = json.loads(proc.stdout.strip().splitlines()[-1])
        r["index_vectors_mb"] = rows * DIM * 4 / 2**20
        r["beyond_index_mb"] = r["peak_rss_mb"] - r["index_vectors_mb"]
        out[rows] = r
        csv_path.unlink()
        shutil.rmtree(tmp / f"store_{rows}")
    small, large = out[sizes[0]], out[sizes[-1]]
    growth = 100 * (large["beyond_index_mb"] - small["beyond_index_mb"]) / small["beyond_index_mb"]
    print(f"\nstreaming ingest, hashing:{DIM}")
    for rows, r in out.items():
        show(f"{rows:,} rows: peak RSS / index rows*dim*4 / beyond (MiB)",
             f"{r['peak_rss_mb']:.0f} / {r['index_vectors_mb']:.0f} / {r['beyond_index_mb']:.0f}")
        show(f"{rows:,} rows: seconds, rows/s, RSS after imports (MiB)",
             f"{r['seconds']:.1f}, {rows / r['seconds']:,.0f}, {r['rss_after_imports_mb']:.0f}")
        show(f"{rows:,} rows: index", r["index"])
    show(f"growth of the excess, {sizes[0]:,} -> {sizes[-1]:,} rows (%)", growth, verdict(growth <= 30) + ": <= 30%")
    return {"runs": out, "beyond_index_growth_pct": growth}


def cache_hit(rows: int, tmp: Path) -> dict:
    import embedstore
    from embedstore.encoders import get_encoder
    path = sst2_file("train.tsv", rows, tmp)
    opts = dict(encoder="minilm", text_column="sentence", label_column="label", progress=False)
    with embedstore.open(tmp / "cache-store") as store:
        print(f"\ncache hit: minilm, {rows:,} SST-2 rows; warm-up ...", flush=True)
        warm = sst2_file("test.tsv", 64, tmp)  # other rows: warms torch and the page cache, caches nothing used
        store.ingest(warm, dataset="warmup", **opts)
        with timed() as first:
            a = store.ingest(path, dataset="sst2-part", **opts)
        with timed() as again:
            b = store.ingest(path, dataset="sst2-part", **opts)
    with timed() as fp:  # the fixed cost every ingest pays: the encoder's identity (loads the model)
        get_encoder("minilm").fingerprint
    speedup = ratio(first.seconds, again.seconds)
    show("first ingest s / re-ingest s", f"{first.seconds:.2f} / {again.seconds:.2f}")
    show("re-ingest embedded / cached", f"{b.embedded} / {b.cached}", verdict(b.embedded == 0) + ": 0 embedded")
    show("re-ingest speedup over first ingest", speedup, verdict(speedup >= 20) + ": >= 20x")
    show("of which encoder fingerprint (model load + weights hash), s", fp.seconds)
    return {"rows": rows, "first_s": first.seconds, "first_embedded": a.embedded, "reingest_s": again.seconds,
            "reingest_embedded": b.embedded, "reingest_cached": b.cached, "speedup": speedup,
            "encoder_fingerprint_s": fp.seconds}


def main() -> None:
    ap = parser(__doc__)
    ap.add_argument("--sizes", type=int, nargs=2, default=[60_000, 600_000], metavar=("SMALL", "LARGE"),
                    help="synthetic CSV rows (default 60000 600000)")
    ap.add_argument("--cache-rows", type=int, default=5000, help="SST-2 rows for the cache-hit part (default 5000)")
    ap.add_argument("--part", choices=["streaming", "cache", "both"], default="both")
    ap.add_argument("--exact-index-max", type=int, metavar="N", help="streaming: set EMBEDSTORE_EXACT_INDEX_MAX "
                    "in the children (e.g. 10000000 keeps a flat index: isolates the pipeline from the IVF rebuild)")
    ap.add_argument("--child", nargs=2, metavar=("CSV", "STORE"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(*args.child)
    import_library("embedstore.encoders.text.st")
    tmp = Path(tempfile.mkdtemp(prefix="bench_ingest_memory_"))
    figures = {}
    try:
        if args.part in ("streaming", "both"):
            figures["streaming"] = streaming(args.sizes, tmp, args.exact_index_max)
        if args.part in ("cache", "both"):
            figures["cache_hit"] = cache_hit(args.cache_rows, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    suffix = ("" if args.part == "both" else f"_{args.part}") + ("_flat" if args.exact_index_max else "")
    write_results("bench_ingest_memory" + suffix, args, figures)


if __name__ == "__main__":
    main()
