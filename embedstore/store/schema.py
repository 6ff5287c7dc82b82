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




# Compact keys, no key indexes: DuckDB holds an ART index (PRIMARY KEY, UNIQUE, CREATE INDEX) in memory, about
# 70-160 bytes per row, so a few million items outgrew its memory limit. Content hashes are 16-byte UHUGEINTs
# (`hash_hex`/`hex_hash` convert to and from the 32-character hex that Python, exports and heads use), and
# uniqueness of (dataset, key) and of each table's content hash is kept by the one writer: each ingest chunk
# looks its keys and hashes up (a hash join over the column, milliseconds at 10M rows) before it inserts.
# Whether an item has a vector is per (item, encoder): the encoder's table holds its content hash, or `skips`
# says why not; one encoder skipping an item no longer hides it from another encoder's features and index.
HASH_MACROS = """
CREATE OR REPLACE MACRO hash_hex(u) AS lpad(lower(hex(u)), 32, '0');
CREATE OR REPLACE MACRO hex_hash(h) AS ('0x' || h)::UHUGEINT;
"""

ITEMS_SQL = """CREATE TABLE items (
    item_id      BIGINT NOT NULL,          -- a new id whenever an item's content changes (index ids)
    dataset      VARCHAR NOT NULL,
    key          VARCHAR NOT NULL,         -- unique within a dataset (kept by the writer)
    content_hash UHUGEINT,                 -- of the raw content as read; NULL only when unreadable
    text         VARCHAR,                  -- the raw content when it is text (sentences, sequences)
    source       VARCHAR,
    label        VARCHAR,
    meta         JSON,
    updated      TIMESTAMP NOT NULL DEFAULT current_timestamp
)"""

SKIPS_SQL = """CREATE TABLE skips (       -- items an encoder could not embed, and why
    item_id     BIGINT NOT NULL,
    fingerprint VARCHAR NOT NULL,
    reason      VARCHAR NOT NULL
)"""


SOURCE_STATES_SQL = """CREATE TABLE source_states (  -- the last complete ingest of a file (ingest/unchanged.py)
    dataset     VARCHAR NOT NULL,
    fingerprint VARCHAR NOT NULL,
    identity    VARCHAR NOT NULL,          -- sha256 of (path, size, content sha256, read options)
    report      JSON NOT NULL,             -- what that ingest reported
    state       JSON NOT NULL,             -- the dataset's items and vectors right after it
    finished    TIMESTAMP NOT NULL DEFAULT current_timestamp
)"""


def not_skipped(fingerprint: str, alias: str = "i") -> str:
    """SQL: item `alias` is not skipped by the encoder `fingerprint` (a hex digest, so safe to inline). Needed
    beside the join on content hash: a row skipped for its own reasons (a ragged line, an empty id) may share its
    content with an item that has a vector."""
    return f"NOT EXISTS (SELECT 1 FROM skips s WHERE s.item_id = {alias}.item_id AND s.fingerprint = '{fingerprint}')"


def m004_compact(con: duckdb.DuckDBPyConnection) -> None:
    """Rewrite items and every embedding table with UHUGEINT hashes and no key indexes; item status moves to
    `skips`, per encoder: an old 'skipped' item (hidden from every encoder then) is recorded as skipped by each of
    its dataset's encoders, so that every answer stays as it was."""
    bad = con.execute("SELECT count(*) FROM items WHERE content_hash IS NOT NULL AND NOT "
                      "regexp_full_match(content_hash, '[0-9a-f]{32}')").fetchall()[0][0]
    if bad:
        raise duckdb.ConstraintException(f"{bad} items have content hashes that are not 32 hex digits; this store "
                                         "cannot be migrated in place (export and re-ingest it)")
    con.execute(HASH_MACROS)
    con.execute("DROP VIEW IF EXISTS embeddings")
    con.execute(SKIPS_SQL)
    con.execute(SOURCE_STATES_SQL)
    for fp, table in con.execute("SELECT fingerprint, table_name FROM encoders").fetchall():
        con.execute("INSERT INTO skips SELECT i.item_id, ?, coalesce(i.reason, 'skipped') FROM items i "
                    "JOIN dataset_encoders de ON de.dataset = i.dataset AND de.fingerprint = ? "
                    "WHERE i.status = 'skipped'", [fp, fp])
        dim = con.execute(f"SELECT dim FROM encoders WHERE fingerprint = ?", [fp]).fetchall()[0][0]
        con.execute(emb_table_sql(f"{table}_m004", dim).replace(" IF NOT EXISTS", ""))
        con.execute(f"INSERT INTO {table}_m004 SELECT hex_hash(content_hash), vector, n_tokens, truncated, device, "
                    f"dtype, created FROM {table}")
        con.execute(f"DROP TABLE {table}")
        con.execute(f"ALTER TABLE {table}_m004 RENAME TO {table}")
    con.execute(ITEMS_SQL.replace("CREATE TABLE items", "CREATE TABLE items_m004"))
    con.execute("INSERT INTO items_m004 SELECT item_id, dataset, key, hex_hash(content_hash), text, source, label, "
                "meta, updated FROM items ORDER BY dataset, item_id")
    con.execute("DROP INDEX IF EXISTS items_hash")
    con.execute("DROP TABLE items")
    con.execute("ALTER TABLE items_m004 RENAME TO items")
    refresh_views(con)


