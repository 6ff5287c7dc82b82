"""Keep a (dataset, encoder) FAISS index equal to what DuckDB holds.

On open: a missing, corrupt or stale file is rebuilt from DuckDB, or caught up when it reflects a prefix of the
current items (every item id up to the sidecar's `max_id` unchanged). Writers persist at checkpoints and at the
end of an ingest; read-only openers catch up in memory and never write files.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import numpy as np

from embedstore import config
from embedstore.errors import CorruptFileError, StoreLockedError, resource_errors_as_clear
from embedstore.index.faiss_index import EXACT, ID_BYTES, VectorIndex, choose_factory, code_bytes, \
    exact_neighbours, shape
from embedstore.features import item_parts, iter_vectors
from embedstore.store.queries import first
from embedstore.store.schema import not_skipped

if TYPE_CHECKING:
    import duckdb

    from embedstore.store.catalog import EncoderRecord
    from embedstore.store.database import Database

log = logging.getLogger("embedstore")
TRAIN_PER_LIST = 39   # FAISS' own minimum points per centroid
TUNE_QUERIES = 200


def db_state(con: "duckdb.DuckDBPyConnection", dataset: str, record: "EncoderRecord",
             max_id: int | None = None) -> dict:
    """count, xor of id hashes and max id of the items an index should hold (optionally ids <= max_id)."""
    extra, args = ("AND i.item_id <= ?", [max_id]) if max_id is not None else ("", [])
    n, xor, top = 0, 0, 0
    for part in item_parts(con, dataset):  # parts of bounded size: the join's hash table fits DuckDB's memory
        c, x, t = first(
            con, f"SELECT count(*), coalesce(bit_xor(hash(i.item_id)), 0)::VARCHAR, coalesce(max(i.item_id), 0) "
            f"FROM items i JOIN {record.table} e ON e.content_hash = i.content_hash "
            f"WHERE i.dataset = ? AND {not_skipped(record.fingerprint)} {extra} {part}", [dataset, *args])
        n, xor, top = n + c, xor ^ int(x), max(top, t)
    return {"count": int(n), "xor": str(xor), "max_id": int(top)}


class LiveIndex:
    """The in-memory index of one (dataset, encoder), with how it was obtained (`origin`)."""

    def __init__(self, db: "Database", dataset: str, record: "EncoderRecord", index: VectorIndex, origin: str):
        self.db, self.dataset, self.record = db, dataset, record
        self.index = index
        self.origin = origin          # "loaded" | "caught-up" | "rebuilt" | "new"
        self.dirty = origin != "loaded"
        self.unsaved = 0
        self.expected = 0  # rows an ingest announced: a rebuilt index reserves room for them too
        self.state: dict = {}  # the database state it reflects (read-only stores: see refresh)
        self.signature: tuple = ()

    def reserve(self, total: int) -> None:
        """An ingest will bring the index to about `total` vectors: an exact index that stays exact gets room for
        them at once (no reallocation peaks); one that will be rebuilt compressed (see `_outgrown`) is not grown
        beyond the size at which that happens, and the rebuild is chosen for `total`."""
        self.expected = total
        if shape(choose_factory(total, self.index.dim)) == (False, "Flat"):
            self.index.reserve(total)
    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        self.index.add(ids, vectors)
        self.dirty = True
        self.unsaved += len(ids)

    def remove(self, ids: np.ndarray) -> None:
        if self.index.remove(ids):
            self.dirty = True

    def persist(self) -> None:
        """Write the index and its sidecar (writers only); re-choose the factory when the size outgrew it."""
        if not self.db.holds_lock or not self.dirty:
            return  # only the writer persists; others keep their caught-up index in memory
        with self.db.connect() as con:
            state = db_state(con, self.dataset, self.record)
            if state["count"] != self.index.ntotal or _outgrown(self.index, state["count"], self.expected):
                if state["count"] != self.index.ntotal:
                    log.warning("index %s/%s holds %d vectors but the database %d; rebuilding",
                                self.dataset, self.record.short, self.index.ntotal, state["count"])
                self.index = None  # free the old index before its replacement is built from the database
                self.index = build(con, self.dataset, self.record, state["count"], expected=self.expected)
            self.state, self.signature = state, signature(con, self.record)  # it mirrors the writer's own writes
        self.index.save(self.db.index_path(self.dataset, self.record), state)
        self.dirty, self.unsaved = False, 0


def _outgrown(index: VectorIndex, n: int, expected: int = 0) -> bool:
    """Whether an index now holding n vectors (an ingest bringing it to `expected`) must be rebuilt as another
    kind: exact search past `exact_index_max` as soon as there are that many vectors to train on (not only once
    the exact index has grown to the full size: it would take more memory than the compressed one), IVF once
    it holds 4x what it was trained for, and any index whose codes no longer fit EMBEDSTORE_INDEX_MEMORY (or fit
    uncompressed again)."""
    target = max(n, expected)
    rejected = index.params.get("ivf_rejected_at")  # IVF measured not to pay on this data: retried at 4x the data
    wanted = choose_factory(target, index.dim, clustered=not (rejected and target <= 4 * rejected))
    if shape(index.factory) == shape(EXACT) and n <= config.number("exact_index_max", int) and \
            wanted != EXACT and n < target:
        return False  # too few vectors yet to train the compressed index on: stay exact a little longer
    if shape(wanted) != shape(index.factory):
        return True
    return shape(index.factory)[0] and target > 4 * index.params.get("trained_on", target)


def _hash_sample(con: "duckdb.DuckDBPyConnection", dataset: str, record: "EncoderRecord", n: int, size: int
                 ) -> tuple[np.ndarray, np.ndarray]:
    """About `size` vectors chosen by a hash of their item ids: the same sample on every run."""
    frac = min(1.0, 1.2 * size / max(n, 1))
    parts = list(iter_vectors(con, dataset, record, "AND hash(i.item_id) % 1000000 < ?", [int(frac * 1e6)]))
    ids = np.concatenate([p[0] for p in parts])
    order = np.argsort((ids * 2654435761) % 2**32, kind="stable")[:size]  # a spread of old and new items
    return ids[order], np.concatenate([p[1] for p in parts])[order]


def build(con: "duckdb.DuckDBPyConnection", dataset: str, record: "EncoderRecord", n: int,
          expected: int = 0) -> VectorIndex:
    """A fresh index over everything DuckDB holds for (dataset, encoder), chosen for max(n, expected) vectors.

    IVF is first trained and tuned on a sample alone: data without cluster structure (e.g. uniform random),
    where IVF would have to scan over a quarter of its lists for the target recall, gets a scan of every vector
    instead (exact when float32 fits EMBEDSTORE_INDEX_MEMORY, else of SQ8/PQ codes), before memory is spent on
    a full IVF. The choice, its inputs and the recall measured against brute force over every stored vector are
    kept in `params`."""
    target = max(n, expected)
    factory = choose_factory(target, record.dim)
    index = VectorIndex.create(record.dim, factory)
    budget = config.size("index_memory")
    params = {}
    if index.needs_training:
        ids, x = _hash_sample(con, dataset, record, n, index.index.nlist * TRAIN_PER_LIST)
        index.train(x)
        index.add(ids, x)
        held = np.sort(np.random.default_rng(0).choice(len(ids), size=min(TUNE_QUERIES, len(ids)), replace=False))
        index.tune(x[held], ids[held], exact_neighbours(x[held], ids[held], [(ids, x)]))
        nlist, nprobe = index.index.nlist, index.params["nprobe"]
        if nprobe > nlist // 4:
            factory = choose_factory(target, record.dim, clustered=False)
            log.info("IVF needed nprobe %d of %d lists on a sample of %s; using %s", nprobe, nlist, dataset, factory)
            index = VectorIndex.create(record.dim, factory)
            params.update(ivf_rejected_at=target, ivf_rejected=f"nprobe {nprobe} of {nlist} lists needed")
            if index.needs_training:  # SQ8/PQ codes: their ranges or codebooks come from the same sample
                index.train(x)
                params.update(trained_with=len(ids))
        else:
            index.remove(ids)
            params.update(trained_on=target, trained_with=len(ids))
        del ids, x, held  # the training sample scales with nlist: free it before the full index is allocated
    if factory != EXACT:
        params.update(chosen_for={"n": target, "dim": record.dim, "index_memory": budget},
                      bytes_per_vector=code_bytes(factory, record.dim) + ID_BYTES)
    index.params = params
    index.reserve(target)
    for ids, x in iter_vectors(con, dataset, record):
        index.add(ids, x)
    if factory != EXACT and n:
        ids, x = _hash_sample(con, dataset, record, n, TUNE_QUERIES)
        index.tune(x, ids, exact_neighbours(x, ids, iter_vectors(con, dataset, record)))
    return index


def signature(con: "duckdb.DuckDBPyConnection", record: "EncoderRecord") -> tuple:
    """A cheap summary that changes whenever an index of this encoder may have to: items added, re-keyed or
    deleted (their count or the highest id moves; ids are never reused) or vectors added."""
    return first(con, f"SELECT (SELECT count(*) FROM items), (SELECT max(item_id) FROM items), "
                      f"(SELECT count(*) FROM {record.table})")


def _follow(con, live: "LiveIndex", held: dict, now: dict) -> str:
    """Bring `live.index`, which reflects database state `held`, up to `now`: "loaded" when nothing changed,
    "caught-up" when only appends happened (the new rows are added), else "rebuilt" from the database."""
    if held == now:
        return "loaded"
    prefix = db_state(con, live.dataset, live.record, max_id=held.get("max_id", -1))
    if live.index.ntotal == held.get("count") and \
            {k: prefix[k] for k in ("count", "xor")} == {k: held.get(k) for k in ("count", "xor")}:
        for ids, x in iter_vectors(con, live.dataset, live.record, "AND i.item_id > ?", [held["max_id"]]):
            live.add(ids, x)
        return "caught-up"
    log.warning("index %s/%s is stale (database changed beyond appends); rebuilding", live.dataset,
                live.record.short)
    live.index = None
    live.index = build(con, live.dataset, live.record, now["count"])
    live.dirty = True
    return "rebuilt"


@resource_errors_as_clear()
def open_index(db: "Database", dataset: str, record: "EncoderRecord") -> LiveIndex:
    path = db.index_path(dataset, record)
    with db.connect() as con:
        now = db_state(con, dataset, record)
        try:
            index, meta = VectorIndex.load(path)
        except CorruptFileError as e:
            if path.exists():
                log.warning("%s; rebuilding it from the database (%d vectors)", e, now["count"])
            live = LiveIndex(db, dataset, record, build(con, dataset, record, now["count"]),
                             "rebuilt" if path.exists() else "new")
        else:
            live = LiveIndex(db, dataset, record, index, "loaded")
            live.origin = _follow(con, live, meta.get("state") or {}, now)
        live.state, live.signature = now, signature(con, record)
    if not db.read_only and live.dirty:  # a writable handle repairs the file (unless a writer is busy)
        try:
            with db.writing():
                live.persist()
        except StoreLockedError:
            pass  # the writer at work persists its own index; this one stays correct in memory
    return live


def refresh(live: LiveIndex) -> None:
    """For a long-lived read-only store: follow what writers committed since the index was opened (a cheap
    check when nothing changed; appends are added in memory)."""
    with live.db.connect() as con:
        sig = signature(con, live.record)
        if sig != live.signature:
            now = db_state(con, live.dataset, live.record)
            _follow(con, live, live.state, now)
            live.state, live.signature = now, sig


def live_index(db: "Database", dataset: str, record: "EncoderRecord") -> LiveIndex:
    """The in-process index of (dataset, encoder), opened once per handle (`db.indexes`) and kept up to date: a
    read-only handle follows what writers in other processes committed since (a writer mirrors its own)."""
    k = (dataset, record.fingerprint)
    if k not in db.indexes:
        db.indexes[k] = open_index(db, dataset, record)
    elif not db.holds_lock:  # another process may have written since: follow it (a writer mirrors its own)
        refresh(db.indexes[k])
    return db.indexes[k]


def forget(db: "Database", dataset: str | None = None, keep: LiveIndex | None = None) -> None:
    """Drop cached in-process indexes (of `dataset`, or all) but `keep`, after a write they do not mirror: an
    item re-keyed through one encoder, or a vector shared across datasets. The next use reopens them, which
    checks them against the database (load, catch up or rebuild)."""
    for k in [k for k, live in db.indexes.items() if (dataset is None or k[0] == dataset) and live is not keep]:
        del db.indexes[k]
