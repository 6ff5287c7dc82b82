"""Crash safety and concurrency, on real processes: SIGKILL mid-ingest, a second writer, readers meanwhile."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import embedstore
import embedstore.encoders
from embedstore.errors import EmbedstoreError
from embedstore.index.sync import db_state
from tests.conftest import REPO, cli

ENC = "hashing:64"
WORDS = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi omicron pi rho".split()


def make_rows(path: Path, n: int, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    with open(path, "w") as f:
        f.write("text\tlabel\n")
        for i in range(n):
            # every 10th row repeats an earlier text: duplicate content must stay separate items
            text = " ".join(rng.choice(WORDS, 6)) + (f" {i}" if i % 10 else f" {i // 10}")
            f.write(f"{text}\t{i % 2}\n")
    return path


def start_ingest(src: Path, store: Path, chunk: int = 2000) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "embedstore.cli.embedstore_cmd", "ingest", str(src), "--dataset", "d",
                             "--encoder", ENC, "--label-column", "label", "--quiet", "--chunk-size", str(chunk),
                             "--store", str(store)], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def committed_items(store: Path, dataset: str = "d") -> int:
    try:
        with embedstore.open(store, read_only=True) as s, s.connect() as con:
            return con.execute("SELECT count(*) FROM items WHERE dataset = ?", [dataset]).fetchall()[0][0]
    except EmbedstoreError:
        return 0  # the store or its tables do not exist yet


def wait_for_items(store: Path, proc: subprocess.Popen, at_least: int, timeout: float = 60,
                   dataset: str = "d") -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        n = committed_items(store, dataset) if (store / "embedstore.duckdb").exists() else 0
        if n >= at_least or proc.poll() is not None:
            return n
        time.sleep(0.05)
    raise AssertionError("ingest made no progress")


def check_consistent(store_path: Path, total: int) -> None:
    with embedstore.open(store_path, read_only=True) as s:
        rec = s.resolve_encoder(ENC, "d")
        with s.connect() as con:
            n, n_keys = con.execute("SELECT count(*), count(DISTINCT key) FROM items WHERE dataset='d'").fetchall()[0]
            vec, vec_distinct = con.execute(f"SELECT count(*), count(DISTINCT content_hash) FROM {rec.table}"
                                            ).fetchall()[0]
            orphans = con.execute(f"SELECT count(*) FROM items i ANTI JOIN {rec.table} e USING (content_hash)"
                                  ).fetchall()[0][0]
            state = db_state(con, "d", rec)
        assert n == n_keys == total, "items lost or duplicated"
        assert vec == vec_distinct, "a (content hash, fingerprint) was stored twice"
        assert orphans == 0, "an item was committed without its vector"
        live = s.index("d", rec)
        assert live.index.ntotal == state["count"] == total


def test_sigkill_mid_ingest_then_rerun_loses_and_duplicates_nothing(tmp_path):
    total = 60_000
    src = make_rows(tmp_path / "rows.tsv", total)
    store = tmp_path / "store"
    seen = []
    for target in (4_000, 20_000, 40_000):  # kill three times at different points, resuming each time
        proc = start_ingest(src, store)
        wait_for_items(store, proc, target)
        assert proc.poll() is None, f"ingest finished before it could be killed: {proc.communicate()}"
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        seen.append(committed_items(store))
        assert 0 < seen[-1] < total
    assert seen == sorted(seen), "a rerun lost committed items"
    out = cli("embedstore", "ingest", str(src), "--dataset", "d", "--encoder", ENC, "--label-column", "label",
              "--quiet", "--json", store=store)
    report = json.loads(out.stdout)
    assert report["new_items"] == total - seen[-1] and report["embedded"] <= total - seen[-1]
    check_consistent(store, total)
    with embedstore.open(store, read_only=True) as s:  # the persisted index now loads as is
        assert s.index("d", s.resolve_encoder(ENC, "d")).origin == "loaded"


def test_second_writer_fails_fast_and_readers_work_during_ingest(tmp_path):
    src = make_rows(tmp_path / "rows.tsv", 150_000)
    store = tmp_path / "store"
    proc = start_ingest(src, store, chunk=1000)
    try:
        wait_for_items(store, proc, 2_000)
        assert proc.poll() is None
        t0 = time.monotonic()
        second = cli("embedstore", "ingest", str(src), "--dataset", "other", "--encoder", ENC, "--quiet",
                     store=store, check=False)
        assert second.returncode == 2 and time.monotonic() - t0 < 30
        assert f"locked by PID {proc.pid}" in second.stderr
        q = cli("embedstore", "sql", "SELECT count(*) AS n FROM items", "--output-format", "json", store=store)
        assert '"n"' in q.stdout
        hits = cli("embedstore", "search", "--dataset", "d", "--text", "alpha beta gamma", "-k", "3", "--output-format",
                   "json", store=store)
        assert hits.stdout.count('"key"') == 3
        assert proc.poll() is None, "the readers ran after the ingest ended; the test proves nothing"
    finally:
        proc.kill()
        proc.wait()


def test_writer_lock_in_process(tmp_path):
    """The writer lock is held while a write runs (here: held on purpose across writes), not while a store is
    merely open: a second writer fails at once during it, and works after it."""
    s = embedstore.open(tmp_path / "s")
    other = embedstore.open(tmp_path / "s")  # open, not writing: no conflict
    with s.writing():
        with pytest.raises(EmbedstoreError, match=f"locked by PID {os.getpid()}"):
            other.ingest(["some words"], dataset="d", encoder=ENC, progress=False)
    other.ingest(["some words"], dataset="d", encoder=ENC, progress=False)  # released when the write ends
    s.close()
    other.close()


def test_many_read_only_openers_at_once(tmp_path):
    """With no writer active, any number of processes may query the same store at the same time."""
    store = tmp_path / "store"
    cli("embedstore", "ingest", str(make_rows(tmp_path / "rows.tsv", 2_000)), "--dataset", "d", "--encoder", ENC,
        "--label-column", "label", "--quiet", store=store)
    readers = [subprocess.Popen([sys.executable, "-c",
                                 "import sys, time, embedstore\n"
                                 f"s = embedstore.open({str(store)!r}, read_only=True)\n"
                                 "with s.connect() as con:\n"  # hold the database open while the others open it
                                 "    n = con.execute('SELECT count(*) FROM items').fetchall()[0][0]\n"
                                 "    time.sleep(1.0)\n"
                                 "hits = s.search('d', 'alpha beta', k=3)\n"
                                 "print(n, len(hits))"],
                                cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
               for _ in range(6)]
    outs = [r.communicate(timeout=120) for r in readers]
    assert [r.returncode for r in readers] == [0] * 6, outs
    assert {o.strip() for o, _ in outs} == {"2000 3"}



def test_a_query_is_let_in_between_batches_of_a_fast_ingest(tmp_path):
    """A fast (all-cached) ingest holds the database almost all the time; a waiting reader announces itself and
    the ingest closes the file for it before its next batch (Store.yield_to_readers)."""
    src = make_rows(tmp_path / "rows.tsv", 200_000)
    store = tmp_path / "store"
    cli("embedstore", "ingest", str(src), "--dataset", "d", "--encoder", ENC, "--label-column", "label", "--quiet",
        store=store)
    proc = subprocess.Popen([sys.executable, "-m", "embedstore.cli.embedstore_cmd", "ingest", str(src), "--dataset", "e",
                             "--encoder", ENC, "--label-column", "label", "--quiet", "--chunk-size", "2000",
                             "--store", str(store)], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)  # every vector is cached: batches run back to back
    try:
        wait_for_items(store, proc, 4_000, dataset="e")
        answered = []
        for _ in range(3):
            q = cli("embedstore", "sql", "SELECT count(*) AS n FROM items WHERE dataset = 'e'", "--output-format", "json",
                    store=store, env={"EMBEDSTORE_LOCK_WAIT": "60"})
            answered.append(json.loads(q.stdout)[0]["n"])
        assert proc.poll() is None, "the ingest ended before the queries; the test proves nothing"
        assert 0 < answered[0] <= answered[-1] < 200_000
    finally:
        proc.kill()
        proc.wait()


def test_a_reader_keeps_its_connection_briefly_only_while_no_writer_works(tmp_path, monkeypatch):
    """Repeated searches reuse one read connection for EMBEDSTORE_READ_LINGER seconds (no re-open per query);
    a writer in another process still gets in (it waits at most that long), and while a writer holds the lock
    the reader closes the file after each use, as without lingering."""
    store = tmp_path / "store"
    with embedstore.open(store) as s:
        s.ingest([{"text": f"{w} {i}"} for i, w in enumerate(WORDS)], dataset="d", encoder=ENC, progress=False)
    monkeypatch.setenv("EMBEDSTORE_READ_LINGER", "5")
    reader = embedstore.open(store, read_only=True)
    q = embedstore.encoders.get_encoder(ENC).embed(["alpha beta"]).vectors
    reader.search("d", vector=q, k=2)
    lingering = reader._con
    assert lingering is not None
    reader.search("d", vector=q, k=3)
    assert reader._con is lingering  # reused, not re-opened
    src = tmp_path / "more.tsv"
    src.write_text("text\n" + "".join(f"more {w}\n" for w in WORDS))
    # a writer in another process: waits for the idle reader (at most 5 s here), then writes
    cli("embedstore", "ingest", str(src), "--dataset", "d", "--encoder", ENC, "--quiet", store=store,
        env={"EMBEDSTORE_READ_LINGER": "5"})
    assert reader._con is None  # closed by its timer
    hold = subprocess.Popen([sys.executable, "-c", "import sys, time, embedstore; s = embedstore.open(sys.argv[1]);\n"
                             "with s.writing():\n    print('held', flush=True); time.sleep(4)", str(store)],
                            stdout=subprocess.PIPE, text=True, cwd=REPO)
    assert hold.stdout.readline().strip() == "held"
    assert len(reader.search("d", vector=q, k=40)) == 2 * len(WORDS)  # sees the writer's commit
    assert reader._con is None  # a writer holds the lock: no lingering
    hold.wait(timeout=30)
    monkeypatch.setenv("EMBEDSTORE_READ_LINGER", "0")
    reader.search("d", vector=q, k=2)
    assert reader._con is None
    reader.close()


def test_a_long_lived_reader_follows_what_writers_commit(tmp_path):
    """A read-only Store kept open (a notebook) sees every later commit in search: appends are caught up in
    memory, a re-keyed item makes it rebuild; results equal exact search each time."""
    store = tmp_path / "store"

    def ingest(rows: list[tuple[str, str]]) -> None:
        src = tmp_path / "rows.tsv"
        src.write_text("id\ttext\n" + "".join(f"{k}\t{t}\n" for k, t in rows))
        cli("embedstore", "ingest", str(src), "--dataset", "d", "--encoder", ENC, "--id-column", "id", "--quiet",
            store=store)

    def check(reader, query: str) -> list[str]:
        X, _, fs = reader.features("d", encoder=ENC, label=None, return_meta=True)
        q = embedstore.encoders.get_encoder(ENC).embed([query]).vectors[0]
        hits = reader.search("d", vector=q, k=3)
        np.testing.assert_allclose([h.score for h in hits], np.sort(X @ q)[::-1][:3], rtol=1e-4, atol=1e-5)
        return [h.key for h in hits]

    ingest([(f"r{i}", " ".join(WORDS[i % 7: i % 7 + 4]) + f" {i}") for i in range(100)])
    reader = embedstore.open(store, read_only=True)
    assert "new" not in check(reader, "omicron pi rho sigma")
    ingest([("new", "omicron pi rho sigma")])                  # an append
    assert check(reader, "omicron pi rho sigma")[0] == "new"
    assert reader.index("d", reader.resolve_encoder(ENC, "d")).origin == "loaded"  # followed, not reopened
    ingest([("new", "kappa lambda mu nu xi")])                 # the same key, new text: a re-keyed item
    assert check(reader, "kappa lambda mu nu xi")[0] == "new"
    assert check(reader, "omicron pi rho sigma")[0] != "new"
    reader.close()


def test_store_connections_draw_no_progress_bar_on_stdout(tmp_path):
    """DuckDB prints a progress bar on stdout for queries past 2 s; under load that broke `ingest --json`
    (stdout no longer one JSON document). Every connection the store opens turns it off."""
    with embedstore.open(tmp_path / "s") as s:
        with s.writing(), s.connect() as con:
            assert con.execute("SELECT current_setting('enable_progress_bar')").fetchone()[0] is False
    reader = embedstore.open(tmp_path / "s", read_only=True)
    with reader.connect() as con:
        assert con.execute("SELECT current_setting('enable_progress_bar')").fetchone()[0] is False
    reader.close()
