"""Text files read line by line, so that an undecodable byte is reported with its line and column; plain or .gz."""

from __future__ import annotations

import gzip
import re
from pathlib import Path
from typing import Iterator

from embedstore.errors import InputError


def open_binary(path: Path):
    return gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")


def count_lines(path: Path) -> int | None:
    if path.suffix == ".gz":
        return None
    n, last = 0, b"\n"
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            n += block.count(b"\n")
            last = block[-1:]
    return n + (last != b"\n")


_LONE_CR = re.compile(r"(?<=\r)(?!\n)")  # the point after a \r that ends a line on its own (old Mac files)


def _wide_lines(f, path: Path, encoding: str) -> Iterator[bytes]:
    """Lines of a file in an encoding whose newline is not the byte \n (utf-16, utf-32): decoded whole-stream
    (a BOM read once), handed on as utf-8 bytes for the line loop."""
    import io
    try:
        for line in io.TextIOWrapper(f, encoding=encoding, newline=""):
            yield line.encode("utf-8", "surrogatepass")
    except UnicodeDecodeError as e:
        raise InputError(f"{path}: cannot decode it as {encoding} ({e.reason} at byte {e.start} of a block); "
                         "pass --encoding with the file's real encoding") from None


def decoded_lines(path: Path, encoding: str, state: dict) -> Iterator[str]:
    """Lines decoded one by one, so an undecodable byte is reported with its line number. \n, \r\n and a lone
    \r all end a line (mixed in one file too), each line keeping its ending for the csv module."""
    lineno = 0
    with open_binary(path) as f:
        wide = "\n".encode(encoding) != b"\n"  # utf-16/32: decoded whole-stream, then split
        for raw in (_wide_lines(f, path, encoding) if wide else f):
            try:
                text = raw.decode("utf-8" if wide else encoding)
            except UnicodeDecodeError as e:
                before = raw[:e.start]
                lone = len(re.findall(rb"\r(?!\n)", before))
                col = e.start - (before.rfind(b"\r") + 1 if lone else 0)
                raise InputError(f"{path}:{lineno + 1 + lone}: cannot decode byte {raw[e.start:e.start + 1]!r} at "
                                 f"column {col + 1} as {encoding}; pass --encoding (e.g. latin-1 or cp1252) "
                                 "with the file's real encoding") from None
            if lineno == 0 and text.startswith("\ufeff"):
                text = text[1:]
            pieces = _LONE_CR.split(text) if "\r" in text.rstrip("\r\n") or text.endswith("\r") else [text]
            for line in pieces:
                if line:
                    lineno += 1
                    state["line"] = lineno
                    yield line
