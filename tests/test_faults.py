"""Fault injection on real processes: SIGKILL at every named fault point (embedstore/faults.py) and at random
times, a full disk, and the recovery each leaves. Each kill is followed by checks a user would make: nothing
acknowledged (committed) is lost, no (content hash, fingerprint) is stored twice, the index agrees with the
database, and the files a pointer names (index sidecar, head row) still load."""

from __future__ import annotations

import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import embedstore
import heads
from embedstore.errors import NotFoundError, StoreVersionError
from embedstore.faults import POINTS
from embedstore.index.faiss_index import VectorIndex
from embedstore.index.sync import db_state
from tests.conftest import REPO, cli

ENC = "hashing:64"
PART = 3_000  # rows per source file; chunks of 250 -> 12 transactions per run
WORDS = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi omicron pi rho".split()
FAST_CHECKPOINTS = {"EMBEDSTORE_CHECKPOINT_ITEMS": "500"}  # persist the index often, so its writes get killed too


def write_part(path: Path, part: int, n: int = PART) -> Path:
    rng = np.random.default_rng(part)
    with open(path, "w") as f:
        f.write("id\ttext\tlabel\n")
        for i in range(part * n, (part + 1) * n):
            # every 7th row repeats an earlier text: one vector, two items
            text = " ".join(rng.choice(WORDS, 6)) + f" {i if i % 7 else i // 7}"
            f.write(f"r{i}\t{text}\t{i % 3}\n")
    return path


def ingest_cmd(src: Path, store: Path, chunk: int = 250) -> list[str]:
    return [sys.executable, "-m", "embedstore.cli.embedstore_cmd", "ingest", str(src), "--dataset", "d", "--encoder", ENC,
            "--id-column", "id", "--label-column", "label", "--quiet", "--chunk-size", str(chunk),
            "--store", str(store)]


def run_with_fault(cmd: list[str], point: str | None = None, store: Path | None = None,
                   rng: np.random.Generator | None = None) -> int:
    """Run cmd and kill it: at `point` (via EMBEDSTORE_FAULT), or, given `rng`, at a random moment after its
    first commit to `store` (a reader polls for it). With neither, just run it. Returns its exit code."""
    env = {**os.environ, **FAST_CHECKPOINTS}
    if point:
        env["EMBEDSTORE_FAULT"] = point
    before = len(snapshot(store)) if rng is not None else 0
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if rng is not None:
        while proc.poll() is None and len(snapshot(store)) == before:
            time.sleep(0.02)
        time.sleep(rng.uniform(0, 0.6))
        proc.send_signal(signal.SIGKILL)
    out, err = proc.communicate(timeout=300)
    if point or rng is not None:
        assert proc.returncode == -signal.SIGKILL, f"not killed at {point or 'random'} (it ended first):\n{out}\n{err}"
    return proc.returncode


def snapshot(store: Path) -> dict[str, str]:
    """{key: content hash} of the committed items, read by a read-only opener (as another process would)."""
    try:
        with embedstore.open(store, read_only=True) as s, s.connect() as con:
            return dict(con.execute("SELECT key, content_hash FROM items WHERE dataset='d'").fetchall())
    except (NotFoundError, StoreVersionError):
        return {}  # no store yet, or one whose creation was killed before its schema was committed


def committed_chunks(point: str) -> int | None:
    """How many of the killed run's 250-row chunks a chunk fault point lets commit (None: not a chunk point)."""
    name, _, nth = point.partition("@")
    n = int(nth or 1)
    return {"ingest.chunk.before_commit": n - 1, "ingest.chunk.after_commit": n,
            "ingest.chunk.after_index_add": n}.get(name)


