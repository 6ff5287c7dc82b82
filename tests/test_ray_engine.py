"""The Ray Data engine on a real local Ray (2 CPUs): the same items, fingerprint and vectors as the local engine on
slices of SST-2, CIFAR-10 and GUE; re-ingest embeds nothing; a driver killed with SIGKILL loses and duplicates
nothing; the refusals a user meets."""

from __future__ import annotations

import itertools
import json
import re
import signal
import subprocess
import sys
import tarfile
import time

import numpy as np
import pytest

import embedstore
import embedstore.ray
from embedstore.errors import InputError
from embedstore.sources import TableOptions, open_source, read_parts
from tests.conftest import DATASETS, REPO, cli, require_data
from tests.test_crash_and_locks import ENC, check_consistent, committed_items, make_rows, wait_for_items

ray = pytest.importorskip("ray", reason="the Ray engine's tests need ray[data] (pip install 'embedstore[ray]')")
from embedstore.ingest import ray_engine  # noqa: E402  (after the skip: it is what is tested)


@pytest.fixture(scope="module", autouse=True)
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, object_store_memory=256 << 20)
    yield
    ray.shutdown()


def same_as_local(store, source, encoder: str, **options) -> dict:
    """Ingest `source` with the Ray engine into `store` and with the local engine into a second, fresh store (so
    that neither reads the other's cached vectors); assert the same items, fingerprint, skips, n_tokens and
    truncation, vectors at cosine >= 0.9999 per item; return the Ray engine's report."""
    got = store.ingest(source, dataset="d", encoder=encoder, engine="ray", progress=False, batch_size=64,
                       **options)
    with embedstore.open(store.path.parent / "local-engine") as local:
        want = local.ingest(source, dataset="d", encoder=encoder, progress=False, **options)
        assert got.fingerprint == want.fingerprint
        assert (got.rows, got.new_items, got.skipped, got.truncated, got.embedded) == \
            (want.rows, want.new_items, want.skipped, want.truncated, want.embedded)
        query = ("SELECT i.key, i.label, hash_hex(i.content_hash) AS h, i.text, i.meta::VARCHAR AS meta, "
                 "s.reason, e.n_tokens, e.truncated FROM items i LEFT JOIN skips s USING (item_id) "
                 "LEFT JOIN {t} e USING (content_hash) ORDER BY i.key")
        rec = store.resolve_encoder(encoder, "d")
        rows = [db.sql(query.format(t=rec.table)).rows() for db in (store, local)]
        assert rows[0] == rows[1] and rows[0]
        (Xr, yr, mr), (Xl, yl, ml) = (db.features("d", encoder=encoder, return_meta=True) for db in (store, local))
    # item ids follow the order shards finished in, not the source's: compare by key
    r, l = np.argsort(mr.keys), np.argsort(ml.keys)
    Xr, Xl = Xr[r], Xl[l]
    assert list(mr.keys[r]) == list(ml.keys[l]) and list(yr[r]) == list(yl[l])
    cos = (Xr * Xl).sum(1) / np.linalg.norm(Xr, axis=1) / np.linalg.norm(Xl, axis=1)
    assert len(cos) == want.new_items - sum(want.skipped.values()) and cos.min() >= 0.9999
    assert got.embedded == len(set(mr.content_hashes.tolist()))  # a fresh store: every distinct content is new
    return got.to_dict()


def test_text_sst2_slice_same_vectors_and_reingest_embeds_nothing(store, tmp_path, minilm_available):
    lines = require_data(DATASETS / "text" / "sst2" / "test.tsv").read_text().splitlines()[:301]
    src = tmp_path / "sst2.tsv"
    src.write_text("\n".join(lines + ["\t1"]) + "\n")  # + an empty sentence: skipped by both engines alike
    got = same_as_local(store, src, "minilm", text_column="sentence", label_column="label")
    assert got["embedded"] == 300 and sum(got["skipped"].values()) == 1
    again = store.ingest(src, dataset="d2", encoder="minilm", engine="ray", progress=False,
                         text_column="sentence", label_column="label")
    assert (again.embedded, again.cached, again.new_items) == (0, 300, 301)  # held hashes are not embedded
    assert not list((store.path / "staging" / "ray").rglob("*.parquet")), "merged shards are removed"


def test_images_cifar_slice_same_vectors(store, tmp_path):
    from embedstore.sources.media import tar_subset
    tar = tar_subset(require_data(DATASETS / "image" / "cifar10" / "test.tar.gz"), tmp_path / "c.tar.gz", 3)
    got = same_as_local(store, tar, "efficientnet-lite0")
    assert got["new_items"] == 30


def test_dna_gue_slice_same_vectors(store, tmp_path):
    rows = require_data(DATASETS / "dna" / "gue" / "prom" / "prom_core_all" / "test.csv").read_text().splitlines()
    src = tmp_path / "prom.csv"
    src.write_text("\n".join(rows[:401]) + "\n")
    got = same_as_local(store, src, "kmer:6", text_column="sequence", label_column="label")
    assert got["new_items"] == 400


