"""The one data path: records -> content hash -> cache lookup -> encode what is missing -> one transaction per
chunk (items + embeddings) -> FAISS update -> checkpoints.

A crash loses at most the chunk in flight; a rerun finds everything committed in the cache and embeds nothing
twice. The DuckDB connection is closed while the encoder runs, so read-only openers can query between chunks.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Iterator

import numpy as np
import pyarrow as pa

from embedstore import config
from embedstore.encoders import Encoder, get_encoder
from embedstore.errors import resource_errors_as_clear
from embedstore.faults import fault_point
from embedstore.ingest.hashing import content_hash
from embedstore.ingest.progress import Progress
from embedstore.ingest.sources import Record, TableOptions, open_source
from embedstore.store.db import arrow_table
from embedstore.store.features import vector_block
from embedstore.store.store import check_name

if TYPE_CHECKING:
    from embedstore.store.store import Store


@dataclass
class IngestReport:
    dataset: str
    encoder: str
    fingerprint: str
    rows: int = 0
    new_items: int = 0
    updated_items: int = 0
    unchanged_items: int = 0
    embedded: int = 0          # vectors computed by the encoder in this run
    cached: int = 0            # ok items whose vector was already in the store
    skipped: dict = field(default_factory=dict)   # reason -> count
    truncated: int = 0
    duplicate_keys: int = 0
    seconds: float = 0.0
    index: str = ""
    notes: list = field(default_factory=list)     # from the source, e.g. files it ignored

    def summary(self) -> str:
        skipped = sum(self.skipped.values())
        lines = [f"{self.dataset} <- {self.encoder} (fp:{self.fingerprint[:12]}): {self.rows:,} rows in "
                 f"{self.seconds:.1f}s; items new {self.new_items:,}, updated {self.updated_items:,}, "
                 f"unchanged {self.unchanged_items:,}; vectors embedded {self.embedded:,}, cached {self.cached:,}; "
                 f"skipped {skipped:,}; truncated {self.truncated:,}; index {self.index}"]
        lines += [f"  skipped {n:,}: {reason}" for reason, n in sorted(self.skipped.items(), key=lambda x: -x[1])]
        if self.duplicate_keys:
            lines.append(f"  {self.duplicate_keys:,} rows repeated an earlier key in the same chunk; the last won")
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return asdict(self)


CHUNK_START, CHUNK_MAX, CHUNK_SECONDS = 1024, 16_384, 2.0
CHUNK_BYTES = 256 << 20  # a chunk also ends at this much binary content (image files), to bound memory


def _take(it: Iterator[Record], size: int) -> list[Record]:
    """The next chunk: `size` records, or fewer once their binary content reaches CHUNK_BYTES."""
    chunk, nbytes = [], 0
    for r in it:
        chunk.append(r)
        nbytes += len(r.content) if isinstance(r.content, bytes) else 0
        if len(chunk) >= size or nbytes >= CHUNK_BYTES:
            break
    return chunk


@resource_errors_as_clear()
def ingest(store: "Store", source: Any, *, dataset: str, encoder: str | Encoder, text_column: str = "text",
           label_column: str | None = None, id_column: str | None = None, sep: str | None = None,
           quoting: str = "auto", header: bool = True, columns: list[str] | None = None,
           encoding: str = "utf-8", format: str | None = None, source_name: str | None = None,
           chunk_size: int | None = None, progress: bool = True, path_column: str | None = None) -> IngestReport:
    """Embed `source` into `dataset` with `encoder` (a spec or an Encoder); returns what happened."""
    store._require_writable()
    check_name(dataset)
    opts = TableOptions(text_column, label_column, id_column, sep, quoting, header, columns, encoding, format,
                        path_column=path_column)
    enc = get_encoder(encoder) if isinstance(encoder, str) else encoder
    src = open_source(source, opts, source_name, enc.modality)
    start = time.perf_counter()
    store.require_fresh_dataset_modality(dataset, enc.modality)
    record = store.register_encoder(enc)
    live = store.index(dataset, record)
    if src.total:
        live.reserve(live.index.ntotal + src.total)
    report = IngestReport(dataset, enc.spec, record.fingerprint)
    skipped: Counter = Counter()
    every = int(config.setting("checkpoint_items"))
    size = chunk_size or CHUNK_START
    it = iter(src)
    with Progress(total=src.total, desc=f"ingest {dataset}", enabled=progress) as bar:
        while chunk := _take(it, size):
            t0 = time.perf_counter()
            _ingest_chunk(store, enc, record, live, dataset, src.name, chunk, report, skipped, bar)
            if live.unsaved >= max(every, live.index.ntotal // 4):  # geometric: total writes stay O(n)
                live.persist()
            store.yield_to_readers()
            if not chunk_size and time.perf_counter() - t0 < CHUNK_SECONDS:
                size = min(size * 2, CHUNK_MAX)  # fast encoder or cached rows: fewer, larger transactions
    live.persist()
    store.forget_indexes(keep=live)  # others may hold re-keyed items or lack vectors shared with this dataset
    store.release()
    report.skipped = dict(skipped)
    report.notes = list(src.notes)
    report.index = f"{live.index.factory} ({live.index.ntotal:,} vectors, {live.origin} on open)"
    report.seconds = time.perf_counter() - start
    return report


def _cached(rows: pa.Table, record) -> tuple[dict, dict]:
    hashes = rows.column(0).to_pylist()
    vecs = vector_block(rows.column(1), record.dim)
    return {h: vecs[i] for i, h in enumerate(hashes)}, dict(zip(hashes, rows.column(2).to_pylist()))


def lookup_cached(con, record, hashes: list[str]) -> tuple[dict, dict]:
    """{hash: vector} and {hash: truncated} for the hashes already embedded with `record`."""
    con.register("_lookup", pa.table({"h": pa.array(hashes, pa.string())}))
    try:
        return _cached(arrow_table(con, f"SELECT e.content_hash, e.vector, e.truncated FROM {record.table} e "
                                        "WHERE e.content_hash IN (SELECT h FROM _lookup)"), record)
    finally:
        con.unregister("_lookup")


def embed_missing(enc: Encoder, record, todo: list[str], content_of: dict, vec_of: dict, trunc_of: dict,
                  progress=None) -> pa.Table:
    """Embed the contents of `todo` hashes; fill vec_of (None for non-finite output) and trunc_of; return
    the rows to insert into the encoder's table."""
    out = enc.embed([content_of[h] for h in todo], progress=progress)
    finite = np.isfinite(out.vectors).all(axis=1)
    keep = np.flatnonzero(finite)
    for j in np.flatnonzero(~finite):
        vec_of[todo[j]] = None
    truncated = out.truncated if out.truncated is not None else np.zeros(len(todo), bool)
    for j in keep:
        vec_of[todo[j]] = out.vectors[j]
        trunc_of[todo[j]] = bool(truncated[j])
    return pa.table({
        "content_hash": pa.array([todo[j] for j in keep], pa.string()),
        "vector": pa.FixedSizeListArray.from_arrays(pa.array(out.vectors[keep].ravel(), pa.float32()), record.dim),
        "n_tokens": pa.array(out.n_tokens[keep] if out.n_tokens is not None else [None] * len(keep), pa.int32()),
        "truncated": pa.array(truncated[keep]),
        "device": pa.array([enc.device] * len(keep), pa.string()),
        "dtype": pa.array([enc.dtype] * len(keep), pa.string()),
    })


