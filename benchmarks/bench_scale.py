"""Scale on one machine: ingest of 1M and 10M rows in bounded memory, and the re-ingest that embeds nothing.

  ingest  `hashing:64` ingest of seeded synthetic text CSVs (5-40 pseudo-words a row, bench_ingest_memory's
          generator) of --sizes rows (default 1M and 10M), each in a fresh subprocess (the store as a user
          has it: default settings), then the same file re-ingested in another fresh subprocess. Per size: wall
          time per row, peak RSS (the child's VmHWM) beyond the index's own bytes (its FAISS file, which
          is what it holds in memory), store size on disk, the index chosen. Goals: time per row large/small
          <= 1.3; growth of the RSS beyond the index <= 30%; the re-ingest embeds 0 in < 5% of the first time.

kNN at 10M: `bench_knn.py --part random --data clustered --dim 64 --n 10000000` (the index this store builds vs
exact and vs DuckDB SQL). Runs one size at a time: on 2 cores parallel runs spoil each other's ratios.
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

from _common import parser, peak_rss_mb, ratio, rss_mb, show, timed, verdict, write_results
from bench_ingest_memory import synthetic_csv

ENCODER = "hashing:64"


def child(csv_path: str, store_path: str) -> None:
    """Runs in the subprocess: one ingest, then its own figures as JSON on stdout."""
    import embedstore
    from embedstore.ingest import pipeline  # noqa: F401  (imports counted in the baseline RSS)
    base = rss_mb()
    with embedstore.open(store_path) as store:
        with timed() as t:
            rep = store.ingest(csv_path, dataset="synthetic", encoder=ENCODER, label_column="label", progress=False)
        side = store.index_path("synthetic", store.resolve_encoder(ENCODER, "synthetic"))
        meta = json.loads(side.read_text())
    print(json.dumps({"rows": rep.rows, "embedded": rep.embedded, "cached": rep.cached, "seconds": t.seconds,
                      "index": rep.index, "index_params": meta.get("params"),
                      "index_file_mb": side.with_name(meta["file"]).stat().st_size / 2**20,
                      "rss_after_imports_mb": base,
                      "peak_rss_mb": peak_rss_mb()}))


def run_child(csv_path: Path, store: Path) -> dict:
    proc = subprocess.run([sys.executable, __file__, "--child", str(csv_path), str(store)], capture_output=True,
                          text=True)
    if proc.returncode:
        sys.exit(f"child ingest failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def du_mb(path: Path) -> float:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 2**20


def ingest(sizes: list[int], tmp: Path) -> dict:
    out = {}
    for rows in sizes:
        csv_path = synthetic_csv(tmp / f"synthetic_{rows}.csv", rows)
        store = tmp / f"store_{rows}"
        print(f"ingesting {rows:,} synthetic rows ({csv_path.stat().st_size / 2**20:,.0f} MiB CSV) with {ENCODER} "
              "in a fresh subprocess ...", flush=True)
        first = run_child(csv_path, store)
        first["store_mb"] = du_mb(store)
        print("  ... and again (unchanged file) in another", flush=True)
        again = run_child(csv_path, store)
        first["beyond_index_mb"] = first["peak_rss_mb"] - first["index_file_mb"]
        first["us_per_row"] = 1e6 * first["seconds"] / rows
        out[rows] = {"first": first, "again": again, "reingest_fraction": again["seconds"] / first["seconds"]}
        csv_path.unlink()
        shutil.rmtree(store)
    small, large = out[sizes[0]]["first"], out[sizes[-1]]["first"]
    per_row = ratio(large["us_per_row"], small["us_per_row"])
    growth = 100 * (large["beyond_index_mb"] - small["beyond_index_mb"]) / small["beyond_index_mb"]
    print(f"\ningest, {ENCODER}")
    for rows, r in out.items():
        f, a = r["first"], r["again"]
        show(f"{rows:,} rows: seconds, us/row, rows/s", f"{f['seconds']:.1f}, {f['us_per_row']:.1f}, "
             f"{rows / f['seconds']:,.0f}")
        show(f"{rows:,} rows: peak RSS / index file / beyond (MiB)",
             f"{f['peak_rss_mb']:.0f} / {f['index_file_mb']:.0f} / {f['beyond_index_mb']:.0f}")
        show(f"{rows:,} rows: store on disk (MiB), bytes/row", f"{f['store_mb']:.0f}, {f['store_mb'] * 2**20 / rows:.0f}")
        show(f"{rows:,} rows: index", f"{f['index']}; recall@10 {f['index_params'].get('tuned_recall_at_10', 'exact')}")
        show(f"{rows:,} rows: re-ingest embedded, s, fraction of first", f"{a['embedded']}, {a['seconds']:.1f}, "
             f"{r['reingest_fraction']:.3f}", verdict(a["embedded"] == 0 and r["reingest_fraction"] < 0.05)
             + ": 0 embedded, < 5%")
    show(f"time per row {sizes[-1]:,} / {sizes[0]:,}", per_row, verdict(per_row <= 1.3) + ": <= 1.3")
    show(f"growth of RSS beyond the index, {sizes[0]:,} -> {sizes[-1]:,} rows (%)", growth,
         verdict(growth <= 30) + ": <= 30%")
    return {"runs": out, "per_row_ratio": per_row, "beyond_index_growth_pct": growth}


def main() -> None:
    ap = parser(__doc__)
    ap.add_argument("--sizes", type=int, nargs=2, default=[1_000_000, 10_000_000], metavar=("SMALL", "LARGE"),
                    help="synthetic CSV rows (default 1000000 10000000)")
    ap.add_argument("--tmp", metavar="DIR", help="where the CSVs and stores go (default: the system temp folder; "
                    "10M rows take about 1.5 GB of CSV and 3 GB of store)")
    ap.add_argument("--child", nargs=2, metavar=("CSV", "STORE"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(*args.child)
    tmp = Path(tempfile.mkdtemp(prefix="bench_scale_", dir=args.tmp))
    try:
        figures = {"ingest": ingest(args.sizes, tmp)}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    write_results("bench_scale" + ("" if args.sizes == [1_000_000, 10_000_000] else "_smoke"), args, figures)


if __name__ == "__main__":
    main()
