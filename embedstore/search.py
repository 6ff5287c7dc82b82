"""Nearest neighbours of a text, an item or a vector within one (dataset, encoder), optionally filtered.

Filters (`where=`) are a SQL predicate over the `items` columns (dataset, key, label, text, source, meta, ...)
or a dict of column -> value (other names are read from the item's metadata). Small filtered sets are
searched exactly from DuckDB; larger ones through the FAISS index with an id selector.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import duckdb
import numpy as np

from embedstore.errors import InputError, NotFoundError
from embedstore.features import ITEM_COLUMNS, _columns, column_expr, iter_vectors, label_column
from embedstore.index import sync
from embedstore.encoders import get_encoder
from embedstore.ingest.cache import embed_cached, text_tower
from embedstore.store import catalog
from embedstore.sql import check_filter
from embedstore.store.queries import first
from embedstore.store.schema import not_skipped
from embedstore.validate import as_float32_matrix, counted

if TYPE_CHECKING:
    from embedstore.store.catalog import EncoderRecord
    from embedstore.store.database import Database

EXACT_FILTER_MAX = 50_000  # filtered sets up to this size are scored exactly from DuckDB


@dataclass
class Hit:
    key: str
    score: float       # cosine similarity
    label: str | None
    text: str | None
    item_id: int
    meta: dict | None = None  # the item's other source columns

    def __str__(self) -> str:
        return f"{self.score:.4f}  {self.key}  [{self.label}]  {(self.text or '')[:80]}"


class Hits(list):
    """Search results, best first: a list of Hit, and a table (rank, score, key, label, text, then each metadata
    column) through `to_arrow()`, `to_pandas()` or `to_polars()`. `note` says when fewer than k came back."""

    note: str | None = None

    def rows(self) -> list[dict]:
        meta_cols = list(dict.fromkeys(k for h in self for k in (h.meta or {})))
        return [{"rank": i + 1, "score": h.score, "key": h.key, "label": h.label, "text": h.text,
                 **{c: (h.meta or {}).get(c) for c in meta_cols if c not in ("rank", "score", "key", "label", "text")}}
                for i, h in enumerate(self)]

    def to_arrow(self):
        import pyarrow as pa
        rows = self.rows()
        return pa.Table.from_pylist(rows) if rows else pa.table(
            {"rank": pa.array([], pa.int64()), "score": pa.array([], pa.float64()), "key": pa.array([], pa.string()),
             "label": pa.array([], pa.string()), "text": pa.array([], pa.string())})

    def to_pandas(self):
        return self.to_arrow().to_pandas()

    def to_polars(self):
        import polars
        return polars.from_arrow(self.to_arrow())


def where_sql(where: str | dict | None, label_column: str | None = None) -> tuple[str, list]:
    """A filter as ' AND (...)' plus parameters; a string predicate must be one plain expression. Dict keys name
    item columns, the dataset's label column (`label_column`), or metadata."""
    if where is None or where == "" or where == {}:
        return "", []
    if isinstance(where, dict):
        parts, params = [], []
        for col, value in where.items():
            expr, col_params = column_expr(str(col), label_column)
            params += col_params
            if isinstance(value, (list, tuple, set)):
                parts.append(f"{expr} IN ({', '.join('?' * len(value))})")
                params += [str(v) for v in value]
            else:
                parts.append(f"{expr} = ?")
                params.append(None if value is None else str(value))
        return " AND " + " AND ".join(parts), params
    return f" AND ({check_filter(where)})", []


def _query_vector(db: "Database", dataset: str, record: "EncoderRecord", query: Any, key: str | None,
                  vector: Any) -> tuple[np.ndarray, int | None]:
    given = sum(x is not None for x in (query, key, vector))
    if given != 1:
        raise InputError("search needs exactly one of: a query (text), key= (an item), vector= (a vector)")
    if vector is not None:
        q = as_float32_matrix(vector, record.dim)
        if not np.abs(q).max(initial=0) > 0:
            raise InputError("the query vector is all zeros: it has no direction, so every item scores 0")
        if q.shape[0] != 1:  # one query per search: the other rows would be ignored silently
            raise InputError(f"search takes one query vector, found a matrix of {q.shape[0]} rows")
        return q, None
    if key is not None:
        with db.connect() as con:
            row = first(con, f"SELECT i.item_id, e.vector FROM items i JOIN {record.table} e "
                             f"ON e.content_hash = i.content_hash WHERE i.dataset = ? AND i.key = ? AND "
                             f"{not_skipped(record.fingerprint)}", [dataset, key])
        if row is None:
            raise NotFoundError(f"no item {key!r} with a {record.spec} vector in dataset {dataset!r}")
        return as_float32_matrix(row[1], record.dim), row[0]
    return embed_query(db, record, query), None


