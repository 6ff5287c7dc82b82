"""The one data path: records -> content hash -> cache lookup -> encode what is missing -> one transaction per
chunk (items + embeddings) -> FAISS update -> checkpoints.

A crash loses at most the chunk in flight; a rerun finds everything committed in the cache and embeds nothing
twice. The DuckDB connection is closed while the encoder runs, so read-only openers can query between chunks.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Iterator

import numpy as np
import pyarrow as pa

from embedstore import config
from embedstore.encoders import Encoder, get_encoder
from embedstore.errors import InputError, SourceCutError, resource_errors_as_clear
from embedstore.faults import fault_point
from embedstore.index import sync
from embedstore.index.sync import LiveIndex
from embedstore.ingest import unchanged
from embedstore.ingest.cache import NON_FINITE, embed_cached, insert
from embedstore.ingest.progress import Progress
from embedstore.sources import Record, TableOptions, open_source
from embedstore.sources.records import storable
from embedstore.store import catalog
from embedstore.store.catalog import EncoderRecord, check_name
from embedstore.store.queries import first, rows_for
from embedstore.validate import counted

if TYPE_CHECKING:
    from embedstore.store.database import Database


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
    escaped: int = 0           # rows with a key/label/metadata UTF-8 cannot hold, stored escaped
    seconds: float = 0.0
    index: str = ""
    notes: list = field(default_factory=list)     # from the source, e.g. files it ignored

    def summary(self) -> str:
        skipped = sum(self.skipped.values())
        lines = [f"{self.dataset} <- {self.encoder} (fp:{self.fingerprint[:12]}): {counted(self.rows, 'row')} in "
                 f"{self.seconds:.1f}s; items new {self.new_items:,}, updated {self.updated_items:,}, "
                 f"unchanged {self.unchanged_items:,}; vectors embedded {self.embedded:,}, cached {self.cached:,}; "
                 f"skipped {skipped:,}; truncated {self.truncated:,}; index {self.index}"]
        lines += [f"  skipped {n:,}: {reason}" for reason, n in sorted(self.skipped.items(), key=lambda x: -x[1])]
        if self.escaped:
            lines.append(f"  {counted(self.escaped, 'row')} held unpaired surrogates (half characters) that UTF-8 cannot "
                         "store: their key, label or metadata are stored escaped, their text skipped")
        if self.duplicate_keys:
            lines.append(f"  {counted(self.duplicate_keys, 'row')} repeated an earlier key of the source and "
                         "were not written (the first row of a key is kept; give unique ids with --id-column)")
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return asdict(self)


CHUNK_START, CHUNK_MAX, CHUNK_MIN, CHUNK_SECONDS = 1024, 16_384, 16, 2.0
CHUNK_LIMIT = 1_000_000  # the most rows a user may put in one transaction (--chunk-size)
CHUNK_BYTES = 256 << 20  # a chunk also ends at this much binary content (image files), to bound memory


def _take(it: Iterator[Record], size: int, cut: list[SourceCutError]) -> list[Record]:
    """The next chunk: `size` records, or fewer once their binary content reaches CHUNK_BYTES. A stream of
    independent items that is cut part-way (a truncated tar) ends the chunk: the whole items read before the cut
    are returned, to be committed, and the error is put in `cut` for the caller to raise after them. Other source
    errors (undecodable bytes in a table) leave the chunk unwritten."""
    chunk, nbytes = [], 0
    try:
        for r in it:
            chunk.append(r)
            nbytes += len(r.content) if isinstance(r.content, bytes) else 0
            if len(chunk) >= size or nbytes >= CHUNK_BYTES:
                break
    except SourceCutError as e:
        if not chunk:
            raise
        cut.append(e)
    return chunk


@resource_errors_as_clear()
def ingest(db: "Database", source: Any, *, dataset: str, encoder: str | Encoder, text_column: str = "text",
           label_column: str | None = None, id_column: str | None = None, sep: str | None = None,
           quoting: str = "auto", header: bool = True, columns: list[str] | None = None,
           encoding: str = "utf-8", format: str | None = None, source_name: str | None = None,
           chunk_size: int | None = None, progress: bool = True, path_column: str | None = None,
           replace: bool = False, engine: Callable[..., IngestReport] | None = None) -> IngestReport:
    """Embed `source` into `dataset` with `encoder` (a spec or an Encoder); returns what happened.

    Keys: `id_column`, else `<file name>:<row>` for files and a digest of the row for Python rows (see
    embedstore.sources). A key repeated in the source keeps its first row (the others are counted, not
    written). Items that the same keys hold from another source file are replaced only with `replace=True`.
    `engine(db, enc, source, opts, source_name, dataset=, label_column=, replace=, progress=)` replaces the read
    and the embedding (the Ray engine); the unchanged-file shortcut and its record stay here."""
    db.require_writable()
    check_name(dataset)
    if chunk_size is not None and not 1 <= chunk_size <= CHUNK_LIMIT:
        raise InputError(f"chunk_size={chunk_size:,}: rows per transaction must be from 1 to {CHUNK_LIMIT:,}")
    opts = TableOptions(text_column, label_column, id_column, sep, quoting, header, columns, encoding, format,
                        path_column=path_column)
    enc = get_encoder(encoder) if isinstance(encoder, str) else encoder
    start = time.perf_counter()
    identity = unchanged.file_identity(source, opts, {"source_name": source_name, "modality": enc.modality})
    with db.writing():
        if identity and (before := unchanged.recorded(db, enc, dataset, identity)) is not None:
            return unchanged_report(before, time.perf_counter() - start)
        if engine is not None:
            report = engine(db, enc, source, opts, source_name, dataset=dataset, label_column=label_column,
                            replace=replace, progress=progress)
        else:
            src = open_source(source, opts, source_name, enc.modality)
            report = ingest_source(db, enc, src, dataset=dataset, label_column=label_column, replace=replace,
                                   chunk_size=chunk_size, progress=progress)
        if identity:
            unchanged.remember(db, enc, dataset, identity, report)
    return report


def unchanged_report(before: dict, seconds: float) -> IngestReport:
    """What re-ingesting an unchanged file into an unchanged dataset amounts to: every item unchanged, every
    vector cached, the same skips and repeats as the ingest that made it so."""
    r = IngestReport(**{k: before[k] for k in ("dataset", "encoder", "fingerprint", "rows", "skipped", "truncated",
                                               "duplicate_keys", "escaped")})
    r.unchanged_items = before["new_items"] + before["updated_items"] + before["unchanged_items"]
    r.cached = before["embedded"] + before["cached"]
    r.seconds = seconds
    r.index = before["index"].split(" (")[0] + " (unchanged)"
    r.notes = ["the file and the dataset are as the last ingest of this file with this encoder left them (same "
               "sha256 and read options): nothing was re-read"]
    return r


def ingest_source(db: "Database", enc: Encoder, src: Any, *, dataset: str, label_column: str | None = None,
                  replace: bool = False, chunk_size: int | None = None, progress: bool = True,
                  on_commit: Callable[[int], None] | None = None) -> IngestReport:
    """`ingest` of an opened Source (records already read by a source reader, or an import's carried rows).
    `on_commit(rows)` is called after each committed chunk with the number of source rows committed so far."""
    db.require_writable()
    check_name(dataset)
    start = time.perf_counter()
    with db.writing():
        return _ingest(db, enc, src, dataset, label_column, replace, chunk_size, progress, start, on_commit)


def _ingest(db: "Database", enc: Encoder, src: Any, dataset: str, label_column: str | None, replace: bool,
            chunk_size: int | None, progress: bool, start: float,
            on_commit: Callable[[int], None] | None = None) -> IngestReport:
    it = iter(src)
    cut: list[SourceCutError] = []
    head = _take(it, 1, cut)  # the first row: a reader's own errors (a missing column) come before anything is written
    it = itertools.chain(head, it)
    catalog.require_fresh_dataset_modality(db, dataset, enc.modality)
    record = catalog.register_encoder(db, enc)
    live = sync.live_index(db, dataset, record)
    if src.total:
        live.reserve(live.index.ntotal + src.total)
    report = IngestReport(dataset, enc.spec, record.fingerprint)
    with db.connect() as con:
        held = first(con, "SELECT count(*) FROM (SELECT 1 FROM items WHERE dataset = ? LIMIT 1)", [dataset])[0] > 0
    run = _Run(dataset, src.name, label_column, replace, report, held)
    every = config.number("checkpoint_items", int, 1)
    cap = min(CHUNK_MAX, 4 * rows_for(record.dim))  # rows per chunk: wide vectors make chunks of fewer rows
    size = chunk_size or min(enc.first_chunk, CHUNK_START, cap)
    with Progress(total=src.total, desc=f"ingest {dataset}", enabled=progress) as bar:
        while chunk := _take(it, size, cut):
            t0 = time.perf_counter()
            _ingest_chunk(db, enc, record, live, run, chunk, bar)
            if on_commit:
                on_commit(report.rows)
            if cut:  # the source failed after these rows: they are committed, the error is the ingest's outcome
                live.persist()
                raise cut[0]
            if live.unsaved >= max(every, live.index.ntotal // 4):  # geometric: total writes stay O(n)
                live.persist()
            db.yield_to_readers()
            took = time.perf_counter() - t0
            if not chunk_size and took < CHUNK_SECONDS:
                size = min(size * 2, cap)  # fast encoder or cached rows: fewer, larger transactions
            elif not chunk_size and took > 4 * CHUNK_SECONDS:
                size = max(size // 2, CHUNK_MIN)  # slow encoder: a crash loses at most a few seconds of work
    live.persist()
    sync.forget(db, keep=live)  # others may hold re-keyed items or lack vectors shared with this dataset
    db.release()
    report.skipped = dict(run.skipped)
    report.notes = list(src.notes)
    if not report.rows:
        report.notes.append(f"the source held no rows ({src.name}): check the path, the --format, or, for a "
                            "folder, that it holds .txt files (tables are ingested as files, not folders)")
    report.index = f"{live.index.factory} ({live.index.ntotal:,} vectors, {live.origin} on open)"
    report.seconds = time.perf_counter() - start
    return report


@dataclass
class _Run:
    """What every chunk of one ingest shares."""

    dataset: str
    source: str                   # the source's name (datasets.source)
    label_column: str | None
    replace: bool                 # items of the same keys from another source file may be replaced
    report: IngestReport
    held_items: bool              # the dataset had items before: any key may be one of them (else only keys seen)
    skipped: Counter = field(default_factory=Counter)
    seen: "SeenKeys" = field(default_factory=lambda: SeenKeys())  # keys read so far: a repeat keeps its first row


class SeenKeys:
    """The keys one ingest has read, as sorted 8-byte digests in a few blocks (merged as they grow, so adding
    stays O(n log n) in all): 8 bytes a key, where a Python set of 10M keys takes about 1 GB. A digest match is
    a repeat only when the dataset holds the key (its first row was written by an earlier chunk), so a 64-bit
    collision cannot drop a key new to the dataset; it could drop an update of a key the dataset holds, with
    odds of about n^2 / 2^65 (3e-6 at 10M keys), counted then as a repeated key."""

    def __init__(self) -> None:
        self.blocks: list[np.ndarray] = []

    @staticmethod
    def digests(keys: list[str]) -> np.ndarray:
        return np.array([int.from_bytes(hashlib.blake2b(k.encode("utf-8", "surrogatepass"), digest_size=8).digest(),
                                        "little") for k in keys], dtype=np.uint64)

    def seen(self, d: np.ndarray) -> np.ndarray:
        hit = np.zeros(len(d), bool)
        for b in self.blocks:
            hit |= b[np.minimum(np.searchsorted(b, d), len(b) - 1)] == d
        return hit

    def add(self, d: np.ndarray) -> None:
        if not len(d):
            return
        self.blocks.append(np.sort(d))
        while len(self.blocks) > 1 and len(self.blocks[-2]) <= 2 * len(self.blocks[-1]):
            b, a = self.blocks.pop(), self.blocks.pop()
            self.blocks.append(np.sort(np.concatenate([a, b])))


def _same_source(old: str | None, new: str | None) -> bool:
    """Whether items from `old` may be updated by `new` without `replace`: two different files (full paths) may
    not; Python objects (no path) and stores written before sources were recorded by path (the file name
    alone) may."""
    return not (old and new and old.startswith("/") and new.startswith("/") and old != new)


@dataclass
class _Row:
    """One item as it will be written, and why this encoder has no vector of it (`reason`, else None)."""

    key: str
    content_hash: str | None
    text: str | None
    source: str | None
    label: str | None
    meta: str | None
    reason: str | None
    item_id: int | None = None

    COLUMNS = ("item_id", "key", "content_hash", "text", "source", "label", "meta")


def _plan(recs: list[Record], hashes: list, reasons: list, existing: dict, vec_of: dict, trunc_of: dict,
          fresh: set, run: _Run):
    """Sort the chunk's records into new rows, changed rows (new content: new item id), rows whose
    label/meta/source changed, unchanged rows whose vector this encoder made just now (an item first ingested
    with another encoder, or one it skipped before): those join this encoder's index without an item write, and
    unchanged rows whose skip by this encoder changed (`reskipped`)."""
    report, skipped = run.report, run.skipped
    new, changed, relabelled, gone_ids, revectored, reskipped = [], [], [], [], [], []
    retagged = 0
    made: set = set()  # fresh vectors already counted: a second row of the same content reuses it (cached)
    other = [r.key for r in recs if r.key in existing and not _same_source(existing[r.key][4], r.source)]
    if other and not run.replace:
        old = existing[other[0]][4]
        raise InputError(f"dataset {run.dataset!r} already holds {len(other):,} of these keys (e.g. {other[0]!r}) "
                         f"from another source, {old}; ingesting {recs[0].source} would replace them. Pass "
                         "--replace (replace=True) if that is meant, give the rows unique ids with --id-column, or "
                         "ingest into another --dataset")
    for r, h, why in zip(recs, hashes, reasons):
        if not why and vec_of.get(h) is None:
            why = NON_FINITE
        if why:
            skipped[why] += 1
        else:
            report.cached += h not in fresh or h in made
            made.add(h)
            report.truncated += bool(trunc_of.get(h))
        meta = json.dumps(r.meta, default=str) if r.meta else None
        row = _Row(r.key, h, r.content if isinstance(r.content, str) else None, r.source, r.label, meta, why)
        old = existing.get(r.key)  # (item_id, content_hash, this encoder's skip reason, label, source, meta)
        if old is None:
            new.append(row)
        elif old[1] != h:
            changed.append(row)
            gone_ids.append(old[0])
        else:
            row.item_id = old[0]  # same content: the item keeps its id (and its place in every index)
            if not why and h in fresh:
                revectored.append(row)
            if old[2] != why:
                reskipped.append(row)
            if (old[3], old[4], json.loads(old[5]) if old[5] else None) != \
                    (r.label, r.source, json.loads(meta) if meta else None):
                relabelled.append(row)  # rewritten; counted as an update when its label or metadata changed
                retagged += (old[3], json.loads(old[5]) if old[5] else None) != \
                    (r.label, json.loads(meta) if meta else None)
    report.new_items += len(new)
    report.updated_items += len(changed) + retagged  # a new label or metadata is an update too
    report.unchanged_items += len(recs) - len(new) - len(changed) - retagged
    return new, changed, relabelled, gone_ids, revectored, reskipped


def _write(con, dataset: str, record: EncoderRecord, new_emb: pa.Table, new: list[_Row], changed: list[_Row],
           relabelled: list[_Row], gone_ids: list[int], reskipped: list[_Row]) -> None:
    """Vectors, item rows and this encoder's skips of one chunk (call inside one transaction). Keys stay unique
    per dataset because the rows to rewrite are deleted first and new keys were looked up as absent."""
    insert(con, record, new_emb)
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
    if gone_ids or reskipped:  # an item's old id takes its skips with it; a kept id's skip by this encoder moves
        con.register("_ids", pa.table({"i": pa.array(gone_ids, pa.int64())}))
        con.register("_kept", pa.table({"i": pa.array([r.item_id for r in reskipped], pa.int64())}))
        con.execute("DELETE FROM skips WHERE item_id IN (SELECT i FROM _ids) OR (fingerprint = ? AND item_id IN "
                    "(SELECT i FROM _kept))", [record.fingerprint])
        con.unregister("_ids")
        con.unregister("_kept")
    skips = [r for r in fresh + reskipped if r.reason]
    if skips:
        con.register("_skips", pa.table({"i": pa.array([r.item_id for r in skips], pa.int64()),
                                         "r": pa.array([r.reason for r in skips], pa.string())}))
        con.execute("INSERT INTO skips SELECT i, ?, r FROM _skips", [record.fingerprint])
        con.unregister("_skips")
    rows = fresh + relabelled
    if rows:
        tbl = pa.table({c: pa.array([getattr(r, c) for r in rows], pa.int64() if c == "item_id" else pa.string())
                        for c in _Row.COLUMNS})
        con.register("_items", tbl)
        con.execute(f"INSERT INTO items (dataset, {', '.join(_Row.COLUMNS)}) SELECT ?, "
                    + ", ".join({"meta": "meta::JSON", "content_hash": "hex_hash(content_hash)"}.get(c, c)
                                for c in _Row.COLUMNS) + " FROM _items",
                    [dataset])
        con.unregister("_items")


def _ingest_chunk(db: "Database", enc: Encoder, record: EncoderRecord, live: LiveIndex, run: _Run,
                  chunk: list[Record], bar: Any) -> None:
    report, dataset = run.report, run.dataset
    report.rows += len(chunk)
    recs, keys = [], set()
    for r in chunk:
        r, escaped = storable(r)
        report.escaped += escaped
        if r.key not in keys:  # the first row of a key stands for it, wherever the repeat is
            keys.add(r.key)
            recs.append(r)
    digests = run.seen.digests([r.key for r in recs])
    maybe = run.seen.seen(digests)
    # keys the dataset may hold: every key when it had items before this ingest, else only the keys this ingest
    # has written (a digest match), so that the lookup does not scan the whole dataset for a new key
    lookup = [r.key for r, m in zip(recs, maybe) if m or run.held_items]
    with db.connect() as con:
        con.register("_keys", pa.table({"key": pa.array(lookup, pa.string())}))
        existing = {row[0]: row[1:] for row in con.execute(
            "SELECT i.key, i.item_id, hash_hex(i.content_hash), s.reason, i.label, i.source, i.meta FROM items i "
            "LEFT JOIN skips s ON s.item_id = i.item_id AND s.fingerprint = ? "
            "WHERE i.dataset = ? AND i.key IN (SELECT key FROM _keys)", [record.fingerprint, dataset]).fetchall()}
        con.unregister("_keys")
        repeat = maybe & np.array([r.key in existing for r in recs], bool)
        run.seen.add(digests[~repeat])
        recs = [r for r, again in zip(recs, repeat) if not again]
        report.duplicate_keys += len(chunk) - len(recs)
        bar.update(len(chunk) - len(recs))
        if not recs:
            return
        got = embed_cached(db, enc, record, [r.content for r in recs], reasons=[r.reason for r in recs], con=con,
                           progress=bar.update)
    report.embedded += got.rows.num_rows
    new, changed, relabelled, gone_ids, revectored, reskipped = _plan(recs, got.hashes, got.reasons, existing, got.vectors,
                                                           got.truncated, set(got.fresh), run)
    with db.transaction() as con:
        catalog.require_fresh_dataset_modality(db, dataset, enc.modality)
        catalog.ensure_dataset(con, dataset, enc.modality, run.source, run.label_column)
        con.execute("INSERT INTO dataset_encoders VALUES (?, ?) ON CONFLICT DO NOTHING",
                    [dataset, record.fingerprint])
        _write(con, dataset, record, got.rows, new, changed, relabelled, gone_ids, reskipped)
        fault_point("ingest.chunk.before_commit")
    fault_point("ingest.chunk.after_commit")
    # committed: mirror it in the index
    live.remove(np.asarray(gone_ids, np.int64))
    ok = [r for r in new + changed if not r.reason] + revectored
    if ok:
        live.add(np.asarray([r.item_id for r in ok], np.int64),
                 np.stack([got.vectors[r.content_hash] for r in ok]))
    fault_point("ingest.chunk.after_index_add")
    bar.set_postfix(embedded=report.embedded, cached=report.cached, skipped=sum(run.skipped.values()))
