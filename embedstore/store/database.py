"""The database handle: one DuckDB file (the source of truth) in a store directory, its write lock, its
connection and its migrations. Every verb (ingest, search, sql, index, maintenance, heads) takes one of these;
the `Store` facade (embedstore/facade.py) is one with the verbs added.

Writers are exclusive: an advisory lock file names the PID holding it, so a second writer fails at once. A
handle takes that lock only while it writes (`writing()`: an ingest, a fit, gc, ...), and between writes reads
through a read-only connection that it closes after each use (or EMBEDSTORE_READ_LINGER seconds later, while no
writer is at work: repeated searches then skip re-opening the file), so a store kept open in a notebook blocks no
command. An ingest closes its DuckDB connection while the encoder runs and reopens it to write each batch, so
that readers (search, sql, info, heads eval) can query between batches; they retry while a batch is being
written (up to `EMBEDSTORE_LOCK_WAIT` seconds), saying after a second what they wait for and who holds it.
"""

from __future__ import annotations

import fcntl
import logging
import os
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import duckdb

from embedstore import config
from embedstore.errors import (EmbedstoreError, NotFoundError, StoreLockedError, StoreVersionError,
                               resource_errors_as_clear)
from embedstore.faults import fault_point
from embedstore.store import layout
from embedstore.store.queries import scalar
from embedstore.store.schema import MIGRATIONS, OPTIONAL_FOR_READERS, refresh_views

log = logging.getLogger("embedstore")


def _announce_waiting(path: Path) -> int | None:
    """A reader's shared flock on <store>/READERS, held while it waits; None where the file cannot be opened
    (a store last written by an older embedstore, or a read-only directory): the reader then only polls."""
    try:
        fd = os.open(path / layout.WAITING_NAME, os.O_RDONLY)
    except OSError:
        return None
    fcntl.flock(fd, fcntl.LOCK_SH)
    return fd


def _writer_at_work(path: Path) -> bool:
    """Whether a writer holds the store's writer lock now (its shared flock on <store>/WRITING): a read
    connection must then not stay open past its use, or the writer would wait for it."""
    try:
        fd = os.open(path / layout.WRITING_NAME, os.O_RDONLY)
    except OSError:
        return False  # never written by this version, or unreadable: nothing to wait for
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)


_LINGERING: set["Database"] = set()  # handles of this process whose read connection is open but unused
_LINGERING_LOCK = threading.Lock()


def _close_lingering(db_path: Path, but: "Database") -> None:
    """Close this process's idle read connections to the file before opening another connection to it (DuckDB
    refuses a second connection to a file with another configuration, e.g. read-write)."""
    with _LINGERING_LOCK:
        others = [h for h in _LINGERING if h is not but and h.db_path == db_path]
    for h in others:
        h._close_idle()


