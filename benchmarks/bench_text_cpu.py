"""Text on CPU (issue 16): embedstore ingest vs sentence-transformers' own encode, same model, same sentences.

  peer      SentenceTransformer(minilm dir).encode(sentences, batch_size=32): its default (torch, float32)
  ours      store.ingest(rows, encoder="minilm"): the default (bf16 autocast in torch on an AMX CPU, 128 a batch;
            elsewhere a float32 ONNX Runtime graph), into a fresh store (hashing, DuckDB, FAISS included)
  int8      store.ingest(rows, encoder="minilm?quantize=int8"): the pipeline as a dynamic-int8 ONNX Runtime graph
  onnx      SentenceTransformer(dir, backend="onnx"): tried; it needs optimum, which may not install beside this
            transformers (the reason is recorded)

The train sentences are cut into --slices slices; each slice is run by the three sides back to back, the order
rotating from slice to slice, so that other load hits all alike. Ratios are of the summed seconds. Per-sentence
cosine of each side's vectors to the peer's; then LogisticRegression(max_iter=2000) on each side's train vectors,
accuracy on SST-2's 872 labelled test sentences.

    python benchmarks/bench_text_cpu.py                 # all 60,614 train sentences, ~10 min on 2 cores
    python benchmarks/bench_text_cpu.py --limit 3000    # quick check (writes bench_text_cpu_<kind>_quick.json)

Results: results/bench_text_cpu_amx.json on a CPU with AMX (bf16 default), results/bench_text_cpu_no_amx.json
on one without (the ONNX Runtime default).
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import numpy as np

from _common import import_library, parser, ratio, read_sst2, show, sst2_file, timed, verdict, wait_quiet, write_results

SIDES = ("peer", "ours", "int8")


def try_st_onnx(model_dir: str) -> str:
    try:
        from sentence_transformers import SentenceTransformer
        SentenceTransformer(model_dir, device="cpu", backend="onnx")
    except Exception as e:  # what the user would meet: an ImportError naming optimum, or another failure
        return f"{type(e).__name__}: {str(e).strip().splitlines()[0][:300]}"
    return "loaded (not timed here: add it as a side)"


def vectors_of(store, dataset: str, encoder: str, n: int) -> np.ndarray:
    X, _, fs = store.features(dataset, encoder=encoder, label=None, return_meta=True)
    out = np.empty((n, X.shape[1]), np.float32)
    out[[int(k[1:]) for k in fs.keys]] = X
    return out


def main() -> None:
    ap = parser(__doc__)
    ap.add_argument("--limit", type=int, help="only the first N train sentences (quick check)")
    ap.add_argument("--slices", type=int, default=6)
    args = ap.parse_args()
    import_library()
    import embedstore
    from embedstore.encoders import get_encoder
    from sentence_transformers import SentenceTransformer
    from sklearn.linear_model import LogisticRegression
    tmp = Path(tempfile.mkdtemp(prefix="bench_text_cpu_"))
    try:
        sentences, labels = read_sst2(sst2_file("train.tsv", args.limit, tmp))
        test, test_labels = read_sst2(sst2_file("test.tsv", None, tmp))
        ours_enc, int8_enc = get_encoder("minilm"), get_encoder("minilm?quantize=int8")
        model_dir = str(ours_enc.model_dir)
        peer = SentenceTransformer(model_dir, device="cpu")
        onnx_backend = try_st_onnx(model_dir)
        n = len(sentences)
        rows = [{"key": f"k{i}", "text": s} for i, s in enumerate(sentences)]
        test_rows = [{"key": f"k{i}", "text": s} for i, s in enumerate(test)]
        cols = dict(text_column="text", id_column="key", progress=False)
        secs = dict.fromkeys(SIDES, 0.0)
        X_peer = np.empty((n, 384), np.float32)
        with embedstore.open(tmp / "store") as store:
            warm = [{"key": f"w{i}", "text": s + " (warm-up)"} for i, s in enumerate(sentences[:256])]
            peer.encode([r["text"] for r in warm])
            store.ingest(warm, dataset="warm-ours", encoder=ours_enc, **cols)
            store.ingest(warm, dataset="warm-int8", encoder=int8_enc, **cols)  # exports the int8 graph once
            wait_quiet(max_wait=60)
            for i, idx in enumerate(np.array_split(np.arange(n), args.slices)):
                part = [rows[j] for j in idx]
                for side in SIDES[i % 3:] + SIDES[:i % 3]:
                    with timed() as t:
                        if side == "peer":
                            X_peer[idx] = peer.encode([r["text"] for r in part], batch_size=32)
                        else:
                            store.ingest(part, dataset=side, encoder=ours_enc if side == "ours" else int8_enc, **cols)
                    secs[side] += t.seconds
            store.ingest(test_rows, dataset="ours-test", encoder=ours_enc, **cols)
            store.ingest(test_rows, dataset="int8-test", encoder=int8_enc, **cols)
            specs = {"ours": "minilm", "int8": "minilm?quantize=int8"}
            X = {"peer": X_peer, **{s: vectors_of(store, s, specs[s], n) for s in specs}}
            T = {"peer": peer.encode(test, batch_size=32),
                 **{s: vectors_of(store, f"{s}-test", specs[s], len(test)) for s in specs}}
        from embedstore.encoders.device import cpu_has_amx
        figures: dict = {"sentences": n, "slices": args.slices, "cpu_amx": cpu_has_amx(), "ours_dtype": ours_enc.dtype,
                         "ours_ran_on": ours_enc.ran_on, "st_onnx_backend": onnx_backend}
        for side in SIDES:
            c = (X[side] * X_peer).sum(1) / np.linalg.norm(X[side], axis=1) / np.linalg.norm(X_peer, axis=1)
            acc = float((LogisticRegression(max_iter=2000).fit(X[side], labels).predict(T[side])
                         == np.array(test_labels)).mean())
            figures[side] = {"seconds": secs[side], "per_s": n / secs[side], "speed_vs_peer":
                             ratio(secs["peer"], secs[side]), "cos_to_peer_min": float(c.min()),
                             "cos_to_peer_p01": float(np.percentile(c, 1)), "cos_to_peer_mean": float(c.mean()),
                             "sst2_test_accuracy_logreg": acc}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    for side in SIDES:
        f = figures[side]
        show(f"{side}: sentences/s | x peer | cosine to peer min / mean | SST-2 acc",
             f"{f['per_s']:,.0f} | {f['speed_vs_peer']:.2f} | {f['cos_to_peer_min']:.5f} / "
             f"{f['cos_to_peer_mean']:.5f} | {f['sst2_test_accuracy_logreg']:.4f}")
    ok = figures["ours"]["speed_vs_peer"] >= 2.0 and figures["ours"]["cos_to_peer_min"] >= 0.9999
    show("ours runs", f"{figures['ours_dtype']} on {figures['ours_ran_on']} (AMX: {figures['cpu_amx']})")
    show("ours >= 2.0x encode with cosine >= 0.9999", verdict(ok))
    show("sentence-transformers backend='onnx'", onnx_backend)
    kind = "amx" if figures["cpu_amx"] else "no_amx"  # the default differs by CPU: one result file per kind
    write_results(f"bench_text_cpu_{kind}_quick" if args.limit else f"bench_text_cpu_{kind}", args, figures)


if __name__ == "__main__":
    main()
