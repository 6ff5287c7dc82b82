"""One test per failure the independent attack found (issue 11), each failing on the code before its fix."""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

import embedstore
import heads
from embedstore.errors import InputError, StoreCorruptError
from tests.conftest import REPO, cli, write_tsv

ENC = "hashing:32"


def statuses(store, dataset: str) -> dict:
    return {r["status"]: r["n"] for r in store.sql(
        f"SELECT status, count(*) AS n FROM item_status WHERE dataset = '{dataset}' GROUP BY status").to_dicts()}


# 1 ----------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("encoder", [ENC, "kmer:6"])
def test_a_lone_surrogate_is_a_recorded_skip_and_never_blocks_the_ingest(store, tmp_path, encoder):
    body = "ACGTACGTAC" if encoder.startswith("kmer") else "row"
    rows = [{"text": f"{body}{'ACGT' * (i % 7)} {i}" if not encoder.startswith("kmer") else body + "ACGT" * (i % 7),
             "id": f"r{i}"} for i in range(5000)]
    rows[3000]["text"] = body + "\ud800"
    f = tmp_path / "a.jsonl"
    f.write_text("\n".join(json.dumps(r) for r in rows))  # json escapes the surrogate as \ud800
    for _ in range(2):
        store.ingest(f, dataset="d", encoder=encoder, id_column="id", progress=False)
        assert sum(statuses(store, "d").values()) == 5000
    bad = store.sql("SELECT key, status, reason, text FROM item_status WHERE key = 'r3000'").to_dicts()[0]
    assert bad["status"] == "skipped" and "unpaired surrogate" in bad["reason"] and "\\ud800" in bad["text"]


def test_surrogates_in_keys_labels_and_metadata_are_stored_escaped(store):
    r = store.ingest([{"text": "fine text", "id": "k\udfff", "label": "l\ud800", "note": "m\udc00"}], dataset="d",
                     encoder=ENC, id_column="id", label_column="label", progress=False)
    row = store.sql("SELECT key, label, meta, status FROM item_status").to_dicts()[0]
    assert r.escaped == 1 and row["status"] == "ok" and row["key"] == "k\\udfff" and row["label"] == "l\\ud800"
    assert json.loads(row["meta"])["note"] == "m\\udc00"


# 2 ----------------------------------------------------------------------------------------------------------------
def test_a_huge_k_is_bounded_by_the_data(store):
    store.ingest([f"item text {i}" for i in range(200)], dataset="d", encoder=ENC, progress=False)
    for k in (10 ** 9, 2 ** 31 - 1):
        hits = store.search("d", "item text 3", k=k)
        assert len(hits) == 200 and "returned all" in hits.note
        assert len(store.search("d", "item text 3", k=k, where="key LIKE 'python:a%'")) < 200
    p = cli("embedstore", "search", "--dataset", "d", "--text", "x", "-k", "1e11", store=store.path, check=False)
    assert p.returncode == 2 and "invalid int value" in p.stderr and "Traceback" not in p.stderr


@pytest.mark.parametrize("spec", ["timm:resnet18?batch_size=1000000000", "tiara?max_windows=100000000",
                                  "hashing:32?ngram=1000000"])
def test_user_controlled_sizes_are_bounded(spec):
    from embedstore.encoders import get_encoder
    with pytest.raises(InputError, match="takes <int"):
        get_encoder(spec)


def test_chunk_size_and_curve_repeats_are_bounded(store, tmp_path):
    store.ingest([{"text": f"t{i} word", "label": str(i % 2)} for i in range(20)], dataset="d", encoder=ENC,
                 label_column="label", progress=False)
    with pytest.raises(InputError, match="chunk_size"):
        store.ingest(["a text"], dataset="d", encoder=ENC, chunk_size=10 ** 12, progress=False)
    with pytest.raises(InputError, match="repeats"):
        heads.curve(store, "d", encoder=ENC, repeats=10 ** 9)


