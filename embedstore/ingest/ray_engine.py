"""The Ray Data engine: the same Encoder classes on a Ray cluster, the results merged into the same store.

    read       the project's own readers, one Ray task per read part (a file, a run of a folder's images):
               the records, keys and skip reasons are the local engine's
    hash       content hashes computed in the cluster; those this store already holds for the encoder's
               fingerprint are not embedded (a sorted array of 16-byte hashes broadcast to every actor)
    embed      `map_batches` with an actor pool of `_Embedder` (the encoder loads once per actor; one GPU an
               actor when asked), through `embed_cached`, the local engine's own embedding step
    stage      each batch of results becomes one Parquet shard, written to a temporary name and renamed, in the
               staging folder (`<store>/staging/ray/<dataset>-<fingerprint>/` unless given: on a cluster it must be
               shared storage that workers and the driver both see)
    merge      the driver feeds the shards, as they finish, through the normal single-writer ingest (items,
               vectors, index, one transaction a chunk) and deletes each shard once its rows are committed

Workers never open the DuckDB file. A driver killed at any point loses nothing committed: the rerun first merges
the shards left in the staging folder, then embeds only the hashes the store still lacks. A shard committed just
before the kill, whose file was not yet removed, is read again and found unchanged (nothing is written twice).
"""

from __future__ import annotations

import json
import logging
import os
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

import numpy as np
import pyarrow as pa

from embedstore.encoders import Encoder, get_encoder
from embedstore.errors import InputError
from embedstore.exchange import ImportedEncoder, carried
from embedstore.fsutil import fsync_dir
from embedstore.hashing import content_hash
from embedstore.ingest import unchanged
from embedstore.ingest.cache import embed_cached
from embedstore.ingest.pipeline import IngestReport, ingest_source, unchanged_report
from embedstore.sources import Record, Source, TableOptions, open_source, read_parts
from embedstore.store import catalog
from embedstore.store.catalog import check_name
from embedstore.store.layout import ray_staging_root

if TYPE_CHECKING:
    from embedstore.store.database import Database

BLOCK_BYTES = 4 << 20
HELD = "\0held"  # internal: the store holds this hash's vector, do not embed it
SHARD_COLUMNS = ("key", "text", "label", "meta", "source", "reason", "content_hash", "vector", "truncated",
                 "n_tokens", "device", "dtype", "fingerprint")


def ray_module() -> Any:
    """Ray, imported on first use; a clear refusal without it."""
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        raise InputError("--engine ray needs Ray Data, which is not installed: pip install 'embedstore[ray]' "
                         "(or pip install 'ray[data]')") from None
    return ray


@dataclass(frozen=True)
class RayOptions:
    """How the Ray engine sizes its work (CLI: --ray-address, --workers, --gpus-per-worker, --batch-size,
    --staging)."""

    address: str | None = None       # None: a local Ray on this machine (or the cluster RAY_ADDRESS names)
    workers: int = 1                 # encoder actors
    gpus_per_worker: float = 0       # 0: CPU actors
    batch_size: int = 256            # rows an actor embeds at a time (one shard each)
    staging: str | None = None       # default <store>/staging/ray

    def __post_init__(self) -> None:
        if not isinstance(self.workers, int) or self.workers < 1:
            raise InputError(f"workers must be a whole number >= 1, not {self.workers!r}")
        if not 0 <= self.gpus_per_worker <= 64:
            raise InputError(f"gpus_per_worker must be from 0 to 64, not {self.gpus_per_worker!r}")
        if not isinstance(self.batch_size, int) or not 1 <= self.batch_size <= 1_000_000:
            raise InputError(f"batch_size must be from 1 to 1,000,000 rows, not {self.batch_size!r}")


# -- hashes the store holds ---------------------------------------------------------------------------------------
def held_hashes(db: "Database", record: catalog.EncoderRecord) -> np.ndarray:
    """Every content hash with a vector of `record`, as a sorted array of 16 big-endian bytes ("S16"): 160 MB at
    10M, read as two 64-bit halves (no Python object per hash)."""
    with db.connect() as con:
        return read_hashes(con, record.table)


