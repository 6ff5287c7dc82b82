"""One exception tree. Every message says what was expected, what was found, and what to do."""

from __future__ import annotations


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


class NotFoundError(EmbedstoreError, LookupError):
    """A dataset, item, encoder or head that is not in the store."""


class FingerprintMismatchError(EmbedstoreError):
    """Vectors of two different encoder fingerprints were about to meet."""


class CorruptFileError(EmbedstoreError):
    """A derived file (index, head) failed its checksum."""
