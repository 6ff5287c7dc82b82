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
from itertools import islice
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from embedstore import config
from embedstore.encoders import Encoder, get_encoder
from embedstore.ingest.hashing import content_hash
from embedstore.ingest.progress import Progress
from embedstore.ingest.sources import Record, TableOptions, open_source
from embedstore.store.db import arrow_table
from embedstore.store.features import vector_block
from embedstore.store.store import check_dataset_name

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

    def summary(self) -> str:
        skipped = sum(self.skipped.values())
        lines = [f"{self.dataset} <- {self.encoder} (fp:{self.fingerprint[:12]}): {self.rows:,} rows in "
                 f"{self.seconds:.1f}s; items new {self.new_items:,}, updated {self.updated_items:,}, "
                 f"unchanged {self.unchanged_items:,}; vectors embedded {self.embedded:,}, cached {self.cached:,}; "
                 f"skipped {skipped:,}; truncated {self.truncated:,}; index {self.index}"]
        lines += [f"  skipped {n:,}: {reason}" for reason, n in sorted(self.skipped.items(), key=lambda x: -x[1])]
        if self.duplicate_keys:
            lines.append(f"  {self.duplicate_keys:,} rows repeated an earlier key in the same chunk; the last won")
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return asdict(self)


CHUNK_START, CHUNK_MAX, CHUNK_SECONDS = 1024, 65_536, 2.0


def ingest(store: "Store", source: Any, *, dataset: str, encoder: str | Encoder, text_column: str = "text",
           label_column: str | None = None, id_column: str | None = None, sep: str | None = None,
           quoting: str = "auto", header: bool = True, columns: list[str] | None = None,
           encoding: str = "utf-8", format: str | None = None, source_name: str | None = None,
           chunk_size: int | None = None, progress: bool = True) -> IngestReport:
    """Embed `source` into `dataset` with `encoder` (a spec or an Encoder); returns what happened."""
    store._require_writable()
    check_dataset_name(dataset)
    opts = TableOptions(text_column, label_column, id_column, sep, quoting, header, columns, encoding, format)
    src = open_source(source, opts, source_name)
    enc = get_encoder(encoder) if isinstance(encoder, str) else encoder
    start = time.perf_counter()
    store.ensure_dataset(dataset, enc.modality, src.name)
    record = store.register_encoder(enc, dataset)
    live = store.index(dataset, record)
    report = IngestReport(dataset, enc.spec, record.fingerprint)
    skipped: Counter = Counter()
    every = int(config.setting("checkpoint_items"))
    size = chunk_size or CHUNK_START
    it = iter(src)
    with Progress(total=src.total, desc=f"ingest {dataset}", enabled=progress) as bar:
        while chunk := list(islice(it, size)):
            t0 = time.perf_counter()
            _ingest_chunk(store, enc, record, live, dataset, chunk, report, skipped, bar)
            if live.unsaved >= every:
                live.persist()
            if not chunk_size and time.perf_counter() - t0 < CHUNK_SECONDS:
                size = min(size * 2, CHUNK_MAX)  # fast encoder or cached rows: fewer, larger transactions
    live.persist()
    store.release()
    report.skipped = dict(skipped)
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
    if rows.num_rows:
        con.register("_emb", rows)
        con.execute(f"INSERT INTO {record.table} (content_hash, vector, n_tokens, truncated, device, dtype) "
                    "SELECT * FROM _emb ON CONFLICT DO NOTHING")
        con.unregister("_emb")