# 3 ----------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def sound_store(tmp_path_factory):
    path = tmp_path_factory.mktemp("sound") / "store"
    with embedstore.open(path) as s:
        s.ingest([{"text": f"text number {i} " * 8, "label": str(i % 2)} for i in range(20_000)], dataset="d",
                 encoder="hashing:64", label_column="label", progress=False)
        heads.fit(s, "d", name="h")
    return path


COMMANDS = [("embedstore", "info"), ("embedstore", "search", "--dataset", "d", "--text", "text number 1"),
            ("embedstore", "gc"), ("embedstore", "ingest", "{src}", "--dataset", "d", "--encoder", "hashing:64"),
            ("heads", "fit", "--dataset", "d", "--name", "h2"), ("heads", "eval", "--head", "h", "--dataset", "d"),
            ("heads", "predict", "--head", "h", "{src}")]


def _damaged_copy(sound_store, tmp_path, how: str):
    path = tmp_path / how
    shutil.copytree(sound_store, path)
    db = path / "embedstore.duckdb"
    if how == "truncated":
        os.truncate(db, db.stat().st_size // 2)
        return path
    data = db.read_bytes()
    for frac in range(1, 60):  # a byte inside a block some table uses (DuckDB checksums every block it reads)
        flipped = bytearray(data)
        flipped[len(data) * frac // 61] ^= 0xFF
        db.write_bytes(bytes(flipped))
        try:
            if embedstore.open(path, read_only=True).check()["damaged"]:
                return path
        except StoreCorruptError:  # the flip hit what every open reads
            return path
    pytest.fail("no flipped byte landed in a used block")


@pytest.mark.parametrize("how", ["truncated", "flipped"])
def test_a_damaged_database_gives_one_clear_line_and_no_false_success(sound_store, tmp_path, how):
    path = _damaged_copy(sound_store, tmp_path, how)
    src = write_tsv(tmp_path / "new.tsv", [("text number 1 " * 8, "1")])
    if how == "truncated":
        with pytest.raises(StoreCorruptError, match="damaged"):  # Python users get the same clear error
            with embedstore.open(path, read_only=True) as s:
                s.search("d", "text number 1", k=3)
        for cmd in COMMANDS:
            p = cli(*[c.format(src=src) for c in cmd], store=path, check=False)
            assert p.returncode == 2 and "Traceback" not in p.stderr, (cmd, p.stderr)
            assert "damaged" in p.stderr and "embedstore check" in p.stderr, (cmd, p.stderr)
    p = cli("embedstore", "check", "--json", store=path, check=False)
    assert p.returncode == 2 and json.loads(p.stdout)["damaged"] and "Traceback" not in p.stderr
    gc = cli("embedstore", "gc", store=path, check=False)
    assert gc.returncode == 2 and "damaged" in gc.stderr  # gc reads everything first: it never reports success


def test_check_passes_on_a_sound_store(sound_store):
    p = cli("embedstore", "check", store=sound_store)
    assert "store ok" in p.stderr


# 4 ----------------------------------------------------------------------------------------------------------------
@pytest.fixture
def two_datasets(store):
    store.ingest([{"text": f"apple pie {i}", "label": "a"} for i in range(20)], dataset="fruit", encoder=ENC,
                 label_column="label", progress=False)
    store.ingest([f"secret words {i}" for i in range(20)], dataset="mixed", encoder=ENC, progress=False)
    return store


@pytest.mark.parametrize("where, says", [
    ("true) OR (dataset = 'mixed'", "cannot parse filter"),
    ("label = 'a' LIMIT 1", "single SQL expression"),
    ("key IN (SELECT key FROM items WHERE dataset = 'mixed')", "subquery"),
    ("(SELECT count(*) FROM read_text('/etc/passwd')) > 0", "subquery"),
    ("labl = 'a'", r"failed: .*labl.*item columns item_id, dataset, key"),
])
def test_where_is_one_expression_over_the_datasets_rows(two_datasets, where, says):
    with pytest.raises(InputError, match=says):
        two_datasets.search("fruit", "apple pie", where=where)


def test_where_cannot_reach_another_dataset(two_datasets):
    hits = two_datasets.search("fruit", "secret words", k=100, where="true OR dataset = 'mixed'")
    assert hits and {h.text.split()[0] for h in hits} == {"apple"}


# 5 ----------------------------------------------------------------------------------------------------------------
def test_same_file_name_from_another_folder_is_refused_unless_replace(store, tmp_path):
    for v in ("v1", "v3"):
        (tmp_path / v).mkdir()
        write_tsv(tmp_path / v / "data.tsv", [(f"{v} row {i} words", i % 2) for i in range(3000)])
    store.ingest(tmp_path / "v1" / "data.tsv", dataset="d", encoder=ENC, label_column="label", progress=False)
    with pytest.raises(InputError, match=r"already holds .* from another source, .*v1/data.tsv.*--replace"):
        store.ingest(tmp_path / "v3" / "data.tsv", dataset="d", encoder=ENC, label_column="label", progress=False)
    assert store.sql("SELECT count(*) AS n FROM items WHERE text LIKE 'v1%'").to_dicts()[0]["n"] == 3000
    r = store.ingest(tmp_path / "v3" / "data.tsv", dataset="d", encoder=ENC, label_column="label", progress=False,
                     replace=True)
    assert r.updated_items == 3000
    again = store.ingest(tmp_path / "v3" / "data.tsv", dataset="d", encoder=ENC, label_column="label",
                         progress=False)
    assert again.unchanged_items == 3000  # the same file again is no replacement


# 6 ----------------------------------------------------------------------------------------------------------------
def test_duplicate_ids_far_apart_keep_the_first_row_and_reruns_change_nothing(store):
    rows = [{"id": f"k{i % 3000}", "text": f"text {i} words"} for i in range(6000)]
    first = store.ingest(rows, dataset="d", encoder=ENC, id_column="id", chunk_size=500, progress=False)
    ids = store.sql("SELECT key, item_id, text FROM items ORDER BY key").to_dicts()
    assert (first.new_items, first.updated_items, first.duplicate_keys) == (3000, 0, 3000)
    assert all(int(r["text"].split()[1]) < 3000 for r in ids)  # the first row of each key
    again = store.ingest(rows, dataset="d", encoder=ENC, id_column="id", chunk_size=500, progress=False)
    assert (again.new_items, again.updated_items, again.unchanged_items) == (0, 0, 3000)
    assert store.sql("SELECT key, item_id, text FROM items ORDER BY key").to_dicts() == ids


# 7 ----------------------------------------------------------------------------------------------------------------
def test_readers_get_in_while_a_head_fits(store, monkeypatch):
    store.ingest([{"text": f"word{i % 7} other{i}", "label": str(i % 2)} for i in range(300)], dataset="d",
                 encoder=ENC, label_column="label", progress=False)
    import heads.estimators as est
    seen = []
    real_fit = est.LogisticHead.fit

    def slow_fit(self, X, y):  # a reader in another process, while the estimator runs
        p = subprocess.run([sys.executable, "-m", "embedstore.cli.embedstore_cmd", "info", "--json", "--store",
                            str(store.path)], capture_output=True, text=True, timeout=60, cwd=REPO,
                           env={**os.environ, "EMBEDSTORE_LOCK_WAIT": "2"})
        seen.append(p.returncode)
        return real_fit(self, X, y)
    monkeypatch.setattr(est.LogisticHead, "fit", slow_fit)
    heads.fit(store, "d", name="h", test_size=0)
    assert seen == [0]


# 8 ----------------------------------------------------------------------------------------------------------------
def test_wide_vectors_are_read_in_bounded_batches(tmp_path):
    env = {**os.environ, "EMBEDSTORE_DUCKDB_MEMORY": "128MB"}
    src = write_tsv(tmp_path / "w.tsv", [(f"wide row {i} with words w{i % 97}", i % 2) for i in range(12_000)])
    store = tmp_path / "s"
    for _ in range(2):  # the first ingest, and the re-ingest that reads every vector back from the cache
        cli("embedstore", "ingest", str(src), "--dataset", "d", "--encoder", "hashing:4096", "--label-column",
            "label", "--quiet", store=store, env=env)  # 12,000 x 4,096 floats = 188 MB of vectors, over the limit
    fit = cli("heads", "fit", "--dataset", "d", "--test-size", "0", store=store, env=env, check=False)
    assert fit.returncode == 0, fit.stderr
    mp = cli("embedstore", "map", "--dataset", "d", "--out", str(tmp_path / "m.png"), store=store, env=env,
             check=False)
    assert mp.returncode == 0, mp.stderr


def test_the_memory_advice_names_wide_vectors():
    from embedstore.errors import MemoryLimitError, resource_errors_as_clear

    class OutOfMemoryException(Exception):
        pass
    with pytest.raises(MemoryLimitError, match="wide vectors"):
        with resource_errors_as_clear():
            raise OutOfMemoryException("Out of Memory Error: could not allocate block")


# 9 ----------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("query", ["SELECT * FROM read_text('/etc/passwd')", "SELECT * FROM glob('/root/*')",
                                   "SELECT * FROM read_blob('/etc/hostname')"])