def check_store(store: Path, acknowledged: dict[str, str]) -> dict[str, str]:
    """The invariants after a crash; returns the new snapshot."""
    now = snapshot(store)
    lost = {k for k, h in acknowledged.items() if now.get(k) != h}
    assert not lost, f"{len(lost)} committed items lost or changed, e.g. {sorted(lost)[:3]}"
    if not now:
        return now
    with embedstore.open(store, read_only=True) as s:
        rec = s.resolve_encoder(ENC, "d")
        with s.connect() as con:
            vec, distinct = con.execute(f"SELECT count(*), count(DISTINCT content_hash) FROM {rec.table}").fetchall()[0]
            orphans = con.execute("SELECT count(*) FROM item_status WHERE fingerprint = ? AND status = 'missing'",
                                  [rec.fingerprint]).fetchall()[0][0]
            keys, distinct_keys = con.execute("SELECT count(*), count(DISTINCT (dataset, key)) FROM items"
                                              ).fetchall()[0]
            state = db_state(con, "d", rec)
        assert vec == distinct, "a (content hash, fingerprint) was stored twice"
        assert orphans == 0, "an item was committed without its vector"
        assert keys == distinct_keys, "a key was stored twice in one dataset"
        side = s.index_path("d", rec)
        if side.exists():  # the sidecar always names a complete data file: the previous one or the new one
            index, _ = VectorIndex.load(side)
        live = s.index("d", rec)  # read-only: loaded, caught up or rebuilt in memory, never written
        assert live.index.ntotal == state["count"] == len(now)
    return now


INGEST_POINTS = [
    "store.migration.before_commit", "encoder.register.before_commit",
    "ingest.chunk.before_commit", "ingest.chunk.before_commit@5", "ingest.chunk.after_commit",
    "ingest.chunk.after_commit@4", "ingest.chunk.after_index_add@3",
    "file.before_replace@2", "file.before_replace@5", "file.after_replace@3",
    "index.save.before_sidecar@2", "index.save.after_sidecar@2",
]
RANDOM_KILLS = 8


def test_kill_9_at_every_ingest_fault_point_and_at_random_times(tmp_path):
    """20 kills: 12 at named points (the first two need a fresh store / a new encoder), 8 at random times;
    each run ingests a new part file, so each killed transaction holds new items."""
    store = tmp_path / "store"
    acknowledged: dict[str, str] = {}
    parts = []
    rng = np.random.default_rng(7)
    plan = [(p, PART) for p in INGEST_POINTS] + [(None, 8 * PART)] * RANDOM_KILLS
    for i, (point, rows) in enumerate(plan):
        parts.append(write_part(tmp_path / f"part{i}.tsv", i, rows))
        run_with_fault(ingest_cmd(parts[-1], store), point, store, None if point else rng)
        before = len(acknowledged)
        acknowledged = check_store(store, acknowledged)
        if point and committed_chunks(point) is not None:  # every acknowledged (committed) chunk is there
            assert len(acknowledged) - before == 250 * committed_chunks(point), point
    assert 0 < len(acknowledged) < sum(rows for _, rows in plan)
    for src in parts:  # every rerun completes
        done = cli("embedstore", "ingest", str(src), "--dataset", "d", "--encoder", ENC, "--id-column", "id",
                   "--label-column", "label", "--quiet", "--json", store=store)
        assert json.loads(done.stdout)["skipped"] == {}
    final = check_store(store, acknowledged)
    assert len(final) == sum(rows for _, rows in plan)
    with embedstore.open(store) as s:  # the writer's persisted index is complete and answers like exact search
        rec = s.resolve_encoder(ENC, "d")
        live = s.index("d", rec)
        assert live.index.ntotal == len(final)
        X, _ = s.features("d", encoder=ENC, label=None)
        with s.connect() as con:
            keys = con.execute("SELECT key FROM item_status WHERE dataset='d' AND status='ok' ORDER BY item_id").fetchall()
        q = X[123]
        exhaustive = live.index.index.nlist if live.index.factory.startswith("IVF") else None  # IVF over 200k
        scores, _ = live.index.search(q[None], 5, nprobe=exhaustive)
        np.testing.assert_allclose(scores[0], np.sort(X @ q / np.linalg.norm(q))[::-1][:5], rtol=1e-4, atol=1e-5)
        hits = s.search("d", vector=q, k=5)
        assert hits[0].key == keys[123][0] or hits[0].score == pytest.approx(hits[1].score)
        leftovers = s.gc()["leftover_files_removed"]
    assert not list((store / "indexes" / "d").glob(".*tmp*")), leftovers


def fit_cmd(store: Path, model: str) -> list[str]:
    return [sys.executable, "-m", "embedstore.cli.heads_cmd", "fit", "--dataset", "d", "--encoder", ENC, "--label", "label",
            "--model", model, "--name", "h", "--store", str(store)]


@pytest.fixture()
def small_store(tmp_path) -> Path:
    store = tmp_path / "store"
    cli("embedstore", "ingest", str(write_part(tmp_path / "p.tsv", 0, 600)), "--dataset", "d", "--encoder", ENC,
        "--id-column", "id", "--label-column", "label", "--quiet", store=store)
    return store


