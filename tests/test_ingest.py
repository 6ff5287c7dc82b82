"""Ingest: sources, keys, updates by key, the cache, skips and clear errors."""

from __future__ import annotations

import gzip
import json

import numpy as np
import pytest

from embedstore.errors import InputError
from tests.conftest import write_tsv

ENC = "hashing:64"


def items(store, dataset):
    return store.sql(f"SELECT key, text, label, status, reason FROM item_status WHERE dataset='{dataset}' ORDER BY key"
                     ).to_dicts()


def test_tsv_keys_labels_and_report(store, tmp_path):
    f = write_tsv(tmp_path / "a.tsv", [("good film", 1), ("bad film", 0), ("good film", 1)])
    r = store.ingest(f, dataset="d", encoder=ENC, label_column="label", progress=False)
    # duplicate rows stay separate items; their shared content is embedded once (the repeat counts as cached)
    assert (r.rows, r.new_items, r.embedded, r.cached) == (3, 3, 2, 1)
    rows = items(store, "d")
    assert [x["key"] for x in rows] == ["a.tsv:1", "a.tsv:2", "a.tsv:3"]
    assert [x["label"] for x in rows] == ["1", "0", "1"]


def test_reingest_updates_by_key_and_embeds_only_changes(store, tmp_path):
    f = write_tsv(tmp_path / "a.tsv", [("one", "x"), ("two", "y"), ("three", "z")])
    store.ingest(f, dataset="d", encoder=ENC, label_column="label", progress=False)
    again = store.ingest(f, dataset="d", encoder=ENC, label_column="label", progress=False)
    assert (again.embedded, again.new_items, again.updated_items, again.unchanged_items) == (0, 0, 0, 3)
    write_tsv(f, [("one", "x"), ("TWO changed", "y"), ("three", "relabelled")])
    r = store.ingest(f, dataset="d", encoder=ENC, label_column="label", progress=False)
    assert (r.embedded, r.updated_items, r.unchanged_items) == (1, 2, 1)  # a new label is an update too
    rows = {x["key"]: x for x in items(store, "d")}
    assert rows["a.tsv:2"]["text"] == "TWO changed" and rows["a.tsv:3"]["label"] == "relabelled"
    assert store.index("d", store.resolve_encoder(ENC, "d")).index.ntotal == 3


def test_same_content_in_two_datasets_is_embedded_once(store, tmp_path):
    f = write_tsv(tmp_path / "a.tsv", [("shared text", 1)])
    assert store.ingest(f, dataset="d1", encoder=ENC, progress=False).embedded == 1
    r = store.ingest(f, dataset="d2", encoder=ENC, progress=False)
    assert (r.embedded, r.cached, r.new_items) == (0, 1, 1)


def test_id_column_keys(store, tmp_path):
    f = write_tsv(tmp_path / "a.tsv", [("u1", "hello"), ("u2", "world")], header=("id", "text"))
    store.ingest(f, dataset="d", encoder=ENC, id_column="id", progress=False)
    assert [x["key"] for x in items(store, "d")] == ["u1", "u2"]


def test_empty_and_whitespace_text_are_skipped_with_reason(store, tmp_path):
    f = write_tsv(tmp_path / "a.tsv", [("fine", 1), ("   ", 0), ("", 1)])
    r = store.ingest(f, dataset="d", encoder=ENC, progress=False)
    assert r.skipped == {"empty or whitespace-only text": 2}
    rows = items(store, "d")
    assert [x["status"] for x in rows] == ["ok", "skipped", "skipped"]
    X, _ = store.features("d", encoder=ENC, label=None)
    assert X.shape == (1, 64) and np.isfinite(X).all()


def test_missing_column_names_the_columns_found(store, tmp_path):
    f = write_tsv(tmp_path / "a.tsv", [("hi", 1)], header=("sentence", "label"))
    with pytest.raises(InputError, match=r"text column 'text' not found; columns found: \['sentence', 'label'\]"):
        store.ingest(f, dataset="d", encoder=ENC, progress=False)


def test_undecodable_bytes_name_file_and_line(store, tmp_path):
    f = tmp_path / "bad.tsv"
    f.write_bytes(b"text\tlabel\nok\t1\ncaf\xe9\t0\n")
    with pytest.raises(InputError, match=r"bad.tsv:3: cannot decode .* pass --encoding"):
        store.ingest(f, dataset="d", encoder=ENC, progress=False)
    assert store.sql("SELECT count(*) n FROM items").to_dicts()[0]["n"] == 0  # nothing half-written
    assert store.dataset_names() == []
    r = store.ingest(f, dataset="d", encoder=ENC, encoding="latin-1", progress=False)
    assert r.new_items == 2 and items(store, "d")[1]["text"] == "café"


