"""What both commands share: the parser conventions (--store anywhere, --version, --json, a subcommand's usage on
a bad flag), the table options of every command that reads inputs, output as tables or JSON, and error
reporting (one line, exit 2, no traceback)."""

from __future__ import annotations

import argparse
import glob
import json
import logging
import shutil
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from embedstore import __version__, config
from embedstore.errors import EmbedstoreError, InputError, resource_errors_as_clear
from embedstore.sources import FORMATS, Files, TableOptions


class Parser(argparse.ArgumentParser):
    """argparse, with errors that end in what to do; `subcommands` is the top level's registry (see build)."""

    subcommands: Any = None

    def error(self, message: str) -> None:  # type: ignore[override]
        self.print_usage(sys.stderr)
        print(f"{self.prog}: error: {message} (see `{self.prog} --help`)", file=sys.stderr)
        sys.exit(2)


def build(prog: str, description: str, epilog: str) -> tuple[Parser, Any]:
    """The top-level parser (with --version and --store) and its subcommand registry."""
    p = Parser(prog=prog, description=description, epilog=epilog, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--version", action="version", version=f"%(prog)s (embedstore) {__version__}")
    add_store_arg(p)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=Parser)
    p.subcommands = sub
    return p, sub


def add_store_arg(p: argparse.ArgumentParser) -> None:
    """--store, accepted before or after the subcommand (both write one value; neither has a default)."""
    s = config.SETTINGS["store"]
    p.add_argument("--store", metavar="PATH", default=argparse.SUPPRESS,
                   help=f"store directory (default: ${s.env}, else {s.default})")


def seed(value: str) -> int:
    """argparse type: a random seed numpy and scikit-learn accept."""
    n = int(value)
    if not 0 <= n < 2 ** 32:
        raise argparse.ArgumentTypeError(f"a seed is from 0 to {2 ** 32 - 1}, not {value}")
    return n


def add_json_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print the result as JSON (for scripts)")


def add_table_args(p: argparse.ArgumentParser, labels: bool = True) -> None:
    """How inputs are read: the same options for `embedstore ingest` and `heads predict`."""
    p.add_argument("--text-column", default="text", help="column holding the text (default: text)")
    p.add_argument("--sequence-column", dest="text_column", help="column holding DNA/RNA sequences (the same "
                   "as --text-column; FASTA/FASTQ files need neither)")
    p.add_argument("--path-column", help="image and audio encoders: the table column holding file paths "
                   "(relative to the table's folder); folders of files and tar shards (.tar, .tar.gz) need none")
    if labels:
        p.add_argument("--label-column", "--label", dest="label_column", help="column holding the label, if any "
                       "(`heads fit --label` then takes this name or `label`)")
    p.add_argument("--id-column", help="column holding a unique id (default key: <file name>:<row>)")
    p.add_argument("--sep", help="field separator (default: tab for .tsv, comma for .csv)")
    p.add_argument("--quoting", choices=["auto", "none", "minimal"], default="auto",
                   help="CSV quoting (auto: none for TSV, minimal for CSV)")
    p.add_argument("--no-header", dest="header", action="store_false", help="the file has no header row")
    p.add_argument("--columns", help="comma-separated column names (with --no-header, or to rename)")
    p.add_argument("--encoding", default="utf-8", help="text encoding of the file (default: utf-8)")
    p.add_argument("--format", choices=list(FORMATS),
                   help="input format when the suffix does not tell (lines: one text per line, like .txt)")


def table_options(args: argparse.Namespace) -> TableOptions:
    return TableOptions(text_column=args.text_column, label_column=getattr(args, "label_column", None),
                        id_column=args.id_column, sep=args.sep, quoting=args.quoting, header=args.header,
                        columns=args.columns.split(",") if args.columns else None, encoding=args.encoding,
                        format=args.format, path_column=args.path_column)


