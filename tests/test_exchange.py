"""Export to Parquet shards and import back (issue 14): bit-identical vectors, fingerprints and items kept,
idempotent imports, damaged or foreign folders refused before anything is written."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest

import embedstore
from conftest import cli
from embedstore.errors import InputError, NotFoundError
from embedstore.features import features_for


def rows(n: int) -> list[dict]:
    return [{"id": f"r{i}", "text": f"sentence {i} about {'cats' if i % 3 else 'dogs'} and {i * 7 % 11} more",
             "label": "c" if i % 3 else "d", "lang": "en" if i % 2 else "fr"} for i in range(n)] + \
        [{"id": "empty", "text": "", "label": "c", "lang": "en"}]  # skipped: no vector, not exported


@pytest.fixture
def source(store, monkeypatch):
    import embedstore.exchange as ex
    monkeypatch.setattr(ex, "SHARD_BYTES", 40_000)  # several shards from a small dataset
    store.ingest(rows(1200), dataset="t", encoder="hashing:64", label_column="label", id_column="id",
                 progress=False)
    return store


def matrix(db, dataset: str) -> tuple[list, np.ndarray, list]:
    fs = features_for(db, dataset, "hashing:64", "label")
    order = np.argsort(fs.keys)
    return [fs.keys[i] for i in order], fs.X[order], [fs.content_hashes[i] for i in order]


def test_round_trip_keeps_vectors_bit_identical_and_the_fingerprint(source, tmp_path):
    table = source.resolve_encoder("hashing:64", "t").table
    with source.writing(), source.transaction() as con:  # vectors made elsewhere: their provenance travels with them
        con.execute(f"UPDATE {table} SET device = 'cuda:0', dtype = 'bfloat16' WHERE hash_hex(content_hash) < '8'")
    manifest = source.export_parquet("t", tmp_path / "ex")
    assert manifest["rows"] == 1200 and len(manifest["files"]) > 1  # the skipped row has no vector
    assert sum(pq.ParquetFile(tmp_path / "ex" / f["name"]).metadata.num_rows for f in manifest["files"]) == 1200
    with embedstore.open(tmp_path / "other") as other:
        report = other.import_parquet(tmp_path / "ex", progress=False)
        assert (report.new_items, report.embedded, report.skipped) == (1200, 1200, {})
        k1, x1, h1 = matrix(source, "t")
        k2, x2, h2 = matrix(other, "t")
        assert k1 == k2 and h1 == h2 and np.array_equal(x1.view(np.uint32), x2.view(np.uint32))
        enc = "SELECT fingerprint, spec, dim, config, unit_norm FROM encoders"
        assert other.sql(enc).rows() == source.sql(enc).rows()
        made = f"SELECT hash_hex(content_hash), device, dtype FROM {table} ORDER BY 1"
        assert other.sql(made).rows() == source.sql(made).rows()
        assert {r[1:] for r in other.sql(made).rows()} == {("cpu", "float32"), ("cuda:0", "bfloat16")}
        items = "SELECT key, label, text, meta FROM item_status WHERE status = 'ok' ORDER BY key"
        assert other.sql(items).rows() == source.sql(items).rows()
        q = "sentence 7 about cats and 5 more"
        assert [(h.key, h.score) for h in other.search("t", q, k=5)] == \
            [(h.key, h.score) for h in source.search("t", q, k=5)]
        again = other.import_parquet(tmp_path / "ex", progress=False)  # idempotent
        assert (again.new_items, again.updated_items, again.embedded, again.cached) == (0, 0, 0, 1200)
        # the imported vectors serve as the cache of the real encoder: ingesting the same rows embeds nothing
        real = other.ingest(rows(1200), dataset="t", encoder="hashing:64", label_column="label", id_column="id",
                            progress=False, replace=True)
        assert real.embedded == 0 and real.new_items == 1  # only the empty row, skipped again


def test_the_shards_are_plain_parquet_any_engine_reads(source, tmp_path):
    import duckdb
    source.export_parquet("t", tmp_path / "ex")
    con = duckdb.connect()
    n, dims, labels = con.execute(f"SELECT count(*), min(len(vector)), count(DISTINCT label) FROM "
                                  f"read_parquet('{tmp_path / 'ex'}/*.parquet')").fetchone()
    assert (n, dims, labels) == (1200, 64, 2)


def test_import_refuses_damaged_foreign_or_newer_exports_before_writing(source, tmp_path):
    source.export_parquet("t", tmp_path / "ex")
    manifest = json.loads((tmp_path / "ex" / "embedstore-export.json").read_text())
    part = tmp_path / "ex" / manifest["files"][-1]["name"]
    with embedstore.open(tmp_path / "other") as other:
        data = part.read_bytes()
        part.write_bytes(data[:-100])
        with pytest.raises(InputError, match="checksum differs"):
            other.import_parquet(tmp_path / "ex", progress=False)
        part.unlink()
        with pytest.raises(NotFoundError, match="missing: the export is incomplete"):
            other.import_parquet(tmp_path / "ex", progress=False)
        part.write_bytes(data)
        (tmp_path / "ex" / "embedstore-export.json").write_text(json.dumps({**manifest, "version": 99}))
        with pytest.raises(InputError, match="version 99.*upgrade embedstore"):
            other.import_parquet(tmp_path / "ex", progress=False)
        with pytest.raises(NotFoundError, match="holds no embedstore-export.json"):
            other.import_parquet(tmp_path, progress=False)
        assert other.sql("SELECT count(*) AS n FROM items").rows() == [(0,)]


def test_export_refuses_an_occupied_folder_and_a_concatenation(source, tmp_path):
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "keep.txt").write_text("mine")
    with pytest.raises(InputError, match="not an empty folder"):
        source.export_parquet("t", tmp_path / "busy")
    assert [p.name for p in (tmp_path / "busy").iterdir()] == ["keep.txt"]
    source.ingest(rows(50), dataset="t", encoder="hashing:32", label_column="label", id_column="id", progress=False)
    with pytest.raises(InputError, match="one encoder's vectors"):
        source.export_parquet("t", tmp_path / "cat", encoder="hashing:64+hashing:32")
    assert not list(tmp_path.glob(".cat.export-*")) and not (tmp_path / "cat").exists()


def test_cli_export_then_import(source, tmp_path):
    source.close()
    out = cli("embedstore", "export", "--dataset", "t", "--encoder", "hashing:64", str(tmp_path / "ex"),
              store=source.path)
    assert "exported 1,200 items of t" in out.stdout
    out = cli("embedstore", "import", str(tmp_path / "ex"), "--dataset", "copy", "--json", store=tmp_path / "b")
    assert json.loads(out.stdout)["new_items"] == 1200
    bad = cli("embedstore", "import", str(tmp_path / "nothing"), store=tmp_path / "b", check=False)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr and "embedstore export" in bad.stderr
