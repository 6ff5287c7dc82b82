"""The Ray Data engine: the same Encoder classes on a Ray cluster, the results merged into the same store.

    read       the project's own readers, one Ray task per read part (a file, a run of a folder's images):
               the records, keys and skip reasons are the local engine's
    hash       content hashes computed in the cluster; those this store already holds for the encoder's
               fingerprint are not embedded (a sorted array of 16-byte hashes broadcast to every actor)
    embed      `map_batches` with an actor pool of `_Embedder` (the encoder loads once per actor; one GPU an
               actor when asked), through `embed_cached`, the local engine's own embedding step
    stage      each batch of results becomes one Parquet shard, written to a temporary name and renamed, in the
               staging folder (`<store>/staging/ray/<store>/<dataset>/<fingerprint>-<source>/`, or under
               --staging: on a cluster it must be shared storage that workers and the driver both see)
    merge      the driver feeds the shards, as they finish, through the normal single-writer ingest (items,
               vectors, index, one transaction a chunk) and deletes each shard once its rows are committed

Workers never open the DuckDB file. A driver killed at any point loses nothing committed: the rerun first merges
the shards left in the staging folder, then embeds only the hashes the store still lacks. A shard committed just
before the kill, whose file was not yet removed, is read again and found unchanged (nothing is written twice).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import os
import uuid
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

import numpy as np
import pyarrow as pa

from embedstore.encoders import Encoder, get_encoder
from embedstore.errors import EmbedstoreError, InputError
from embedstore.exchange import ImportedEncoder, carried
from embedstore.fsutil import fsync_dir
from embedstore.hashing import content_hash
from embedstore.ingest import pipeline
from embedstore.ingest.cache import embed_cached
from embedstore.ingest.pipeline import IngestReport, ingest_source
from embedstore.sources import Record, Source, TableOptions, open_source, read_parts
from embedstore.sources.records import storable
from embedstore.store import catalog
from embedstore.store.layout import ray_staging, ray_staging_root

if TYPE_CHECKING:
    from embedstore.store.database import Database

BLOCK_BYTES = 4 << 20
HELD = "\0held"  # internal: the store holds this hash's vector, do not embed it
SHARD_COLUMNS = ("key", "text", "label", "meta", "source", "reason", "escaped", "content_hash", "vector",
                 "truncated", "n_tokens", "device", "dtype", "fingerprint")


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
        if not isinstance(self.gpus_per_worker, (int, float)) or not 0 <= self.gpus_per_worker <= 64:
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
        import pyarrow.compute as pc
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
                                           mask=pc.invert(valid))
        out = {
            "content_hash": pa.array(hashes, pa.string()),
            "reason": pa.array([None if why == HELD else why for why in got.reasons], pa.string()),
            "vector": vec_col,
            "truncated": pa.array([bool(got.truncated.get(h, False)) if h else False for h in hashes]),
            "n_tokens": pa.array([n_tokens.get(h) if h else None for h in hashes], pa.int32()),
            "device": pa.array([self.enc.ran_on] * len(hashes), pa.string()),
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
    if not gpus_per_worker and (cpus - 0.5) / workers < 0.1:
        raise InputError(f"{workers} CPU workers do not fit the Ray cluster's {cpus:g} CPUs (each needs at least 0.1, "
                         "and half a CPU stays for reading): lower --workers")
    per_actor = None if gpus_per_worker else (cpus - 0.5) / workers
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
    fsync_dir(Path(folder))
    return pa.table({"shard": [name], "rows": [batch.num_rows]})


# -- the driver side ------------------------------------------------------------------------------------------------
SCHEMA = pa.schema([("key", pa.string()), ("text", pa.string()), ("data", pa.binary()), ("label", pa.string()),
                    ("meta", pa.string()), ("source", pa.string()), ("reason", pa.string()), ("escaped", pa.bool_())])


def _record_rows(records: Iterator[Record], text: bool) -> Iterator[dict]:
    """Records as rows; what UTF-8 cannot hold (an unpaired surrogate) is escaped first, as the local engine does."""
    for r in records:
        r, escaped = storable(r)
        c = r.content
        yield {"key": r.key, "text": c if text and isinstance(c, str) else None,
               "data": bytes(c) if not text and c is not None and not isinstance(c, str) else None,
               "label": r.label, "meta": json.dumps(r.meta, default=str) if r.meta else None,
               "source": r.source, "reason": r.reason, "escaped": escaped}


def _read_part(row: dict, text: bool) -> Iterator[dict]:
    yield from _record_rows(row["part"](), text)


def source_dataset(source: Any, opts: TableOptions, name: str | None, modality: str,
                   batch_size: int = 256) -> tuple[Any, Source]:
    """(a Ray Dataset of the source's records, the source opened here for its name, row count and notes): read
    in the cluster by the project's readers, one task per read part (each row of the dataset holds its part);
    a source in memory (Python rows) is read here and handed over in blocks of `batch_size` rows."""
    ray = ray_module()
    text = modality not in ("image", "audio")
    src = open_source(source, opts, name, modality)  # checks the source (and names it) before the cluster starts
    cut = read_parts(source, opts, name, modality)
    if cut is None:
        table = pa.Table.from_pylist(list(_record_rows(iter(src), text)), SCHEMA)
        src.total = table.num_rows
        blocks = [table.slice(i, batch_size) for i in range(0, table.num_rows, batch_size)] or [table]
        return ray.data.from_arrow(blocks), src
    parts, notes = cut
    src.notes = notes + [n for n in src.notes if n not in notes]
    ds = ray.data.from_items([{"part": part} for part in parts], override_num_blocks=max(len(parts), 1))
    return ds.flat_map(_read_part, fn_kwargs={"text": text}, num_cpus=0.25), src


@dataclass
class _Shards:
    """Shards being merged: which rows of the merge each one ends at, so that a commit removes the finished."""

    folder: Path
    wait: Any = None                           # called before waiting for the next shard (releases the database)
    ends: list = field(default_factory=list)   # (rows up to the end of this shard, path)
    rows: int = 0
    escaped: int = 0

    def records(self, names: Iterator[str], fingerprint: str, dim: int) -> Iterator[Record]:
        import pyarrow.parquet as pq
        while True:
            if self.wait:
                self.wait()  # readers may open the database while the cluster finishes the next shard
            name = next(names, None)
            if name is None:
                return
            path = self.folder / name
            table = pq.read_table(path)
            fps = set(table.column("fingerprint").to_pylist())
            if fps - {fingerprint}:
                refused = self.folder / "refused"
                refused.mkdir(exist_ok=True)
                os.replace(path, refused / name)
                raise InputError(f"{path.name}: vectors of fingerprint {sorted(fps - {fingerprint})[0][:12]}, but this "
                                 f"ingest's encoder has {fingerprint[:12]}: a worker loaded other weights or "
                                 f"settings. Give every node the same model files; the shard was moved to {refused}")
            cols = {c: table.column(c).to_pylist() for c in ("key", "text", "label", "meta", "source", "reason",
                                                             "content_hash", "truncated", "n_tokens", "device",
                                                             "dtype")}
            self.escaped += sum(table.column("escaped").to_pylist())
            vec = table.column("vector").combine_chunks()
            valid = vec.is_valid().to_numpy(zero_copy_only=False)
            matrix = vec.flatten().to_numpy(zero_copy_only=False).astype(np.float32, copy=False).reshape(-1, dim)
            at = np.cumsum(valid) - 1  # row i's vector is matrix[at[i]] when valid[i]
            for i in range(table.num_rows):
                h = cols["content_hash"][i]
                content = carried(cols["text"][i], h, matrix[at[i]] if valid[i] else None, bool(cols["truncated"][i]),
                                  cols["n_tokens"][i], cols["device"][i], cols["dtype"][i]) if h is not None else None
                yield Record(cols["key"][i], content, cols["label"][i],
                             json.loads(cols["meta"][i]) if cols["meta"][i] else None, cols["source"][i],
                             cols["reason"][i])
            self.rows += table.num_rows
            self.ends.append((self.rows, path))

    def committed(self, rows: int) -> None:
        while self.ends and self.ends[0][0] <= rows:
            self.ends.pop(0)[1].unlink(missing_ok=True)


def merge_shards(db: "Database", enc: Encoder, folder: Path, names: Iterator[str], dataset: str,
                 label_column: str | None, replace: bool, progress: bool, name: str,
                 total: int | None) -> IngestReport | None:
    """Feed the shards `names` of `folder` (in that order, as they finish) through the single-writer ingest into
    `dataset`, as vectors `enc` made; each shard is deleted once its rows are committed. None when there were
    no shards."""
    shards = _Shards(folder, db.release)
    records = shards.records(names, enc.fingerprint, enc.dim)
    first = next(records, None)
    if first is None:
        return None
    merger = ImportedEncoder.standing_for(enc)  # each row carries the device and dtype its worker ran
    report = ingest_source(db, merger, Source(name, itertools.chain([first], records), total), dataset=dataset,
                           label_column=label_column, replace=replace, progress=progress, on_commit=shards.committed)
    shards.committed(shards.rows)
    report.escaped = shards.escaped
    return report


def staging_folder(db: "Database", given: str | None, dataset: str, fingerprint: str, source: str) -> Path:
    """`<staging>/<store>/<dataset>/<fingerprint>-<source>/`: shards of one store, dataset, encoder and source, so
    that a rerun merges only its own leftovers and a shared --staging serves several stores."""
    root = Path(given).expanduser().resolve() if given else ray_staging_root(Path(db.path))
    tag = hashlib.blake2b(source.encode("utf-8", "surrogatepass"), digest_size=6).hexdigest()
    folder = ray_staging(root, Path(db.path), dataset) / f"{fingerprint[:16]}-{tag}"
    folder.mkdir(parents=True, exist_ok=True)
    for tmp in folder.glob(".tmp-*"):  # a shard a killed worker was writing: its rows are embedded again
        tmp.unlink(missing_ok=True)
    return folder


def _ray_failure(e: BaseException) -> EmbedstoreError:
    """The first embedstore error inside a Ray failure (a reader's InputError in a task, say), else the failure
    in one line: Ray wraps what a task raised in its own exceptions."""
    seen, cause = set(), e
    while cause is not None and id(cause) not in seen:
        if isinstance(cause, EmbedstoreError):
            return cause
        seen.add(id(cause))
        cause = getattr(cause, "cause", None) if getattr(cause, "cause", None) is not None else cause.__cause__
    first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return EmbedstoreError(f"the Ray run failed: {first} (what was merged before is kept; rerun the same command to "
                           "go on, and see the Ray logs, e.g. /tmp/ray/session_latest/logs, for the cause)")


def shutdown() -> None:
    """Stop the Ray this process started (the CLI's; a Python user's own stays theirs to stop)."""
    ray = ray_module()
    if ray.is_initialized() and _STARTED_HERE:
        ray.shutdown()
        _STARTED_HERE.clear()


_STARTED_HERE: list[bool] = []  # set when _run called ray.init itself


def _run(db: "Database", enc: Encoder, source: Any, opts: TableOptions, source_name: str | None, *, dataset: str,
         label_column: str | None, replace: bool, progress: bool, options: RayOptions) -> IngestReport:
    """The Ray engine's part of `ingest` (which holds the writer lock and the unchanged-file shortcut)."""
    ray = ray_module()
    if not ray.is_initialized():
        ray.init(address=options.address, include_dashboard=False, log_to_driver=False,
                 logging_level=logging.WARNING)
        _STARTED_HERE.append(True)
    elif options.address:
        raise InputError(f"this process already runs Ray (ray.init was called): ray_address={options.address!r} "
                         "cannot be joined; leave it out to use the running one")
    logging.getLogger("ray.data").setLevel(logging.WARNING)  # its per-dataset INFO lines are not the user's
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = progress
    # blocks of a few MB, so that one big file read by one task still feeds every actor
    ctx.target_max_block_size = min(ctx.target_max_block_size or BLOCK_BYTES, BLOCK_BYTES)
    catalog.require_fresh_dataset_modality(db, dataset, enc.modality)
    ds, src = source_dataset(source, opts, source_name, enc.modality, options.batch_size)
    record = catalog.register_encoder(db, enc)
    folder = staging_folder(db, options.staging, dataset, record.fingerprint, src.name)
    notes = []
    left = sorted(p.name for p in folder.glob("shard-*.parquet"))
    if left:  # an earlier run was stopped: what its workers finished is merged before anything is embedded
        before = merge_shards(db, enc, folder, iter(left), dataset, label_column, replace, progress, src.name, None)
        if before is not None:
            notes.append(f"merged {len(left):,} shards left by an earlier run first: {before.rows:,} rows, "
                         f"{before.new_items + before.updated_items:,} items written, {before.embedded:,} vectors new "
                         "to the store (the counts above are of this run's pass over the source)")
    column = "text" if enc.modality not in ("image", "audio") else "data"
    embedded = embed_dataset(ds, enc.spec, column=column, held=held_hashes(db, record), workers=options.workers,
                             gpus_per_worker=options.gpus_per_worker, batch_size=options.batch_size)
    written = embedded.map_batches(_write_shard, fn_kwargs={"folder": str(folder)}, batch_size=None,
                                   batch_format="pyarrow", num_cpus=0.1)
    names = (n for batch in written.iter_batches(batch_size=None, batch_format="pyarrow")
             for n in batch.column("shard").to_pylist())
    db.release()
    try:
        report = merge_shards(db, enc, folder, names, dataset, label_column, replace, progress, src.name, src.total)
    except EmbedstoreError:
        raise
    except Exception as e:  # noqa: BLE001 - whatever a task raised arrives wrapped by Ray
        raise _ray_failure(e) from None
    if report is None:
        report = IngestReport(dataset, enc.spec, record.fingerprint, index="(nothing to merge)")
        notes.append(f"the source held no rows ({src.name}): check the path and the options")
    report.notes = notes + src.notes + report.notes + [
        f"engine ray: {options.workers} encoder actor(s)"
        + (f", {options.gpus_per_worker:g} GPU each" if options.gpus_per_worker else ", on CPU")
        + f", batches of {options.batch_size:,} rows; the vectors were embedded by the workers ('embedded' counts "
        "those new to this store)"]
    return report


def ingest(db: "Database", source: Any, *, dataset: str, encoder: str, options: RayOptions = RayOptions(),
           **read_options: Any) -> IngestReport:
    """`ingest` on Ray Data (see the module docstring): the same items, vectors and fingerprint as the local
    engine; `read_options` are the local `ingest`'s (text_column, label_column, ...). `encoder` is a spec (the
    workers build it from the spec). Starts a local Ray unless this process runs one already (`ray.init` called
    by the user), or joins the cluster `options.address` (or RAY_ADDRESS) names."""
    if not isinstance(encoder, str):
        raise InputError("--engine ray builds the encoder on every worker from its spec: pass a spec such as 'minilm'")
    ray_module()  # a clear refusal before anything is read
    if read_options.get("chunk_size") is not None:
        raise InputError("chunk_size sizes the local engine's transactions; with engine='ray' use batch_size")
    read_options.pop("chunk_size", None)
    return pipeline.ingest(db, source, dataset=dataset, encoder=encoder, engine=partial(_run, options=options),
                           **read_options)