def read_hashes(con: Any, table: str) -> np.ndarray:
    """`held_hashes` of one table's `content_hash` column (UHUGEINT)."""
    hi, lo = con.execute(f"SELECT (content_hash >> 64)::UBIGINT, (content_hash & 18446744073709551615::UHUGEINT)"
                         f"::UBIGINT FROM {table}").fetchnumpy().values()
    pairs = np.empty((len(hi), 2), ">u8")
    pairs[:, 0], pairs[:, 1] = hi, lo
    return np.sort(pairs.view("S16").ravel())


def hex_to_s16(hashes: list[str]) -> np.ndarray:
    return np.frombuffer(bytes.fromhex("".join(hashes)), "S16") if hashes else np.empty(0, "S16")


def is_held(held: np.ndarray, hashes: list[str]) -> np.ndarray:
    if not len(held) or not hashes:
        return np.zeros(len(hashes), bool)
    h = hex_to_s16(hashes)
    return held[np.minimum(np.searchsorted(held, h), len(held) - 1)] == h


# -- the cluster side -----------------------------------------------------------------------------------------------
class _Embedder:
    """A `map_batches` actor: loads the encoder once, embeds each batch through `embed_cached` (no database)."""

    def __init__(self, spec: str, column: str, held: Any = None):
        self.enc = get_encoder(spec)
        self.column = column
        if held is not None and not isinstance(held, np.ndarray):
            held = ray_module().get(held)
        self.held = held if held is not None else np.empty(0, "S16")

    def __call__(self, batch: pa.Table) -> pa.Table:
        contents = batch.column(self.column).to_pylist()
        given = batch.column("reason").to_pylist() if "reason" in batch.column_names else [None] * len(contents)
        hashes = [content_hash(c) if c is not None else None for c in contents]
        held = is_held(self.held, [h for h in hashes if h is not None])
        held_of = dict(zip([h for h in hashes if h is not None], held))
        reasons = [why or (HELD if h is not None and held_of[h] else None) for h, why in zip(hashes, given)]
        got = embed_cached(None, self.enc, None, contents, reasons=reasons)
        n_tokens = dict(zip(got.rows.column("content_hash").to_pylist(), got.rows.column("n_tokens").to_pylist())) \
            if "n_tokens" in got.rows.column_names else {}
        dim = self.enc.dim
        vectors = [got.vectors.get(h) if h is not None and why is None else None
                   for h, why in zip(hashes, got.reasons)]
        flat = np.concatenate([v for v in vectors if v is not None]) if any(v is not None for v in vectors) \
            else np.empty(0, np.float32)
        valid = pa.array([v is not None for v in vectors])
        offsets = pa.array(np.cumsum([0] + [dim if v is not None else 0 for v in vectors]), pa.int32())
        vec_col = pa.ListArray.from_arrays(offsets, pa.array(flat.astype(np.float32, copy=False), pa.float32()),
                                           mask=pa.compute.invert(valid))
        out = {
            "content_hash": pa.array(hashes, pa.string()),
            "reason": pa.array([None if why == HELD else why for why in got.reasons], pa.string()),
            "vector": vec_col,
            "truncated": pa.array([bool(got.truncated.get(h, False)) if h else False for h in hashes]),
            "n_tokens": pa.array([n_tokens.get(h) if h else None for h in hashes], pa.int32()),
            "device": pa.array([self.enc.device] * len(hashes), pa.string()),
            "dtype": pa.array([self.enc.dtype] * len(hashes), pa.string()),
            "fingerprint": pa.array([self.enc.fingerprint] * len(hashes), pa.string()),
        }
        for name, col in out.items():
            batch = batch.set_column(batch.column_names.index(name), name, col) if name in batch.column_names \
                else batch.append_column(name, col)
        return batch


