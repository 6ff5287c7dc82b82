"""Read-only SQL over documented views; cosine similarity in SQL agrees with numpy."""

from __future__ import annotations

import json

import numpy as np
import pytest

from embedstore.errors import InputError
from embedstore.sql import check_read_only
from tests.conftest import cli


@pytest.mark.parametrize("stmt", ["DELETE FROM items", "DROP TABLE items", "COPY items TO 'x.csv'",
                                  "ATTACH 'other.db'", "INSERT INTO datasets VALUES ('x','text',now(),'')",
                                  "EXPORT DATABASE 'dump'", "SELECT 1; DELETE FROM items"])
def test_writes_and_exports_are_refused(stmt):
    with pytest.raises(InputError, match="read-only"):
        check_read_only(stmt)


def test_views_and_cosine_in_sql(store):
    store.ingest(["red apple", "green apple", "blue sky"], dataset="d", encoder="hashing:32", progress=False)
    rec = store.resolve_encoder("hashing:32", "d")
    df = store.sql(f"""
        SELECT ib.key, array_cosine_similarity(a.vector, b.vector) AS cos
        FROM items ia JOIN {rec.table} a USING (content_hash), items ib JOIN {rec.table} b USING (content_hash)
        WHERE ia.key = 'python:1' AND ib.dataset = 'd' ORDER BY ib.key""")
    X, _ = store.features("d", encoder="hashing:32", label=None)
    Xn = X / np.linalg.norm(X, axis=1, keepdims=True)
    np.testing.assert_allclose(df["cos"].to_numpy(), Xn @ Xn[0], rtol=1e-5, atol=1e-6)
    view = store.sql("SELECT key, encoder, len(vector) AS dim FROM embeddings ORDER BY key").to_dicts()
    assert view == [{"key": f"python:{i}", "encoder": "hashing:32", "dim": 32} for i in (1, 2, 3)]


def test_cli_formats_and_refusal(store, tmp_path):
    store.ingest(["one", "two"], dataset="d", encoder="hashing:16", progress=False)
    path = store.path
    store.close()
    q = "SELECT key, text FROM items ORDER BY key"
    assert json.loads(cli("embedstore", "sql", q, "--format", "json", store=path).stdout)[0] == \
        {"key": "python:1", "text": "one"}
    assert cli("embedstore", "sql", q, "--format", "csv", store=path).stdout.splitlines()[0] == "key,text"
    out = tmp_path / "r.parquet"
    cli("embedstore", "sql", q, "--format", "parquet", "--out", str(out), store=path)
    import pyarrow.parquet as pq
    assert pq.read_table(out).num_rows == 2
    table = cli("embedstore", "sql", q, store=path).stdout
    assert "python:2" in table and "key" in table.splitlines()[0]
    bad = cli("embedstore", "sql", "DELETE FROM items", store=path, check=False)
    assert bad.returncode == 2 and "read-only" in bad.stderr
    cli("embedstore", "sql", "DELETE FROM items WHERE key = 'python:2'", "--allow-writes", store=path)
    assert len(json.loads(cli("embedstore", "sql", q, "--format", "json", store=path).stdout)) == 1
