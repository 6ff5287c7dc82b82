"""The catalog: what the database knows about datasets and encoders, read without loading any model.

Dataset and head names (checked here: they name directories in the store), encoder records (fingerprint, spec,
dim, modality, table), registering a new encoder's table, and resolving what a user typed (`minilm`, `fp:<prefix>`,
`a+b`, or nothing for a dataset's only encoder) to records, so that `heads fit` never imports torch.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from embedstore.errors import InputError, NotFoundError
from embedstore.faults import fault_point
from embedstore.store.queries import first
from embedstore.store.schema import emb_table_sql, refresh_views

if TYPE_CHECKING:
    import duckdb

    from embedstore.store.database import Database

NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+\-]{0,127}")


@dataclass(frozen=True)
class EncoderRecord:
    """An encoder as the store knows it: enough to read its vectors without loading the model."""

    fingerprint: str
    spec: str
    dim: int
    modality: str
    table: str
    unit_norm: bool | None = None  # declared by the encoder at ingest; None in stores written before m003

    @property
    def short(self) -> str:
        return self.fingerprint[:12]


def check_name(name: str, kind: str = "dataset") -> str:
    """Dataset and head names name directories in the store: nothing that could leave it (`..`, `/`)."""
    if not isinstance(name, str) or not NAME.fullmatch(name):
        raise InputError(f"{kind} name {name!r} is not allowed: use letters, digits, '_', '-', '.', '+' "
                         "(it names files in the store), starting with a letter or digit")
    return name


# -- datasets --------------------------------------------------------------------------------------------------
def dataset_names(db: "Database") -> list[str]:
    with db.connect() as con:
        return [r[0] for r in con.execute("SELECT name FROM datasets ORDER BY name").fetchall()]


def require_dataset(db: "Database", name: str) -> None:
    names = dataset_names(db)
    if name not in names:
        raise NotFoundError(f"no dataset {name!r} in {db.path}; datasets: {names or 'none'}")


def require_fresh_dataset_modality(db: "Database", name: str, modality: str) -> None:
    """A dataset holds one modality: refuse mixing before anything is read or embedded."""
    check_name(name)
    with db.connect() as con:
        row = first(con, "SELECT modality FROM datasets WHERE name=?", [name])
    if row is not None and row[0] != modality:
        raise InputError(f"dataset {name!r} holds {row[0]} items, not {modality}; use another --dataset")


def ensure_dataset(con: "duckdb.DuckDBPyConnection", name: str, modality: str, source: str | None,
                   label_column: str | None = None) -> None:
    """Create the dataset row if needed (inside the caller's transaction, with its first items), and record the
    source column its labels come from, so that `--label <that column>` finds them as well as `--label label`."""
    con.execute("INSERT INTO datasets (name, modality, source) VALUES (?, ?, ?) ON CONFLICT DO NOTHING",
                [name, modality, source])
    if label_column:
        con.execute("UPDATE datasets SET label_column = ? WHERE name = ? AND label_column IS DISTINCT FROM ?",
                    [label_column, name, label_column])


# -- encoders --------------------------------------------------------------------------------------------------
def register_encoder(db: "Database", encoder: Any) -> EncoderRecord:
    """Record an encoder's identity and create its embeddings table (loads the model only if new)."""
    fp = encoder.fingerprint
    table = f"emb_{fp[:16]}"
    with db.transaction() as con:  # table, encoders row and view change together, or not at all
        row = first(con, "SELECT dim FROM encoders WHERE fingerprint=?", [fp])
        if row is None:
            dim = encoder.dim
            con.execute(emb_table_sql(table, dim))
            con.execute("INSERT INTO encoders (fingerprint, spec, dim, modality, table_name, config, versions, "
                        "unit_norm) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                        [fp, encoder.spec, dim, encoder.modality, table, json.dumps(encoder.identity()),
                         json.dumps(encoder.versions()), bool(encoder.unit_norm)])
            refresh_views(con)
            fault_point("encoder.register.before_commit")
        else:
            dim = row[0]  # known: the model need not be loaded when everything is cached
            con.execute("UPDATE encoders SET unit_norm = ? WHERE fingerprint = ? AND unit_norm IS NULL",
                        [bool(encoder.unit_norm), fp])  # recorded before m003: declared now
        con.execute("INSERT INTO encoder_specs (spec, fingerprint) VALUES (?, ?) ON CONFLICT DO UPDATE "
                    "SET last_used = now()", [encoder.spec, fp])
    return EncoderRecord(fp, encoder.spec, dim, encoder.modality, table, bool(encoder.unit_norm))


