"""An independent kill -9 harness: real `embedstore` / `heads` processes killed with SIGKILL at random moments
(and once at a named point) while they fit a head, checkpoint an IVF index, and re-ingest a source whose rows
changed by 40%; then the same command is rerun and the store is checked as a user would check it:

    items = the input rows (same keys, same texts), no key or (content hash, encoder) stored twice,
    the index holds exactly the database's item ids, and search = exact cosine over store.features().

It shares no helper with tests/test_faults.py, so a bug in one harness cannot hide one in the other."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import faiss
import numpy as np
import embedstore
import heads
from tests.conftest import REPO

ENC = "hashing:64"
TOPICS = [[f"t{t}w{j}" for j in range(12)] for t in range(40)]  # clustered texts: IVF pays on them


def rows(n: int, seed: int, changed: bool = False) -> dict[str, str]:
    """{id: text}: topic-clustered texts; with `changed`, 2 of every 5 rows (40%) rewritten."""
    rng = np.random.default_rng(seed)
    out = {f"r{i}": " ".join(rng.choice(TOPICS[i % 40], 5)) + f" u{i}" for i in range(n)}
    if changed:
        pick = np.random.default_rng(seed + 1)
        for i in range(0, n):
            if i % 5 < 2:
                out[f"r{i}"] = " ".join(pick.choice(TOPICS[(i + 7) % 40], 5)) + f" changed{i}"
    return out


def write(path: Path, data: dict[str, str]) -> Path:
    path.write_text("id\ttext\tlabel\n" + "".join(f"{k}\t{t}\t{int(k[1:]) % 3}\n" for k, t in data.items()))
    return path


def ingest(src: Path, store: Path) -> list[str]:
    return [sys.executable, "-m", "embedstore.cli.embedstore_cmd", "ingest", str(src), "--dataset", "d",
            "--encoder", ENC, "--id-column", "id", "--label-column", "label", "--quiet", "--chunk-size", "500",
            "--store", str(store)]


def killed(cmd: list[str], delay: float, env: dict | None = None) -> bool:
    """Start cmd, SIGKILL it after `delay` seconds; whether the kill landed (it had not finished)."""
    proc = subprocess.Popen(cmd, cwd=REPO, env={**os.environ, **(env or {})}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    time.sleep(delay)
    landed = proc.poll() is None
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    return landed


def killed_after(cmd: list[str], store: Path, sql: str, at: int) -> bool:
    """Start cmd, SIGKILL it once `sql` (a count, read by another process) reaches `at`: mid-run by construction,
    whatever the machine's speed; whether the kill landed (it had not finished)."""
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    while proc.poll() is None:
        try:
            with embedstore.open(store, read_only=True) as s, s.connect() as con:
                if con.execute(sql).fetchall()[0][0] >= at:
                    break
        except embedstore.EmbedstoreError:
            pass  # the writer holds the file this instant
        time.sleep(0.01)
    landed = proc.poll() is None
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    return landed


def finish(cmd: list[str], env: dict | None = None) -> None:
    p = subprocess.run(cmd, cwd=REPO, env={**os.environ, **(env or {})}, capture_output=True, text=True,
                       timeout=600)
    assert p.returncode == 0, p.stderr


def index_ids(index: faiss.Index) -> np.ndarray:
    if hasattr(index, "id_map"):
        return faiss.vector_to_array(index.id_map)
    inv = faiss.extract_index_ivf(index).invlists
    parts = [faiss.rev_swig_ptr(inv.get_ids(li), inv.list_size(li)).copy() for li in range(inv.nlist)
             if inv.list_size(li)]
    return np.concatenate(parts) if parts else np.zeros(0, np.int64)


