"""Tables and text: CSV/TSV/JSONL/Parquet files, one-text-per-line .txt files, folders of .txt files,
DataFrames and Python rows, as Records in source order.

Rows are keyed by `--id-column`, else `<file name>:<row>` (data rows counted from 1); files of a directory are
keyed by their path relative to it and labelled by their parent folder when they sit in one. Nothing here embeds
or normalises.
"""

from __future__ import annotations

import csv
import io
import json
import sys
from pathlib import Path
from typing import Any, Iterable, Iterator

from embedstore.errors import InputError
from embedstore.hashing import content_hash
from embedstore.sources.lines import count_lines, decoded_lines
from embedstore.sources.records import Record, Source, TableOptions

csv.field_size_limit(sys.maxsize)

TABLE_SUFFIXES = {".csv": "csv", ".tsv": "tsv", ".tab": "tsv", ".jsonl": "jsonl", ".ndjson": "jsonl",
                  ".parquet": "parquet", ".pq": "parquet", ".txt": "lines"}
# every --format value a reader knows (fasta/fastq: sources/fasta.py; dir: a folder of .txt files)
FORMATS = ("csv", "tsv", "jsonl", "parquet", "lines", "dir", "fasta", "fastq")


# -- rows -> records -----------------------------------------------------------------------------------------
class NotText(ValueError):
    """A binary cell that is not UTF-8 text."""


def _str(value: Any) -> str | None:
    """Cell -> text; lists and dicts (multi-label targets) as JSON, missing values as None; binary values (a
    Parquet BINARY column) as the UTF-8 text they hold, else NotText."""
    if value is None:
        return None
    if isinstance(value, (bytes, bytearray, memoryview)):
        try:
            return bytes(value).decode("utf-8")
        except UnicodeDecodeError as e:
            raise NotText(f"a binary value ({len(value):,} bytes) that is not UTF-8 text (byte "
                          f"{bytes(value)[e.start:e.start + 1]!r} at offset {e.start})") from None
    if isinstance(value, float) and value != value:  # NaN from a DataFrame
        return None
    if isinstance(value, (list, tuple, dict)) or type(value).__name__ in ("ndarray", "Series"):
        return json.dumps(value.tolist() if hasattr(value, "tolist") else value, default=str)
    return value if isinstance(value, str) else str(value)


def _meta_value(v: Any) -> Any:
    """Metadata as JSON can hold it: binary as its UTF-8 text, or hex when it is not text."""
    if isinstance(v, (bytes, bytearray, memoryview)):
        try:
            return bytes(v).decode("utf-8")
        except UnicodeDecodeError:
            return "hex:" + bytes(v).hex()
    return v


def _unique_columns(name: str, columns: list[str]) -> list[str]:
    repeated = sorted({c for c in columns if columns.count(c) > 1})
    if repeated:
        raise InputError(f"{name}: the header repeats column name(s) {repeated}; every column needs its own name "
                         "(rename them in the file, or give new names with --columns a,b,c)")
    return columns


class _RowMapper:
    """Turns row dicts into Records; checks the columns once, against the first row's keys or the header."""

    def __init__(self, name: str, opts: TableOptions, columns: list[str] | None):
        self.name, self.opts = name, opts
        self.used = {c for c in (opts.content[1], opts.label_column, opts.id_column) if c}
        if columns is not None:
            self.check(columns)

    def check(self, columns: Iterable[str]) -> None:
        found = list(columns)
        for what, col in (self.opts.content, ("label", self.opts.label_column), ("id", self.opts.id_column)):
            if col and col not in found:
                raise InputError(f"{self.name}: {what} column {col!r} not found; columns found: {found}. "
                                 f"Pass --{what}-column with one of them" +
                                 ("" if self.opts.header else " (with --no-header, columns are named by "
                                  "--columns, else 1, 2, 3, ...)"))

    def record(self, row: dict, rownum: int, reason: str | None = None) -> Record:
        o = self.opts
        key = f"{self.name}:{rownum}"
        what, column = o.content
        raw = row.get(column)
        is_bytes = what == "path" and isinstance(raw, (bytes, bytearray, memoryview))  # encoded images
        text = label = None
        try:
            if o.id_column:
                given = _str(row.get(o.id_column))
                if not given or not given.strip():  # `name:row` could be another row's real id: no fallback
                    key, reason = f"{key}#no-id", reason or f"empty value in id column {o.id_column!r}"
                else:
                    key = given
            text = bytes(raw) if is_bytes else _str(raw)
            label = _str(row.get(o.label_column)) if o.label_column else None
        except NotText as e:
            reason = reason or f"{e} in {what} column {column!r} or the label/id; decode it first"
        if text is None and reason is None:
            reason = f"no value in {what} column {column!r}"
        meta = {k: _meta_value(v) for k, v in row.items() if k not in self.used and k is not None} or None
        return Record(key, text, label, meta, self.name, reason)


