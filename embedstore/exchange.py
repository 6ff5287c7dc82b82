"""Export and import in open formats: a dataset's vectors of one encoder as Parquet shards any engine reads
(DuckDB, polars, Spark, pandas), with a manifest that carries the encoder's fingerprint record.

`export_parquet` streams from DuckDB (`COPY ... TO` a folder in size-capped files), so memory does not grow with
the dataset. `import_parquet` reads the shards in record batches and feeds them through the ingest pipeline with an
encoder that hands back the carried vectors: deduplication, items, the index, one transaction per chunk and
crash safety are the ingest's own, so an import twice is idempotent (nothing embedded, items unchanged).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

import numpy as np

from embedstore.encoders.base import Embedded, Encoder
from embedstore.errors import InputError, NotFoundError
from embedstore.fsutil import fsync_dir
from embedstore.ingest.pipeline import IngestReport, ingest_source
from embedstore.sources.records import Record, Source
from embedstore.store import catalog
from embedstore.store.queries import arrow_batches, rows_for
from embedstore.store.schema import not_skipped

if TYPE_CHECKING:
    from embedstore.store.database import Database

MANIFEST = "embedstore-export.json"
FORMAT, VERSION = "embedstore-export", 1
SHARD_BYTES = 256 << 20  # about this much vector data per shard (rows = this / (4 x dim + 200))
COLUMNS = ("key", "content_hash", "label", "text", "meta", "vector", "n_tokens", "truncated", "device", "dtype")


def export_parquet(db: "Database", dataset: str, encoder: str, out: str | os.PathLike) -> dict:
    """Write the dataset's ok items with vectors of `encoder` to `out` (a new folder): Parquet shards of
    (key, content_hash, label, text, meta JSON, vector FLOAT[dim], n_tokens, truncated, device, dtype) and
    `embedstore-export.json` (dataset, encoder record, rows, each file's rows and sha256). Skipped items have no
    vector and are not exported. Written to a temporary sibling, then renamed: never half a folder."""
    out = Path(out).expanduser()
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise InputError(f"{out} exists and is not an empty folder: export writes a new folder; remove it or "
                         "choose another path")
    records = catalog.resolve_feature_set(db, encoder, dataset)
    if len(records) != 1:
        raise InputError(f"export writes one encoder's vectors; {encoder!r} names {len(records)} "
                         f"({', '.join(r.spec for r in records)}): export each on its own")
    record = records[0]
    tmp = out.with_name(f".{out.name}.export-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        with db.connect() as con:
            label_column = con.execute("SELECT label_column FROM datasets WHERE name = ?", [dataset]).fetchall()
            enc_row = con.execute("SELECT fingerprint, spec, dim, modality, config, versions, unit_norm FROM encoders "
                                  "WHERE fingerprint = ?", [record.fingerprint]).fetchall()[0]
            query = (f"SELECT i.key, hash_hex(i.content_hash) AS content_hash, i.label, i.text, "
                     f"i.meta::VARCHAR AS meta, e.vector, e.n_tokens, e.truncated, e.device, e.dtype "
                     f"FROM items i JOIN {record.table} e USING (content_hash) "
                     f"WHERE i.dataset = ? AND {not_skipped(record.fingerprint)} ORDER BY i.item_id")
            files = _write_shards(arrow_batches(con, query, [dataset], rows_for(record.dim)), tmp,
                                  max(1, SHARD_BYTES // (4 * record.dim + 200)))
        fp, spec, dim, modality, config, versions, unit_norm = enc_row
        manifest = {"format": FORMAT, "version": VERSION, "dataset": dataset, "modality": modality,
                    "label_column": label_column[0][0] if label_column else None,
                    "encoder": {"fingerprint": fp, "spec": spec, "dim": dim, "modality": modality,
                                "config": json.loads(config) if config else {},
                                "versions": json.loads(versions) if versions else {}, "unit_norm": bool(unit_norm)},
                    "rows": sum(f["rows"] for f in files), "files": files}
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
        for p in tmp.iterdir():
            with open(p, "rb") as fh:
                os.fsync(fh.fileno())
        if out.exists():
            out.rmdir()
        os.replace(tmp, out)
        fsync_dir(out.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return manifest


def _write_shards(batches: Iterator[Any], folder: Path, rows_per_shard: int) -> list[dict]:
    """Record batches into part-0.parquet, part-1.parquet, ... of at most `rows_per_shard` rows each."""
    import pyarrow.parquet as pq
    files: list[dict] = []
    writer, rows = None, 0

    def close() -> None:
        writer.close()
        path = folder / files[-1]["name"]
        files[-1].update(rows=rows, sha256=_sha256(path))

    for batch in batches:
        start = 0
        while start < batch.num_rows:
            if writer is None:
                files.append({"name": f"part-{len(files)}.parquet"})
                writer, rows = pq.ParquetWriter(folder / files[-1]["name"], batch.schema, compression="zstd"), 0
            part = batch.slice(start, rows_per_shard - rows)
            writer.write_batch(part)
            rows += part.num_rows
            start += part.num_rows
            if rows >= rows_per_shard:
                close()
                writer = None
    if writer is not None:
        close()
    return files


def read_manifest(folder: str | os.PathLike) -> dict:
    """The export's manifest, checked: format, version, the files it names present with their checksums."""
    folder = Path(folder).expanduser()
    path = folder / MANIFEST
    if not path.is_file():
        raise NotFoundError(f"{folder} holds no {MANIFEST}: import reads a folder written by `embedstore export`")
    try:
        manifest = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as e:
        raise InputError(f"{path}: not a readable manifest ({e})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise InputError(f"{path}: not an embedstore export manifest (format {FORMAT!r} expected)")
    if not isinstance(manifest.get("version"), int) or manifest["version"] > VERSION:
        raise InputError(f"{path}: export format version {manifest.get('version')!r}; this embedstore reads up to "
                         f"{VERSION}: upgrade embedstore to import it")
    for f in manifest.get("files", []):
        p = folder / f["name"]
        if not p.is_file():
            raise NotFoundError(f"{p}: named by the manifest but missing: the export is incomplete")
        if _sha256(p) != f["sha256"]:
            raise InputError(f"{p}: its checksum differs from the manifest's: the file changed or is damaged; "
                             "export again")
    return manifest


class ImportedEncoder(Encoder):
    """Stands for the exporting store's encoder: its recorded identity, and the vectors carried by the rows."""

    scheme = "imported"
    modality = "text"

    def __init__(self, record: dict, device: str = "imported", dtype: str = "float32"):
        super().__init__(record["spec"], record["spec"], {})
        self.record = record
        self.modality = record["modality"]
        self._device, self._dtype = device, dtype

    def identity(self) -> dict:
        return self.record["config"]

    @property
    def fingerprint(self) -> str:  # the exporter's, as recorded (its scheme and identity hash to it there)
        return self.record["fingerprint"]

    @property
    def dim(self) -> int:
        return int(self.record["dim"])

    @property
    def unit_norm(self) -> bool:
        return bool(self.record["unit_norm"])

    def versions(self) -> dict:
        return self.record["versions"]

    @property
    def device(self) -> str:
        return self._device

    @property
    def dtype(self) -> str:
        return self._dtype

    @classmethod
    def standing_for(cls, enc: Encoder) -> "ImportedEncoder":
        """Carries vectors that `enc` made elsewhere (Ray workers: each row carries its device and dtype), under
        its own identity."""
        return cls({"spec": enc.spec, "modality": enc.modality, "config": enc.identity(), "fingerprint": enc.fingerprint,
                    "dim": enc.dim, "unit_norm": enc.unit_norm, "versions": enc.versions()})

    def run(self, prepared: list) -> Embedded:  # a row without a vector (none carried) reads as non-finite
        n_tokens = np.array([c.n_tokens if c.n_tokens is not None else -1 for c in prepared], np.int64)
        return Embedded(np.stack([c.vector if c.vector is not None else np.full(self.dim, np.nan, np.float32)
                                  for c in prepared]), n_tokens if (n_tokens >= 0).any() else None,
                        np.array([c.truncated for c in prepared], dtype=bool),
                        np.array([c.device or self.device for c in prepared], object),
                        np.array([c.dtype or self.dtype for c in prepared], object))


@dataclass(frozen=True)
class _Carried:
    """A row's content for the pipeline: its exported content hash (used as is), its vector, and where that was
    made (recorded as it was, not as where it was merged)."""

    content_hash: str
    vector: np.ndarray | None
    truncated: bool
    n_tokens: int | None = None
    device: str | None = None
    dtype: str | None = None


class _CarriedText(str):
    """Text content that also carries its exported hash and vector (the item keeps its text)."""

    content_hash: str
    vector: np.ndarray | None
    truncated: bool
    n_tokens: int | None = None
    device: str | None = None
    dtype: str | None = None


def import_parquet(db: "Database", folder: str | os.PathLike, *, dataset: str | None = None,
                   replace: bool = False, progress: bool = True) -> IngestReport:
    """Load an `export_parquet` folder into `dataset` (default: the exported dataset's name) with the exported
    encoder's fingerprint record: vectors bit-identical, keys, labels and metadata kept, the index updated."""
    folder = Path(folder).expanduser().resolve()
    manifest = read_manifest(folder)
    enc = ImportedEncoder(manifest["encoder"])
    known = {r.fingerprint: r for r in catalog.encoder_records(db)}.get(enc.fingerprint)
    if known is not None and known.dim != enc.dim:
        raise InputError(f"{folder}: the export's encoder fp:{enc.fingerprint[:12]} has {enc.dim} dims, this store "
                         f"records {known.dim}: the export is not of the encoder it names")
    src = Source(str(folder), _records(folder, manifest, enc.dim), manifest["rows"])
    report = ingest_source(db, enc, src, dataset=dataset or manifest["dataset"],
                           label_column=manifest.get("label_column"), replace=replace, progress=progress)
    report.notes.append(f"vectors read from the export (no encoder ran): 'embedded' counts those new to this store")
    return report


def _records(folder: Path, manifest: dict, dim: int) -> Iterator[Record]:
    import pyarrow.parquet as pq
    for f in manifest["files"]:
        pf = pq.ParquetFile(folder / f["name"])
        missing = [c for c in COLUMNS if c not in pf.schema_arrow.names]
        if missing:
            raise InputError(f"{folder / f['name']}: columns {missing} missing; an embedstore export has "
                             f"{', '.join(COLUMNS)}")
        for batch in pf.iter_batches(batch_size=8192, columns=list(COLUMNS)):
            cols = {c: batch.column(c) for c in COLUMNS}
            vectors = cols["vector"].flatten().to_numpy(zero_copy_only=False).astype(np.float32, copy=False)
            if vectors.size != batch.num_rows * dim:
                raise InputError(f"{folder / f['name']}: vectors of {vectors.size // max(batch.num_rows, 1)} "
                                 f"values, the manifest says {dim}")
            vectors = vectors.reshape(batch.num_rows, dim)
            keys, hashes, labels, texts, metas, truncs, tokens, devices, dtypes = (
                cols[c].to_pylist() for c in ("key", "content_hash", "label", "text", "meta", "truncated", "n_tokens",
                                              "device", "dtype"))
            for i in range(batch.num_rows):
                yield Record(keys[i], carried(texts[i], hashes[i], vectors[i], bool(truncs[i]), tokens[i], devices[i],
                                              dtypes[i]),
                             labels[i], json.loads(metas[i]) if metas[i] else None, str(folder))


def carried(text: str | None, digest: str, vector: np.ndarray | None, truncated: bool,
            n_tokens: int | None = None, device: str | None = None, dtype: str | None = None) -> Any:
    """A row's content for the pipeline with its hash, vector and provenance carried (no encoder runs): the text
    itself when the item keeps one, else a stand-in (image and audio bytes do not travel)."""
    if text is None:
        return _Carried(digest, vector, truncated, n_tokens, device, dtype)
    c = _CarriedText(text)
    c.content_hash, c.vector, c.truncated, c.n_tokens, c.device, c.dtype = (digest, vector, truncated, n_tokens,
                                                                           device, dtype)
    return c


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _literal(s: str) -> str:
    return "'" + s.replace("'", "''") + "'"
