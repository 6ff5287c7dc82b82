"""Shared helpers for the benchmarks: timing, peak RSS, dataset paths, machine facts, result files.

Every benchmark compares embedstore with the peer way of doing the same work *in the same run* and prints the
ratio; absolute seconds on a shared 2-core machine are context, not evidence.
"""

from __future__ import annotations

import argparse
import csv
import datetime as _dt
import importlib.metadata
import json
import os
import platform
import resource
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

REPO = Path(__file__).resolve().parents[1]
DATASETS = Path(os.environ.get("EMBEDSTORE_DATASETS", REPO.parent / "shared" / "datasets"))
RESULTS = Path(__file__).resolve().parent / "results"
LOAD_AT_START = os.getloadavg()


class Timer:
    seconds: float = 0.0   # wall clock
    cpu: float = 0.0       # CPU seconds of this process, all threads (less sensitive to other processes' load)
    others: float = 0.0    # cores other processes kept busy meanwhile (0 on an otherwise idle machine)


def _busy_seconds() -> float:
    """CPU seconds all processes have used since boot (from /proc/stat; 0 where it is missing)."""
    try:
        with open("/proc/stat") as f:
            user, nice, system, _idle, _iowait, irq, softirq, steal = map(int, f.readline().split()[1:9])
    except (OSError, ValueError):
        return 0.0
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


@contextmanager
def timed() -> Iterator[Timer]:
    """`with timed() as t: ...` then `t.seconds` (wall), `t.cpu` (this process' CPU) and `t.others`."""
    t = Timer()
    start, cpu, busy = time.perf_counter(), time.process_time(), _busy_seconds()
    try:
        yield t
    finally:
        t.seconds, t.cpu = time.perf_counter() - start, time.process_time() - cpu
        t.others = max(0.0, (_busy_seconds() - busy - t.cpu) / max(t.seconds, 1e-9))


def wait_quiet(max_wait: float = 300, limit: float = 0.3) -> float:
    """Wait (up to `max_wait` s) until other processes use under `limit` cores over 3 s; returns their use."""
    start = time.monotonic()
    said = -1e9
    while True:
        with timed() as t:
            time.sleep(3)
        now = time.monotonic()
        if t.others < limit or now - start > max_wait:
            if said > -1e9:
                print(f"  (waited {now - start:.0f} s; other processes use {t.others:.1f} cores)", file=sys.stderr)
            return t.others
        if now - said >= 60:
            print(f"  (waiting up to {max_wait:.0f} s: other processes use {t.others:.1f} cores)", file=sys.stderr,
                  flush=True)
            said = now


def peak_rss_mb() -> float:
    """This process' peak resident set size so far, in MiB: VmHWM of /proc/self/status, the high-water mark of
    this program's own memory. Not ru_maxrss: Linux carries that across fork + exec, so a benchmark's child
    would report its parent's size at the fork when that was larger (measured: 4.7 GB for a 1.3 GB child)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def rss_mb() -> float:
    """This process' current resident set size, in MiB."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def dataset_path(*parts: str) -> Path:
    """A file under ../shared/datasets, or exit 0 with a clear skip message when it is absent."""
    path = DATASETS.joinpath(*parts)
    if not path.exists():
        print(f"SKIP: {path} not found (datasets are read from ../shared/datasets relative to the repo, "
              "or $EMBEDSTORE_DATASETS); this benchmark needs it", file=sys.stderr)
        raise SystemExit(0)
    return path


def read_sst2(path: Path, limit: int | None = None) -> tuple[list[str], list[str]]:
    """(sentences, labels) from an SST-2 TSV (header `sentence<TAB>label`, quoting off), first `limit` rows."""
    sentences, labels = [], []
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        next(reader)
        for row in reader:
            if limit is not None and len(sentences) >= limit:
                break
            sentences.append(row[0])
            labels.append(row[1])
    return sentences, labels