def embed_query(db: "Database", record: "EncoderRecord", content: Any) -> np.ndarray:
    """A query's vector, through the cache (ingest/cache.py): a path is an image (audio) file's bytes; text against
    image vectors goes through the encoder's text tower (CLIP), whose vectors are never stored."""
    if isinstance(content, os.PathLike):
        if not Path(content).is_file():
            raise InputError(f"no query file at {content}")
        content = Path(content).read_bytes()
    if isinstance(content, bytes) and record.modality not in ("image", "audio"):
        raise InputError(f"a file query needs image or audio vectors, but {record.spec} embeds {record.modality}")
    if record.modality == "image" and isinstance(content, str):
        enc = text_tower(record, "search images by text: search with an image (--image FILE) or --key, or ingest "
                                 "with a clip: encoder")
        return as_float32_matrix(enc.embed_text([content]), record.dim)
    got = embed_cached(db, get_encoder(record.spec), record, [content])
    if got.reasons[0]:
        raise InputError(f"cannot embed the query: {got.reasons[0]}")
    return as_float32_matrix(got.matrix(record.dim), record.dim)


def search(db: "Database", dataset: str, query: Any = None, k: int = 10, *, key: str | None = None,
           vector: Any = None, where: str | dict | None = None, encoder: str = "") -> Hits:
    if k < 1:
        raise InputError(f"k must be >= 1, got {k}")
    with db.connect() as con:  # one open for the lookups (a read-only store closes the file after each use)
        catalog.require_dataset(db, dataset)
        record = catalog.resolve_encoder(db, encoder, dataset)
        named = label_column(con, dataset)
        if isinstance(where, dict):
            known = set(_columns(con, dataset)) | ({named} if named else set())
            unknown = [str(c) for c in where if str(c) not in known]
            if unknown:
                raise InputError(f"filter names column(s) {unknown} that no item of dataset {dataset!r} has; "
                                 f"columns: {', '.join(sorted(known))}")
    q, self_id = _query_vector(db, dataset, record, query, key, vector)  # may run the encoder: file closed
    want = k + (self_id is not None)
    clause, params = where_sql(where, named)
    with db.connect() as con:  # and one for the search and its hits
        if clause:
            try:
                allowed = np.asarray([r[0] for r in con.execute(
                    f"SELECT i.item_id FROM items i WHERE i.dataset = ?{clause}",
                    [dataset, *params]).fetchall()], dtype=np.int64)
            except duckdb.Error as e:
                raise InputError(f"filter {where!r} failed: {str(e).splitlines()[0]}. A filter sees the item "
                                 f"columns {', '.join(ITEM_COLUMNS)}; other source columns are metadata: "
                                 "meta->>'name' (or where={'name': value} in Python)") from None
            available = len(allowed)
            if available <= EXACT_FILTER_MAX:
                scores, ids = _exact(con, dataset, record, q, min(want, available), clause, params)
            else:
                scores, ids = sync.live_index(db, dataset, record).index.search(q, min(want, available),
                                                                                 allowed=allowed)
        else:
            index = sync.live_index(db, dataset, record).index
            available = index.ntotal
            scores, ids = index.search(q, min(want, max(available, 1)))  # k is bounded by the data, not the user
        pairs = [(float(s), int(i)) for s, i in zip(scores[0], ids[0]) if i >= 0 and i != self_id][:k]
        hits = _hits(db, pairs)
    available -= self_id is not None
    if k > available:
        where_from = "the filter keeps" if clause else "the dataset has with vectors"
        hits.note = f"k={k:,} is more than the {counted(max(available, 0), 'item')} {where_from}: returned all"
    return hits


def _exact(con, dataset: str, record: "EncoderRecord", q: np.ndarray, k: int, clause: str, params: list):
    qn = q / max(np.linalg.norm(q), 1e-12)
    best_s, best_i = np.empty(0, np.float32), np.empty(0, np.int64)
    for ids, x in iter_vectors(con, dataset, record, clause, params):
        norms = np.linalg.norm(x, axis=1)
        s = (x @ qn[0]) / np.maximum(norms, 1e-12)
        best_s, best_i = np.concatenate([best_s, s]), np.concatenate([best_i, ids])
        top = np.argsort(-best_s, kind="stable")[:k]
        best_s, best_i = best_s[top], best_i[top]
    return best_s[None, :], best_i[None, :]


def _hits(db: "Database", pairs: list[tuple[float, int]]) -> Hits:
    if not pairs:
        return Hits()
    with db.connect() as con:
        rows = {r[0]: r[1:] for r in con.execute(
            "SELECT item_id, key, label, text, meta FROM items WHERE item_id IN (SELECT unnest(?))",
            [[i for _, i in pairs]]).fetchall()}
    return Hits(Hit(rows[i][0], s, rows[i][1], rows[i][2], i, json.loads(rows[i][3]) if rows[i][3] else None)
                for s, i in pairs if i in rows)
