"""Read-only SQL over the store's documented tables and views.

Statements other than queries (SELECT, WITH, EXPLAIN, DESCRIBE, SHOW, PRAGMA reads) are refused, COPY ... TO and
other file exports included, unless `allow_writes=True` (CLI: --allow-writes) on a store opened for writing.
"""

from __future__ import annotations

import json
import re
from contextlib import nullcontext
from typing import TYPE_CHECKING, Iterator, Sequence

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


def _plain(tree):
    """A parse tree without source positions (they differ between two spellings of the same query)."""
    if isinstance(tree, dict):
        return {k: _plain(v) for k, v in tree.items() if not k.startswith("query_location")}
    if isinstance(tree, list):
        return [_plain(v) for v in tree]
    return tree


def _walk(tree) -> Iterator[dict]:
    if isinstance(tree, dict):
        yield tree
        for v in tree.values():
            yield from _walk(v)
    elif isinstance(tree, list):
        for v in tree:
            yield from _walk(v)


def _parse_tree(query: str) -> dict:
    con = duckdb.connect()  # an in-memory parser: the store's database is never touched
    try:
        return json.loads(con.execute("SELECT json_serialize_sql(?)", [query]).fetchone()[0])
    finally:
        con.close()


def check_filter(where: str) -> str:
    """A `--where` filter must be exactly one SQL expression over an item's columns: it is parsed by DuckDB as the
    WHERE clause of `SELECT * FROM items` and refused unless the rest of the query is untouched (so it cannot
    close a parenthesis, add a LIMIT or a UNION) and it holds no subquery or table function (so it cannot read
    other datasets or files). Returns it; callers wrap it in parentheses and AND it with the dataset's own rows."""
    if not isinstance(where, str) or not where.strip():
        raise InputError("a filter must be a non-empty SQL expression, e.g. \"label = '1'\"")
    tree = _parse_tree(f"SELECT * FROM items WHERE {where}")
    if tree.get("error"):
        raise InputError(f"cannot parse filter {where!r}: {tree.get('error_message', 'syntax error')}; expected one "
                         "SQL expression over items columns, e.g. \"label = '1' AND key LIKE 'a%'\"")
    statements = tree.get("statements") or []
    node = _plain(statements[0]["node"]) if len(statements) == 1 else {}
    bare = _plain(_parse_tree("SELECT * FROM items")["statements"][0]["node"])
    if not node or {k: v for k, v in node.items() if k != "where_clause"} != \
            {k: v for k, v in bare.items() if k != "where_clause"}:
        raise InputError(f"filter {where!r} must be a single SQL expression over items columns (no ')', LIMIT, "
                         "UNION or ; around it)")
    for part in _walk(node["where_clause"]):
        if part.get("class") == "SUBQUERY" or part.get("type") in ("SUBQUERY", "TABLE_FUNCTION"):
            raise InputError(f"filter {where!r} holds a subquery: a filter sees one item's columns only (key, label, "
                             "text, source, meta, ...); use `embedstore sql` for queries across items")
    return where


def run_sql(db: "Database", query: str, params: Sequence | None = None, allow_writes: bool = False) -> pa.Table:
    """Run `query` and return its result as an Arrow table (the last statement's, when there are several)."""
    if not allow_writes:
        check_read_only(query)
    elif db.read_only:
        raise InputError("--allow-writes needs a store opened for writing")
    stmts = duckdb.extract_statements(query)
    with (db.writing() if allow_writes else nullcontext()), db.connect() as con:
        try:
            for st in stmts[:-1]:
                con.execute(st).fetchall()
            last = stmts[-1]
            if last.type in READ_TYPES:
                return arrow_table(con, last.query, list(params or []))
            rows = con.execute(last, list(params or [])).fetchall()
        except duckdb.PermissionException as e:
            raise InputError(f"SQL failed: {str(e).splitlines()[0]}; SQL reaches no file unless asked: pass "
                             "--allow-files (Python: embedstore.open(path, files=True))") from None
        except duckdb.Error as e:
            raise InputError(f"SQL failed: {e}. Tables: items, skips, datasets, encoders, heads, "
                             "emb_<fingerprint16>; views embeddings, item_status (`embedstore sql \"SHOW TABLES\"`)") from None
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