@pytest.mark.parametrize("point,expect", [("head.save.before_rename", "old"), ("head.save.before_commit", "old"),
                                          ("head.save.after_commit", "new")])
def test_kill_9_while_saving_a_head_keeps_a_loadable_head(small_store, point, expect):
    store = small_store
    with embedstore.open(store) as s:
        old, _ = heads.fit(s, "d", label="label", model="logreg", encoder=ENC, name="h")
        X, _ = s.features("d", encoder=ENC, label=None)
        before = old.predict(X)
    run_with_fault(fit_cmd(store, "knn"), point)
    with embedstore.open(store) as s:
        head = heads.load(s, "h")  # checksums verified against the row
        assert head.meta["model"] == ("logreg" if expect == "old" else "knn")
        if expect == "old":
            np.testing.assert_array_equal(head.predict(X), before)
        removed = s.gc()["leftover_files_removed"]
        assert removed > 0, "the killed save left files that gc should remove"
        assert [p.name for p in (store / "heads" / "h").iterdir() if p.name.startswith(("head.", ".head"))] == \
            [head.path.name]
        heads.load(s, "h")
    assert run_with_fault(fit_cmd(store, "knn")) == 0  # the next save completes


@pytest.mark.parametrize("point", ["delete.before_commit", "delete.after_commit", "gc.before_commit"])
def test_kill_9_during_delete_and_gc(small_store, point):
    store = small_store
    cmd = [sys.executable, "-m", "embedstore.cli.embedstore_cmd", "delete" if point.startswith("delete") else "gc",
           *(["--dataset", "d"] if point.startswith("delete") else []), "--store", str(store)]
    with embedstore.open(store) as s:
        s.ingest(write_part(store.parent / "q.tsv", 1, 300), dataset="other", encoder=ENC, id_column="id",
                 progress=False)
        if point.startswith("gc"):
            s.delete_dataset("other")  # leaves 300 unreferenced vectors for gc
        rec = s.resolve_encoder(ENC)
        with s.connect() as con:
            vectors = con.execute(f"SELECT count(*) FROM {rec.table}").fetchall()[0][0]
    run_with_fault(cmd, point)
    with embedstore.open(store) as s:
        names = s.dataset_names()
        with s.connect() as con:
            assert con.execute(f"SELECT count(*) FROM {rec.table}").fetchall()[0][0] == vectors  # nothing yet
        if point == "delete.after_commit":
            assert "d" not in names and (store / "indexes" / "d").exists()
            assert s.gc()["leftover_files_removed"] > 0 and not (store / "indexes" / "d").exists()
        else:
            assert "d" in names and s.index("d", rec).index.ntotal == 600
            s.gc()
        with s.connect() as con:
            referenced = con.execute(f"SELECT count(*) FROM {rec.table} e WHERE EXISTS (SELECT 1 FROM items i "
                                     "WHERE i.content_hash = e.content_hash)").fetchall()[0][0]
            assert con.execute(f"SELECT count(*) FROM {rec.table}").fetchall()[0][0] == referenced


def test_every_fault_point_is_exercised():
    used = {p.partition("@")[0] for p in INGEST_POINTS} | {"head.save.before_rename", "head.save.before_commit",
                                                            "head.save.after_commit", "delete.before_commit",
                                                            "delete.after_commit", "gc.before_commit"}
    assert used == set(POINTS)


def _limit_file_size(max_bytes: int):
    return lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (max_bytes, max_bytes))