def encoder_records(db: "Database", dataset: str | None = None) -> list[EncoderRecord]:
    sql = "SELECT * FROM encoders"  # unit_norm is absent from a pre-m003 store opened read-only
    args: list = []
    if dataset is not None:
        sql += " WHERE fingerprint IN (SELECT fingerprint FROM dataset_encoders WHERE dataset=?)"
        args = [dataset]
    with db.connect() as con:
        cur = con.execute(sql + " ORDER BY created", args)
        names = [d[0] for d in cur.description]
        rows = [dict(zip(names, r)) for r in cur.fetchall()]
    return [EncoderRecord(r["fingerprint"], r["spec"], r["dim"], r["modality"], r["table_name"], r.get("unit_norm"))
            for r in rows]


def encoder_record(db: "Database", fingerprint: str) -> EncoderRecord | None:
    """The record of an exact fingerprint, whichever datasets use it (None if the store has none)."""
    return next((r for r in encoder_records(db) if r.fingerprint == fingerprint), None)


def describe(records: list[EncoderRecord]) -> str:
    return ", ".join(f"{r.spec} (fp:{r.short}, {r.dim}-d)" for r in records)


def resolve_encoder(db: "Database", spec: str, dataset: str | None = None) -> EncoderRecord:
    """A spec (as used at ingest), `fp:<prefix>`, or '' for the dataset's only encoder, to a record."""
    candidates = encoder_records(db, dataset)
    if dataset is not None and not candidates:
        require_dataset(db, dataset)  # a dataset that does not exist says so, not "0 encoders"
    where = f" of dataset {dataset!r}" if dataset else ""
    if not spec:
        if len(candidates) == 1:
            return candidates[0]
        raise InputError(f"dataset {dataset!r} has {len(candidates)} encoders; choose one with --encoder: "
                         + (describe(candidates) or "none (ingest with --encoder first)"))
    if spec.startswith("fp:"):
        found = [c for c in candidates if c.fingerprint.startswith(spec[3:])]
    else:
        with db.connect() as con:
            fps = {r[0] for r in con.execute("SELECT fingerprint FROM encoder_specs WHERE spec=?",
                                             [spec]).fetchall()}
        found = [c for c in candidates if c.fingerprint in fps]
    if len(found) == 1:
        return found[0]
    if not found:
        raise NotFoundError(f"no vectors for encoder {spec!r}{where}; encoders{where}: "
                            f"{describe(candidates) or 'none'}. Run `embedstore ingest` with it first")
    raise InputError(f"encoder {spec!r} has {len(found)} fingerprints{where} (its weights or settings "
                     f"changed between ingests): {describe(found)}; pass --encoder fp:<prefix>")


def resolve_feature_set(db: "Database", spec: str, dataset: str | None = None) -> list[EncoderRecord]:
    """`a+b` -> the ordered records of a deliberate concatenation; '' -> the dataset's only encoder."""
    return [resolve_encoder(db, part.strip(), dataset) for part in spec.split("+")] if spec else \
        [resolve_encoder(db, "", dataset)]


def records_in(db: "Database", dataset: str, specs: list[str], fingerprints: list[str]) -> list[EncoderRecord]:
    """The same encoders (by fingerprint) in another dataset, e.g. dev or test for a head trained on train."""
    require_dataset(db, dataset)
    out = []
    for spec, fp in zip(specs, fingerprints):
        try:
            out.append(resolve_encoder(db, f"fp:{fp}", dataset))
        except NotFoundError:
            raise NotFoundError(f"dataset {dataset!r} has no vectors of encoder {spec!r} (fp:{fp[:12]}); "
                                f"ingest it with --encoder {spec}") from None
    return out