def test_sql_reads_no_local_file_unless_asked(store, query):
    store.ingest(["some text"], dataset="d", encoder=ENC, progress=False)
    path = store.path
    store.close()
    p = cli("embedstore", "sql", query, store=path, check=False)
    assert p.returncode == 2 and "--allow-files" in p.stderr and "root:" not in p.stdout
    ok = cli("embedstore", "sql", "SELECT count(*) AS n FROM glob('/etc/host*')", "--allow-files", store=path)
    assert "n" in ok.stdout


# 10 ---------------------------------------------------------------------------------------------------------------
def test_binary_columns_duplicate_headers_empty_ids_and_zero_vectors(store, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq
    pq.write_table(pa.table({"text": pa.array([b"plain words here", b"\xff\xfe binary"], pa.binary()),
                             "extra": pa.array([b"\x00\x01", b"ok"], pa.binary())}), tmp_path / "b.parquet")
    r = store.ingest(tmp_path / "b.parquet", dataset="b", encoder=ENC, progress=False)
    rows = {x["key"]: x for x in store.sql("SELECT key, text, status, reason, meta FROM item_status "
                                           "WHERE dataset='b'").to_dicts()}
    assert rows["b.parquet:1"]["text"] == "plain words here" and rows["b.parquet:1"]["status"] == "ok"
    assert rows["b.parquet:2"]["status"] == "skipped" and "not UTF-8 text" in rows["b.parquet:2"]["reason"]
    assert json.loads(rows["b.parquet:1"]["meta"])["extra"] == "\x00\x01"
    assert r.skipped
    (tmp_path / "dup.csv").write_text("text,text\na,b\n")
    with pytest.raises(InputError, match=r"repeats column name\(s\) \['text'\]"):
        store.ingest(tmp_path / "dup.csv", dataset="dup", encoder=ENC, progress=False)
    write_tsv(tmp_path / "ids.tsv", [("first words", "a.tsv:2"), ("second words", ""), ("third words", "x")],
              header=("text", "id"))
    store.ingest(tmp_path / "ids.tsv", dataset="ids", encoder=ENC, id_column="id", progress=False)
    keys = {x["key"]: (x["status"], x["text"]) for x in
            store.sql("SELECT key, status, text FROM item_status WHERE dataset='ids'").to_dicts()}
    assert keys["a.tsv:2"] == ("ok", "first words") and keys["x"] == ("ok", "third words")
    assert keys["ids.tsv:2#no-id"][0] == "skipped"  # an empty id never falls back onto another row's key
    z = store.ingest(["\x00\x00\x00", "!!! ???", "real words"], dataset="z", encoder=ENC, progress=False)
    assert sum(z.skipped.values()) == 2 and any("all-zero vector" in k for k in z.skipped)
    with pytest.raises(InputError, match="all-zero vector"):
        store.search("z", "?!")


# 11 ---------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("args, env, says", [
    (["--sep", "::"], {}, "--sep must be one character"),
    (["--encoding", "bogus"], {}, "unknown --encoding 'bogus'"),
    ([], {"EMBEDSTORE_LOCK_WAIT": "abc"}, "EMBEDSTORE_LOCK_WAIT='abc': expected a number"),
    ([], {"EMBEDSTORE_EXACT_INDEX_MAX": "abc"}, "EMBEDSTORE_EXACT_INDEX_MAX='abc': expected a whole number"),
    ([], {"EMBEDSTORE_CHECKPOINT_ITEMS": "-5"}, "EMBEDSTORE_CHECKPOINT_ITEMS='-5'"),
])
def test_bad_options_and_settings_are_one_line(tmp_path, args, env, says):
    src = write_tsv(tmp_path / "a.tsv", [("some words", 1)])
    p = cli("embedstore", "ingest", str(src), "--dataset", "d", "--encoder", ENC, *args, store=tmp_path / "s",
            env=env, check=False)
    assert p.returncode == 2 and says in p.stderr and "Traceback" not in p.stderr, p.stderr


