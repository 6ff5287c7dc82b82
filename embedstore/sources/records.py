"""What every source reader yields: Records (key, content, label, meta, source, skip reason) in a Source, and the
table options the user gave (columns, separator, quoting, encoding, format)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator

from embedstore.errors import InputError


@dataclass
class Record:
    key: str
    content: Any                    # str for text; None when the row could not be read
    label: str | None = None
    meta: dict | None = None
    source: str | None = None
    reason: str | None = None       # why the row is skipped (recorded with the item)


@dataclass
class TableOptions:
    text_column: str = "text"
    label_column: str | None = None
    id_column: str | None = None
    sep: str | None = None          # default from the suffix: tab for .tsv, comma for .csv
    quoting: str = "auto"           # auto (none for TSV, minimal for CSV) | none | minimal
    header: bool = True
    columns: list[str] | None = None
    encoding: str = "utf-8"
    format: str | None = None       # csv | tsv | jsonl | parquet | dir | fasta | fastq; default from the path
    path_column: str | None = None  # images: the column of file paths (or encoded bytes), read instead of text

    def __post_init__(self) -> None:
        import codecs
        try:
            codecs.lookup(self.encoding)
        except LookupError:
            raise InputError(f"unknown --encoding {self.encoding!r}; e.g. utf-8, latin-1, cp1252, utf-16") from None
        if self.sep in ("\\t", "tab"):
            self.sep = "\t"  # what a user typing --sep '\t' means
        if self.sep is not None and len(self.sep) != 1:
            raise InputError(f"--sep must be one character (the csv module reads single-character separators), "
                             f"not {self.sep!r}; for '\\t' pass a real tab, e.g. --sep $'\\t'")
        if self.quoting not in ("auto", "none", "minimal"):
            raise InputError(f"--quoting must be auto, none or minimal, not {self.quoting!r}")

    @property
    def content(self) -> tuple[str, str]:
        """(what, column) holding each row's content: the path column for images, else the text column."""
        return ("path", self.path_column) if self.path_column else ("text", self.text_column)


@dataclass
class Source:
    """An iterable of Records with a name (items' `source`) and, when cheap to know, the row count."""

    name: str
    records: Iterable[Record]
    total: int | None = None
    notes: list[str] = field(default_factory=list)

    def __iter__(self) -> Iterator[Record]:
        return iter(self.records)


def _escaped(s: str) -> str:
    return s.encode("utf-8", "backslashreplace").decode("utf-8")


def _escape_all(value: Any) -> Any:
    if isinstance(value, str):
        return _escaped(value)
    if isinstance(value, dict):
        return {_escape_all(k): _escape_all(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_escape_all(v) for v in value]
    return value


def _storable(s: Any) -> bool:
    try:
        s.encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


def storable(r: Record) -> tuple[Record, bool]:
    """A record every field of which the database can store (UTF-8), and whether anything had to be escaped.

    Python strings can hold what UTF-8 cannot: an unpaired surrogate (half of a character, e.g. an emoji cut in
    two, or `\\ud800` in JSON). Such a key, label, source or metadata value is stored escaped (`\\ud800` as text);
    such a content is skipped with the reason, its text kept escaped so that the row can be found and fixed."""
    fields = [r.key, r.label, r.source, r.content if isinstance(r.content, str) else None]
    meta_ok = r.meta is None or _storable(json.dumps(r.meta, ensure_ascii=False, default=str))
    if all(f is None or _storable(f) for f in fields) and meta_ok:
        return r, False
    content, reason = r.content, r.reason
    if isinstance(content, str) and not _storable(content):
        at = next(i for i, ch in enumerate(content) if not _storable(ch))
        content = _escaped(content)
        reason = reason or (f"the text holds an unpaired surrogate {content[at:at + 6]!s} at position {at + 1:,} "
                            "(half of a character, e.g. a cut emoji): it cannot be stored as UTF-8; fix the source")
    return Record(_escaped(r.key), content, None if r.label is None else _escaped(r.label),
                  r.meta if meta_ok else _escape_all(r.meta), None if r.source is None else _escaped(r.source),
                  reason), True