def test_bom_ragged_rows_and_no_header(store, tmp_path):
    f = tmp_path / "a.csv"
    f.write_bytes("\ufefftext,label\nhello,1\nragged,row,extra\n".encode())
    r = store.ingest(f, dataset="d", encoder=ENC, label_column="label", progress=False)
    assert r.new_items == 2 and sum(r.skipped.values()) == 1
    assert "ragged row" in next(iter(r.skipped))
    g = tmp_path / "b.tsv"
    g.write_text("1\thello there\n2\tgeneral kenobi\n")
    r = store.ingest(g, dataset="e", encoder=ENC, header=False, columns=["id", "text"], id_column="id",
                     progress=False)
    assert [x["key"] for x in items(store, "e")] == ["1", "2"]


def test_csv_quoted_newlines(store, tmp_path):
    f = tmp_path / "q.csv"
    f.write_text('text,label\n"line one\nline two",1\n"a, b",0\n')
    store.ingest(f, dataset="d", encoder=ENC, label_column="label", progress=False)
    assert [x["text"] for x in items(store, "d")] == ["line one\nline two", "a, b"]


def test_jsonl_gz_parquet_dir_frames_and_iterables(store, tmp_path):
    import pandas as pd
    import polars as pl
    import pyarrow as pa
    import pyarrow.parquet as pq
    rows = [{"text": "alpha beta", "label": "a", "extra": 1}, {"text": "gamma delta", "label": "b", "extra": 2}]
    with gzip.open(tmp_path / "r.jsonl.gz", "wt") as fh:
        fh.write("\n".join(json.dumps(r) for r in rows) + "\n")
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "r.parquet")
    (tmp_path / "docs" / "pos").mkdir(parents=True)
    (tmp_path / "docs" / "pos" / "one.txt").write_text("a positive document")
    (tmp_path / "docs" / "top.txt").write_text("a top-level document")
    sources = {"jsonl": tmp_path / "r.jsonl.gz", "parquet": tmp_path / "r.parquet", "pandas": pd.DataFrame(rows),
               "polars": pl.DataFrame(rows), "dicts": rows}
    for name, src in sources.items():
        r = store.ingest(src, dataset=name, encoder=ENC, label_column="label", progress=False)
        assert r.new_items == 2, name
        got = items(store, name)
        assert [x["label"] for x in got] == ["a", "b"], name
    meta = store.sql("SELECT meta->>'$.extra' AS extra FROM items WHERE dataset='parquet' ORDER BY key").to_dicts()
    assert [m["extra"] for m in meta] == ["1", "2"]
    r = store.ingest(tmp_path / "docs", dataset="docs", encoder=ENC, progress=False)
    got = {x["key"]: x["label"] for x in items(store, "docs")}
    assert got == {"pos/one.txt": "pos", "top.txt": None}
    r = store.ingest(["first text", "second text", "first text"], dataset="strings", encoder=ENC, progress=False)
    keys = [x["key"] for x in items(store, "strings")]  # Python rows are keyed by what they hold; repeats get ~2
    assert len(set(keys)) == 3 and all(k.startswith("python:") for k in keys) and sum("~2" in k for k in keys) == 1
    again = store.ingest(["second text", "first text", "third text"], dataset="strings", encoder=ENC, progress=False)
    assert (again.new_items, again.unchanged_items) == (1, 2)  # appending: the known rows stay, the new one joins


def test_bad_dataset_name_and_unknown_source(store, tmp_path):
    with pytest.raises(InputError, match="dataset name"):
        store.ingest(["x"], dataset="../evil", encoder=ENC, progress=False)
    with pytest.raises(InputError, match="no such file"):
        store.ingest(tmp_path / "nope.tsv", dataset="d", encoder=ENC, progress=False)
    with pytest.raises(InputError, match="cannot tell the format"):
        (tmp_path / "x.weird").write_text("a")
        store.ingest(tmp_path / "x.weird", dataset="d", encoder=ENC, progress=False)


def test_features_concatenation_and_label_from_metadata(store, tmp_path):
    rows = [{"text": f"text number {i}", "label": i % 2, "topic": "t" + str(i % 3)} for i in range(30)]
    store.ingest(rows, dataset="d", encoder="hashing:16", label_column="label", progress=False)
    store.ingest(rows, dataset="d", encoder="hashing:32", label_column="label", progress=False)
    X, y = store.features("d", encoder="hashing:16+hashing:32", label="label")
    a, _ = store.features("d", encoder="hashing:16")
    b, _ = store.features("d", encoder="hashing:32")
    assert X.shape == (30, 48) and np.array_equal(X, np.hstack([a, b]))
    _, topic = store.features("d", encoder="hashing:16", label="topic")
    assert sorted(set(topic)) == ["t0", "t1", "t2"]
    with pytest.raises(InputError, match="2 encoders"):
        store.features("d", encoder="", label="label")


def test_wide_vectors_fit_in_the_default_duckdb_memory_limit(store):
    """4096-d vectors once failed at the 256MB limit (DuckDB's ON CONFLICT path)."""
    rows = [f"text number {i} alpha beta" for i in range(1500)]
    r = store.ingest(rows, dataset="w", encoder="hashing:4096", progress=False)
    assert r.embedded == 1500
    r = store.ingest(rows + ["one more"], dataset="w", encoder="hashing:4096", progress=False)
    assert (r.embedded, r.cached) == (1, 1500)