def insert_embeddings(con, record, rows: pa.Table) -> None:
    """Plain INSERT: the rows were looked up as missing under the writer lock, so none can exist (the primary key
    still guards it). DuckDB 2's ON CONFLICT path needs far more memory for wide vectors."""
    if rows.num_rows:
        con.register("_emb", rows)
        con.execute(f"INSERT INTO {record.table} (content_hash, vector, n_tokens, truncated, device, dtype) "
                    "SELECT * FROM _emb")
        con.unregister("_emb")


@dataclass
class _Row:
    """One item as it will be written."""

    key: str
    content_hash: str | None
    text: str | None
    source: str | None
    label: str | None
    meta: str | None
    status: str
    reason: str | None
    item_id: int | None = None

    COLUMNS = ("item_id", "key", "content_hash", "text", "source", "label", "meta", "status", "reason")


def _plan(recs: list[Record], hashes: list, reasons: list, existing: dict, vec_of: dict, trunc_of: dict,
          fresh: set, report: IngestReport, skipped: Counter):
    """Sort the chunk's records into new rows, changed rows (new item id), rows whose label/meta changed, and
    unchanged rows whose vector this encoder made just now (an item first ingested with another encoder): those
    join this encoder's index without a database write."""
    new, changed, relabelled, gone_ids, revectored = [], [], [], [], []
    for r, h, why in zip(recs, hashes, reasons):
        if not why and vec_of.get(h) is None:
            why = "the encoder produced non-finite values (NaN/inf)"
        if why:
            skipped[why] += 1
        else:
            report.cached += h not in fresh
            report.truncated += bool(trunc_of.get(h))
        meta = json.dumps(r.meta, default=str) if r.meta else None
        row = _Row(r.key, h, r.content if isinstance(r.content, str) else None, r.source, r.label, meta,
                   "skipped" if why else "ok", why)
        old = existing.get(r.key)  # (item_id, content_hash, status, label, source, meta)
        if old is None:
            new.append(row)
        elif (old[1], old[2]) != (h, row.status):
            changed.append(row)
            if old[2] == "ok":
                gone_ids.append(old[0])
        else:
            row.item_id = old[0]  # same content: the item keeps its id (and its place in the index)
            if row.status == "ok" and h in fresh:
                revectored.append(row)
            if (old[3], old[4], json.loads(old[5]) if old[5] else None) != \
                    (r.label, r.source, json.loads(meta) if meta else None):
                relabelled.append(row)
    report.new_items += len(new)
    report.updated_items += len(changed)
    report.unchanged_items += len(recs) - len(new) - len(changed)
    return new, changed, relabelled, gone_ids, revectored