def _table_format(path: Path, opts: TableOptions) -> str:
    if opts.format:
        return opts.format
    suffixes = [s for s in path.suffixes if s != ".gz"]
    fmt = TABLE_SUFFIXES.get(suffixes[-1].lower() if suffixes else "")
    if fmt is None:
        raise InputError(f"{path}: cannot tell the format from the suffix; expected one of "
                         f"{sorted(TABLE_SUFFIXES)} (optionally .gz) or a directory; pass --format")
    return fmt


def _checked_rows(reader, path: Path, state: dict) -> Iterator[list[str]]:
    """The csv module's rows; its rare parse errors become an InputError naming the file and line."""
    while True:
        try:
            yield next(reader)
        except StopIteration:
            return
        except csv.Error as e:
            raise InputError(f"{path}:{state['line']}: cannot parse this CSV/TSV line ({e}); check --sep and "
                             "--quoting") from None


def _csv_records(path: Path, opts: TableOptions, fmt: str) -> Iterator[Record]:
    sep = opts.sep or ("\t" if fmt == "tsv" else ",")
    quoting = opts.quoting if opts.quoting != "auto" else ("none" if fmt == "tsv" else "minimal")
    if quoting not in ("none", "minimal"):
        raise InputError(f"--quoting must be auto, none or minimal, not {opts.quoting!r}")
    state = {"line": 0}
    reader = csv.reader(decoded_lines(path, opts.encoding, state), delimiter=sep,
                        quoting=csv.QUOTE_NONE if quoting == "none" else csv.QUOTE_MINIMAL)
    if opts.header:
        header = next(reader, None)
        if header is None:
            return
        if opts.columns:
            header = opts.columns
    else:
        header = opts.columns
    if header is not None:
        _unique_columns(path.name, list(header))
    mapper = _RowMapper(path.name, opts, header)
    for rownum, fields in enumerate(_checked_rows(reader, path, state), 1):
        if header is None:
            header = [str(i + 1) for i in range(len(fields))]
            mapper.check(header)
        if not fields:
            continue  # a blank line is no row
        reason = None
        if len(fields) != len(header):
            reason = (f"line {state['line']}: {len(fields)} fields, the header has {len(header)} "
                      "(ragged row; check --sep and --quoting)")
        yield mapper.record(dict(zip(header, fields)), rownum, reason)


def _lines_records(path: Path, opts: TableOptions) -> Iterator[Record]:
    """One text per line (a .txt file): key `<file name>:<line number>`; blank lines are no rows."""
    for lineno, line in enumerate(decoded_lines(path, opts.encoding, {}), 1):
        text = line.rstrip("\r\n")
        if text.strip():
            yield Record(f"{path.name}:{lineno}", text, source=path.name)


def _jsonl_records(path: Path, opts: TableOptions) -> Iterator[Record]:
    mapper = _RowMapper(path.name, opts, None)
    checked = False
    rownum = 0
    for lineno, line in enumerate(decoded_lines(path, opts.encoding, {}), 1):
        if not line.strip():
            continue
        rownum += 1
        try:
            row = json.loads(line)
            if not isinstance(row, dict):
                raise ValueError(f"expected a JSON object, found {type(row).__name__}")
        except ValueError as e:
            yield Record(f"{path.name}:{rownum}", None, source=path.name, reason=f"line {lineno}: bad JSON ({e})")
            continue
        if not checked:
            mapper.check(row.keys())
            checked = True
        yield mapper.record(row, rownum)


def _parquet(path: Path):
    import pyarrow as pa
    import pyarrow.parquet as pq
    try:
        return pq.ParquetFile(path)
    except (pa.ArrowInvalid, OSError) as e:
        raise InputError(f"{path}: not a readable Parquet file ({str(e).splitlines()[0]}); pass --format with what "
                         "it is (csv, tsv, jsonl, lines, fasta, fastq)") from None


def _parquet_records(path: Path, opts: TableOptions) -> Iterator[Record]:
    pf = _parquet(path)
    mapper = _RowMapper(path.name, opts, _unique_columns(path.name, pf.schema_arrow.names))
    rownum = 0
    for batch in pf.iter_batches(batch_size=8192):
        for row in batch.to_pylist():
            rownum += 1
            yield mapper.record(row, rownum)


def _dir_records(root: Path, opts: TableOptions) -> Iterator[Record]:
    for path in sorted(p for p in root.rglob("*.txt") if p.is_file()):
        rel = path.relative_to(root)
        label = rel.parent.name if rel.parent != Path(".") else None
        try:
            text = path.read_bytes().decode(opts.encoding)
            reason = None
        except UnicodeDecodeError as e:
            text, reason = None, f"cannot decode byte {e.object[e.start:e.start + 1]!r} at offset {e.start} as " \
                                 f"{opts.encoding}; pass --encoding"
        yield Record(rel.as_posix(), text.removeprefix("\ufeff") if text else text, label, None,
                     root.name, reason)