def embed_dataset(ds: Any, encoder: str, *, column: str = "text", held: Any = None, workers: int = 1,
                  gpus_per_worker: float = 0, batch_size: int = 256) -> Any:
    """A Ray Dataset with `column` (text, or encoded image/audio bytes) embedded by `encoder` (a spec), for users
    who live in Ray: adds content_hash, vector (null for skipped or held rows), reason (why a row has no vector),
    truncated, n_tokens, device, dtype and fingerprint, the same vectors `embedstore ingest` stores. `held`: a
    sorted "S16" array of hashes (or its ObjectRef) not to embed. Runs `workers` actors, each loading the
    encoder once, with `gpus_per_worker` GPUs each."""
    ray = ray_module()
    schema = ds.schema(fetch_if_missing=False)  # known without running anything, or not checked here
    if schema is not None and column not in schema.names:
        raise InputError(f"the dataset has no column {column!r}; columns: {', '.join(schema.names)}")
    if isinstance(held, np.ndarray):
        held = ray.put(held)
    resources = ray.cluster_resources()
    if gpus_per_worker and resources.get("GPU", 0) < gpus_per_worker * workers:
        raise InputError(f"{workers} worker(s) x {gpus_per_worker:g} GPU need {gpus_per_worker * workers:g} GPUs; the "
                         f"Ray cluster has {resources.get('GPU', 0):g}: lower --workers or --gpus-per-worker, or "
                         "leave --gpus-per-worker out for CPU actors")
    cpus = resources.get("CPU", 1.0)
    # CPU actors leave half a CPU to the read and write tasks, or the pool would take every CPU and wait forever
    per_actor = None if gpus_per_worker else max(0.1, min(1.0, (cpus - 0.5) / workers))
    return ds.map_batches(_Embedder, fn_constructor_kwargs={"spec": encoder, "column": column, "held": held},
                          batch_size=batch_size, batch_format="pyarrow", compute=ray.data.ActorPoolStrategy(size=workers),
                          num_gpus=gpus_per_worker or None, num_cpus=per_actor)


def _write_shard(batch: pa.Table, folder: str) -> pa.Table:
    """One batch of results as a Parquet shard: temporary name, fsync, rename (a shard is whole or absent)."""
    import pyarrow.parquet as pq
    name = f"shard-{uuid.uuid4().hex}.parquet"
    tmp = Path(folder, f".tmp-{name}")
    pq.write_table(batch.select([c for c in SHARD_COLUMNS if c in batch.column_names]), tmp, compression="zstd")
    with open(tmp, "rb") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, Path(folder, name))
    return pa.table({"shard": [name], "rows": [batch.num_rows]})


# -- the driver side ------------------------------------------------------------------------------------------------
def _record_rows(records: Iterator[Record], text: bool) -> Iterator[dict]:
    for r in records:
        c = r.content
        yield {"key": r.key, "text": c if text and isinstance(c, str) else None,
               "data": bytes(c) if not text and c is not None and not isinstance(c, str) else None,
               "label": r.label, "meta": json.dumps(r.meta, default=str) if r.meta else None,
               "source": r.source, "reason": r.reason}


SCHEMA = pa.schema([("key", pa.string()), ("text", pa.string()), ("data", pa.binary()), ("label", pa.string()),
                    ("meta", pa.string()), ("source", pa.string()), ("reason", pa.string())])


def _read_part(row: dict, parts: list, text: bool) -> Iterator[dict]:
    yield from _record_rows(parts[row["part"]](), text)


def source_dataset(source: Any, opts: TableOptions, name: str | None, modality: str) -> tuple[Any, str, list[str]]:
    """(a Ray Dataset of the source's records, the source's name, notes): read in the cluster by the project's
    readers, one task per read part; a source in memory (Python rows) is read here and handed over."""
    ray = ray_module()
    text = modality not in ("image", "audio")
    src = open_source(source, opts, name, modality)  # checks the source (and names it) before the cluster starts
    cut = read_parts(source, opts, name, modality)
    if cut is None:
        rows = list(_record_rows(iter(src), text))
        return ray.data.from_arrow(pa.Table.from_pylist(rows, SCHEMA)), src.name, src.notes
    parts, notes = cut
    ds = ray.data.from_items([{"part": i} for i in range(len(parts))], override_num_blocks=max(len(parts), 1))
    return ds.flat_map(_read_part, fn_kwargs={"parts": parts, "text": text}, num_cpus=0.25), src.name, notes


