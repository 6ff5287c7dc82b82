"""The DuckDB schema as ordered, named migrations (applied on open, recorded in `_migrations`).

Per-encoder embedding tables (`emb_<fingerprint[:16]>`, one fixed `FLOAT[dim]` column each) are created when an
encoder is first used, not here: their dimension is only known then. `refresh_views` rebuilds the `embeddings`
view over all of them.
"""

from __future__ import annotations

from typing import Callable

import duckdb

M001_INITIAL = """
CREATE TABLE datasets (
    name     VARCHAR PRIMARY KEY,
    modality VARCHAR NOT NULL,
    created  TIMESTAMP NOT NULL DEFAULT current_timestamp,
    source   VARCHAR
);
CREATE SEQUENCE item_seq START 1;
CREATE TABLE items (
    item_id      BIGINT PRIMARY KEY,      -- a new id whenever an item's content changes (index ids)
    dataset      VARCHAR NOT NULL,
    key          VARCHAR NOT NULL,
    content_hash VARCHAR,                 -- of the raw content as read; NULL only when unreadable
    text         VARCHAR,                 -- the raw content when it is text (sentences, sequences)
    source       VARCHAR,
    label        VARCHAR,
    meta         JSON,
    status       VARCHAR NOT NULL,        -- 'ok' | 'skipped'
    reason       VARCHAR,                 -- why skipped
    updated      TIMESTAMP NOT NULL DEFAULT current_timestamp,
    UNIQUE (dataset, key)
);
CREATE INDEX items_hash ON items (content_hash);
CREATE TABLE encoders (
    fingerprint VARCHAR PRIMARY KEY,
    spec        VARCHAR NOT NULL,         -- as the user wrote it (alias or scheme:name)
    dim         INTEGER NOT NULL,
    modality    VARCHAR NOT NULL,
    table_name  VARCHAR NOT NULL,
    config      JSON,                     -- the identity the fingerprint hashes
    versions    JSON,                     -- library versions at first use
    created     TIMESTAMP NOT NULL DEFAULT current_timestamp
);
CREATE TABLE encoder_specs (             -- every spec that resolved to a fingerprint
    spec        VARCHAR NOT NULL,
    fingerprint VARCHAR NOT NULL,
    last_used   TIMESTAMP NOT NULL DEFAULT current_timestamp,
    PRIMARY KEY (spec, fingerprint)
);
CREATE TABLE dataset_encoders (
    dataset     VARCHAR NOT NULL,
    fingerprint VARCHAR NOT NULL,
    PRIMARY KEY (dataset, fingerprint)
);
CREATE TABLE heads (
    name         VARCHAR PRIMARY KEY,
    fingerprints JSON NOT NULL,
    encoder      VARCHAR NOT NULL,
    dataset      VARCHAR NOT NULL,
    label        VARCHAR NOT NULL,
    model        VARCHAR NOT NULL,
    params       JSON,
    metrics      JSON,
    checksum     VARCHAR NOT NULL,        -- sha256 of the head's manifest
    created      TIMESTAMP NOT NULL DEFAULT current_timestamp
);
"""

Migration = tuple[str, "str | Callable[[duckdb.DuckDBPyConnection], None]"]

# the column a dataset's labels were ingested from (`--label-column score`), so `--label score` finds them
M002_LABEL_COLUMN = "ALTER TABLE datasets ADD COLUMN label_column VARCHAR"

# whether the encoder's vectors have unit length (Encoder.unit_norm), so heads scale features that need it
M003_UNIT_NORM = "ALTER TABLE encoders ADD COLUMN unit_norm BOOLEAN"

MIGRATIONS: list[Migration] = [
    ("m001_initial", M001_INITIAL),
    ("m002_label_column", M002_LABEL_COLUMN),
    ("m003_unit_norm", M003_UNIT_NORM),
]
# Migrations a read-only opener can do without (what they add reads as absent), so that an older store stays
# readable until its next write applies them.
OPTIONAL_FOR_READERS = frozenset({"m002_label_column", "m003_unit_norm"})


def emb_table_sql(table: str, dim: int) -> str:
    return f"""CREATE TABLE IF NOT EXISTS {table} (
        content_hash VARCHAR PRIMARY KEY,
        vector       FLOAT[{dim}] NOT NULL,
        n_tokens     INTEGER,                -- input length after tokenisation (text), NULL otherwise
        truncated    BOOLEAN NOT NULL DEFAULT false,
        device       VARCHAR NOT NULL,       -- recorded per vector: not part of the fingerprint
        dtype        VARCHAR NOT NULL,
        created      TIMESTAMP NOT NULL DEFAULT current_timestamp
    )"""


def refresh_views(con: duckdb.DuckDBPyConnection) -> None:
    """`embeddings`: one row per (item, encoder it was ingested with), vector as FLOAT[] (dims differ)."""
    rows = con.execute("SELECT fingerprint, spec, table_name FROM encoders ORDER BY created").fetchall()
    parts = [
        f"""SELECT i.dataset, i.key, i.item_id, i.label, i.text, i.content_hash,
                   '{fp}' AS fingerprint, '{spec.replace("'", "''")}' AS encoder,
                   e.vector::FLOAT[] AS vector, e.truncated, e.device, e.dtype
            FROM items i
            JOIN dataset_encoders de ON de.dataset = i.dataset AND de.fingerprint = '{fp}'
            JOIN {table} e ON e.content_hash = i.content_hash
            WHERE i.status = 'ok'"""
        for fp, spec, table in rows
    ]
    if not parts:
        parts = ["""SELECT NULL::VARCHAR dataset, NULL::VARCHAR key, NULL::BIGINT item_id, NULL::VARCHAR label,
                    NULL::VARCHAR text, NULL::VARCHAR content_hash, NULL::VARCHAR fingerprint,
                    NULL::VARCHAR encoder, NULL::FLOAT[] vector, NULL::BOOLEAN truncated,
                    NULL::VARCHAR device, NULL::VARCHAR dtype WHERE false"""]
    con.execute("CREATE OR REPLACE VIEW embeddings AS " + "\nUNION ALL\n".join(parts))