# -- python objects ----------------------------------------------------------------------------------------------
def _frame_rows(frame: Any) -> tuple[list[str], Iterator[dict]] | None:
    mod = type(frame).__module__.split(".")[0]
    if mod == "pandas":
        cols = [str(c) for c in frame.columns]
        return cols, (dict(zip(cols, row)) for row in frame.itertuples(index=False, name=None))
    if mod == "polars":
        return list(frame.columns), frame.iter_rows(named=True)
    if mod == "pyarrow":
        return list(frame.column_names), (r for b in frame.to_batches() for r in b.to_pylist())
    return None


def _iterable_records(items: Iterable, name: str, opts: TableOptions) -> Iterator[Record]:
    mapper = _RowMapper(name, opts, None)
    checked = False
    for rownum, item in enumerate(items, 1):
        if isinstance(item, (str, bytes)):
            try:
                text = item if isinstance(item, str) else item.decode(opts.encoding)
            except UnicodeDecodeError as e:
                raise InputError(f"{name}: item {rownum}: cannot decode byte {item[e.start:e.start + 1]!r} at "
                                 f"offset {e.start} as {opts.encoding}; pass encoding= with its real encoding, "
                                 "or str items") from None
            yield Record(f"{name}:{rownum}", text, source=name)
        elif isinstance(item, dict):
            if not checked:
                mapper.check(item.keys())
                checked = True
            yield mapper.record(item, rownum)
        else:
            raise InputError(f"{name}: item {rownum} is a {type(item).__name__}; expected str or dict rows")


def _row_keyed(records: Iterator[Record], name: str) -> Iterator[Record]:
    """Rows from Python with no id column are keyed by what they hold (content, label, metadata): ingesting more
    rows appends them, the same rows again change nothing, and an identical row gets `~2`, `~3`, ... (rows have
    no stable position in a DataFrame the way lines have in a file)."""
    seen: dict[str, int] = {}
    for r in records:
        body = r.content if isinstance(r.content, str) else (content_hash(r.content) if r.content else None)
        digest = content_hash(json.dumps([body, r.label, r.meta], sort_keys=True, default=str,
                                         ensure_ascii=False).encode("utf-8", "surrogatepass"))[:16]
        seen[digest] = seen.get(digest, 0) + 1
        r.key = f"{name}:{digest}" + (f"~{seen[digest]}" if seen[digest] > 1 else "")
        yield r


def open_rows(source: Any, opts: TableOptions, name: str | None = None) -> Source:
    """Tables, .txt files, folders of .txt files and Python rows as a Source of their content column."""
    frame = _frame_rows(source)
    if frame is not None:
        cols, rows = frame
        label = name or "dataframe"
        _RowMapper(label, opts, _unique_columns(label, cols))
        records = (_RowMapper(label, opts, None).record(r, i) for i, r in enumerate(rows, 1))
        return Source(label, records if opts.id_column else _row_keyed(records, label), total=len(source))
    if isinstance(source, (str, Path)):
        path = Path(source).expanduser()
        if not path.exists():
            raise InputError(f"no such file or directory: {path}")
        if path.is_dir() or opts.format == "dir":
            return Source(path.name, _dir_records(path, opts), total=sum(1 for _ in path.rglob("*.txt")))
        fmt = _table_format(path, opts)
        if fmt in ("csv", "tsv"):
            lines = count_lines(path)
            total = None if lines is None else max(lines - (1 if opts.header else 0), 0)
            return Source(path.name, _csv_records(path, opts, fmt), total)
        if fmt == "jsonl":
            return Source(path.name, _jsonl_records(path, opts), count_lines(path))
        if fmt == "lines":
            if opts.label_column or opts.id_column:
                raise InputError(f"{path.name}: a one-text-per-line file has no columns; --label-column and "
                                 "--id-column need a table (CSV/TSV/JSONL/Parquet)")
            return Source(path.name, _lines_records(path, opts), count_lines(path))
        if fmt == "parquet":
            return Source(path.name, _parquet_records(path, opts), _parquet(path).metadata.num_rows)
        raise InputError(f"unknown --format {fmt!r}; expected one of {', '.join(FORMATS)}")
    if isinstance(source, io.IOBase):
        raise InputError("pass a path, a DataFrame or an iterable of str/dict rows, not an open file")
    if hasattr(source, "__iter__"):
        total = len(source) if hasattr(source, "__len__") else None
        records = _iterable_records(source, name or "python", opts)
        return Source(name or "python", records if opts.id_column else _row_keyed(records, name or "python"),
                      total)
    raise InputError(f"cannot ingest a {type(source).__name__}: expected a path, a directory, a pandas/polars "
                     "DataFrame, a pyarrow Table or an iterable of str/dict rows")
