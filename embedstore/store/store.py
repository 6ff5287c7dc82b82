"""Store: a directory holding one DuckDB file (the source of truth), FAISS indexes and saved heads.

Writers are exclusive: an advisory lock file names the PID holding it, so a second writer fails at once.
An ingest closes its DuckDB connection while the encoder runs and reopens it to write each batch, so that
read-only openers (search, sql, info, heads eval) can query between batches; they retry while a batch is
being written (up to `EMBEDSTORE_LOCK_WAIT` seconds).
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import re
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import duckdb
import numpy as np

from embedstore import config
from embedstore.errors import (EmbedstoreError, InputError, NotFoundError, StoreLockedError,
                               StoreVersionError)
from embedstore.faults import fault_point
from embedstore.store.db import first, scalar
from embedstore.store.schema import MIGRATIONS, emb_table_sql, refresh_views

DB_NAME = "embedstore.duckdb"
LOCK_NAME = "LOCK"
WAITING_NAME = "READERS"  # readers waiting for the database hold a shared flock on it (see yield_to_readers)
log = logging.getLogger("embedstore")
DATASET_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+\-]{0,127}")


@dataclass(frozen=True)
class EncoderRecord:
    """An encoder as the store knows it: enough to read its vectors without loading the model."""

    fingerprint: str
    spec: str
    dim: int
    modality: str
    table: str

    @property
    def short(self) -> str:
        return self.fingerprint[:12]


def check_name(name: str, kind: str = "dataset") -> str:
    """Dataset and head names name directories in the store: nothing that could leave it (`..`, `/`)."""
    if not isinstance(name, str) or not DATASET_NAME.fullmatch(name):
        raise InputError(f"{kind} name {name!r} is not allowed: use letters, digits, '_', '-', '.', '+' "
                         "(it names files in the store), starting with a letter or digit")
    return name


def _announce_waiting(path: Path) -> int | None:
    """A reader's shared flock on <store>/READERS, held while it waits; None where the file cannot be opened
    (a store last written by an older embedstore, or a read-only directory): the reader then only polls."""
    try:
        fd = os.open(path / WAITING_NAME, os.O_RDONLY)
    except OSError:
        return None
    fcntl.flock(fd, fcntl.LOCK_SH)
    return fd


def head_dir(heads_root: Path, name: str, checksum: str) -> Path:
    """Where the version of head `name` whose manifest has sha256 `checksum` lives (see heads/persist.py)."""
    return heads_root / name / f"head.{checksum[:16]}"


class Store:
    """Open with `embedstore.open(path)`; `read_only=True` takes no write lock and never creates files."""

    def __init__(self, path: str | os.PathLike | None = None, *, read_only: bool = False):
        self.path = Path(path).expanduser() if path is not None else config.default_store_path()
        self.read_only = read_only
        self.db_path = self.path / DB_NAME
        self._con: duckdb.DuckDBPyConnection | None = None
        self._depth = 0
        self._lock_fd: int | None = None
        self._indexes: dict[tuple[str, str], Any] = {}
        if read_only:
            if not self.db_path.exists():
                raise NotFoundError(f"no store at {self.path} (no {DB_NAME}); create one with "
                                    "`embedstore ingest ... --store PATH`, or set EMBEDSTORE_STORE")
            with self.connect() as con:
                self._check_migrations(con, apply=False)
        else:
            self.path.mkdir(parents=True, exist_ok=True)
            self._acquire_lock()
            with self.connect() as con:
                self._check_migrations(con, apply=True)

    # -- lifecycle -----------------------------------------------------------------------------------------
    def _acquire_lock(self) -> None:
        fd = os.open(self.path / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 4096, 0).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise StoreLockedError(
                f"store {self.path} is locked by {holder}; only one writer at a time. Wait for it to finish; "
                "meanwhile read-only commands (search, sql, info, heads eval/list) work between its batches"
            ) from None
        os.close(os.open(self.path / WAITING_NAME, os.O_RDWR | os.O_CREAT, 0o644))
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"PID {os.getpid()} ({' '.join(os.path.basename(a) for a in sys.argv[:3])})".encode(), 0)
        self._lock_fd = fd

    def _open_duckdb(self) -> duckdb.DuckDBPyConnection:
        """Readers wait up to lock_wait seconds while a writer holds the file (announcing themselves, so that an
        ingest lets them in between batches); the writer waits as long as readers take."""
        wait = float(config.setting("lock_wait"))
        deadline, waiting_fd = time.monotonic() + wait, None
        try:
            while True:
                try:
                    return duckdb.connect(str(self.db_path), read_only=self.read_only, config={
                        "memory_limit": config.setting("duckdb_memory"),
                        # no extension is fetched or loaded behind the user's back (e.g. by sqlite_scan)
                        "autoinstall_known_extensions": False, "autoload_known_extensions": False})
                except duckdb.Error as e:
                    msg = str(e).lower()
                    if "storage version" in msg or "newer version" in msg:
                        raise StoreVersionError(f"{self.db_path} was written by a newer DuckDB storage version "
                                                f"than this one ({duckdb.__version__}) can read: "
                                                f"{str(e).splitlines()[0]} Upgrade duckdb (and embedstore) to "
                                                "open it") from e
                    if not (isinstance(e, duckdb.IOException) and "lock" in msg):
                        raise EmbedstoreError(f"cannot open {self.db_path}: {e}") from e
                    if self.read_only and waiting_fd is None:
                        waiting_fd = _announce_waiting(self.path)
                    if time.monotonic() > deadline:
                        if self.read_only:
                            raise EmbedstoreError(f"cannot open {self.db_path}: a writer held it for {wait:g} s "
                                                  f"(EMBEDSTORE_LOCK_WAIT). {e}") from e
                        log.warning("waiting for readers to close %s", self.db_path)
                        deadline = float("inf")
                    time.sleep(0.02)
        finally:
            if waiting_fd is not None:
                os.close(waiting_fd)  # releases the shared flock

    def yield_to_readers(self, max_wait: float = 5.0) -> None:
        """Between batches of a write: if readers are waiting for the database, close it until they have opened
        it (at most `max_wait` seconds), so queries during a long ingest are answered within a batch."""
        fd = os.open(self.path / WAITING_NAME, os.O_RDWR)
        try:
            deadline = time.monotonic() + max_wait
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    return  # nobody waiting (any more)
                except BlockingIOError:
                    self.release()
                    if time.monotonic() > deadline:
                        return
                    time.sleep(0.02)
        finally:
            os.close(fd)

    @contextmanager
    def connect(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """The connection, opened on demand. Read-only stores close it after the outermost use, so that an
        ingest in another process can write its next batch."""
        if self._con is None:
            self._con = self._open_duckdb()
        self._depth += 1
        try:
            yield self._con
        finally:
            self._depth -= 1
            if self.read_only and self._depth == 0:
                self.release()

    def release(self) -> None:
        """Close the DuckDB connection (keeping the write lock), e.g. while an encoder runs."""
        if self._con is not None and self._depth == 0:
            self._con.close()
            self._con = None

    @contextmanager
    def transaction(self) -> Iterator[duckdb.DuckDBPyConnection]:
        self._require_writable()
        with self.connect() as con:
            con.execute("BEGIN TRANSACTION")
            try:
                yield con
            except BaseException:
                con.execute("ROLLBACK")
                raise
            con.execute("COMMIT")

    def close(self) -> None:
        self._depth = 0
        self.release()
        self._indexes.clear()
        if self._lock_fd is not None:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
            os.close(self._lock_fd)
            self._lock_fd = None

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Store({str(self.path)!r}{', read_only=True' if self.read_only else ''})"

    def _require_writable(self) -> None:
        if self.read_only:
            raise EmbedstoreError(f"store {self.path} is open read-only; open it without read_only to write")

    def _check_migrations(self, con: duckdb.DuckDBPyConnection, apply: bool) -> None:
        if apply:
            con.execute("CREATE TABLE IF NOT EXISTS _migrations (name VARCHAR PRIMARY KEY, "
                        "applied TIMESTAMP DEFAULT current_timestamp)")
        try:
            done = {r[0] for r in con.execute("SELECT name FROM _migrations").fetchall()}
        except duckdb.CatalogException as e:
            raise StoreVersionError(f"{self.db_path} is not an embedstore database (no _migrations table)") from e
        known = [name for name, _ in MIGRATIONS]
        unknown = sorted(done - set(known))
        if unknown:
            raise StoreVersionError(f"store {self.path} has migrations {unknown} that this embedstore does not "
                                    f"know (it knows {known}): it was written by a newer version; upgrade")
        missing = [(n, m) for n, m in MIGRATIONS if n not in done]
        if missing and not apply:
            raise StoreVersionError(f"store {self.path} needs migrations {[n for n, _ in missing]}; open it "
                                    "once for writing (e.g. `embedstore info --migrate`)")
        for name, migration in missing:
            con.execute("BEGIN TRANSACTION")
            if callable(migration):
                migration(con)
            else:
                con.execute(migration)
            con.execute("INSERT INTO _migrations (name) VALUES (?)", [name])
            fault_point("store.migration.before_commit")
            con.execute("COMMIT")
        if missing:
            if not scalar(con, "SELECT count(*) FROM duckdb_views() WHERE view_name='embeddings'"):
                refresh_views(con)

    # -- datasets and encoders -----------------------------------------------------------------------------
    def require_fresh_dataset_modality(self, name: str, modality: str) -> None:
        """A dataset holds one modality: refuse mixing before anything is read or embedded."""
        check_name(name)
        with self.connect() as con:
            row = first(con, "SELECT modality FROM datasets WHERE name=?", [name])
        if row is not None and row[0] != modality:
            raise InputError(f"dataset {name!r} holds {row[0]} items, not {modality}; use another --dataset")

    def ensure_dataset(self, name: str, modality: str, source: str | None) -> None:
        """Create the dataset row if needed (inside the caller's transaction, with its first items)."""
        self.require_fresh_dataset_modality(name, modality)
        with self.connect() as con:
            con.execute("INSERT INTO datasets (name, modality, source) VALUES (?, ?, ?) ON CONFLICT DO NOTHING",
                        [name, modality, source])

    def dataset_names(self) -> list[str]:
        with self.connect() as con:
            return [r[0] for r in con.execute("SELECT name FROM datasets ORDER BY name").fetchall()]

    def require_dataset(self, name: str) -> None:
        if name not in self.dataset_names():
            raise NotFoundError(f"no dataset {name!r} in {self.path}; datasets: {self.dataset_names() or 'none'}")

    def register_encoder(self, encoder: Any) -> EncoderRecord:
        """Record an encoder's identity and create its embeddings table (loads the model only if new)."""
        fp = encoder.fingerprint
        table = f"emb_{fp[:16]}"
        with self.transaction() as con:  # table, encoders row and view change together, or not at all
            row = first(con, "SELECT dim FROM encoders WHERE fingerprint=?", [fp])
            if row is None:
                dim = encoder.dim
                con.execute(emb_table_sql(table, dim))
                con.execute("INSERT INTO encoders (fingerprint, spec, dim, modality, table_name, config, versions) "
                            "VALUES (?, ?, ?, ?, ?, ?, ?)",
                            [fp, encoder.spec, dim, encoder.modality, table, json.dumps(encoder.identity()),
                             json.dumps(encoder.versions())])
                refresh_views(con)
                fault_point("encoder.register.before_commit")
            else:
                dim = row[0]  # known: the model need not be loaded when everything is cached
            con.execute("INSERT INTO encoder_specs (spec, fingerprint) VALUES (?, ?) ON CONFLICT DO UPDATE "
                        "SET last_used = now()", [encoder.spec, fp])
        return EncoderRecord(fp, encoder.spec, dim, encoder.modality, table)

    def encoder_records(self, dataset: str | None = None) -> list[EncoderRecord]:
        sql = "SELECT fingerprint, spec, dim, modality, table_name FROM encoders"
        args: list = []
        if dataset is not None:
            sql += " WHERE fingerprint IN (SELECT fingerprint FROM dataset_encoders WHERE dataset=?)"
            args = [dataset]
        with self.connect() as con:
            return [EncoderRecord(*r) for r in con.execute(sql + " ORDER BY created", args).fetchall()]

    def resolve_encoder(self, spec: str, dataset: str | None = None) -> EncoderRecord:
        """A spec (as used at ingest), `fp:<prefix>`, or None-like '' for the dataset's only encoder, to a
        record, without loading the model (so `heads fit` never imports torch)."""
        candidates = self.encoder_records(dataset)
        where = f" of dataset {dataset!r}" if dataset else ""
        if not spec:
            if len(candidates) == 1:
                return candidates[0]
            raise InputError(f"dataset {dataset!r} has {len(candidates)} encoders; choose one with --encoder: "
                             + _describe(candidates, self))
        if spec.startswith("fp:"):
            found = [c for c in candidates if c.fingerprint.startswith(spec[3:])]
        else:
            with self.connect() as con:
                fps = {r[0] for r in con.execute("SELECT fingerprint FROM encoder_specs WHERE spec=?",
                                                 [spec]).fetchall()}
            found = [c for c in candidates if c.fingerprint in fps]
        if len(found) == 1:
            return found[0]
        if not found:
            raise NotFoundError(f"no vectors for encoder {spec!r}{where}; encoders{where}: "
                                f"{_describe(candidates, self) or 'none'}. Run `embedstore ingest` with it first")
        raise InputError(f"encoder {spec!r} has {len(found)} fingerprints{where} (its weights or settings "
                         f"changed between ingests): {_describe(found, self)}; pass --encoder fp:<prefix>")

    def resolve_feature_set(self, spec: str, dataset: str | None = None) -> list[EncoderRecord]:
        """`a+b` -> the ordered records of a deliberate concatenation."""
        return [self.resolve_encoder(part.strip(), dataset) for part in spec.split("+")] if spec else \
            [self.resolve_encoder("", dataset)]

    # -- reads -----------------------------------------------------------------------------------------------
    def features(self, dataset: str, encoder: str = "", label: str | None = "label", *,
                 return_meta: bool = False):
        """(X float32 [n, dim], y) for the dataset's items that have vectors of `encoder` (`a+b` concatenates)."""
        from embedstore.store.features import load_features
        fs = load_features(self, dataset, self.resolve_feature_set(encoder, dataset), label)
        return (fs.X, fs.y, fs) if return_meta else (fs.X, fs.y)

    def search(self, dataset: str, query: Any = None, k: int = 10, *, key: str | None = None,
               vector: Any = None, where: str | dict | None = None, encoder: str = ""):
        from embedstore.search import search
        return search(self, dataset, query=query, k=k, key=key, vector=vector, where=where, encoder=encoder)

    def sql(self, query: str, params: Sequence | None = None):
        """Read-only SQL over the documented views; returns a polars DataFrame."""
        from embedstore.sql import run_sql
        table = run_sql(self, query, params)
        try:
            import polars
        except ImportError:
            raise EmbedstoreError("store.sql returns a polars DataFrame: pip install polars "
                                  "(or use embedstore.sql.run_sql for an Arrow table)") from None
        return polars.from_arrow(table)

    def ingest(self, source: Any, *, dataset: str, encoder: str, **options: Any):
        from embedstore.ingest.pipeline import ingest
        return ingest(self, source, dataset=dataset, encoder=encoder, **options)

    def index(self, dataset: str, record: EncoderRecord):
        """The up-to-date FAISS index for (dataset, encoder), loaded, caught up or rebuilt from DuckDB."""
        from embedstore.index.sync import open_index, refresh
        k = (dataset, record.fingerprint)
        if k not in self._indexes:
            self._indexes[k] = open_index(self, dataset, record)
        elif self.read_only:  # writers in other processes may have committed since (the writer's own are mirrored)
            refresh(self._indexes[k])
        return self._indexes[k]

    def forget_indexes(self, dataset: str | None = None, keep: Any = None) -> None:
        """Drop cached in-memory indexes (of `dataset`, or all) but `keep`, after a write they do not mirror: an
        item re-keyed through one encoder, or a vector shared across datasets. The next use reopens them, which
        checks them against the database (load, catch up or rebuild)."""
        for k in [k for k, live in self._indexes.items() if (dataset is None or k[0] == dataset) and live is not keep]:
            del self._indexes[k]

    def index_path(self, dataset: str, record: EncoderRecord) -> Path:
        """The index's sidecar, which names its current data file (see VectorIndex.save)."""
        return self.path / "indexes" / dataset / f"{record.fingerprint[:16]}.json"

    def info(self) -> dict:
        from embedstore.store.maintenance import info
        return info(self)

    def delete_dataset(self, name: str) -> dict:
        from embedstore.store.maintenance import delete_dataset
        return delete_dataset(self, name)

    def gc(self) -> dict:
        from embedstore.store.maintenance import gc
        return gc(self)


def _describe(records: list[EncoderRecord], store: Store) -> str:
    return ", ".join(f"{r.spec} (fp:{r.short}, {r.dim}-d)" for r in records)


def open(path: str | os.PathLike | None = None, *, read_only: bool = False) -> Store:  # noqa: A001
    """Open (creating when writable) the store at `path`, else $EMBEDSTORE_STORE, else the default directory."""
    return Store(path, read_only=read_only)


def as_float32_matrix(vectors: Any, dim: int | None = None) -> np.ndarray:
    """Validate a vector or matrix from a user: 2-D, finite, of the expected dimension."""
    x = np.asarray(vectors, dtype=np.float32)
    if x.ndim == 1:
        x = x[None, :]
    if x.ndim != 2:
        raise InputError(f"expected a vector or a 2-D matrix, found an array of shape {x.shape}")
    if dim is not None and x.shape[1] != dim:
        raise InputError(f"query vector has {x.shape[1]} dimensions, but this encoder's vectors have {dim}")
    if not np.isfinite(x).all():
        raise InputError("query vector contains NaN or infinite values")
    return x
