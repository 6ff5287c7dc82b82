"""info, check, delete and gc: the store's housekeeping."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

from embedstore.errors import (CORRUPT_ADVICE, CorruptFileError, NotFoundError, StoreCorruptError,
                               resource_errors_as_clear)
from embedstore.faults import fault_point
from embedstore.features import parts
from embedstore.fsutil import read_verified, remove_other_versions
from embedstore.index import sync
from embedstore.index.faiss_index import VectorIndex
from embedstore.store import catalog, layout
from embedstore.store.queries import arrow_batches, first, scalar
from embedstore.store.schema import refresh_views

if TYPE_CHECKING:
    from embedstore.store.database import Database


def _dir_size(path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.exists() else 0


def info(db: "Database") -> dict:
    """Datasets (items by status, labels), encoders (vectors, dim), indexes (state) and sizes."""
    out: dict = {"path": str(db.path), "datasets": [], "encoders": [], "heads": []}
    with db.connect() as con:
        for name, modality, created in con.execute(
                "SELECT name, modality, created FROM datasets ORDER BY name").fetchall():
            n_items = scalar(con, "SELECT count(*) FROM items WHERE dataset=?", [name])
            ds = {"name": name, "modality": modality, "created": str(created), "items": n_items, "encoders": []}
            for rec in catalog.encoder_records(db, name):
                state = sync.db_state(con, name, rec)
                side = db.index_path(name, rec)
                index = "missing (built on next use)"
                if side.exists():
                    try:
                        meta = json.loads(side.read_text())
                        fresh = "up to date" if meta.get("state") == state else "stale (caught up on next use)"
                        index = f"{meta.get('factory')}, {meta.get('count'):,} vectors, {fresh}"
                        params = meta.get("params") or {}
                        if "tuned_recall_at_10" in params:
                            at = f" at nprobe {params['nprobe']}" if "nprobe" in params else ""
                            index += (f", recall@10 {params['tuned_recall_at_10']:.3f}{at}"
                                      f", {params.get('bytes_per_vector', '?')} B/vector")
                    except (ValueError, TypeError, AttributeError):
                        index = "unreadable sidecar (rebuilt on next use)"
                skipped = scalar(con, "SELECT count(*) FROM skips s JOIN items i USING (item_id) "
                                      "WHERE i.dataset = ? AND s.fingerprint = ?", [name, rec.fingerprint])
                ds["encoders"].append({"spec": rec.spec, "fingerprint": rec.short, "dim": rec.dim,
                                       "vectors": state["count"], "skipped": skipped, "index": index})
            out["datasets"].append(ds)
        for fp, spec, dim, table in con.execute(
                "SELECT fingerprint, spec, dim, table_name FROM encoders ORDER BY created").fetchall():
            n, devices = first(con, f"SELECT count(*), string_agg(DISTINCT device || '/' || dtype, ', ') "
                                    f"FROM {table}")
            specs = [r[0] for r in con.execute("SELECT spec FROM encoder_specs WHERE fingerprint=? ORDER BY spec",
                                               [fp]).fetchall()]
            out["encoders"].append({"spec": spec, "also": [s for s in specs if s != spec], "fingerprint": fp[:12],
                                    "dim": dim, "vectors": n, "computed_on": devices or ""})
        out["heads"] = [{"name": n, "encoder": e, "dataset": d, "model": m} for n, e, d, m in con.execute(
            "SELECT name, encoder, dataset, model FROM heads ORDER BY name").fetchall()]
    out["size_bytes"] = {"database": db.db_path.stat().st_size + (
        db.db_path.with_name(db.db_path.name + ".wal").stat().st_size
        if db.db_path.with_name(db.db_path.name + ".wal").exists() else 0),
        "indexes": _dir_size(layout.indexes_root(db.path)), "heads": _dir_size(layout.heads_root(db.path))}
    return out


def check(db: "Database") -> dict:
    """Read every row of every table (DuckDB verifies each block's checksum as it reads it), every index file
    against its sidecar and every head against the checksums the database holds; report what is damaged.

    The one way to know a whole store is sound: other commands read only what they need, so a damaged block is
    found when a command first reads it."""
    out: dict = {"path": str(db.path), "tables": [], "indexes": [], "heads": [], "damaged": []}
    try:
        with db.connect() as con:
            tables = [r[0] for r in con.execute("SELECT table_name FROM duckdb_tables() WHERE database_name = "
                                                "current_database() ORDER BY 1").fetchall()]
    except Exception as e:  # noqa: BLE001 - the catalog itself is unreadable
        out["damaged"].append(f"database catalog: {_first_line(e)}")
        return out
    for table in tables:
        try:
            with db.connect() as con:
                n = sum(b.num_rows for b in arrow_batches(con, f'SELECT * FROM "{table}"'))
            out["tables"].append({"table": table, "rows": n, "state": "ok"})
        except Exception as e:  # noqa: BLE001 - any read failure is damage to report, not to raise
            out["tables"].append({"table": table, "rows": None, "state": f"damaged: {_first_line(e)}"})
            out["damaged"].append(f"table {table}: {_first_line(e)}")
    for name in (catalog.dataset_names(db) if not out["damaged"] else []):
        for rec in catalog.encoder_records(db, name):
            side = db.index_path(name, rec)
            try:
                VectorIndex.load(side)
                state = "ok"
            except CorruptFileError as e:
                state = f"{e} (rebuilt from the database on next use)" if side.exists() else "missing (built on next use)"
            out["indexes"].append({"dataset": name, "encoder": rec.spec, "state": state})
    heads = []
    if "heads" in tables and not any(d.startswith("table heads") for d in out["damaged"]):
        with db.connect() as con:
            heads = con.execute("SELECT name, checksum FROM heads ORDER BY name").fetchall()
    for name, checksum in heads:
        try:
            read_verified(layout.head_dir(db.path, name, checksum), checksum, f"head {name!r}")
            out["heads"].append({"head": name, "state": "ok"})
        except CorruptFileError as e:
            out["heads"].append({"head": name, "state": f"damaged: {e}"})
            out["damaged"].append(f"head {name}: {e}")
    return out


def _first_line(e: Exception) -> str:
    return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__


@resource_errors_as_clear()
def delete_dataset(db: "Database", name: str) -> dict:
    """Remove a dataset's items, encoder links and index files; vectors stay until `gc` (other datasets may
    share them)."""
    with db.writing():
        return _delete_dataset(db, name)


def _delete_dataset(db: "Database", name: str) -> dict:
    with db.transaction() as con:
        if not scalar(con, "SELECT count(*) FROM datasets WHERE name=?", [name]):
            raise NotFoundError(f"no dataset {name!r}; datasets: {catalog.dataset_names(db) or 'none'}")
        n = scalar(con, "SELECT count(*) FROM items WHERE dataset=?", [name])
        con.execute("DELETE FROM skips WHERE item_id IN (SELECT item_id FROM items WHERE dataset=?)", [name])
        con.execute("DELETE FROM source_states WHERE dataset=?", [name])
        con.execute("DELETE FROM items WHERE dataset=?", [name])
        con.execute("DELETE FROM dataset_encoders WHERE dataset=?", [name])
        con.execute("DELETE FROM datasets WHERE name=?", [name])
        fault_point("delete.before_commit")
    fault_point("delete.after_commit")
    sync.forget(db, name)
    shutil.rmtree(layout.indexes_root(db.path) / name, ignore_errors=True)
    # shards a stopped Ray run left (default staging folder) would bring the rows back at the next run
    shutil.rmtree(layout.ray_staging(layout.ray_staging_root(db.path), db.path, name), ignore_errors=True)
    return {"dataset": name, "items_deleted": n}


@resource_errors_as_clear()
def gc(db: "Database") -> dict:
    """Delete vectors no item references (per encoder), then compact the database file. A damaged store is
    refused first (`check`): compacting would carry the damage into the rewritten file."""
    with db.writing():
        return _gc(db)


def _gc(db: "Database") -> dict:
    damaged = check(db)["damaged"]
    if damaged:
        raise StoreCorruptError(f"gc refused: the store is damaged ({'; '.join(damaged[:3])}). {CORRUPT_ADVICE}")
    removed = {}
    with db.transaction() as con:
        for fp, spec, table in con.execute("SELECT fingerprint, spec, table_name FROM encoders").fetchall():
            rows = max(scalar(con, "SELECT count(*) FROM items"), scalar(con, f"SELECT count(*) FROM {table}"))
            removed[spec] = 0
            # by hash, the same part on both sides: each anti-join's hash table fits DuckDB's memory
            for item_part, vector_part in zip(parts(rows, "i.content_hash"), parts(rows, "e.content_hash")):
                orphan = (f"FROM {table} e WHERE NOT EXISTS (SELECT 1 FROM items i WHERE i.content_hash = "
                          f"e.content_hash {item_part}) {vector_part}")
                n = scalar(con, f"SELECT count(*) {orphan}")
                if n:
                    con.execute(f"DELETE {orphan}")
                removed[spec] += n
        refresh_views(con)
        fault_point("gc.before_commit")
    with db.connect() as con:
        con.execute("CHECKPOINT")
        datasets = {r[0] for r in con.execute("SELECT name FROM datasets").fetchall()}
        heads = dict(con.execute("SELECT name, checksum FROM heads").fetchall())
    return {"vectors_deleted": removed, "leftover_files_removed": _remove_leftovers(db, datasets, heads)}


def _remove_leftovers(db: "Database", datasets: set[str], heads: dict[str, str]) -> int:
    """Files no database row or sidecar names: a deleted dataset's indexes, superseded index and head versions,
    and temporary files of a writer that was killed (we hold the writer lock, so none is still writing)."""
    before = _count_files(layout.indexes_root(db.path)) + _count_files(layout.heads_root(db.path))
    for d in _subdirs(layout.indexes_root(db.path)):
        if d.name not in datasets:
            shutil.rmtree(d, ignore_errors=True)
            continue
        named = set()
        for side in d.glob("*.json"):
            try:
                named.add(json.loads(side.read_text())["file"])
            except (ValueError, KeyError, TypeError):
                pass  # an unreadable sidecar: its index is rebuilt on next use
        for f in d.iterdir():
            if f.suffix == ".faiss" and f.name not in named or ".tmp." in f.name:
                f.unlink(missing_ok=True)
    for d in _subdirs(layout.heads_root(db.path)):
        if d.name not in heads:
            shutil.rmtree(d, ignore_errors=True)
        else:
            remove_other_versions(d, "head", "", keep=layout.head_dir(db.path, d.name, heads[d.name]).name)
    return before - _count_files(layout.indexes_root(db.path)) - _count_files(layout.heads_root(db.path))


def _subdirs(path: Path) -> list[Path]:
    return [d for d in path.iterdir() if d.is_dir()] if path.is_dir() else []


def _count_files(path: Path) -> int:
    return sum(1 for f in path.rglob("*") if f.is_file()) if path.is_dir() else 0