def _disk_full_then_resume(store: Path, src: Path, preexec, rows: int) -> None:
    proc = subprocess.run(ingest_cmd(src, store, chunk=2000), cwd=REPO, capture_output=True, text=True,
                          preexec_fn=preexec, timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert "out of disk space" in proc.stderr and "rerun the same command" in proc.stderr
    assert "Traceback" not in proc.stderr
    kept = check_store(store, {})  # reopens intact, consistent
    assert 0 < len(kept) < rows
    out = json.loads(cli("embedstore", "ingest", str(src), "--dataset", "d", "--encoder", ENC, "--id-column", "id",
                         "--label-column", "label", "--quiet", "--json", store=store).stdout)
    assert out["new_items"] == rows - len(kept)
    assert len(check_store(store, kept)) == rows


def test_file_size_limit_mid_ingest_is_a_clear_error_and_the_rerun_completes(tmp_path):
    """`ulimit -f`: the write that crosses the limit fails with EFBIG (Python ignores SIGXFSZ)."""
    src = write_part(tmp_path / "big.tsv", 0, 40_000)
    _disk_full_then_resume(tmp_path / "store", src, _limit_file_size(6_000_000), 40_000)


@pytest.fixture()
def small_tmpfs(tmp_path):
    mnt = tmp_path / "tmpfs"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=6m", "tmpfs", str(mnt)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here (needs root); the ulimit -f test covers a full disk")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_full_disk_mid_ingest_is_a_clear_error_and_the_rerun_completes(tmp_path, small_tmpfs):
    """A real ENOSPC: the store lives on a 6 MB tmpfs; after the failure it is copied to a roomy disk (the
    user frees space) and the same command resumes."""
    src = write_part(tmp_path / "big.tsv", 0, 40_000)
    proc = subprocess.run(ingest_cmd(src, small_tmpfs / "store", chunk=2000), cwd=REPO, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 2 and "out of disk space" in proc.stderr and "Traceback" not in proc.stderr, \
        proc.stderr
    store = tmp_path / "store"
    shutil.copytree(small_tmpfs / "store", store)
    kept = check_store(store, {})
    assert 0 < len(kept) < 40_000
    cli("embedstore", "ingest", str(src), "--dataset", "d", "--encoder", ENC, "--id-column", "id",
        "--label-column", "label", "--quiet", store=store)
    assert len(check_store(store, kept)) == 40_000


def test_disk_full_shapes_become_one_clear_error():
    import errno

    import duckdb

    from embedstore.errors import DiskFullError, resource_errors_as_clear
    for exc in (OSError(errno.ENOSPC, "No space left on device"), OSError(errno.EFBIG, "File too large"),
                duckdb.IOException('Could not write file "x.wal": No space left on device'),
                RuntimeError("Error in faiss::FileIOWriter: fwrite failed: No space left on device")):
        with pytest.raises(DiskFullError, match="out of disk space .* free space"):
            with resource_errors_as_clear():
                raise exc
    with pytest.raises(ValueError):  # anything else passes through unchanged
        with resource_errors_as_clear():
            raise ValueError("not about space")


def test_full_disk_during_heads_fit_is_a_clear_error(tmp_path, small_tmpfs):
    """Not only ingest: any command that writes (here `heads fit`) reports a full disk in one line."""
    store = small_tmpfs / "store"
    cli("embedstore", "ingest", str(write_part(tmp_path / "p.tsv", 0, 300)), "--dataset", "d", "--encoder", ENC,
        "--id-column", "id", "--label-column", "label", "--quiet", store=store)
    free = shutil.disk_usage(small_tmpfs).free
    (small_tmpfs / "filler").write_bytes(bytes(max(free - 4096, 0)))
    out = subprocess.run(fit_cmd(store, "logreg"), cwd=REPO, capture_output=True, text=True, timeout=300)
    assert out.returncode == 2 and "out of disk space" in out.stderr and "Traceback" not in out.stderr, out.stderr
    (small_tmpfs / "filler").unlink()
    assert subprocess.run(fit_cmd(store, "logreg"), cwd=REPO, capture_output=True).returncode == 0


def test_duckdb_memory_limit_is_a_clear_error_and_the_rerun_completes(tmp_path):
    """An ingest that outgrows EMBEDSTORE_DUCKDB_MEMORY (8 MB here: the joins of its last steps, since per-chunk
    lookups of a fresh dataset stay small) fails with advice, keeps what it committed, and the rerun with the limit
    raised completes it: every row once."""
    src = write_part(tmp_path / "big.tsv", 0, 40_000)
    store = tmp_path / "store"
    proc = subprocess.run(ingest_cmd(src, store, chunk=2000), cwd=REPO, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "EMBEDSTORE_DUCKDB_MEMORY": "8MB"})
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert "DuckDB reached its memory limit" in proc.stderr and "EMBEDSTORE_DUCKDB_MEMORY" in proc.stderr
    kept = check_store(store, {})
    assert 0 < len(kept) <= 40_000
    cli("embedstore", "ingest", str(src), "--dataset", "d", "--encoder", ENC, "--id-column", "id",
        "--label-column", "label", "--quiet", store=store)
    assert len(check_store(store, kept)) == 40_000