def test_read_parts_give_the_records_of_the_whole_source(tmp_path):
    folder = tmp_path / "imgs"
    with tarfile.open(require_data(DATASETS / "image" / "cifar10" / "test.tar.gz")) as tf:
        members = [m for m in itertools.islice(tf, 200) if m.isfile()][:23]
        tf.extractall(folder, members=members, filter="data")
    (folder / "notes.md").write_text("not an image")
    parts, notes = read_parts(folder, TableOptions(), modality="image", files_per_part=5)
    assert len(parts) == 5 and "ignored 1 files" in notes[0]
    got = [(r.key, r.label, r.content, r.source) for r in itertools.chain.from_iterable(p() for p in parts)]
    want = [(r.key, r.label, r.content, r.source) for r in open_source(folder, TableOptions(), None, "image")]
    assert got == want and len(got) == 23


def test_held_hashes_filter_matches_python_sets(store):
    store.ingest([f"text {i}" for i in range(500)], dataset="d", encoder=ENC, progress=False)
    rec = store.resolve_encoder(ENC, "d")
    held = ray_engine.held_hashes(store, rec)
    from embedstore.hashing import content_hash
    queries = [content_hash(f"text {i}") for i in range(400, 700)]
    assert list(ray_engine.is_held(held, queries)) == [i < 500 for i in range(400, 700)]
    assert held.dtype == np.dtype("S16") and len(held) == 500 and np.all(held[:-1] < held[1:])


def test_embed_dataset_for_users_of_ray(store):
    ds = ray.data.from_items([{"text": t} for t in ("a warm film", "", "a cold film")])
    rows = embedstore.ray.embed_dataset(ds, ENC).take_all()
    assert [r["reason"] is None for r in rows] == [True, False, True]
    assert len(rows[0]["vector"]) == 64 and rows[1]["vector"] is None
    want = store.encode(["a warm film"], encoder=ENC)[0]
    np.testing.assert_allclose(rows[0]["vector"], want, rtol=1e-6)
    with pytest.raises(InputError, match="no column 'sentence'"):
        embedstore.ray.embed_dataset(ds, ENC, column="sentence")