def emb_table_sql(table: str, dim: int) -> str:
    return f"""CREATE TABLE IF NOT EXISTS {table} (
        content_hash UHUGEINT NOT NULL,      -- unique (kept by the writer)
        vector       FLOAT[{dim}] NOT NULL,
        n_tokens     INTEGER,                -- input length after tokenisation (text), NULL otherwise
        truncated    BOOLEAN NOT NULL DEFAULT false,
        device       VARCHAR NOT NULL,       -- recorded per vector: not part of the fingerprint
        dtype        VARCHAR NOT NULL,
        created      TIMESTAMP NOT NULL DEFAULT current_timestamp
    )"""


MIGRATIONS: list[Migration] = [
    ("m001_initial", M001_INITIAL),
    ("m002_label_column", M002_LABEL_COLUMN),
    ("m003_unit_norm", M003_UNIT_NORM),
    ("m004_compact", m004_compact),
]
# Migrations a read-only opener can do without (what they add reads as absent), so that an older store stays
# readable until its next write applies them.
OPTIONAL_FOR_READERS = frozenset({"m002_label_column", "m003_unit_norm"})


def refresh_views(con: duckdb.DuckDBPyConnection) -> None:
    """`embeddings`: one row per (item, encoder it has a vector of), vector as FLOAT[] (dims differ).
    `item_status`: one row per (item, encoder of its dataset): 'ok' (a vector), 'skipped' (with the encoder's
    reason) or 'missing' (the item came with another encoder's ingest; ingest it with this one to embed it)."""
    rows = con.execute("SELECT fingerprint, spec, table_name FROM encoders ORDER BY created").fetchall()
    item_cols = ("i.dataset, i.key, i.item_id, i.label, i.text, hash_hex(i.content_hash) AS content_hash")
    emb, status = [], []
    for fp, spec, table in rows:
        enc = f"'{fp}' AS fingerprint, '{spec.replace(chr(39), chr(39) * 2)}' AS encoder"
        emb.append(f"""SELECT {item_cols}, {enc}, e.vector::FLOAT[] AS vector, e.truncated, e.device, e.dtype
            FROM items i
            JOIN dataset_encoders de ON de.dataset = i.dataset AND de.fingerprint = '{fp}'
            JOIN {table} e ON e.content_hash = i.content_hash
            WHERE {not_skipped(fp)}""")
        status.append(f"""SELECT {item_cols}, i.source, i.meta, i.updated, {enc},
                   CASE WHEN s.reason IS NOT NULL THEN 'skipped'
                        WHEN i.content_hash IN (SELECT content_hash FROM {table}) THEN 'ok'
                        ELSE 'missing' END AS status, s.reason
            FROM items i
            JOIN dataset_encoders de ON de.dataset = i.dataset AND de.fingerprint = '{fp}'
            LEFT JOIN skips s ON s.item_id = i.item_id AND s.fingerprint = '{fp}'""")
    none = "NULL::VARCHAR dataset, NULL::VARCHAR key, NULL::BIGINT item_id, NULL::VARCHAR label, " \
           "NULL::VARCHAR text, NULL::VARCHAR content_hash"
    enc_none = "NULL::VARCHAR fingerprint, NULL::VARCHAR encoder"
    emb = emb or [f"SELECT {none}, {enc_none}, NULL::FLOAT[] vector, NULL::BOOLEAN truncated, "
                  "NULL::VARCHAR device, NULL::VARCHAR dtype WHERE false"]
    status = status or [f"SELECT {none}, NULL::VARCHAR source, NULL::JSON meta, NULL::TIMESTAMP updated, "
                        f"{enc_none}, NULL::VARCHAR status, NULL::VARCHAR reason WHERE false"]
    con.execute("CREATE OR REPLACE VIEW embeddings AS " + "\nUNION ALL\n".join(emb))
    con.execute("CREATE OR REPLACE VIEW item_status AS " + "\nUNION ALL\n".join(status))