class Database:
    """A store directory's database; `read_only=True` never writes and never creates files."""

    def __init__(self, path: str | os.PathLike | None = None, *, read_only: bool = False, create: bool = True,
                 files: bool = False):
        """`create=False` refuses a path with no store instead of making one (every CLI command but ingest).
        `files=True` lets SQL read and write files (DuckDB's external access: read_text, COPY, glob, ...); off
        by default, so a query over the store can reach nothing outside it."""
        self.files = files
        self.path = Path(path).expanduser() if path is not None else config.default_store_path()
        self.read_only = read_only
        self.db_path = self.path / layout.DB_NAME
        self._con: duckdb.DuckDBPyConnection | None = None
        self._depth = 0
        self._lock_fd: int | None = None
        self._writes = 0          # nesting depth of writing()
        self._con_rw = False      # whether the open connection is a read-write one
        self._guard = threading.RLock()  # the connection against the linger timer's thread
        self._idle: threading.Timer | None = None
        # in-process live indexes by (dataset, fingerprint), managed by embedstore.index.sync (opaque here)
        self.indexes: dict[tuple[str, str], Any] = {}
        if self.path.exists() and not self.path.is_dir():
            raise NotFoundError(f"{self.path} is a file, not a store folder; pass the folder that holds (or will "
                                f"hold) {layout.DB_NAME}")
        if read_only or not create:
            if not self.db_path.exists():
                raise NotFoundError(f"no store at {self.path} (no {layout.DB_NAME}); create one with "
                                    "`embedstore ingest ... --store PATH`, or set EMBEDSTORE_STORE")
        with resource_errors_as_clear():  # a damaged file says so, in one line
            if read_only:
                with self.connect() as con:
                    self._check_migrations(con, apply=False)
            else:
                self.path.mkdir(parents=True, exist_ok=True)
                with self.writing(), self.connect() as con:
                    self._check_migrations(con, apply=True)

    # -- lifecycle -----------------------------------------------------------------------------------------
    @property
    def holds_lock(self) -> bool:
        return self._lock_fd is not None

    @contextmanager
    def writing(self) -> Iterator["Database"]:
        """Hold the writer lock for the block (nested uses share it): one writer at a time, and a second one fails
        at once naming the first. Every write verb takes it itself; take it around several writes to keep other
        writers out between them."""
        self.require_writable()
        if self._writes == 0:
            self._acquire_lock()
        self._writes += 1
        try:
            yield self
        finally:
            self._writes -= 1
            if self._writes == 0:
                self.release()
                self._unlock()

    def _acquire_lock(self) -> None:
        fd = os.open(self.path / layout.LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 4096, 0).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise StoreLockedError(
                f"store {self.path} is locked by {holder}; only one writer at a time. Wait for it to finish; "
                "meanwhile read-only commands (search, sql, info, heads eval/list) work between its batches"
            ) from None
        os.close(os.open(self.path / layout.WAITING_NAME, os.O_RDWR | os.O_CREAT, 0o644))
        self._writing_fd = os.open(self.path / layout.WRITING_NAME, os.O_RDWR | os.O_CREAT, 0o644)
        fcntl.flock(self._writing_fd, fcntl.LOCK_SH)  # readers see a writer at work (blocks only for a reader's check)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"PID {os.getpid()} ({' '.join(os.path.basename(a) for a in sys.argv[:3])})".encode(), 0)
        self._lock_fd = fd

    def _open_duckdb(self) -> duckdb.DuckDBPyConnection:
        """Readers wait up to lock_wait seconds while a writer holds the file (announcing themselves, so that an
        ingest lets them in between batches); the writer waits as long as readers take."""
        wait = config.number("lock_wait")
        deadline, waiting_fd, told = time.monotonic() + wait, None, 0.0
        try:
            while True:
                try:
                    con = duckdb.connect(str(self.db_path), read_only=not self.holds_lock, config={
                        "memory_limit": config.setting("duckdb_memory"),
                        "enable_external_access": self.files,
                        # no extension is fetched or loaded behind the user's back (e.g. by sqlite_scan)
                        "autoinstall_known_extensions": False, "autoload_known_extensions": False})
                    # DuckDB draws a progress bar on stdout for queries past 2 s: it broke `--json` output
                    con.execute("SET enable_progress_bar = false")
                    return con
                except duckdb.Error as e:
                    msg = str(e).lower()
                    if "storage version" in msg or "newer version" in msg:
                        raise StoreVersionError(f"{self.db_path} was written by a newer DuckDB storage version "
                                                f"than this one ({duckdb.__version__}) can read: "
                                                f"{str(e).splitlines()[0]} Upgrade duckdb (and embedstore) to "
                                                "open it") from e
                    if not (isinstance(e, duckdb.IOException) and "lock" in msg):
                        with resource_errors_as_clear():  # a damaged file is StoreCorruptError, with advice
                            raise e
                        raise EmbedstoreError(f"cannot open {self.db_path}: {e}") from e
                    if not self.holds_lock and waiting_fd is None:
                        waiting_fd = _announce_waiting(self.path)
                        told = time.monotonic() + 1.0
                    if not self.holds_lock and told and time.monotonic() > told:
                        log.warning("waiting up to %g s for %s: %s is writing it", wait, self.db_path,
                                    self.lock_holder() or "another process")
                        told = 0.0
                    if time.monotonic() > deadline:
                        if not self.holds_lock:
                            raise EmbedstoreError(f"cannot open {self.db_path}: {self.lock_holder() or 'a writer'} "
                                                  f"held it for {wait:g} s (EMBEDSTORE_LOCK_WAIT); retry when it "
                                                  f"is done, or raise EMBEDSTORE_LOCK_WAIT") from e
                        log.warning("waiting for readers to close %s", self.db_path)
                        deadline = float("inf")
                    time.sleep(0.02)
        finally:
            if waiting_fd is not None:
                os.close(waiting_fd)  # releases the shared flock

    def lock_holder(self) -> str | None:
        """What the writer lock file says about who holds it ("PID n (embedstore ingest ...)"), if anyone wrote."""
        try:
            return (self.path / layout.LOCK_NAME).read_text(errors="replace").strip() or None
        except OSError:
            return None

    def yield_to_readers(self, max_wait: float = 5.0) -> None:
        """Between batches of a write: if readers are waiting for the database, close it until they have opened
        it (at most `max_wait` seconds), so queries during a long ingest are answered within a batch."""
        fd = os.open(self.path / layout.WAITING_NAME, os.O_RDWR)
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
        """The connection, opened on demand: read-write while this handle holds the writer lock, else read-only
        and closed after the outermost use (EMBEDSTORE_READ_LINGER seconds after it, while no writer is at
        work), so that a writer in another process can write its next batch."""
        with self._guard:
            self._cancel_idle()
            if self._con is not None and self._depth == 0 and (
                    self._con_rw != self.holds_lock or (not self.holds_lock and _writer_at_work(self.path))):
                self.release()  # another mode than now; or a writer began and waits for this idle reader
            if self._con is None:
                _close_lingering(self.db_path, but=self)
                self._con = self._open_duckdb()
                self._con_rw = self.holds_lock
            self._depth += 1
        try:
            yield self._con
        finally:
            with self._guard:
                self._depth -= 1
                if not self.holds_lock and self._depth == 0:
                    self._linger()

    def _linger(self) -> None:
        """After a read: keep the connection for EMBEDSTORE_READ_LINGER seconds unless a writer is at work."""
        wait = config.number("read_linger")
        if not wait or _writer_at_work(self.path):
            self.release()
            return
        self._idle = threading.Timer(wait, self._close_idle)
        self._idle.daemon = True
        self._idle.start()
        with _LINGERING_LOCK:
            _LINGERING.add(self)

    def _cancel_idle(self) -> None:
        if self._idle is not None:
            self._idle.cancel()
            self._idle = None
        with _LINGERING_LOCK:
            _LINGERING.discard(self)

    def _close_idle(self) -> None:
        with self._guard:
            if self._depth == 0 and not self.holds_lock:
                self.release()

    def release(self) -> None:
        """Close the DuckDB connection (keeping the write lock), e.g. while an encoder runs."""
        with self._guard:
            if self._con is not None and self._depth == 0:
                self._cancel_idle()
                self._con.close()
                self._con = None

    @contextmanager
    def transaction(self) -> Iterator[duckdb.DuckDBPyConnection]:
        with self.writing(), self.connect() as con:
            con.execute("BEGIN TRANSACTION")
            try:
                yield con
            except BaseException:
                con.execute("ROLLBACK")
                raise
            con.execute("COMMIT")

    def _unlock(self) -> None:
        os.close(self._writing_fd)  # closing drops its flock
        fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
        os.close(self._lock_fd)
        self._lock_fd = None

    def close(self) -> None:
        self._depth = 0
        self.release()
        self.indexes.clear()
        if self._lock_fd is not None:
            self._unlock()
            self._writes = 0

    def __enter__(self) -> "Database":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.path)!r}{', read_only=True' if self.read_only else ''})"

    def require_writable(self) -> None:
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
        if not apply:
            blocking = [n for n, _ in missing if n not in OPTIONAL_FOR_READERS]
            if blocking:
                raise StoreVersionError(f"store {self.path} needs migrations {blocking}; open it once for writing "
                                        "(`embedstore info --migrate`, or any ingest)")
            return
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

    def index_path(self, dataset: str, record: Any) -> Path:
        """The sidecar of the index of (dataset, encoder record); see store/layout.py."""
        return layout.index_sidecar(self.path, dataset, record.fingerprint)
