"""Nearest neighbours of a text, an item or a vector within one (dataset, encoder), optionally filtered.

Filters (`where=`) are a SQL predicate over the `items` columns (dataset, key, label, text, source, meta, ...)
or a dict of column -> value (other names are read from the item's metadata). Small filtered sets are
searched exactly from DuckDB; larger ones through the FAISS index with an id selector.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import duckdb
import numpy as np

from embedstore.errors import FingerprintMismatchError, InputError, NotFoundError
from embedstore.store.db import first
from embedstore.store.features import column_expr, iter_vectors
from embedstore.store.store import as_float32_matrix

if TYPE_CHECKING:
    from embedstore.store.store import EncoderRecord, Store

EXACT_FILTER_MAX = 50_000  # filtered sets up to this size are scored exactly from DuckDB


@dataclass
class Hit:
    key: str
    score: float       # cosine similarity
    label: str | None
    text: str | None
    item_id: int

    def __str__(self) -> str:
        return f"{self.score:.4f}  {self.key}  [{self.label}]  {(self.text or '')[:80]}"


def where_sql(where: str | dict | None) -> tuple[str, list]:
    """A filter as ' AND (...)' plus parameters; a string predicate must be one plain expression."""
    if where is None or where == "" or where == {}:
        return "", []
    if isinstance(where, dict):
        parts, params = [], []
        for col, value in where.items():
            expr, col_params = column_expr(str(col))
            params += col_params
            if isinstance(value, (list, tuple, set)):
                parts.append(f"{expr} IN ({', '.join('?' * len(value))})")
                params += [str(v) for v in value]
            else:
                parts.append(f"{expr} = ?")
                params.append(None if value is None else str(value))
        return " AND " + " AND ".join(parts), params
    probe = f"SELECT 1 FROM items i WHERE ({where})"
    try:
        stmts = duckdb.extract_statements(probe)
    except duckdb.Error as e:
        raise InputError(f"cannot parse filter {where!r}: {e}") from None
    if len(stmts) != 1 or stmts[0].type != duckdb.StatementType.SELECT:
        raise InputError(f"filter {where!r} must be a single SQL expression over items columns")
    return f" AND ({where})", []


def _query_vector(store: "Store", dataset: str, record: "EncoderRecord", query: Any, key: str | None,
                  vector: Any) -> tuple[np.ndarray, int | None]:
    given = sum(x is not None for x in (query, key, vector))
    if given != 1:
        raise InputError("search needs exactly one of: a query (text), key= (an item), vector= (a vector)")
    if vector is not None:
        try:
            q = as_float32_matrix(vector, record.dim)
        except InputError:
            raise
        except (TypeError, ValueError) as e:  # numpy's own message for non-numbers
            raise InputError(f"query vector must be numbers: {e}") from None
        if q.shape[0] != 1:  # one query per search: the other rows would be ignored silently
            raise InputError(f"search takes one query vector, found a matrix of {q.shape[0]} rows")
        return q, None
    if key is not None:
        with store.connect() as con:
            row = first(con, f"SELECT i.item_id, e.vector FROM items i JOIN {record.table} e "
                             "ON e.content_hash = i.content_hash WHERE i.dataset = ? AND i.key = ?", [dataset, key])
        if row is None:
            raise NotFoundError(f"no item {key!r} with a {record.spec} vector in dataset {dataset!r}")
        return as_float32_matrix(row[1], record.dim), row[0]
    return embed_query(store, record, query), None


def embed_query(store: "Store", record: "EncoderRecord", content: Any) -> np.ndarray:
    """A query's vector: from the cache when this exact content was embedded before, else by the encoder
    (refusing an encoder whose fingerprint no longer matches the stored vectors). A path is an image file's
    bytes; text against image vectors goes through the encoder's text tower (CLIP)."""
    from embedstore.ingest.hashing import content_hash
    if isinstance(content, os.PathLike):
        if not Path(content).is_file():
            raise InputError(f"no query image at {content}")
        content = Path(content).read_bytes()
    if isinstance(content, bytes) and record.modality != "image":
        raise InputError(f"an image query needs image vectors, but {record.spec} embeds {record.modality}")
    cross = record.modality == "image" and isinstance(content, str)
    row = None
    if not cross:  # text-tower vectors are not stored: only same-modality queries can be cached
        with store.connect() as con:
            row = first(con, f"SELECT vector FROM {record.table} WHERE content_hash = ?", [content_hash(content)])
    if row is not None:
        return as_float32_matrix(row[0], record.dim)
    from embedstore.encoders import get_encoder
    enc = get_encoder(record.spec)
    if enc.fingerprint != record.fingerprint:
        raise FingerprintMismatchError(
            f"encoder {record.spec!r} now has fingerprint {enc.fingerprint[:12]}, but the stored vectors were made "
            f"with {record.short} (weights or settings changed); re-ingest with the current encoder")
    if cross:
        if not hasattr(enc, "embed_text"):
            raise InputError(f"{record.spec} embeds images only, it has no text tower: search with an image (--image "
                             "FILE) or --key, or ingest with a clip: encoder to search by text")
        return as_float32_matrix(enc.embed_text([content]), record.dim)
    reason = enc.skip_reason(content)
    if reason:
        raise InputError(f"cannot embed the query: {reason}")
    vectors = enc.embed([content]).vectors
    if not np.isfinite(vectors).all():  # e.g. an image that failed to decode: the encoder knows why by now
        raise InputError(f"cannot embed the query: {enc.skip_reason(content) or 'the encoder gave NaN/inf'}")
    return as_float32_matrix(vectors, record.dim)


def search(store: "Store", dataset: str, query: Any = None, k: int = 10, *, key: str | None = None,
           vector: Any = None, where: str | dict | None = None, encoder: str = "") -> list[Hit]:
    if k < 1:
        raise InputError(f"k must be >= 1, got {k}")
    with store.connect():  # one open for the lookups (a read-only store closes the file after each use)
        store.require_dataset(dataset)
        record = store.resolve_encoder(encoder, dataset)
    q, self_id = _query_vector(store, dataset, record, query, key, vector)  # may run the encoder: file closed
    want = k + (self_id is not None)
    clause, params = where_sql(where)
    with store.connect() as con:  # and one for the search and its hits
        if clause:
            allowed = np.asarray([r[0] for r in con.execute(
                f"SELECT i.item_id FROM items i WHERE i.dataset = ? AND i.status = 'ok'{clause}",
                [dataset, *params]).fetchall()], dtype=np.int64)
            if len(allowed) <= EXACT_FILTER_MAX:
                scores, ids = _exact(con, dataset, record, q, want, clause, params)
            else:
                scores, ids = store.index(dataset, record).index.search(q, want, allowed=allowed)
        else:
            scores, ids = store.index(dataset, record).index.search(q, want)
        pairs = [(float(s), int(i)) for s, i in zip(scores[0], ids[0]) if i >= 0 and i != self_id][:k]
        return _hits(store, pairs)


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


def _hits(store: "Store", pairs: list[tuple[float, int]]) -> list[Hit]:
    if not pairs:
        return []
    with store.connect() as con:
        rows = {r[0]: r[1:] for r in con.execute(
            "SELECT item_id, key, label, text FROM items WHERE item_id IN (SELECT unnest(?))",
            [[i for _, i in pairs]]).fetchall()}
    return [Hit(rows[i][0], s, rows[i][1], rows[i][2], i) for s, i in pairs if i in rows]
