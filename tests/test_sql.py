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
        WHERE ia.text = 'red apple' AND ib.dataset = 'd' ORDER BY ib.item_id""")
    X, _ = store.features("d", encoder="hashing:32", label=None)  # in item-id order
    Xn = X / np.linalg.norm(X, axis=1, keepdims=True)
    np.testing.assert_allclose(df["cos"].to_numpy(), Xn @ Xn[0], rtol=1e-5, atol=1e-6)
    view = store.sql("SELECT text, encoder, len(vector) AS dim FROM embeddings ORDER BY item_id").to_dicts()
    assert view == [{"text": t, "encoder": "hashing:32", "dim": 32} for t in ("red apple", "green apple", "blue sky")]


def test_cli_formats_and_refusal(store, tmp_path):
    store.ingest(["one", "two"], dataset="d", encoder="hashing:16", progress=False)
    path = store.path
    store.close()
    q = "SELECT text, key FROM items ORDER BY item_id"
    assert json.loads(cli("embedstore", "sql", q, "--output-format", "json", store=path).stdout)[0]["text"] == "one"
    assert cli("embedstore", "sql", q, "--output-format", "csv", store=path).stdout.splitlines()[0] == "text,key"
    out = tmp_path / "r.parquet"
    cli("embedstore", "sql", q, "--output-format", "parquet", "--out", str(out), store=path)
    import pyarrow.parquet as pq
    assert pq.read_table(out).num_rows == 2
    table = cli("embedstore", "sql", q, store=path).stdout
    assert "two" in table and "key" in table.splitlines()[0]
    bad = cli("embedstore", "sql", "DELETE FROM items", store=path, check=False)
    assert bad.returncode == 2 and "read-only" in bad.stderr
    cli("embedstore", "sql", "DELETE FROM items WHERE text = 'two'", "--allow-writes", store=path)
    assert len(json.loads(cli("embedstore", "sql", q, "--output-format", "json", store=path).stdout)) == 1