def test_an_indexes_file_and_an_object_npy_are_clear_errors(store, tmp_path):
    store.ingest(["some words", "other words"], dataset="d", encoder=ENC, progress=False)
    path = store.path
    store.close()
    shutil.rmtree(path / "indexes")
    (path / "indexes").write_text("not a folder")
    src = write_tsv(tmp_path / "more.tsv", [("more words here", 1)])
    p = cli("embedstore", "ingest", str(src), "--dataset", "d", "--encoder", ENC, store=path, check=False)
    assert p.returncode == 2 and "indexes should be a folder" in p.stderr and "Traceback" not in p.stderr, p.stderr
    (path / "indexes").unlink()
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    p = cli("embedstore", "search", "--dataset", "d", "--vector", str(tmp_path / "obj.npy"), store=path, check=False)
    assert p.returncode == 2 and "not a numeric .npy" in p.stderr and "Traceback" not in p.stderr


# 12 ---------------------------------------------------------------------------------------------------------------
def test_dataframes_append_and_the_same_rows_again_change_nothing(store):
    import pandas as pd
    store.ingest(pd.DataFrame({"text": ["first words", "second words"]}), dataset="n", encoder=ENC, progress=False)
    r = store.ingest(pd.DataFrame({"text": ["third words", "fourth words"]}), dataset="n", encoder=ENC,
                     progress=False)
    assert (r.new_items, r.updated_items) == (2, 0) and sum(statuses(store, "n").values()) == 4
    again = store.ingest(pd.DataFrame({"text": ["third words", "fourth words"]}), dataset="n", encoder=ENC,
                         progress=False)
    assert (again.new_items, again.unchanged_items) == (0, 2)


