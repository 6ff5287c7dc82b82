"""FASTA and FASTQ readers (plain or .gz): one Record per sequence record, in file order.

What a record becomes:
- key: the header's first word (`>chr1 Homo sapiens` -> `chr1`); a header with no id -> `<file name>:<record n>`.
  A repeated id gets a suffix (`id~2`, `id~3`, ...) and the ingest report's notes name the renamed ids, so keys stay unique
  and nothing is dropped.
- content: the sequence as read, lines joined; line ends (LF or CRLF) and trailing blanks are dropped, every
  other character is kept (the encoder's alphabet policy judges it, e.g. a digit -> a skip naming the position).
- meta: {"description": the rest of the header (`>` characters in it are kept), plus every `key=value` word of
  it}; FASTQ adds "mean_quality" (Phred+33). `--label-column NAME` takes the label from a `NAME=value` word.
Tolerated: multi-line records, blank lines, CRLF, a missing final newline, multi-line FASTQ. A FASTQ record whose
quality length differs from its sequence length, or that the file ends inside, is skipped with a reason that
names it and its line. Text before the first header is an error (the file is not FASTA/FASTQ).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Iterator

from embedstore.errors import InputError
from embedstore.sources.lines import decoded_lines
from embedstore.sources.records import Record, Source, TableOptions

SEQUENCE_SUFFIXES = {".fa": "fasta", ".fasta": "fasta", ".fna": "fasta", ".ffn": "fasta", ".frn": "fasta",
                     ".fas": "fasta", ".faa": "fasta", ".fq": "fastq", ".fastq": "fastq"}
_FIELD = re.compile(r"(\w[\w.-]*)=(\S+)")


def sequence_format(path: Path, opts: TableOptions) -> str | None:
    """'fasta' or 'fastq' when `--format` or the suffix (before an optional .gz) says so, else None."""
    if opts.format in ("fasta", "fastq"):
        return opts.format
    suffixes = [s.lower() for s in path.suffixes if s.lower() != ".gz"]
    return SEQUENCE_SUFFIXES.get(suffixes[-1]) if suffixes else None


def open_sequences(path: Path, opts: TableOptions, fmt: str) -> Source:
    """A Source over a FASTA/FASTQ file; the record count is known up front for plain (not gzipped) files."""
    if opts.id_column:
        raise InputError(f"{path.name}: --id-column does not apply to {fmt.upper()}; records are keyed by the "
                         "first word of their header")
    source = Source(path.name, [], _count_records(path, fmt))
    reader = _fasta(path, opts) if fmt == "fasta" else _fastq(path, opts)
    source.records = _unique_keys(reader, path.name, source.notes)
    return source


def _count_records(path: Path, fmt: str) -> int | None:
    """Header lines of a plain FASTA file (for the progress bar); None for FASTQ, whose quality lines may
    start with '@' too, and for gzip."""
    if fmt != "fasta" or path.suffix == ".gz":
        return None
    n, prev = 0, b"\n"
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            n += (prev + block).count(b"\n>")
            prev = block[-1:]
    return n


def _record(name: str, number: int, header: str, seq: str, opts: TableOptions, reason: str | None = None,
            extra: dict | None = None) -> Record:
    ident, _, description = header.strip().partition(" ")
    ident, description = ident.strip(), description.strip()
    meta = {"description": description, **dict(_FIELD.findall(description)), **(extra or {})}
    label = meta.get(opts.label_column) if opts.label_column else None
    return Record(ident or f"{name}:{number}", seq, label, meta, name, reason)


def _fasta(path: Path, opts: TableOptions) -> Iterator[Record]:
    header, chunks, number = None, [], 0
    for lineno, line in enumerate(decoded_lines(path, opts.encoding, {}), 1):
        line = line.rstrip()
        if line.startswith(">"):
            if header is not None:
                yield _record(path.name, number, header, "".join(chunks), opts)
            header, chunks, number = line[1:], [], number + 1
        elif line:
            if header is None:
                raise InputError(f"{path}:{lineno}: expected a FASTA header line starting with '>', found "
                                 f"{line[:40]!r}; is this a FASTA file? (pass --format to say what it is)")
            chunks.append(line)
    if header is not None:
        yield _record(path.name, number, header, "".join(chunks), opts)


def _fastq(path: Path, opts: TableOptions) -> Iterator[Record]:
    """4-line records, or multi-line ones: sequence lines up to a '+' line, then quality until it is as long."""
    lines = enumerate(decoded_lines(path, opts.encoding, {}), 1)
    number = 0
    for lineno, line in lines:
        line = line.rstrip()
        if not line:
            continue
        if not line.startswith("@"):
            raise InputError(f"{path}:{lineno}: expected a FASTQ header line starting with '@', found "
                             f"{line[:40]!r}; is this a FASTQ file? (pass --format to say what it is)")
        number += 1
        header, seq, qual, state = line[1:], [], [], "seq"
        for _, line in lines:
            line = line.rstrip()
            if state == "seq":
                if line.startswith("+"):
                    state = "qual"
                else:
                    seq.append(line)
            else:
                qual.append(line)
            if state == "qual" and sum(map(len, qual)) >= sum(map(len, seq)):
                break
        s, q = "".join(seq), "".join(qual)
        if state != "qual" or len(q) < len(s):
            reason = f"record starting at line {lineno}: the file ends before its quality line is complete"
        elif len(q) != len(s):
            reason = f"record starting at line {lineno}: quality has {len(q):,} characters, sequence {len(s):,}"
        else:
            reason = None
        extra = {"mean_quality": round(sum(q.encode()) / len(q) - 33, 2)} if q and not reason else {}
        yield _record(path.name, number, header, s, opts, reason, extra)


def _unique_keys(records: Iterator[Record], name: str, notes: list[str]) -> Iterator[Record]:
    """Rename repeated ids (`id~2`, ...) so that no record replaces another; warn once, at the end."""
    seen: set[str] = set()
    renamed: list[str] = []
    for r in records:
        if r.key in seen:
            n, base = 2, r.key
            while f"{base}~{n}" in seen:
                n += 1
            r.key = f"{base}~{n}"
            renamed.append(f"{base} -> {r.key}")
        seen.add(r.key)
        yield r
    if renamed:
        note = (f"{name}: {len(renamed):,} repeated record id(s) got a suffix to stay unique: "
                + ", ".join(renamed[:5]) + (", ..." if len(renamed) > 5 else ""))
        notes.append(note)