@contextmanager
def inputs(paths: Sequence[str], fmt: str | None) -> Iterator[tuple[Any, str | None]]:
    """The positional inputs as one source and the name items record as their source: a path, `-` (standard
    input, spooled to a temporary file whose suffix follows --format, one text per line by default; recorded as
    `stdin`), or several paths and globs read in turn."""
    spool = None
    try:
        expanded: list[str] = []
        for p in paths:
            if p == "-":
                spool = tempfile.mkdtemp(prefix="embedstore-stdin-")
                target = Path(spool) / f"stdin.{_SUFFIX.get(fmt or 'lines', 'txt')}"
                with open(target, "wb") as f:
                    shutil.copyfileobj(sys.stdin.buffer, f)
                expanded.append(str(target))
            elif glob.has_magic(p):
                found = sorted(glob.glob(p, recursive=True))
                if not found:
                    raise InputError(f"no file matches {p!r}; check the pattern (quote it so the shell leaves it "
                                     "to embedstore, e.g. 'data/*.csv')")
                expanded += found
            else:
                expanded.append(p)
        try:
            yield (expanded[0] if len(expanded) == 1 else Files(expanded)), ("stdin" if paths == ["-"] else None)
        except EmbedstoreError as e:
            if spool:  # say <stdin>, not the temporary file it was spooled to
                raise type(e)(str(e).replace(str(Path(spool) / "stdin."), "<stdin>.")) from None
            raise
    finally:
        if spool:
            shutil.rmtree(spool, ignore_errors=True)


_SUFFIX = {"lines": "txt", "csv": "csv", "tsv": "tsv", "jsonl": "jsonl", "parquet": "parquet", "fasta": "fa",
           "fastq": "fq"}


def open_store(args: argparse.Namespace, read_only: bool, create: bool = False, files: bool = False):
    """The store --store names; only `embedstore ingest` creates one (a mistyped path is an error elsewhere)."""
    import embedstore
    return embedstore.open(getattr(args, "store", None), read_only=read_only, create=create, files=files)


def table(rows: Sequence[dict], columns: Sequence[str] | None = None, out=None) -> None:
    """A plain aligned text table (long cells are cut to keep lines readable)."""
    out = out or sys.stdout
    if not rows:
        print("(no rows)", file=out)
        return
    cols = list(columns or rows[0].keys())

    def cell(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.4f}"
        s = "" if v is None else str(v).replace("\n", " ")
        return s if len(s) <= 80 else s[:77] + "..."

    body = [[cell(r.get(c)) for c in cols] for r in rows]
    widths = [max(len(c), *(len(b[i]) for b in body)) for i, c in enumerate(cols)]
    print("  ".join(c.ljust(w) for c, w in zip(cols, widths)).rstrip(), file=out)
    print("  ".join("-" * w for w in widths), file=out)
    for b in body:
        print("  ".join(v.ljust(w) for v, w in zip(b, widths)).rstrip(), file=out)


def _jsonable(obj: Any) -> Any:
    """Valid JSON: NaN and infinities as null, bytes as hex, anything else unknown as its text."""
    if isinstance(obj, float):
        return obj if obj == obj and obj not in (float("inf"), float("-inf")) else None
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (bytes, bytearray, memoryview)):
        return "0x" + bytes(obj).hex()
    if obj is None or isinstance(obj, (str, int, bool)):
        return obj
    if hasattr(obj, "item") and hasattr(obj, "dtype"):  # a numpy scalar
        return _jsonable(obj.item())
    return str(obj)


def dump_json(obj: Any, out=None) -> None:
    print(json.dumps(_jsonable(obj), indent=2, allow_nan=False), file=out or sys.stdout)


def rows_out(rows: list[dict], fmt: str, columns: Sequence[str] | None = None) -> None:
    """Rows as a table, JSON or CSV on stdout."""
    if fmt == "json":
        dump_json(rows)
    elif fmt == "csv":
        import csv
        w = csv.DictWriter(sys.stdout, fieldnames=list(columns or (rows[0] if rows else [])), extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    else:
        table(rows, columns)


def run(parser: Parser, commands: dict[str, Callable[[Any], int]], argv: list[str] | None) -> int:
    """Parse, dispatch to the subcommand; library errors and unreadable files print as one line (no traceback)
    and exit 2."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s", stream=sys.stderr)
    try:
        args, extra = parser.parse_known_args(argv)
        if extra:  # a flag the subcommand does not take: show that subcommand's usage, not the top level's
            parser.subcommands.choices[args.command].error(f"unrecognized arguments: {' '.join(extra)}")
        with resource_errors_as_clear():  # whatever the command was writing: one line, not a traceback
            return commands[args.command](args)
    except EmbedstoreError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # e.g. `embedstore sql ... | head`
        return 0
    except OSError as e:  # a file the user named that cannot be read or written
        print(f"error: {e.strerror or e}{f': {e.filename}' if e.filename else ''}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; everything committed so far is kept (rerun to continue)", file=sys.stderr)
        return 130
