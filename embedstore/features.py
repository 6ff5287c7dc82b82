"""Features: vectors out of DuckDB into numpy, streamed through Arrow record batches into one preallocated matrix.

Peak memory is the float32 matrix plus one record batch: no second full-size copy. With `memmap=PATH` the
matrix is a .npy file on disk instead (np.load(PATH, mmap_mode="r") reads it back), written a batch at a time
and dropped from memory as it is written, so that features larger than RAM stream to heads that read them in
chunks (`--model sgd`).
"""

from __future__ import annotations

import mmap
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, Sequence

import numpy as np
import pyarrow as pa

from embedstore import config
from embedstore.errors import InputError, MemoryLimitError, NotFoundError
from embedstore.store import catalog
from embedstore.store.queries import arrow_batches, arrow_table, rows_for, scalar, vector_block
from embedstore.store.schema import not_skipped

if TYPE_CHECKING:
    import duckdb

    from embedstore.store.catalog import EncoderRecord
    from embedstore.store.database import Database


ITEM_COLUMNS = ("item_id", "dataset", "key", "content_hash", "text", "source", "label", "updated")


def column_expr(name: str, label_column: str | None = None) -> tuple[str, list]:
    """SQL for an item column: `label` is the ingest's --label-column, which may also be called by its own name
    (`label_column`); other names are read from the item's metadata (the source's remaining columns)."""
    if name == "content_hash":
        return "hash_hex(i.content_hash)", []
    if name in ITEM_COLUMNS:
        return f"i.{name}", []
    if label_column and name == label_column:
        return "i.label", []
    return "json_extract_string(i.meta, ?)", ['$."' + name.replace('"', '\\"') + '"']


def _columns(con: "duckdb.DuckDBPyConnection", dataset: str, sample: int = 1000) -> list[str]:
    """The item columns plus the metadata keys seen in a sample of the dataset's items."""
    keys = con.execute("SELECT DISTINCT unnest(json_keys(meta)) FROM (SELECT meta FROM items WHERE dataset = ? "
                       "AND meta IS NOT NULL LIMIT ?)", [dataset, sample]).fetchall()
    return [*ITEM_COLUMNS, *sorted(k[0] for k in keys)]


def label_column(con: "duckdb.DuckDBPyConnection", dataset: str) -> str | None:
    """The source column the dataset's labels were ingested from (None: no label column, or a store written
    before it was recorded, whose migration m002 a read-only opener may not have applied yet)."""
    cur = con.execute("SELECT * FROM datasets WHERE name = ?", [dataset])
    rows = cur.fetchall()
    return dict(zip([d[0] for d in cur.description], rows[0])).get("label_column") if rows else None


JOIN_ROWS = 2_000_000  # items per hash join of items with an embedding table (its hash table fits DuckDB's memory)