def write_sst2(path: Path, sentences: list[str], labels: list[str]) -> Path:
    """The same rows as a TSV (for a --limit run; written to a temp dir, never into the repo)."""
    with open(path, "w", encoding="utf-8") as f:
        f.write("sentence\tlabel\n")
        f.writelines(f"{s}\t{y}\n" for s, y in zip(sentences, labels))
    return path


def sst2_file(name: str, limit: int | None, tmp: Path) -> Path:
    """The real SST-2 file, or (with --limit) its first `limit` rows copied to `tmp` under the same name."""
    src = dataset_path("text", "sst2", name)
    return src if limit is None else write_sst2(tmp / name, *read_sst2(src, limit))


def versions() -> dict:
    out = {}
    for dist in ("torch", "duckdb", "faiss-cpu", "numpy", "scikit-learn", "sentence-transformers", "pyarrow"):
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            out[dist] = None
    return out


def git_state() -> dict:
    """The commit and the modified tracked files: the library may be edited while benchmarks run."""
    import subprocess
    def git(*a: str) -> str:
        return subprocess.run(["git", *a], cwd=REPO, capture_output=True, text=True).stdout.strip()
    return {"commit": git("rev-parse", "HEAD"), "modified": git("diff", "--name-only", "HEAD").split()}


LIBRARY_MODULES = ("embedstore", "embedstore.facade", "embedstore.store.database", "embedstore.store.catalog",
                   "embedstore.features", "embedstore.search", "embedstore.index.sync", "embedstore.index.faiss_index",
                   "embedstore.ingest.pipeline", "embedstore.ingest.cache", "embedstore.sources.tables",
                   "embedstore.encoders.registry", "embedstore.encoders.text.hashing")


def import_library(*extra: str) -> str:
    """Import the library's modules now (the library may be edited while a long benchmark runs: a module
    imported lazily mid-run could be a half-edited one) and return the sha256 of the sources imported."""
    import hashlib
    import importlib
    digest = hashlib.sha256()
    for name in (*LIBRARY_MODULES, *extra):
        module = importlib.import_module(name)
        digest.update(Path(module.__file__).read_bytes())
    global LIBRARY_SHA256
    LIBRARY_SHA256 = digest.hexdigest()
    return LIBRARY_SHA256


LIBRARY_SHA256: str | None = None


def machine() -> dict:
    return {"git": {**git_state(), "imported_library_sha256": LIBRARY_SHA256},
            "cpu_count": os.cpu_count(), "cpu": _cpu_model(), "ram_gib": _ram_gib(),
            "python": platform.python_version(), "platform": platform.platform(), "versions": versions(),
            "loadavg_at_start": LOAD_AT_START, "loadavg_at_end": os.getloadavg(),
            "date": _dt.datetime.now().astimezone().isoformat(timespec="seconds")}


def _cpu_model() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def _ram_gib() -> float | None:
    try:
        return round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError):
        return None


def ratio(ours: float, peer: float) -> float:
    """How many times `ours` exceeds `peer` (inf when peer is 0)."""
    return ours / peer if peer else float("inf")


def show(label: str, value, goal: str = "") -> None:
    text = f"{value:,.4g}" if isinstance(value, float) else str(value)
    print(f"  {label:<58} {text}{'   (' + goal + ')' if goal else ''}", flush=True)


def verdict(ok: bool) -> str:
    return "goal met" if ok else "goal MISSED"


def write_results(name: str, args: argparse.Namespace, figures: dict) -> Path:
    """benchmarks/results/<name>.json: the figures, the options they were measured with, the machine."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    blob = {"benchmark": name, "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
            "options": {k: v for k, v in vars(args).items() if not k.startswith("_")},
            "machine": machine(), "figures": figures}
    path.write_text(json.dumps(blob, indent=2, default=str) + "\n")
    print(f"wrote {path.relative_to(REPO)}")
    return path


def parser(doc: str | None) -> argparse.ArgumentParser:
    """An argument parser whose description is the script's docstring."""
    return argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
