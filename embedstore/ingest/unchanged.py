"""Re-ingesting a file that has not changed does nothing: the one check that makes a rerun of the same command
cost a file hash instead of a full read.

After a complete ingest of one file, the store records the file's identity (resolved path, size, sha256 of its
bytes, the read options) with the encoder, the report and the dataset's state (items, and items with vectors of
that encoder). A later ingest of the same identity with the same encoder, while the dataset is still in that
state, returns the recorded outcome as "unchanged" without reading a row. Any change (a byte of the file, an
option, an item written by another ingest, a delete) makes it a normal ingest, which is idempotent anyway.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from embedstore.index.sync import db_state
from embedstore.store import catalog
from embedstore.store.queries import first

if TYPE_CHECKING:
    from embedstore.encoders import Encoder
    from embedstore.ingest.pipeline import IngestReport
    from embedstore.sources import TableOptions
    from embedstore.store.database import Database


def file_identity(source: Any, opts: "TableOptions", extra: dict) -> str | None:
    """A digest of a single file source and how it is read; None for anything else (Python rows, folders,
    several files), which always ingest normally."""
    if not isinstance(source, (str, os.PathLike)) or opts.path_column:
        return None  # a table naming media files elsewhere: those files may change without the table
    path = Path(source).expanduser()
    if not path.is_file():
        return None
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 22):
            h.update(block)
    fields = {"path": str(path.resolve()), "size": path.stat().st_size, "sha256": h.hexdigest(),
              "options": asdict(opts), **extra}
    return hashlib.sha256(json.dumps(fields, sort_keys=True, default=str).encode()).hexdigest()


def _state(con, dataset: str, record) -> dict:
    """Items (a digest of every column an ingest writes, so a relabel or an SQL update shows), skips, and the
    items with vectors of `record`."""
    n, top, rows = first(con, "SELECT count(*), coalesce(max(item_id), 0), coalesce(bit_xor(hash(item_id, key, "
                              "content_hash, text, source, label, meta::VARCHAR)), 0)::VARCHAR FROM items WHERE "
                              "dataset = ?", [dataset])
    skips = first(con, "SELECT count(*), coalesce(bit_xor(hash(s.item_id, s.reason)), 0)::VARCHAR FROM skips s "
                       "JOIN items i USING (item_id) WHERE i.dataset = ? AND s.fingerprint = ?",
                  [dataset, record.fingerprint])
    return {"items": int(n), "max_id": int(top), "rows": rows, "skips": list(skips),
            "vectors": db_state(con, dataset, record)}


def recorded(db: "Database", enc: "Encoder", dataset: str, identity: str) -> dict | None:
    """The report of the last ingest of `identity` with `enc`, if the dataset is still as that ingest left it."""
    record = catalog.encoder_record(db, enc.fingerprint)
    if record is None:
        return None
    with db.connect() as con:
        row = first(con, "SELECT report, state FROM source_states WHERE dataset = ? AND fingerprint = ? AND "
                         "identity = ? ORDER BY finished DESC LIMIT 1", [dataset, enc.fingerprint, identity])
        if row is None or json.loads(row[1]) != _state(con, dataset, record):
            return None
    return json.loads(row[0])


def remember(db: "Database", enc: "Encoder", dataset: str, identity: str, report: "IngestReport") -> None:
    record = catalog.encoder_record(db, enc.fingerprint)
    with db.transaction() as con:
        con.execute("DELETE FROM source_states WHERE dataset = ? AND fingerprint = ? AND identity = ?",
                    [dataset, enc.fingerprint, identity])
        con.execute("INSERT INTO source_states (dataset, fingerprint, identity, report, state) VALUES "
                    "(?, ?, ?, ?, ?)", [dataset, enc.fingerprint, identity, json.dumps(report.to_dict()),
                                        json.dumps(_state(con, dataset, record))])
