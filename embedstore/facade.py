"""The `Store` facade: one object a user opens, with every verb of the library as a method.

It is the database handle (store/database.py) plus delegation to the middle layer (ingest, search, sql, index,
maintenance, features): it holds no logic of its own, and nothing below it imports it. Everything it calls takes
a database handle, so `heads.fit(store, ...)` and the CLI work on the same object.
"""

from __future__ import annotations

import os
from typing import Any, Sequence

from embedstore import exchange as _exchange
from embedstore import features as _features
from embedstore import ingest as _ingest
from embedstore import maintenance, search as _search, sql as _sql
from embedstore.encoders import Encoder
from embedstore.errors import InputError, resource_errors_as_clear
from embedstore.index import sync
from embedstore.store import catalog
from embedstore.store.catalog import EncoderRecord
from embedstore.store.database import Database
from embedstore.validate import expect


class Store(Database):
    """Open with `embedstore.open(path)`. A writable store takes the writer lock only while a write runs (hold it
    across several with `with store.writing():`); `read_only=True` never writes."""

    # -- writes ------------------------------------------------------------------------------------------------
    def ingest(self, source: Any, *, dataset: str, encoder: str, engine: str = "local",
               **options: Any) -> "_ingest.IngestReport":
        """Embed `source` into `dataset` (see embedstore.ingest.ingest for the options). `engine="ray"` embeds on
        Ray Data (embedstore.ingest.ray_engine; its sizing: ray_address, workers, gpus_per_worker, batch_size,
        staging) and merges into this store: the same items and vectors."""
        expect(dataset, str, "dataset")
        if not isinstance(encoder, (str, Encoder)):
            raise InputError(f"encoder must be a spec such as 'minilm' or 'hashing:256' (see `embedstore encoders`), "
                             f"not {type(encoder).__name__}")
        sizing = {k: options.pop(k) for k in ("ray_address", "workers", "gpus_per_worker", "batch_size", "staging")
                  if k in options}
        if engine == "ray":
            from embedstore.ingest import ray_engine
            opts = ray_engine.RayOptions(**{("address" if k == "ray_address" else k): v for k, v in sizing.items()})
            return ray_engine.ingest(self, source, dataset=dataset, encoder=encoder, options=opts, **options)
        if engine != "local":
            raise InputError(f"unknown engine {engine!r}; available: local, ray")
        if sizing:
            raise InputError(f"{', '.join(sizing)} size the Ray engine: pass engine='ray' (--engine ray) with them")
        return _ingest.ingest(self, source, dataset=dataset, encoder=encoder, **options)

    def delete_dataset(self, name: str) -> dict:
        return maintenance.delete_dataset(self, name)

    def gc(self) -> dict:
        return maintenance.gc(self)

    def export_parquet(self, dataset: str, out: str | os.PathLike, *, encoder: str = "") -> dict:
        """The dataset's vectors of `encoder` as Parquet shards + manifest in the new folder `out`."""
        expect(dataset, str, "dataset")
        expect(encoder, str, "encoder")
        return _exchange.export_parquet(self, dataset, encoder, out)

    def import_parquet(self, folder: str | os.PathLike, *, dataset: str | None = None, replace: bool = False,
                       progress: bool = True) -> "_ingest.IngestReport":
        """Load an `export_parquet` folder (default dataset: the exported one's name); idempotent."""
        return _exchange.import_parquet(self, folder, dataset=dataset, replace=replace, progress=progress)

    # -- reads -------------------------------------------------------------------------------------------------
    @resource_errors_as_clear()
    def features(self, dataset: str, *, encoder: str = "", label: str | None = "label", return_meta: bool = False,
                 memmap: "str | os.PathLike | None" = None):
        """(X float32 [n, dim], y) for the dataset's items that have vectors of `encoder` (`a+b` concatenates).
        `memmap=PATH`: X is written to a .npy file there and returned as a read-only np.memmap, for matrices
        larger than memory (read it in chunks, or by a head that streams: heads `sgd`)."""
        expect(dataset, str, "dataset")
        expect(encoder, str, "encoder", " (one spec; a+b concatenates several)")
        expect(label, (str, type(None)), "label")
        expect(memmap, (str, os.PathLike, type(None)), "memmap")
        fs = _features.features_for(self, dataset, encoder, label, memmap=memmap)
        return (fs.X, fs.y, fs) if return_meta else (fs.X, fs.y)

    @resource_errors_as_clear()
    def encode(self, inputs: Sequence[Any], *, encoder: str) -> "Any":
        """Vectors [n, dim] for raw inputs, from the store's cache where this content was ingested with this
        encoder, else by the encoder (nothing is written); rows of inputs the encoder skips are NaN."""
        return _ingest.encode(self, inputs, encoder)

    @resource_errors_as_clear()
    def search(self, dataset: str, query: Any = None, k: int = 10, *, key: str | None = None,
               vector: Any = None, where: str | dict | None = None, encoder: str = "") -> "_search.Hits":
        expect(dataset, str, "dataset")
        expect(k, int, "k")
        expect(encoder, str, "encoder")
        if query is not None and not isinstance(query, (str, bytes, os.PathLike)):
            raise InputError(f"query must be a text, a sequence, image bytes or an image path, not "
                             f"{type(query).__name__}; a vector goes in vector=")
        return _search.search(self, dataset, query=query, k=k, key=key, vector=vector, where=where, encoder=encoder)

    @resource_errors_as_clear()
    def sql(self, query: str, params: Sequence | None = None):
        """Read-only SQL over the documented views; returns a polars DataFrame."""
        return _sql.run_sql_frame(self, expect(query, str, "query"), params)

    @resource_errors_as_clear()
    def index(self, dataset: str, record: EncoderRecord) -> "sync.LiveIndex":
        """The up-to-date FAISS index for (dataset, encoder), loaded, caught up or rebuilt from DuckDB."""
        return sync.live_index(self, dataset, record)

    @resource_errors_as_clear()
    def info(self) -> dict:
        return maintenance.info(self)

    def check(self) -> dict:
        """Read everything the store holds and verify it (see maintenance.check)."""
        return maintenance.check(self)

    # -- the catalog -------------------------------------------------------------------------------------------
    def dataset_names(self) -> list[str]:
        return catalog.dataset_names(self)

    def encoder_records(self, dataset: str | None = None) -> list[EncoderRecord]:
        return catalog.encoder_records(self, dataset)

    def resolve_encoder(self, spec: str, dataset: str | None = None) -> EncoderRecord:
        return catalog.resolve_encoder(self, spec, dataset)

    def resolve_feature_set(self, spec: str, dataset: str | None = None) -> list[EncoderRecord]:
        return catalog.resolve_feature_set(self, spec, dataset)

    def register_encoder(self, encoder: Any) -> EncoderRecord:
        return catalog.register_encoder(self, encoder)


def open(path: str | os.PathLike | None = None, *, read_only: bool = False,  # noqa: A001
         create: bool = True, files: bool = False) -> Store:
    """Open the store at `path`, else $EMBEDSTORE_STORE, else the default directory; a writable open creates it
    unless `create=False`. SQL over it cannot touch files unless `files=True`."""
    return Store(path, read_only=read_only, create=create, files=files)