# 13 ---------------------------------------------------------------------------------------------------------------
def test_classes_of_one_item_and_exporting_twice(store, tmp_path):
    rows = [{"text": f"common words {i}", "label": "big" if i % 2 else "other"} for i in range(40)]
    rows.append({"text": "a lonely sentence", "label": "single"})
    store.ingest(rows, dataset="d", encoder=ENC, label_column="label", progress=False)
    _, scores = heads.fit(store, "d", name="h")
    assert "not stratified" in scores["protocol"] and "single" in scores["protocol"]
    heads.export(store, "h", tmp_path / "out")
    with pytest.raises(InputError, match="exists and is not empty"):
        heads.export(store, "h", tmp_path / "out")


# 15 ---------------------------------------------------------------------------------------------------------------
def test_a_python_store_holds_the_write_lock_only_while_it_writes(tmp_path):
    src = write_tsv(tmp_path / "a.tsv", [(f"some words w{i}x", i % 2) for i in range(50)])
    notebook = embedstore.open(tmp_path / "s")
    notebook.ingest(src, dataset="d", encoder=ENC, label_column="label", progress=False)
    env = {"EMBEDSTORE_LOCK_WAIT": "3"}
    hits = cli("embedstore", "search", "--dataset", "d", "--text", "some words w3x", "--json", store=notebook.path,
               env=env)
    assert json.loads(hits.stdout)[0]["text"] == "some words w3x"
    cli("embedstore", "ingest", str(src), "--dataset", "e", "--encoder", ENC, "--quiet", store=notebook.path,
        env=env)
    assert notebook.search("e", "some words w3x", k=1)[0].text == "some words w3x"  # it sees the other's write
    with notebook.writing():  # held across several writes on purpose: others wait, then say who holds it
        p = cli("embedstore", "ingest", str(src), "--dataset", "f", "--encoder", ENC, store=notebook.path,
                check=False)
        assert p.returncode == 2 and f"locked by PID {os.getpid()}" in p.stderr
    notebook.close()


