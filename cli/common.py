"""What both commands share: --store, error reporting, table and JSON output."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from typing import Any, Callable, Sequence

from embedstore import config
from embedstore.errors import EmbedstoreError, resource_errors_as_clear


def add_store_arg(p: argparse.ArgumentParser) -> None:
    s = config.SETTINGS["store"]
    p.add_argument("--store", metavar="PATH", default=None,
                   help=f"store directory (default: ${s.env}, else {s.default})")


def open_store(args: argparse.Namespace, read_only: bool):
    import embedstore
    return embedstore.open(args.store, read_only=read_only)


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


def dump_json(obj: Any) -> None:
    print(json.dumps(obj, indent=2, default=str))


def run(build_parser: Callable[[], argparse.ArgumentParser], commands: dict[str, Callable[[Any], int]],
        argv: list[str] | None) -> int:
    """Parse, dispatch to the sub-command; library errors print as one line (no traceback) and exit 2."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s", stream=sys.stderr)
    try:
        args = build_parser().parse_args(argv)
        with resource_errors_as_clear():  # whatever the command was writing: one line, not a traceback
            return commands[args.command](args)
    except EmbedstoreError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; everything committed so far is kept (rerun to continue)", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0
