"""One exception tree. Every message says what was expected, what was found, and what to do."""

from __future__ import annotations

import errno
from contextlib import contextmanager
from typing import Iterator


class EmbedstoreError(Exception):
    """Base class: the CLI prints these without a traceback."""


class StoreLockedError(EmbedstoreError):
    """Another process holds the store's write lock."""


class StoreVersionError(EmbedstoreError):
    """The store was written by a newer embedstore (unknown migrations)."""


class UnknownEncoderError(EmbedstoreError, KeyError):
    """An encoder spec names no registered scheme or alias."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class EncoderUnavailableError(EmbedstoreError):
    """The encoder exists but cannot be loaded here (missing package, no offline weights)."""


class InputError(EmbedstoreError, ValueError):
    """Bad user input: missing column, undecodable bytes, wrong vector dimension."""


class SourceCutError(InputError):
    """A stream of independent items (a tar shard) ends in a truncated or corrupt part: the items read before it
    are whole, and ingest commits them before raising this."""


class NotFoundError(EmbedstoreError, LookupError):
    """A dataset, item, encoder or head that is not in the store."""


class FingerprintMismatchError(EmbedstoreError):
    """Vectors of two different encoder fingerprints were about to meet."""


class CorruptFileError(EmbedstoreError):
    """A derived file (index, head) failed its checksum."""


class DiskFullError(EmbedstoreError, OSError):
    """A write failed for lack of space (or a file-size limit); nothing committed before it was lost."""


_FULL_ERRNOS = {errno.ENOSPC, errno.EFBIG, errno.EDQUOT}
_FULL_WORDS = ("no space left", "file too large", "disk quota", "not enough space")


class StoreCorruptError(EmbedstoreError):
    """The database file is damaged (truncated, a block that fails DuckDB's checksum)."""


CORRUPT_ADVICE = ("What can be done: `embedstore check` says which parts still read; `embedstore sql` reads what is "
                  "left; restore embedstore.duckdb from a copy; or rebuild the store by ingesting the sources again "
                  "into a new --store (vectors are recomputed)")
_CORRUPT_WORDS = ("corrupt", "checksum", "could not read enough bytes", "not a valid duckdb database")


class MemoryLimitError(EmbedstoreError, MemoryError):
    """DuckDB reached EMBEDSTORE_DUCKDB_MEMORY (nothing committed before it was lost), or a head's features would
    not fit EMBEDSTORE_FEATURES_MEMORY (refused before anything is read)."""


@contextmanager
def resource_errors_as_clear() -> Iterator[None]:
    """Turn the many shapes of "disk full" (OSError errno, DuckDB IO/transaction errors, FAISS write errors),
    DuckDB's memory limit and a damaged database file into errors that tell the user what to do. Also a
    decorator."""
    try:
        yield
    except (DiskFullError, MemoryLimitError, StoreCorruptError):
        raise
    except Exception as e:
        detail = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        duck = type(e).__module__.startswith("_duckdb")  # duckdb's errors, matched by module: no duckdb import
        if getattr(e, "errno", None) in _FULL_ERRNOS or any(w in str(e).lower() for w in _FULL_WORDS):
            raise DiskFullError(f"out of disk space ({detail}). Nothing committed before it is lost; free space "
                                "(or raise the file-size limit) and rerun the same command (an ingest resumes "
                                "where it stopped)") from e
        if type(e).__name__ == "OutOfMemoryException" or (duck and "could not allocate block" in str(e)):
            raise MemoryLimitError(f"DuckDB reached its memory limit ({detail}). Raise EMBEDSTORE_DUCKDB_MEMORY "
                                   "(e.g. 2GB) and rerun the same command (an ingest resumes where it stopped); "
                                   "what needs it: joins over millions of items, wide vectors, and the key indexes "
                                   "of stores not yet migrated (embedstore info --migrate)") from e
        if duck and any(w in str(e).lower() for w in _CORRUPT_WORDS):
            raise StoreCorruptError(f"the store's database file is damaged ({detail}). {CORRUPT_ADVICE}") from e
        raise


class WeakHeadWarning(UserWarning):
    """A fitted or evaluated head that does not beat the majority-class baseline (or predicts one class)."""
