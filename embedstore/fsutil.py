"""Crash-safe file writes: temp file -> fsync -> rename -> fsync directory; and checksums.

Two kinds: `atomic_write` replaces a file in place (a crash leaves the old or the new one), and
`write_versioned` writes a new file under a content-derived name, for files that a pointer (an index sidecar,
a database row) names: the file a pointer names is then never overwritten, only removed once nothing names it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Callable

from embedstore.faults import fault_point


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def make_dir(path: Path) -> None:
    """mkdir -p, fsyncing each parent of a directory it creates, so a committed pointer never names a directory
    that a power cut forgets."""
    path = Path(path)
    if path.is_dir():
        return
    if path.exists():
        from embedstore.errors import CorruptFileError
        raise CorruptFileError(f"{path} should be a folder but is a file; move it away (a store rebuilds its "
                               "indexes from the database, and heads can be refitted)")
    make_dir(path.parent)
    path.mkdir(exist_ok=True)
    fsync_dir(path.parent)


def _place(tmp: Path, write: Callable[[Path], None], name_for: Callable[[Path], Path]) -> Path:
    """`write(tmp)`, fsync it, rename it to `name_for(tmp)`, fsync the directory: no partial file ever has
    the final name."""
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        path = name_for(tmp)
        fault_point("file.before_replace")
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    fault_point("file.after_replace")
    fsync_dir(path.parent)
    return path


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Call `write(tmp)` then move tmp over `path`, so a crash leaves either the old or the new file."""
    path = Path(path)
    if path.is_dir():
        from embedstore.errors import InputError
        raise InputError(f"{path} is a folder; give a file name to write (e.g. {path / 'out.png'})")
    make_dir(path.parent)
    _place(path.with_name(f".{path.name}.tmp.{os.getpid()}"), write, lambda tmp: path)


def write_versioned(directory: Path, stem: str, suffix: str, write: Callable[[Path], None]) -> tuple[Path, str]:
    """Call `write(tmp)`, fsync it, and rename it to `<stem>.<sha256[:16]><suffix>`; returns (path, sha256)."""
    make_dir(directory)
    digest = ""

    def name_for(tmp: Path) -> Path:
        nonlocal digest
        digest = sha256_file(tmp)
        return directory / f"{stem}.{digest[:16]}{suffix}"
    return _place(directory / f".{stem}.tmp.{os.getpid()}{suffix}", write, name_for), digest


def remove_other_versions(directory: Path, stem: str, suffix: str, keep: str | None) -> None:
    """Delete the versions of `stem` (and temporary files a killed writer left) except the file named `keep`.
    Only the store's writer calls this, under its lock, so no other writer can be mid-write."""
    for p in [*directory.glob(f"{stem}.*{suffix}"), *directory.glob(f".{stem}.tmp.*")]:
        if p.name != keep:
            if p.is_dir():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    atomic_write(path, lambda tmp: tmp.write_bytes(data))


def atomic_write_json(path: Path, obj: object) -> None:
    atomic_write_bytes(path, json.dumps(obj, indent=2, sort_keys=True).encode())


def read_verified(directory: Path, checksum: str | None, what: str) -> dict[str, bytes]:
    """Every file a directory's manifest.json lists, after each matches its sha256 there (and the manifest
    matches `checksum`, the one its owner recorded, when given); raises CorruptFileError naming `what`."""
    from embedstore.errors import CorruptFileError
    man_path = Path(directory) / "manifest.json"
    if not man_path.is_file():
        raise CorruptFileError(f"{what}: {man_path} is missing")
    raw = man_path.read_bytes()
    if checksum is not None and hashlib.sha256(raw).hexdigest() != checksum:
        raise CorruptFileError(f"{what}: manifest checksum does not match the store's record; the files were "
                               "modified or replaced")
    try:
        files = json.loads(raw)["files"]
        if not isinstance(files, dict) or not all(isinstance(f, str) and "/" not in f for f in files):
            raise ValueError("it does not list plain file names")
    except (ValueError, KeyError, TypeError) as e:
        raise CorruptFileError(f"{what}: unreadable manifest ({e})") from None
    blobs = {}
    for fname, digest in files.items():
        path = Path(directory) / fname
        data = path.read_bytes() if path.is_file() else b""
        if not path.is_file() or hashlib.sha256(data).hexdigest() != digest:
            raise CorruptFileError(f"{what}: {fname} is missing or does not match its checksum")
        blobs[fname] = data
    return blobs
