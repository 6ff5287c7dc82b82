"""Read-only SQL over the store's documented tables and views.

Statements other than queries (SELECT, WITH, EXPLAIN, DESCRIBE, SHOW, PRAGMA reads) are refused, COPY ... TO and
other file exports included, unless `allow_writes=True` (CLI: --allow-writes) on a store opened for writing.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Sequence

import duckdb
import pyarrow as pa

from embedstore.errors import EmbedstoreError, InputError
from embedstore.store.queries import arrow_table

if TYPE_CHECKING:
    from embedstore.store.database import Database

READ_TYPES = {duckdb.StatementType.SELECT, duckdb.StatementType.EXPLAIN}
# EXPLAIN [ANALYZE | (options)] <statement>, after any leading comments; ANALYZE runs <statement>
_EXPLAIN = re.compile(r"^(?:\s+|--[^\n]*(?:\n|$)|/\*.*?\*/)*EXPLAIN\b"
                      r"(?:\s+|--[^\n]*(?:\n|$)|/\*.*?\*/)*(?:ANALY[SZ]E\b|\((?:[^()]|\([^()]*\))*\))?",
                      re.IGNORECASE | re.DOTALL)


def _refuse(kind: str) -> InputError:
    return InputError(f"refused a {kind} statement: `embedstore sql` is read-only (queries only; "
                      "COPY/EXPORT to files too). Use --allow-writes to modify the store on purpose")


def _check_statement(st, depth: int = 0) -> None:
    if st.type not in READ_TYPES:
        raise _refuse(st.type.name.lower())
    if st.type == duckdb.StatementType.EXPLAIN:  # EXPLAIN ANALYZE executes what it explains: check that too
        m = _EXPLAIN.match(st.query)
        try:
            inner = duckdb.extract_statements(st.query[m.end():]) if m and depth < 4 else []
        except duckdb.Error:
            inner = []
        if len(inner) != 1:
            raise InputError("refused an EXPLAIN statement whose explained statement cannot be checked: "
                             "`embedstore sql` is read-only")
        _check_statement(inner[0], depth + 1)


def check_read_only(query: str) -> None:
    try:
        stmts = duckdb.extract_statements(query)
    except duckdb.Error as e:
        raise InputError(f"cannot parse SQL: {e}") from None
    if not stmts:
        raise InputError("no SQL statement given")
    for st in stmts:
        _check_statement(st)


def run_sql(db: "Database", query: str, params: Sequence | None = None, allow_writes: bool = False) -> pa.Table:
    """Run `query` and return its result as an Arrow table (the last statement's, when there are several)."""
    if not allow_writes:
        check_read_only(query)
    elif db.read_only:
        raise InputError("--allow-writes needs a store opened for writing")
    stmts = duckdb.extract_statements(query)
    with db.connect() as con:
        try:
            for st in stmts[:-1]:
                con.execute(st).fetchall()
            last = stmts[-1]
            if last.type in READ_TYPES:
                return arrow_table(con, last.query, list(params or []))
            rows = con.execute(last, list(params or [])).fetchall()
        except duckdb.Error as e:
            raise InputError(f"SQL failed: {e}. Tables: items, datasets, encoders, heads, the embeddings view "
                             "and emb_<fingerprint16> tables (`embedstore sql \"SHOW TABLES\"`)") from None
        return pa.table({"result": [str(r) for r in rows]})


def run_sql_frame(db: "Database", query: str, params: Sequence | None = None):
    """`store.sql`: the result as a polars DataFrame."""
    table = run_sql(db, query, params)
    try:
        import polars
    except ImportError:
        raise EmbedstoreError("store.sql returns a polars DataFrame: pip install polars "
                              "(or use embedstore.sql.run_sql for an Arrow table)") from None
    return polars.from_arrow(table)