@dataclass
class _Shards:
    """Shards being merged: which rows of the merge each one ends at, so that a commit removes the finished."""

    folder: Path
    ends: list = field(default_factory=list)   # (rows up to the end of this shard, path)
    rows: int = 0
    merged: int = 0

    def records(self, names: Iterator[str], fingerprint: str, dim: int, carriers: dict) -> Iterator[Record]:
        import pyarrow.parquet as pq
        for name in names:
            path = self.folder / name
            table = pq.read_table(path)
            fps = set(table.column("fingerprint").to_pylist())
            if fps - {fingerprint}:
                raise InputError(f"{path}: vectors of fingerprint {sorted(fps - {fingerprint})[0][:12]}, but this "
                                 f"ingest's encoder has {fingerprint[:12]}: a worker loaded other weights or "
                                 "settings; give every node the same model files")
            if not carriers and table.num_rows:
                carriers.update(device=table.column("device")[0].as_py(), dtype=table.column("dtype")[0].as_py())
            cols = {c: table.column(c).to_pylist() for c in ("key", "text", "label", "meta", "source", "reason",
                                                             "content_hash", "truncated")}
            vec = table.column("vector").combine_chunks()
            valid = vec.is_valid().to_numpy(zero_copy_only=False)
            matrix = vec.flatten().to_numpy(zero_copy_only=False).astype(np.float32, copy=False).reshape(-1, dim)
            at = np.cumsum(valid) - 1  # row i's vector is matrix[at[i]] when valid[i]
            for i in range(table.num_rows):
                v = matrix[at[i]] if valid[i] else None
                h = cols["content_hash"][i]
                content = carried(cols["text"][i], h, v, bool(cols["truncated"][i])) if h is not None else None
                yield Record(cols["key"][i], content, cols["label"][i],
                             json.loads(cols["meta"][i]) if cols["meta"][i] else None, cols["source"][i],
                             cols["reason"][i])
            self.rows += table.num_rows
            self.ends.append((self.rows, path))

    def committed(self, rows: int) -> None:
        while self.ends and self.ends[0][0] <= rows:
            path = self.ends.pop(0)[1]
            path.unlink(missing_ok=True)
            self.merged += 1


def merge_shards(db: "Database", enc: Encoder, folder: Path, names: Iterator[str], dataset: str,
           label_column: str | None, replace: bool, progress: bool, name: str, total: int | None) -> IngestReport:
    """Feed the shards `names` of `folder` (in that order, as they finish) through the single-writer ingest into
    `dataset`, as vectors `enc` made; each shard is deleted once its rows are committed."""
    shards, carriers = _Shards(folder), {}
    records = shards.records(names, enc.fingerprint, enc.dim, carriers)
    first = next(records, None)  # the first shard names the device and dtype the workers ran
    if first is None:
        return IngestReport(dataset, enc.spec, enc.fingerprint)
    merger = ImportedEncoder.standing_for(enc, carriers.get("device", enc.device), carriers.get("dtype", "float32"))
    src = Source(name, _chain(first, records), total)
    report = ingest_source(db, merger, src, dataset=dataset, label_column=label_column, replace=replace,
                           progress=progress, on_commit=shards.committed)
    shards.committed(shards.rows)
    report.encoder = enc.spec
    return report


def _chain(first: Record, rest: Iterator[Record]) -> Iterator[Record]:
    yield first
    yield from rest


def staging_folder(db: "Database", given: str | None, dataset: str, fingerprint: str) -> Path:
    root = Path(given).expanduser() if given else ray_staging_root(Path(db.path))
    folder = root / f"{dataset}-{fingerprint[:16]}"
    folder.mkdir(parents=True, exist_ok=True)
    for tmp in folder.glob(".tmp-*"):  # a shard a killed worker was writing: its rows are embedded again
        tmp.unlink(missing_ok=True)
    return folder


def _add(total: IngestReport, part: IngestReport) -> None:
    for k in ("rows", "new_items", "updated_items", "unchanged_items", "embedded", "cached", "truncated",
              "duplicate_keys", "escaped"):
        setattr(total, k, getattr(total, k) + getattr(part, k))
    for why, n in part.skipped.items():
        total.skipped[why] = total.skipped.get(why, 0) + n


