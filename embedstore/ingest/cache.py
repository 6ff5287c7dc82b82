"""The one cache-aware way to turn raw contents into vectors: `embed_cached`. Ingest, search queries,
`store.encode` and `Head.predict_raw` all go through it.

A vector is identified by (content hash, encoder fingerprint): a content already embedded with this fingerprint
is read back from its table, not re-embedded. The rule for what is cached: **only ingest writes vectors**, each
one for an item of a dataset (in the same transaction as the item). Queries, `store.encode` and predictions on
raw inputs read the cache and embed what is missing without storing it, so `gc` (which deletes vectors that no
item references) never removes anything a later read relies on, and reading never grows the store or needs
the write lock.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np
import pyarrow as pa

from embedstore.encoders import Encoder, get_encoder
from embedstore.errors import FingerprintMismatchError, InputError
from embedstore.hashing import content_hash
from embedstore.store import catalog
from embedstore.store.queries import arrow_batches, rows_for, vector_block
from embedstore.validate import as_inputs

if TYPE_CHECKING:
    import duckdb

    from embedstore.store.catalog import EncoderRecord
    from embedstore.store.database import Database

NON_FINITE = "the encoder produced non-finite values (NaN/inf)"
ZERO = ("the encoder gave an all-zero vector (nothing in this input it can represent, e.g. only punctuation, "
        "NUL characters or words shorter than its tokens): it would match nothing")
NO_ROWS = pa.table({"content_hash": pa.array([], pa.string())})


def check_fingerprint(enc: Encoder, fingerprint: str, what: str = "the stored vectors") -> Encoder:
    """Refuse an encoder whose fingerprint is not the one that made `what` (its weights or settings changed
    since): its vectors would not be comparable. Computing the fingerprint may hash the weights."""
    if enc.fingerprint != fingerprint:
        raise FingerprintMismatchError(
            f"encoder {enc.spec!r} now has fingerprint {enc.fingerprint[:12]}, but {what} were made with "
            f"{fingerprint[:12]} (weights or settings changed); re-ingest with the current encoder (and refit "
            "heads)")
    return enc


def text_tower(record: "EncoderRecord", purpose: str) -> Encoder:
    """The encoder of image vectors whose text tower (CLIP) embeds text into their space, checked against the
    fingerprint that made them; `purpose` completes "it cannot ..." when the encoder has none."""
    enc = get_encoder(record.spec)
    if not hasattr(enc, "embed_text"):
        raise InputError(f"{record.spec} has no text tower (clip: encoders have one), so it cannot {purpose}")
    return check_fingerprint(enc, record.fingerprint)


def lookup(con: "duckdb.DuckDBPyConnection", record: "EncoderRecord", hashes: list[str]) -> tuple[dict, dict]:
    """{hash: vector} and {hash: truncated} for the hashes already embedded with `record`."""
    if not hashes or not record.table:
        return {}, {}
    vec_of: dict = {}
    trunc_of: dict = {}
    con.register("_lookup", pa.table({"h": pa.array(hashes, pa.string())}))
    try:  # which hashes are there (their column alone), then their vectors in batches of bounded bytes
        found = [r[0] for r in con.execute(f"SELECT hash_hex(content_hash) FROM {record.table} "
                                           "WHERE content_hash IN (SELECT hex_hash(h) FROM _lookup)").fetchall()]
        con.unregister("_lookup")
        if not found:
            return vec_of, trunc_of
        con.register("_lookup", pa.table({"h": pa.array(found, pa.string())}))
        for batch in arrow_batches(con, f"SELECT hash_hex(e.content_hash), e.vector, e.truncated FROM {record.table} e "
                                        "WHERE e.content_hash IN (SELECT hex_hash(h) FROM _lookup)", (), rows_for(record.dim)):
            found = batch.column(0).to_pylist()
            vecs = vector_block(batch.column(1), record.dim)
            vec_of.update(zip(found, vecs))
            trunc_of.update(zip(found, batch.column(2).to_pylist()))
    finally:
        con.unregister("_lookup")
    return vec_of, trunc_of


def insert(con: "duckdb.DuckDBPyConnection", record: "EncoderRecord", rows: pa.Table) -> None:
    """Plain INSERT (inside the caller's transaction): the rows were looked up as missing under the writer lock,
    so none can exist (the table has no key index: see store/schema.py)."""
    if rows.num_rows:
        con.register("_emb", rows)
        con.execute(f"INSERT INTO {record.table} (content_hash, vector, n_tokens, truncated, device, dtype) "
                    "SELECT hex_hash(content_hash), vector, n_tokens, truncated, device, dtype FROM _emb")
        con.unregister("_emb")


@dataclass
class Cached:
    """What `embed_cached` found and made, per input in input order."""

    hashes: list[str | None]          # None: the input was skipped before hashing mattered (reason set)
    reasons: list[str | None]         # why an input has no vector (the encoder's skip reason), else None
    vectors: dict[str, np.ndarray]    # content hash -> vector, for every input that has one
    truncated: dict[str, bool]
    fresh: list[str]                  # hashes embedded now (not from the cache)
    rows: pa.Table                    # the fresh vectors as rows of the encoder's table (ingest inserts them)

    def matrix(self, dim: int) -> np.ndarray:
        """[n, dim] float32, NaN rows for inputs without a vector."""
        out = np.full((len(self.hashes), dim), np.nan, dtype=np.float32)
        for i, h in enumerate(self.hashes):
            if h is not None and h in self.vectors:
                out[i] = self.vectors[h]
        return out


def embed_cached(db: "Database | None", enc: Encoder, record: "EncoderRecord | None", contents: Sequence[Any], *,
                 reasons: Sequence[str | None] | None = None, con: "duckdb.DuckDBPyConnection | None" = None,
                 progress: Callable[[int], None] | None = None, fingerprint: str | None = None,
                 what: str = "the stored vectors") -> Cached:
    """Vectors for `contents`: from `record`'s table where cached, else by `enc` (nothing is written here), which
    must then have the expected fingerprint (`fingerprint`, else `record`'s; `what` names whose vectors, for the
    refusal).

    `reasons` are skip reasons already known (e.g. an unreadable row); the encoder's own are added. The database
    is released before the encoder runs (a no-op while a caller holds it), so that readers get in meanwhile;
    without a database (`db=None`, no store) nothing is cached.
    A content found in the cache needs no model: the encoder is only constructed, never loaded, for it."""
    reasons = list(reasons) if reasons is not None else [None] * len(contents)
    reasons = [why or (enc.skip_reason(c) if c is not None else "unreadable") for c, why in zip(contents, reasons)]
    hashes = [content_hash(c) if c is not None else None for c in contents]
    wanted = sorted({h for h, why in zip(hashes, reasons) if h and not why})
    if record is not None and db is not None:
        if con is not None:
            vec_of, trunc_of = lookup(con, record, wanted)
        else:
            with db.connect() as own:
                vec_of, trunc_of = lookup(own, record, wanted)
    else:
        vec_of, trunc_of = {}, {}
    if progress:
        progress(len(contents) - len([h for h in wanted if h not in vec_of]))
    todo = [h for h in wanted if h not in vec_of]
    rows = NO_ROWS
    if todo:
        expected = fingerprint or (record.fingerprint if record is not None else None)
        if expected is not None:
            check_fingerprint(enc, expected, what)
        if db is not None:
            db.release()  # let readers in while the encoder runs
        content_of = {h: c for h, c in zip(hashes, contents) if h}
        rows, failed = _embed(enc, record.dim if record else enc.dim, todo, content_of, vec_of, trunc_of, progress)
        if failed:  # e.g. an image decoder learns why a file cannot be embedded only when it decodes it: ask again
            reasons = [why or ((enc.skip_reason(c) or failed[h]) if h in failed else None)
                       for c, h, why in zip(contents, hashes, reasons)]
    return Cached(hashes, reasons, vec_of, trunc_of, todo, rows)


def _embed(enc: Encoder, dim: int, todo: list[str], content_of: dict, vec_of: dict, trunc_of: dict,
           progress: Callable[[int], None] | None) -> tuple[pa.Table, dict[str, str]]:
    """Embed the contents of `todo` hashes into vec_of/trunc_of and return them as rows of the encoder's table,
    with why each left-out hash failed: a non-finite or an all-zero vector (no direction: cosine undefined)."""
    out = enc.embed([content_of[h] for h in todo], progress=progress)
    finite = np.isfinite(out.vectors).all(axis=1)
    nonzero = np.zeros(len(todo), bool)
    nonzero[finite] = np.abs(out.vectors[finite]).max(axis=1) > 0
    keep = np.flatnonzero(finite & nonzero)
    failed = {todo[j]: (ZERO if finite[j] else NON_FINITE) for j in np.flatnonzero(~(finite & nonzero))}
    truncated = out.truncated if out.truncated is not None else np.zeros(len(todo), bool)
    for j in keep:
        vec_of[todo[j]] = out.vectors[j]
        trunc_of[todo[j]] = bool(truncated[j])
    return pa.table({
        "content_hash": pa.array([todo[j] for j in keep], pa.string()),
        "vector": pa.FixedSizeListArray.from_arrays(pa.array(out.vectors[keep].ravel(), pa.float32()), dim),
        "n_tokens": pa.array(out.n_tokens[keep] if out.n_tokens is not None else [None] * len(keep), pa.int32()),
        "truncated": pa.array(truncated[keep]),
        "device": pa.array(list(out.devices[keep]) if out.devices is not None else [enc.ran_on] * len(keep),
                           pa.string()),
        "dtype": pa.array(list(out.dtypes[keep]) if out.dtypes is not None else [enc.dtype] * len(keep), pa.string()),
    }), failed


def encode(db: "Database | None", inputs: Sequence[Any], encoder: str) -> np.ndarray:
    """`store.encode`: [n, dim] float32 for raw inputs with the encoder `encoder` (a spec), from the cache where
    this store (if any) holds them; NaN rows for inputs the encoder skips (empty text, an undecodable image)."""
    enc = get_encoder(encoder)
    record = catalog.encoder_record(db, enc.fingerprint) if db is not None else None
    cached = embed_cached(db, enc, record, as_inputs(inputs))
    return cached.matrix(record.dim if record else enc.dim)