def _ingest_chunk(store: "Store", enc: Encoder, record, live, dataset: str, chunk: list[Record],
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
    keys_tbl = pa.table({"key": [r.key for r in recs]})
    hash_list = sorted({h for h, why in zip(hashes, reasons) if h and not why})
    with store.connect() as con:
        con.register("_keys", keys_tbl)
        existing = {row[0]: row[1:] for row in con.execute(
            "SELECT key, item_id, content_hash, status, label, source, meta FROM items WHERE dataset = ? AND key IN "
            "(SELECT key FROM _keys)", [dataset]).fetchall()}
        con.unregister("_keys")
        cached_vec, cached_trunc = lookup_cached(con, record, hash_list)
    vec_of, trunc_of = cached_vec, cached_trunc
    todo = [h for h in hash_list if h not in vec_of]
    todo_set = set(todo)
    content_of = {h: r.content for h, r in zip(hashes, recs) if h in todo_set}
    bar.update(len(chunk) - len(todo))
    new_emb = None
    if todo:
        store.release()  # let readers in while the encoder runs
        new_emb = embed_missing(enc, record, todo, content_of, vec_of, trunc_of, bar.update)
        report.embedded += new_emb.num_rows

    # decide each item's row
    inserts, updates, relabels = [], [], []
    remove_ids: list[int] = []
    for r, h, why in zip(recs, hashes, reasons):
        if not why and vec_of.get(h) is None:
            why = "the encoder produced non-finite values (NaN/inf)"
        status = "skipped" if why else "ok"
        if why:
            skipped[why] += 1
        elif h not in todo_set:
            report.cached += 1
        if status == "ok" and trunc_of.get(h):
            report.truncated += 1
        meta = json.dumps(r.meta, default=str) if r.meta else None
        row = [r.key, h, r.content if enc.modality == "text" else None, r.source, r.label, meta, status, why]
        old = existing.get(r.key)
        if old is None:
            inserts.append(row)
            report.new_items += 1
        elif old[1] != h or old[2] != status:
            updates.append(row)
            if old[2] == "ok":
                remove_ids.append(old[0])
            report.updated_items += 1
        else:
            if (old[3], old[4], json.loads(old[5]) if old[5] else None) != \
                    (r.label, r.source, json.loads(meta) if meta else None):
                relabels.append(row)
            report.unchanged_items += 1

    with store.transaction() as con:
        if new_emb is not None:
            insert_embeddings(con, record, new_emb)
        rows = inserts + updates
        ids = [v for (v,) in con.execute("SELECT nextval('item_seq') FROM range(?)", [len(rows)]).fetchall()] \
            if rows else []
        if updates or relabels:
            con.register("_gone", pa.table({"key": [u[0] for u in updates + relabels]}))
            old_ids = {k: i for k, i in con.execute("SELECT key, item_id FROM items WHERE dataset = ? AND key IN "
                                                   "(SELECT key FROM _gone)", [dataset]).fetchall()}
            con.execute("DELETE FROM items WHERE dataset = ? AND key IN (SELECT key FROM _gone)", [dataset])
            con.unregister("_gone")
            ids += [old_ids[row[0]] for row in relabels]  # same content: the item keeps its id
            rows = rows + relabels
        if rows:
            tbl = pa.table({
                "item_id": pa.array(ids, pa.int64()), "dataset": pa.array([dataset] * len(rows), pa.string()),
                **{name: pa.array([row[i] for row in rows], pa.string()) for i, name in enumerate(
                    ["key", "content_hash", "text", "source", "label", "meta", "status", "reason"])}})
            con.register("_items", tbl)
            con.execute("INSERT INTO items (item_id, dataset, key, content_hash, text, source, label, meta, status, "
                        "reason) SELECT item_id, dataset, key, content_hash, text, source, label, meta::JSON, "
                        "status, reason FROM _items")
            con.unregister("_items")
        rows = rows[:len(rows) - len(relabels)]
        ids = ids[:len(rows)]
    # the database is committed; mirror it in the index
    live.remove(np.asarray(remove_ids, np.int64))
    ok = [(iid, row[1]) for iid, row in zip(ids, rows) if row[6] == "ok"]
    if ok:
        live.add(np.asarray([i for i, _ in ok], np.int64), np.stack([vec_of[h] for _, h in ok]))
    bar.set_postfix(embedded=report.embedded, cached=report.cached, skipped=sum(skipped.values()))