def parts(n: int, column: str) -> list[str]:
    """SQL conditions ("AND column % P = p") that split n rows into parts of about JOIN_ROWS by an integer
    column (e.g. a content hash, spread evenly): a join (or anti-join) over 10M rows builds a hash table DuckDB's
    default memory limit cannot hold; one per part can. [""] when one part does."""
    count = max(1, -(-n // JOIN_ROWS))
    return [""] if count == 1 else [f"AND {column} % {count} = {p}" for p in range(count)]


def item_parts(con: "duckdb.DuckDBPyConnection", dataset: str) -> list[str]:
    """Conditions on a dataset's items (alias i) that split them into ranges of item ids of about JOIN_ROWS
    items each (cut at quantiles): each join's hash table fits DuckDB's memory, each part scans only the row
    groups of its range (ids grow with insertion), and rows read in item-id order land in one region of a
    memory-mapped matrix. [""] when one part does."""
    n = scalar(con, "SELECT count(*) FROM items WHERE dataset = ?", [dataset]) or 0
    count = -(-n // JOIN_ROWS)
    if count <= 1:
        return [""]
    cuts = scalar(con, "SELECT quantile_disc(item_id, ?) FROM items WHERE dataset = ?",
                  [[j / count for j in range(1, count)], dataset])
    lows, highs = [None, *cuts], [*cuts, None]
    return [(f"AND i.item_id > {int(lo)} " if lo is not None else "") +
            (f"AND i.item_id <= {int(hi)}" if hi is not None else "") for lo, hi in zip(lows, highs)]


def iter_vectors(con: "duckdb.DuckDBPyConnection", dataset: str, record: "EncoderRecord",
                 where: str = "", params: Sequence = (), batch_rows: int | None = None
                 ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(item_ids, vectors) batches of the dataset's items that have a vector of `record`, in no particular
    order (sorting would make DuckDB sort the vectors too)."""
    for part in item_parts(con, dataset):
        sql = (f"SELECT i.item_id, e.vector FROM items i JOIN {record.table} e ON e.content_hash = i.content_hash "
               f"WHERE i.dataset = ? AND {not_skipped(record.fingerprint)} {where} {part}")
        for batch in arrow_batches(con, sql, [dataset, *params], batch_rows or rows_for(record.dim)):
            yield (batch.column(0).to_numpy().astype(np.int64, copy=False),
                   vector_block(batch.column(1), record.dim))


@dataclass
class FeatureSet:
    """Rows in item-id order. Compact at 10M rows (tens of bytes a row, no Python object per row but a label's):
    keys a numpy string array, content hashes their 16 raw bytes ("S16"; `.hex()` gives the hex form), labels
    and groups object arrays sharing one Python string per distinct value."""

    X: np.ndarray
    y: np.ndarray | None
    keys: np.ndarray
    content_hashes: np.ndarray
    item_ids: np.ndarray
    fingerprints: list[str]
    n_missing_vectors: int = 0
    n_unlabelled: int = 0
    specs: list[str] = field(default_factory=list)
    groups: np.ndarray | None = None


def load_features(db: "Database", dataset: str, records: list["EncoderRecord"], label: str | None,
                  group: str | None = None, memmap: str | os.PathLike | None = None) -> FeatureSet:
    """Rows: items with vectors of every record (concatenated in order) and, if `label`, a label. With `memmap`
    (a file path), X is a read-only np.memmap of the .npy written there."""
    catalog.require_dataset(db, dataset)
    joins = " ".join(f"JOIN {r.table} e{j} ON e{j}.content_hash = i.content_hash" for j, r in enumerate(records))
    base = f"FROM items i {joins} WHERE i.dataset = ? AND " + " AND ".join(not_skipped(r.fingerprint) for r in records)
    with db.connect() as con:
        named = label_column(con, dataset)
        lab, lparams = column_expr(label, named) if label else ("NULL", [])
        grp, gparams = column_expr(group, named) if group else ("NULL", [])
        filt, fparams = (f" AND {lab} IS NOT NULL", lparams) if label else ("", [])
        n_ok = scalar(con, "SELECT count(*) FROM items WHERE dataset=?", [dataset])
        split = item_parts(con, dataset)  # every join over the items runs in parts (DuckDB's memory)
        n_vec = sum(scalar(con, f"SELECT count(*) {base} {part}", [dataset]) for part in split)
        n = sum(scalar(con, f"SELECT count(*) {base}{filt} {part}", [dataset, *fparams]) for part in split)
        if n == 0:
            what = f"with a {label!r} label " if label else ""
            hint = "" if not label or label in ITEM_COLUMNS or named else (
                ". If that is the column its labels were ingested from, say --label label (this dataset was "
                "ingested before embedstore recorded label column names), or re-ingest it")
            raise NotFoundError(f"dataset {dataset!r} has no items {what}with vectors of "
                                f"{'+'.join(r.spec for r in records)} ({n_ok} items, {n_vec} with vectors){hint}")
        dims = [r.dim for r in records]
        if memmap is not None:
            check_disk(Path(memmap), n * sum(dims) * 4, dataset)
        check_memory(n, sum(dims), dataset, copies=0 if memmap is not None else COPIES)
        # the items' small columns, part by part into compact arrays, then in item-id order; then each encoder's
        # vectors streamed (the plain join of iter_vectors, which DuckDB runs in bounded memory even for wide
        # vectors) into their rows in place
        cols = [_compact(arrow_table(
            con, f"SELECT i.item_id, i.key, unhex(hash_hex(i.content_hash)), {lab}, {grp} {base}{filt} {part}",
            [*lparams, *gparams, dataset, *fparams]), bool(label), bool(group)) for part in split]
        columns = [np.concatenate([c.pop(0) for c in cols]) for _ in range(5)]  # each part's arrays freed as used
        order = np.argsort(columns[0], kind="stable")
        for j in range(5):
            if len(columns[j]):
                columns[j] = columns[j][order]  # one column at a time: one extra copy at most
        ids, keys, hashes, ys, gs = columns
        del cols, columns, order
        X = _matrix(n, sum(dims), memmap)
        off, written = 0, 0
        for record, d in zip(records, dims):
            for batch_ids, x in iter_vectors(con, dataset, record):
                pos = np.minimum(np.searchsorted(ids, batch_ids), n - 1)
                hit = ids[pos] == batch_ids  # items without a label or another encoder's vector are not rows
                X[pos[hit], off:off + d] = x[hit]
                written += x.nbytes
                if memmap is not None and written >= DROP_BYTES:
                    _drop_pages(X)
                    written = 0
            off += d
        if memmap is not None:
            _drop_pages(X)
            X = np.load(memmap, mmap_mode="r")
        if group and all(g is None for g in gs):
            raise NotFoundError(f"no item of dataset {dataset!r} has a {group!r} column (for --group-column); "
                                f"columns: {', '.join(_columns(con, dataset))}")
    return FeatureSet(X, ys if label else None, keys, hashes, ids,
                      [r.fingerprint for r in records], n_missing_vectors=n_ok - n_vec,
                      n_unlabelled=n_vec - n if label else 0, specs=[r.spec for r in records],
                      groups=gs if group else None)


def _compact(table: "pa.Table", label: bool, group: bool) -> list[np.ndarray]:
    """[item ids, keys, 16-byte hashes, labels, groups] of one part's rows as compact numpy arrays (labels and
    groups empty when not asked for)."""
    ids = table.column(0).to_numpy().astype(np.int64, copy=False)
    keys = np.array(table.column(1).to_pylist(), dtype=np.dtypes.StringDType())
    raw = table.column(2).combine_chunks().cast(pa.binary(16))
    hashes = np.frombuffer(raw.buffers()[1], dtype="S16", count=len(raw) + raw.offset)[raw.offset:].copy()
    nothing = np.empty(0, dtype=object)
    return [ids, keys, hashes, _shared(table.column(3)) if label else nothing,
            _shared(table.column(4)) if group else nothing]


def _shared(column: "pa.ChunkedArray") -> np.ndarray:
    """An object array in which equal values are one Python object (8 bytes a row, not a string each)."""
    coded = column.combine_chunks().dictionary_encode()
    values = np.array(coded.dictionary.to_pylist() + [None], dtype=object)
    return values[coded.indices.fill_null(len(coded.dictionary)).to_numpy()]


ROW_BYTES = 300   # a row's item id, key, content hash and label as Python objects, beside its features
COPIES = 5        # the float32 matrix, and a head's float64 copy of it, scaled (2 x 2 x float32)
DROP_BYTES = 256 * 2**20  # a memory-mapped matrix being written is dropped from memory after this much


def _matrix(n: int, width: int, memmap: str | os.PathLike | None) -> np.ndarray:
    if memmap is None:
        return np.empty((n, width), dtype=np.float32)
    return np.lib.format.open_memmap(Path(memmap), mode="w+", dtype=np.float32, shape=(n, width))


def _drop_pages(X: np.memmap) -> None:
    """Write a memory-mapped matrix's dirty pages to its file and drop them from this process's memory (the
    page cache keeps them for the reads that follow, without counting them against this process)."""
    X.flush()
    X._mmap.madvise(mmap.MADV_DONTNEED)


def check_memory(n: int, width: int, dataset: str, copies: int = COPIES) -> None:
    """Refuse, before anything is read, features whose matrix and the copies a fit makes would not fit the
    memory there is (EMBEDSTORE_FEATURES_MEMORY, default what the system has available). `copies=0`: the matrix
    goes to a file and is read back in chunks (memmap)."""
    raw = config.setting("features_memory")
    budget = config.available_memory() if raw == "auto" else config.size("features_memory")
    need = n * (copies * 4 * width + ROW_BYTES)
    if budget and need > budget:
        held = f"{copies} float32 copies while a head fits" if copies else "read from a file in chunks"
        advice = ("Fit a head that streams its features from a file (--model sgd), fit on a sample of the rows "
                  "(ingest a subset into its own dataset), use a narrower encoder" if copies else
                  "Fit on a sample of the rows (ingest a subset into its own dataset)")
        raise MemoryLimitError(
            f"the features of dataset {dataset!r} need about {need / 1e9:.1f} GB ({n:,} rows x {width} float32 "
            f"features, {held}, and each row's key and label), but "
            f"{budget / 1e9:.1f} GB is available ({'system MemAvailable' if raw == 'auto' else 'EMBEDSTORE_FEATURES_MEMORY'}"
            f"). {advice}, close other programs, or set EMBEDSTORE_FEATURES_MEMORY higher if the memory is there")


def check_disk(path: Path, need: int, dataset: str) -> None:
    """Refuse a memory-mapped matrix that the file system at `path` has no room for (before writing any)."""
    import shutil
    if not path.parent.is_dir():
        raise InputError(f"cannot write features to {path}: folder {path.parent} does not exist")
    free = shutil.disk_usage(path.parent).free
    if need > free:
        raise MemoryLimitError(f"the features of dataset {dataset!r} need {need / 1e9:.1f} GB at {path}, but "
                               f"{free / 1e9:.1f} GB is free there: choose a path on a larger disk")


def features_for(db: "Database", dataset: str, encoder: str, label: str | None, group: str | None = None,
                 memmap: str | os.PathLike | None = None) -> FeatureSet:
    """The dataset's features for an encoder spec as a user writes it ('' = its only encoder; `a+b`
    concatenates)."""
    return load_features(db, dataset, catalog.resolve_feature_set(db, encoder, dataset), label, group, memmap)


def texts_of(db: "Database", dataset: str, item_ids: Sequence[int]) -> list[str | None]:
    """The items' stored text (None for images, audio), in the order of `item_ids`."""
    with db.connect() as con:
        con.register("_ids", pa.table({"item_id": pa.array(np.asarray(item_ids, np.int64))}))
        try:
            found = dict(con.execute("SELECT i.item_id, i.text FROM items i JOIN _ids USING (item_id) "
                                     "WHERE i.dataset = ?", [dataset]).fetchall())
        finally:
            con.unregister("_ids")
    return [found.get(int(i)) for i in item_ids]


def features_of(db: "Database", dataset: str, specs: list[str], fingerprints: list[str], label: str | None
                ) -> FeatureSet:
    """A dataset's features of exactly these encoders (by fingerprint), e.g. dev or test for a head's train."""
    return load_features(db, dataset, catalog.records_in(db, dataset, specs, fingerprints), label)
