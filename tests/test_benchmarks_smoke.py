"""The benchmarks that a unit test cannot stand in for run end to end on CI-sized slices, so that they cannot rot
between full runs."""

from __future__ import annotations

import subprocess
import sys

from conftest import DATASETS, REPO, require_data


def test_bench_heads_defaults_smoke(minilm_available):
    require_data(DATASETS / "text" / "trec")
    require_data(DATASETS / "dna" / "gue")
    proc = subprocess.run([sys.executable, "benchmarks/bench_heads_defaults.py", "--smoke"], cwd=REPO,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = [line.split() for line in proc.stdout.splitlines() if line.startswith(("trec ", "splice "))]
    assert len(rows) == 2 and all(0 < float(r[2]) <= 1 for r in rows)  # a macro-F1 per task


def test_bench_audio_smoke():
    require_data(DATASETS / "audio" / "fsdd")
    proc = subprocess.run([sys.executable, "benchmarks/bench_audio.py", "--smoke", "--throughput", "4"], cwd=REPO,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = {line[:28].strip(): line[28:].split() for line in proc.stdout.splitlines()
            if line.startswith(("embedstore (", "script (", "MFCC"))}
    assert len(rows) == 3 and all(0 < float(r[0]) <= 1 for r in rows.values())  # an accuracy per pipeline
    assert "ingest speed / script speed" in proc.stdout


def test_bench_ray_smoke():
    import pytest
    pytest.importorskip("ray", reason="bench_ray needs ray[data] (pip install 'embedstore[ray]')")
    require_data(DATASETS / "text" / "sst2")
    proc = subprocess.run([sys.executable, "benchmarks/bench_ray.py", "--smoke"], cwd=REPO, capture_output=True,
                          text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "cosine per item, min" in proc.stdout and "merge of staged shards" in proc.stdout
    assert "100M rows" in proc.stdout and "smoke run" in proc.stdout


def test_gpu_suite_smoke():
    """benchmarks/gpu_suite.py on the CPU with tiny models: every section (text, images, DNA, model-only) runs its
    peer and the store, and its correctness checks hold, so the suite is ready when a GPU is lent."""
    require_data(DATASETS / "text" / "sst2")
    require_data(DATASETS / "image" / "cifar10")
    proc = subprocess.run([sys.executable, "benchmarks/gpu_suite.py", "--smoke"], cwd=REPO, capture_output=True,
                          text=True, timeout=900)
    assert proc.returncode == 0, (proc.stdout[-3000:], proc.stderr[-2000:])
    lines = {ln.split()[0] + " " + ln.split()[1]: ln.split()[2] for ln in proc.stdout.splitlines()
             if ln.startswith("  ") and len(ln.split()) >= 3 and ln.split()[0].endswith(":")}
    for section in ("text", "images", "dna"):
        assert float(lines[f"{section}: cos_gpu_vs_cpu_fp32_min"]) >= 0.99, section
    assert (lines["text: embedded"], lines["text: reingest_embedded"]) == ("300", "0")
    assert (lines["dna: embedded"], lines["dna: reingest_embedded"]) == ("16", "0")
    images = next(ln for ln in proc.stdout.splitlines() if ln.startswith("  images: gpu_decode_false"))
    assert '"embedded": 24' in images and '"reingest_embedded": 0' in images
    assert "goal images_vs_dataloader" in proc.stdout and "smoke run" in proc.stdout
