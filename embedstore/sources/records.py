"""What every source reader yields: Records (key, content, label, meta, source, skip reason) in a Source, and the
table options the user gave (columns, separator, quoting, encoding, format)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator


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