def check(store: Path, expected: dict[str, str]) -> str:
    """The user-level checks; returns the index factory found."""
    with embedstore.open(store, read_only=True) as s:
        items = s.sql("SELECT key, text, item_id, content_hash FROM items WHERE dataset = 'd'").to_dicts()
        assert {r["key"]: r["text"] for r in items} == expected  # every input row, none lost, none extra
        rec = s.resolve_encoder(ENC, "d")
        dup = s.sql(f"SELECT count(*) - count(DISTINCT content_hash) AS d FROM {rec.table}").to_dicts()[0]["d"]
        assert dup == 0
        live = s.index("d", rec)
        assert sorted(index_ids(live.index.index).tolist()) == sorted(r["item_id"] for r in items)
        X, _, fs = s.features("d", encoder=ENC, label=None, return_meta=True)
        Xn = X / np.linalg.norm(X, axis=1, keepdims=True)
        recall = []  # by score, so that ties (texts of one topic) cannot make an exact answer look wrong
        pos = {int(i): p for p, i in enumerate(fs.item_ids)}
        for q in np.random.default_rng(0).choice(len(X), 15, replace=False):
            hits = s.search("d", key=fs.keys[q], k=10)
            best = np.sort(np.delete(Xn @ Xn[q], q))[::-1][:10]
            for h in hits:  # every score is the true cosine of that item: no stale vector answers
                assert abs(h.score - float(Xn[pos[h.item_id]] @ Xn[q])) < 1e-4
            recall.append(sum(h.score >= best[-1] - 1e-5 for h in hits) / 10)
        assert np.mean(recall) >= (1.0 if live.index.factory.startswith("IDMap") else 0.9), recall
        return live.index.factory


def test_kill_during_a_reingest_that_changes_40_percent_of_rows(tmp_path):
    store = tmp_path / "s"
    first = rows(6000, 1)
    finish(ingest(write(tmp_path / "a.tsv", first), store))
    second = rows(6000, 1, changed=True)
    assert sum(first[k] != second[k] for k in first) == 2400
    src = write(tmp_path / "a.tsv", second)
    changed = "SELECT count(*) FROM items WHERE dataset = 'd' AND text LIKE '%changed%'"
    landed = [killed_after(ingest(src, store), store, changed, at) for at in (300, 900, 1600)]
    assert sum(landed) >= 2, f"kills that landed mid-run: {landed}; the test proves too little"
    finish(ingest(src, store))
    check(store, second)


def test_kill_during_ivf_checkpoints(tmp_path):
    env = {"EMBEDSTORE_EXACT_INDEX_MAX": "2000", "EMBEDSTORE_CHECKPOINT_ITEMS": "3000"}
    store = tmp_path / "s"
    data = rows(20_000, 2)
    src = write(tmp_path / "a.tsv", data)
    # once exactly inside an IVF checkpoint (the new data file written, its sidecar not yet), then at random
    assert killed(ingest(src, store), 60, {**env, "EMBEDSTORE_FAULT": "index.save.before_sidecar@2"}) is False
    rng = np.random.default_rng(3)
    for _ in range(3):
        killed(ingest(src, store), float(rng.uniform(0.5, 2.5)), env)
    finish(ingest(src, store), env)
    assert check(store, data).startswith("IVF")


def test_kill_during_heads_fit(tmp_path):
    store = tmp_path / "s"
    data = rows(20_000, 3)
    finish(ingest(write(tmp_path / "a.tsv", data), store))
    fit = [sys.executable, "-m", "embedstore.cli.heads_cmd", "fit", "--dataset", "d", "--model", "mlp", "--name",
           "h", "--store", str(store)]
    finish(fit[:7] + ["logreg"] + fit[8:])  # a first version of head h
    with embedstore.open(store, read_only=True) as s:
        X, _ = s.features("d", encoder=ENC, label=None)
        before = heads.load(s, "h").predict(X[:200])
    rng = np.random.default_rng(5)
    landed = 0
    for _ in range(3):
        landed += killed(fit, float(rng.uniform(1.0, 6.0)))
        with embedstore.open(store, read_only=True) as s:  # after every kill: a head h that loads, old or new
            head = heads.load(s, "h")
            if head.meta["model"] == "logreg":
                np.testing.assert_array_equal(head.predict(X[:200]), before)
    assert landed >= 1, "no kill landed while the fit ran: the test proved nothing"
    finish(fit)
    with embedstore.open(store, read_only=True) as s:
        assert heads.load(s, "h").meta["model"] == "mlp"
        assert [h["name"] for h in heads.list_heads(s)] == ["h"]
    check(store, data)
