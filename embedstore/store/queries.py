"""Small DuckDB and Arrow helpers, in one place because DuckDB 2 changed how results are fetched.

A result from `execute()` must be fetched to the end before the connection does anything else, and Arrow
output comes copy-free only from a relation (`con.sql`).
"""

from __future__ import annotations

from typing import Iterator, Sequence

import duckdb
import numpy as np
import pyarrow as pa

BATCH_ROWS = 65_536
BATCH_BYTES = 16 << 20  # a batch of vectors read from DuckDB holds at most about this much


def rows_for(width_floats: int) -> int:
    """Rows per Arrow batch so that a batch of `width_floats`-wide float32 vectors stays near BATCH_BYTES (wide
    vectors must not make one batch outgrow DuckDB's memory limit)."""
    return max(64, min(BATCH_ROWS, BATCH_BYTES // (4 * max(width_floats, 1))))


def first(con: duckdb.DuckDBPyConnection, sql: str, params: Sequence = ()) -> tuple | None:
    """The first row of a query (or None), with the result fully consumed."""
    rows = con.execute(sql, list(params)).fetchall()
    return rows[0] if rows else None


def scalar(con: duckdb.DuckDBPyConnection, sql: str, params: Sequence = ()):
    row = first(con, sql, params)
    return None if row is None else row[0]


def arrow_batches(con: duckdb.DuckDBPyConnection, sql: str, params: Sequence = (),
                  rows: int = BATCH_ROWS) -> Iterator[pa.RecordBatch]:
    """Stream a query as Arrow record batches."""
    yield from con.sql(sql, params=list(params)).to_arrow_reader(rows)


def arrow_table(con: duckdb.DuckDBPyConnection, sql: str, params: Sequence = ()) -> pa.Table:
    return con.sql(sql, params=list(params)).to_arrow_table()


def vector_block(column: pa.Array, dim: int) -> np.ndarray:
    """A FixedSizeList<float> Arrow column as an [n, dim] float32 view (zero-copy where Arrow allows)."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    flat = column.flatten().to_numpy(zero_copy_only=False)
    return flat.astype(np.float32, copy=False).reshape(-1, dim)
