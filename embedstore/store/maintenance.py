"""info, delete and gc: the store's housekeeping."""

from __future__ import annotations

import json
import shutil
from typing import TYPE_CHECKING

from embedstore.errors import NotFoundError
from embedstore.store.db import first, scalar
from embedstore.store.schema import refresh_views

if TYPE_CHECKING:
    from embedstore.store.store import Store


def _dir_size(path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.exists() else 0


def info(store: "Store") -> dict:
    """Datasets (items by status, labels), encoders (vectors, dim), indexes (state) and sizes."""
    from embedstore.index.faiss_index import sidecar_path
    from embedstore.index.sync import db_state
    out: dict = {"path": str(store.path), "datasets": [], "encoders": [], "heads": []}
    with store.connect() as con:
        for name, modality, created in con.execute(
                "SELECT name, modality, created FROM datasets ORDER BY name").fetchall():
            counts = dict(con.execute("SELECT status, count(*) FROM items WHERE dataset=? GROUP BY status",
                                      [name]).fetchall())
            ds = {"name": name, "modality": modality, "created": str(created), "items": sum(counts.values()),
                  "ok": counts.get("ok", 0), "skipped": counts.get("skipped", 0), "encoders": []}
            for rec in store.encoder_records(name):
                state = db_state(con, name, rec)
                side = sidecar_path(store.index_path(name, rec))
                index = "missing (built on next use)"
                if side.exists():
                    try:
                        meta = json.loads(side.read_text())
                        fresh = "up to date" if meta.get("state") == state else "stale (caught up on next use)"
                        index = f"{meta.get('factory')}, {meta.get('count'):,} vectors, {fresh}"
                    except (ValueError, TypeError, AttributeError):
                        index = "unreadable sidecar (rebuilt on next use)"
                ds["encoders"].append({"spec": rec.spec, "fingerprint": rec.short, "dim": rec.dim,
                                       "vectors": state["count"], "index": index})
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
    out["size_bytes"] = {"database": store.db_path.stat().st_size + (
        store.db_path.with_name(store.db_path.name + ".wal").stat().st_size
        if store.db_path.with_name(store.db_path.name + ".wal").exists() else 0),
        "indexes": _dir_size(store.path / "indexes"), "heads": _dir_size(store.path / "heads")}
    return out


def delete_dataset(store: "Store", name: str) -> dict:
    """Remove a dataset's items, encoder links and index files; vectors stay until `gc` (other datasets may
    share them)."""
    store._require_writable()
    with store.transaction() as con:
        if not scalar(con, "SELECT count(*) FROM datasets WHERE name=?", [name]):
            raise NotFoundError(f"no dataset {name!r}; datasets: {store.dataset_names() or 'none'}")
        n = scalar(con, "SELECT count(*) FROM items WHERE dataset=?", [name])
        con.execute("DELETE FROM items WHERE dataset=?", [name])
        con.execute("DELETE FROM dataset_encoders WHERE dataset=?", [name])
        con.execute("DELETE FROM datasets WHERE name=?", [name])
    for key in [k for k in store._indexes if k[0] == name]:
        del store._indexes[key]
    shutil.rmtree(store.path / "indexes" / name, ignore_errors=True)
    return {"dataset": name, "items_deleted": n}


def gc(store: "Store") -> dict:
    """Delete vectors no item references (per encoder), then compact the database file."""
    store._require_writable()
    removed = {}
    with store.transaction() as con:
        for fp, spec, table in con.execute("SELECT fingerprint, spec, table_name FROM encoders").fetchall():
            n = scalar(con, f"SELECT count(*) FROM {table} e WHERE NOT EXISTS "
                            "(SELECT 1 FROM items i WHERE i.content_hash = e.content_hash)")
            if n:
                con.execute(f"DELETE FROM {table} e WHERE NOT EXISTS "
                            "(SELECT 1 FROM items i WHERE i.content_hash = e.content_hash)")
            removed[spec] = n
        refresh_views(con)
    with store.connect() as con:
        con.execute("CHECKPOINT")
    return {"vectors_deleted": removed}