def ingest(db: "Database", source: Any, *, dataset: str, encoder: str, options: RayOptions = RayOptions(),
           text_column: str = "text", label_column: str | None = None, id_column: str | None = None,
           sep: str | None = None, quoting: str = "auto", header: bool = True, columns: list[str] | None = None,
           encoding: str = "utf-8", format: str | None = None, source_name: str | None = None,
           path_column: str | None = None, replace: bool = False, progress: bool = True) -> IngestReport:
    """`ingest` on Ray Data (see the module docstring): the same items, vectors and fingerprint as the local
    engine. `encoder` is a spec (the workers build it from the spec). Starts a local Ray unless this process has
    one already (`ray.init` called by the user), or joins the cluster `options.address` (or RAY_ADDRESS) names."""
    db.require_writable()
    check_name(dataset)
    if not isinstance(encoder, str):
        raise InputError("--engine ray builds the encoder on every worker from its spec: pass a spec such as 'minilm'")
    ray = ray_module()
    opts = TableOptions(text_column, label_column, id_column, sep, quoting, header, columns, encoding, format,
                        path_column=path_column)
    enc = get_encoder(encoder)
    start = time.perf_counter()
    identity = unchanged.file_identity(source, opts, {"source_name": source_name, "modality": enc.modality})
    with db.writing():
        if identity and (before := unchanged.recorded(db, enc, dataset, identity)) is not None:
            return unchanged_report(before, time.perf_counter() - start)
        catalog.require_fresh_dataset_modality(db, dataset, enc.modality)
        record = catalog.register_encoder(db, enc)
        folder = staging_folder(db, options.staging, dataset, record.fingerprint)
        report = IngestReport(dataset, enc.spec, record.fingerprint)
        left = sorted(p.name for p in folder.glob("shard-*.parquet"))
        if left:  # an earlier run was stopped: what its workers finished is merged before anything is embedded
            before = merge_shards(db, enc, folder, iter(left), dataset, label_column, replace, progress, "staged shards", None)
            _add(report, before)
            report.notes.append(f"merged {len(left):,} shards ({before.rows:,} rows) left by an earlier run")
        if not ray.is_initialized():
            ray.init(address=options.address, include_dashboard=False, log_to_driver=False,
                     logging_level=logging.WARNING)
        logging.getLogger("ray.data").setLevel(logging.WARNING)  # its per-dataset INFO lines are not the user's
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = progress
        # blocks of a few MB, so that one big file read by one task still feeds every actor
        ctx.target_max_block_size = min(ctx.target_max_block_size or BLOCK_BYTES, BLOCK_BYTES)
        ds, name, notes = source_dataset(source, opts, source_name, enc.modality)
        column = "text" if enc.modality not in ("image", "audio") else "data"
        embedded = embed_dataset(ds, encoder, column=column, held=held_hashes(db, record), workers=options.workers,
                                 gpus_per_worker=options.gpus_per_worker, batch_size=options.batch_size)
        written = embedded.map_batches(_write_shard, fn_kwargs={"folder": str(folder)}, batch_size=None,
                                       batch_format="pyarrow", num_cpus=0.1)
        names = (n for batch in written.iter_batches(batch_size=None, batch_format="pyarrow")
                 for n in batch.column("shard").to_pylist())
        db.release()
        run = merge_shards(db, enc, folder, names, dataset, label_column, replace, progress, name, None)
        _add(report, run)
        report.index, report.notes = run.index or report.index, report.notes + notes + run.notes
        report.notes.append(f"engine ray: {options.workers} encoder actor(s)"
                            + (f", {options.gpus_per_worker:g} GPU each" if options.gpus_per_worker else ", on CPU")
                            + f", batches of {options.batch_size:,} rows; the vectors were embedded by the workers"
                            " ('embedded' counts those new to this store)")
        report.seconds = time.perf_counter() - start
        if identity:
            unchanged.remember(db, enc, dataset, identity, report)
    return report