def test_sigkill_of_the_driver_then_rerun_loses_and_duplicates_nothing(tmp_path):
    total = 20_000
    src = make_rows(tmp_path / "rows.tsv", total)
    store = tmp_path / "store"
    cmd = [sys.executable, "-m", "embedstore.cli.embedstore_cmd", "ingest", str(src), "--dataset", "d", "--encoder",
           ENC, "--label-column", "label", "--quiet", "--engine", "ray", "--batch-size", "100", "--store", str(store)]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    seen = wait_for_items(store, proc, 3_000, timeout=120)
    assert proc.poll() is None, f"ingest finished before it could be killed: {proc.communicate()}"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    seen = committed_items(store)
    assert 0 < seen < total
    time.sleep(1)
    out = subprocess.run(cmd + ["--json"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    left = [re.search(r"([\d,]+) items written, ([\d,]+) vectors new", n) for n in report["notes"]]
    left_items, left_vectors = next(([int(g.replace(",", "")) for g in m.groups()] for m in left if m), (0, 0))
    # the shards the killed run staged are merged first, then this run's pass writes the rest
    assert left_items + report["new_items"] == total - seen and report["rows"] == total
    assert left_vectors + report["embedded"] <= total - seen
    check_consistent(store, total)
    assert not list((store / "staging" / "ray").rglob("*.parquet"))


def test_sigkill_of_an_encoder_actor_is_survived_and_json_stays_clean(tmp_path):
    total = 30_000
    src = make_rows(tmp_path / "rows.tsv", total)
    store = tmp_path / "store"
    cmd = [sys.executable, "-m", "embedstore.cli.embedstore_cmd", "ingest", str(src), "--dataset", "d", "--encoder",
           ENC, "--label-column", "label", "--quiet", "--engine", "ray", "--batch-size", "100", "--json", "--store",
           str(store)]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for_items(store, proc, 1_000, timeout=120)
    actors = subprocess.run(["pgrep", "-f", "MapWorker"], capture_output=True, text=True).stdout.split()
    assert actors and proc.poll() is None, "no encoder actor to kill"
    subprocess.run(["kill", "-9", actors[0]])
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    assert json.loads(out)["new_items"] == total  # Ray restarted the actor and retried its batch; stdout is JSON
    check_consistent(store, total)


def test_bad_rows_and_reader_errors_are_the_local_engines(store, tmp_path):
    rows = [{"id": "a", "text": "fine text", "label": "x"}, {"id": "b", "text": "half \ud800 char", "label": "y"},
            {"id": "c\udc80", "text": "key with half a char", "label": "x"}, {"id": "d", "text": "", "label": "y"}]
    src = tmp_path / "rows.jsonl"
    src.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    got = same_as_local(store, src, ENC, id_column="id", label_column="label")
    assert got["escaped"] == 2 and sum(got["skipped"].values()) == 2
    other = tmp_path / "other.csv"
    other.write_text("sentence\nhello\n")  # no `text` column: the reader's error, raised in a Ray task
    from embedstore.sources import Files
    with pytest.raises(InputError, match="text column 'text' not found"):
        store.ingest(Files([str(src), str(other)]), dataset="e", encoder=ENC, engine="ray", progress=False)


def test_the_merge_records_the_device_and_dtype_of_each_row(store, tmp_path):
    """Workers of a mixed cluster (a GPU node in bf16, a CPU node) stage shards of different provenance: each
    stored vector keeps the device and dtype that made it, not those of the first shard merged."""
    import pyarrow as pa
    from embedstore.encoders import get_encoder
    src = tmp_path / "rows.tsv"
    src.write_text("text\n" + "".join(f"row {i} of a mixed cluster\n" for i in range(40)))
    recs = list(ray_engine._record_rows(iter(open_source(str(src), TableOptions(), None, "text")), True))
    table = pa.Table.from_pylist(recs, ray_engine.SCHEMA)
    embedder = ray_engine._Embedder(ENC, "text")
    cpu, gpu = embedder(table.slice(0, 15)), embedder(table.slice(15))
    for name, value in (("device", "cuda:0"), ("dtype", "bfloat16")):
        gpu = gpu.set_column(gpu.column_names.index(name), name, pa.array([value] * gpu.num_rows, pa.string()))
    folder = tmp_path / "staged"
    folder.mkdir()
    names = [ray_engine._write_shard(t, str(folder)).column("shard")[0].as_py() for t in (cpu, gpu)]
    ray_engine.merge_shards(store, get_encoder(ENC), folder, iter(names), "d", None, False, False, str(src), 40)
    rec = store.resolve_encoder(ENC, "d")
    got = dict((k, (d, t)) for k, d, t in store.sql(f"SELECT i.key, e.device, e.dtype FROM items i JOIN {rec.table} e "
                                                    "USING (content_hash)").rows())
    want = {k: (d, t) for part in (cpu, gpu) for k, d, t in zip(*(part.column(c).to_pylist()
                                                                 for c in ("key", "device", "dtype")))}
    assert got == want and len(got) == 40 and set(got.values()) == {("cpu", "float32"), ("cuda:0", "bfloat16")}


def test_delete_dataset_removes_the_shards_a_stopped_run_left(store, tmp_path):
    from embedstore.store import layout
    src = make_rows(tmp_path / "rows.tsv", 50)
    store.ingest(str(src), dataset="d", encoder=ENC, engine="ray", progress=False)
    staged = layout.ray_staging(layout.ray_staging_root(store.path), store.path, "d")
    leftover = next(staged.iterdir()) / "shard-left.parquet"
    leftover.write_bytes(b"as if a killed run had left it")
    store.delete_dataset("d")
    assert not staged.exists()


def test_refusals_say_what_to_do(store, tmp_path, monkeypatch):
    src = make_rows(tmp_path / "rows.tsv", 10)
    bad = cli("embedstore", "ingest", str(src), "--dataset", "d", "--encoder", ENC, "--workers", "2", store=store.path,
              check=False)
    assert bad.returncode == 2 and "add --engine ray" in bad.stderr
    with pytest.raises(InputError, match="unknown engine 'spark'; available: local, ray"):
        store.ingest(str(src), dataset="d", encoder=ENC, engine="spark")
    with pytest.raises(InputError, match="workers must be"):
        store.ingest(str(src), dataset="d", encoder=ENC, engine="ray", workers=0)
    with pytest.raises(InputError, match="need 2 GPUs; the Ray cluster has 0"):  # not a pending actor forever
        store.ingest(str(src), dataset="d", encoder=ENC, engine="ray", workers=2, gpus_per_worker=1)
    monkeypatch.setitem(sys.modules, "ray", None)  # as if Ray were not installed
    with pytest.raises(InputError, match=r"pip install 'embedstore\[ray\]'"):
        store.ingest(str(src), dataset="d", encoder=ENC, engine="ray")


def test_the_cli_engine_ray_round_trip(tmp_path):
    src = make_rows(tmp_path / "rows.tsv", 500)
    out = cli("embedstore", "ingest", str(src), "--dataset", "d", "--encoder", ENC, "--label-column", "label",
              "--engine", "ray", "--workers", "1", "--batch-size", "128", "--json", "--quiet", store=tmp_path / "s")
    report = json.loads(out.stdout)
    texts = {line.split("\t")[0] for line in src.read_text().splitlines()[1:]}
    assert report["new_items"] == 500 and report["embedded"] == len(texts)
    assert any("engine ray" in n for n in report["notes"])
    check_consistent(tmp_path / "s", 500)
