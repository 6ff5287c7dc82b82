"""Sources: every input a user can ingest, read as Records in source order. `open_source` is the one dispatch;
each reader module knows one family of inputs (media.py reads a path column's table through tables.py):

    tables.py   CSV/TSV/JSONL/Parquet, .txt (one text per line), folders of .txt files, DataFrames, Python rows
    fasta.py    FASTA/FASTQ (plain or .gz)
    media.py    image and audio folders, tar shards, tables with a path column, in-memory arrays, IDX files
    lines.py    text files read line by line (shared by tables and fasta)
    records.py  Record, Source, TableOptions
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from functools import partial
from typing import Any, Callable, Iterator, Sequence

from embedstore.errors import InputError
from embedstore.sources.fasta import open_sequences, sequence_format
from embedstore.sources.media import _dir_records, _listed, from_arrays, from_waveforms, open_media_source, read_idx
from embedstore.sources.records import Record, Source, TableOptions
from embedstore.sources.tables import FORMATS, open_rows

__all__ = ["FORMATS", "Files", "Record", "Source", "TableOptions", "from_arrays", "from_waveforms", "open_source",
           "read_idx", "read_parts"]


@dataclass(frozen=True)
class Files:
    """Several paths read as one source, in turn (a list of strings alone would be a list of texts)."""

    paths: Sequence[str | Path]


def open_source(source: Any, opts: TableOptions, name: str | None = None, modality: str = "text") -> Source:
    """Any supported input as a Source of the modality's content; raises InputError naming what was expected."""
    if isinstance(source, Files):
        if not source.paths:
            raise InputError("no input files given")
        parts = [open_source(p, opts, None, modality) for p in source.paths]
        for part, renamed in zip(parts, _renames(source.paths)):
            if renamed:
                _prefixed(part, *renamed)
        totals = [p.total for p in parts]
        chained = Source(name or "+".join(dict.fromkeys(p.name for p in parts)), [],
                         None if None in totals else sum(totals))
        chained.records = _in_turn(parts, chained.notes)
        return chained
    if modality in ("image", "audio"):
        src = open_media_source(source, opts, None if isinstance(source, (str, Path)) else name, modality)
        return _located(src, name or str(Path(source).expanduser().resolve())) if isinstance(source, (str, Path)) \
            else src
    if opts.path_column:
        raise InputError(f"--path-column names a column of files, for image encoders and audio encoders; {modality} "
                         "is read from --text-column")
    if isinstance(source, (str, Path)):
        path = Path(source).expanduser()
        if path.is_file() and (fmt := sequence_format(path, opts)):
            if modality != "dna":
                raise InputError(f"{path.name} is {fmt.upper()}: DNA/RNA sequences, but this encoder embeds "
                                 f"{modality}; use a DNA encoder (kmer:6, tiara, hf-dna:<model>) or a DNA head")
            return _located(open_sequences(path, opts, fmt), name or str(path.resolve()))
        return _located(open_rows(source, opts), name or str(path.resolve()))
    return open_rows(source, opts, name)


def _located(src: Source, origin: str) -> Source:
    """Items record where they came from: the file's (or folder's) full path, or the `name` the caller gave
    (e.g. stdin). Keys use the file name alone, so two files of one name in one dataset meet here: the ingest
    refuses to let one replace the other's items unless asked (see ingest's `replace`)."""
    records = src.records

    def stamped() -> Iterator[Record]:
        for r in records:
            r.source = origin
            yield r
    src.records = stamped()
    return src


def _renames(paths: Sequence[str | Path]) -> list[tuple[str, str] | None]:
    """Per path of a file list, (file name, path relative to the common folder) when another path has the same
    file name (its keys then carry the folder, so none collide), else None."""
    names = [Path(p).name for p in paths]
    resolved = [Path(p).expanduser().resolve() for p in paths]
    root = Path(os.path.commonpath([str(p) for p in resolved]))
    return [(base, str(r.relative_to(root))) if names.count(base) > 1 else None for base, r in zip(names, resolved)]


def _prefixed(src: Source, base: str, rel: str) -> None:
    """Keys `<file name>:<row>` become `<folder/file name>:<row>`; other keys (a folder's files, FASTA ids)
    get `<folder/name>/` in front."""
    records = src.records

    def renamed() -> Iterator[Record]:
        for r in records:
            r.key = rel + r.key[len(base):] if r.key.startswith(base + ":") else f"{rel}/{r.key}"
            yield r
    src.records = renamed()


def _in_turn(parts: list[Source], notes: list[str]) -> Iterator[Record]:
    """The records of each source in turn; a source's notes (known once it is read) join `notes`."""
    for part in parts:
        yield from part
        notes.extend(part.notes)


MEDIA_FILES_PER_PART = 256


def read_parts(source: Any, opts: TableOptions, name: str | None = None, modality: str = "text",
               files_per_part: int = MEDIA_FILES_PER_PART) -> tuple[list[Callable[[], Iterator[Record]]], list[str]] | None:
    """The source cut into parts that read on their own (a cluster engine runs one task per part), whose records
    in turn are exactly `open_source`'s, and the notes of the listing: one part per file of a file list, runs of
    `files_per_part` files of an image or audio folder, else the whole file. Paths are resolved here (a part may
    run on another machine, which must see them at the same place). None for a source that is not on disk
    (Python rows, DataFrames, arrays): it is read where it is."""
    if isinstance(source, Files):
        return [partial(_file_part, Path(p).expanduser().resolve(), opts, modality, renamed)
                for p, renamed in zip(source.paths, _renames(source.paths))], []
    if not isinstance(source, (str, Path)):
        return None
    path = Path(source).expanduser().resolve()
    if modality in ("image", "audio") and path.is_dir():
        files, notes = _listed(path, modality)
        origin = name or str(path)
        return [partial(_media_part, path, files[i:i + files_per_part], modality, origin)
                for i in range(0, len(files), files_per_part)], notes
    return [partial(_file_part, path, opts, modality, None, name)], []


def _file_part(path: str | Path, opts: TableOptions, modality: str, renamed: tuple[str, str] | None,
               name: str | None = None) -> Iterator[Record]:
    src = open_source(path, opts, name, modality)
    if renamed:
        _prefixed(src, *renamed)
    return iter(src)


def _media_part(root: Path, files: list[Path], modality: str, origin: str) -> Iterator[Record]:
    return iter(_located(Source(root.name, _dir_records(root, files, modality)), origin))