def _write(con, dataset: str, record, new_emb: pa.Table | None, new: list[_Row], changed: list[_Row],
           relabelled: list[_Row]) -> None:
    """Vectors and item rows of one chunk (call inside one transaction)."""
    if new_emb is not None:
        insert_embeddings(con, record, new_emb)
    fresh = new + changed
    if fresh:
        ids = con.execute("SELECT nextval('item_seq') FROM range(?)", [len(fresh)]).fetchall()
        for row, (item_id,) in zip(fresh, ids):
            row.item_id = item_id
    rewrite = changed + relabelled
    if rewrite:
        con.register("_gone", pa.table({"key": [r.key for r in rewrite]}))
        con.execute("DELETE FROM items WHERE dataset = ? AND key IN (SELECT key FROM _gone)", [dataset])
        con.unregister("_gone")
    rows = fresh + relabelled
    if rows:
        tbl = pa.table({c: pa.array([getattr(r, c) for r in rows], pa.int64() if c == "item_id" else pa.string())
                        for c in _Row.COLUMNS})
        con.register("_items", tbl)
        con.execute(f"INSERT INTO items (dataset, {', '.join(_Row.COLUMNS)}) SELECT ?, "
                    + ", ".join("meta::JSON" if c == "meta" else c for c in _Row.COLUMNS) + " FROM _items",
                    [dataset])
        con.unregister("_items")


def _ingest_chunk(store: "Store", enc: Encoder, record, live, dataset: str, source: str, chunk: list[Record],
                  report: IngestReport, skipped: Counter, bar: Any) -> None:
    report.rows += len(chunk)
    by_key: dict[str, Record] = {}
    for r in chunk:
        report.duplicate_keys += r.key in by_key
        by_key[r.key] = r
    recs = list(by_key.values())
    hashes = [content_hash(r.content) if r.content is not None else None for r in recs]
    reasons = [r.reason or (enc.skip_reason(r.content) if r.content is not None else "unreadable")
               for r in recs]
    wanted = sorted({h for h, why in zip(hashes, reasons) if h and not why})
    with store.connect() as con:
        con.register("_keys", pa.table({"key": [r.key for r in recs]}))
        existing = {row[0]: row[1:] for row in con.execute(
            "SELECT key, item_id, content_hash, status, label, source, meta FROM items WHERE dataset = ? AND key IN "
            "(SELECT key FROM _keys)", [dataset]).fetchall()}
        con.unregister("_keys")
        vec_of, trunc_of = lookup_cached(con, record, wanted)
    todo = [h for h in wanted if h not in vec_of]
    bar.update(len(chunk) - len(todo))
    new_emb = None
    if todo:
        store.release()  # let readers in while the encoder runs
        content_of = {h: r.content for h, r in zip(hashes, recs)}
        new_emb = embed_missing(enc, record, todo, content_of, vec_of, trunc_of, bar.update)
        report.embedded += new_emb.num_rows
        failed = {h for h in todo if vec_of.get(h) is None}
        if failed:  # an image decoder learns why a file cannot be embedded only when it decodes it: ask again
            reasons = [why or (enc.skip_reason(r.content) if h in failed else None)
                       for r, h, why in zip(recs, hashes, reasons)]
    new, changed, relabelled, gone_ids, revectored = _plan(recs, hashes, reasons, existing, vec_of, trunc_of, set(todo),
                                               report, skipped)
    with store.transaction() as con:
        store.ensure_dataset(dataset, enc.modality, source)
        con.execute("INSERT INTO dataset_encoders VALUES (?, ?) ON CONFLICT DO NOTHING",
                    [dataset, record.fingerprint])
        _write(con, dataset, record, new_emb, new, changed, relabelled)
        fault_point("ingest.chunk.before_commit")
    fault_point("ingest.chunk.after_commit")
    # committed: mirror it in the index
    live.remove(np.asarray(gone_ids, np.int64))
    ok = [r for r in new + changed if r.status == "ok"] + revectored
    if ok:
        live.add(np.asarray([r.item_id for r in ok], np.int64), np.stack([vec_of[r.content_hash] for r in ok]))
    fault_point("ingest.chunk.after_index_add")
    bar.set_postfix(embedded=report.embedded, cached=report.cached, skipped=sum(skipped.values()))