# 16 ---------------------------------------------------------------------------------------------------------------
def test_duplicate_texts_in_a_chunk_are_counted_and_indexed_right(store, caplog):
    texts = [f"text number {i % 10}" for i in range(25)]
    store.ingest(texts, dataset="d", encoder="hashing:16", progress=False)
    with caplog.at_level(logging.WARNING, logger="embedstore"):
        r = store.ingest(texts, dataset="d", encoder=ENC, progress=False)
    assert r.embedded + r.cached == 25 and r.embedded == 10
    assert not [m for m in caplog.messages if "rebuilding" in m]
    assert store.index("d", store.resolve_encoder(ENC, "d")).index.ntotal == 25


# 17 ---------------------------------------------------------------------------------------------------------------
def test_a_failed_ingest_leaves_no_empty_encoder(store, tmp_path):
    src = write_tsv(tmp_path / "a.tsv", [("words", 1)])
    with pytest.raises(InputError, match="text column 'body' not found"):
        store.ingest(src, dataset="d", encoder=ENC, text_column="body", progress=False)
    assert store.encoder_records() == [] and not (store.path / "indexes" / "d").exists()


def test_repeated_fasta_ids_are_a_note_not_a_python_warning(tmp_path):
    fa = tmp_path / "s.fa"
    fa.write_text(">x\nACGTACGT\n>x\nACGTTTGT\n")
    p = cli("embedstore", "ingest", str(fa), "--dataset", "g", "--encoder", "kmer:3", "--quiet",
            store=tmp_path / "s")
    assert "UserWarning" not in p.stderr and "x -> x~2" in p.stdout


def test_map_draws_every_class_in_its_own_colour_and_umap_is_real_or_refused(store, tmp_path):
    from heads.plots import class_colours
    colours = class_colours(45)
    assert len(set(colours)) == 45
    store.ingest([{"text": f"word{i} text{i % 30}", "label": f"c{i % 30}"} for i in range(300)], dataset="d",
                 encoder=ENC, label_column="label", progress=False)
    path = store.path
    store.close()
    import importlib.util
    has_umap = importlib.util.find_spec("umap") is not None
    p = cli("embedstore", "map", "--dataset", "d", "--method", "umap", "--out", str(tmp_path / "m.png"), store=path,
            check=False)
    assert (p.returncode == 0) == has_umap and ("umap-learn" in p.stderr or has_umap)
