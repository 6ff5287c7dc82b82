"""Safe head files: nothing that runs code on load.

In a store, head `name` lives in `heads/<name>/head.<sha16>/` (sha16: the start of its manifest's sha256, which
the database's heads row holds); `heads/<name>/eval/` holds the reports of `heads eval`. An exported head is
one such directory:

    <dir>/head.json         provenance: encoders and fingerprints, dim, classes, label, metrics, versions
    <dir>/model.json        the head class (looked up in an allowlist), its parameters, fitted scalars and strings
                            (a LightGBM head's fitted state is the booster's own text format, as a string here)
    <dir>/model.npz         the fitted arrays (numpy, read with allow_pickle=False)
    <dir>/train_hashes.npy  content hashes of the training items (overlap warnings)
    <dir>/manifest.json     sha256 of each file above; the store's database holds the manifest's sha256

Saving writes a new version directory (temporary name, fsync, rename, fsync), then the caller points the
database row at it and removes the old version: a crash at any step leaves the row naming a complete version.
Loading checks every checksum first.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from embedstore.errors import CorruptFileError, InputError
from embedstore.faults import fault_point
from embedstore.fsutil import fsync_dir, make_dir, read_verified
from embedstore.store.layout import head_dir, heads_root
from heads.estimators import HEAD_CLASSES

MODEL_FILES = ("head.json", "model.json", "model.npz", "train_hashes.npy")


def _plain(value: Any) -> bool:
    """JSON data only (no objects that would need code to rebuild)."""
    if isinstance(value, dict):
        return all(isinstance(k, str) and _plain(v) for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return all(_plain(v) for v in value)
    return isinstance(value, (int, float, str, bool, type(None)))


def dump_model(model: Any) -> tuple[bytes, bytes]:
    """(model.json, model.npz) for a head from heads.estimators: params + fitted attributes, no pickle."""
    cls = type(model).__name__
    if HEAD_CLASSES.get(cls) is not type(model):
        raise CorruptFileError(f"cannot save a {cls} safely; heads are one of {sorted(HEAD_CLASSES)}")
    scalars: dict = {}
    arrays: dict[str, np.ndarray] = {}
    lists: dict[str, list[np.ndarray]] = {}  # e.g. an MLP's per-layer weights
    for attr, value in vars(model).items():
        if not attr.endswith("_") or attr.startswith("_"):
            continue
        if isinstance(value, np.ndarray):
            arrays[attr] = value.astype(str) if value.dtype == object else value
        elif isinstance(value, list) and all(isinstance(v, np.ndarray) for v in value):
            lists[attr] = value
        elif isinstance(value, (int, float, str, bool, type(None), np.integer, np.floating)):
            scalars[attr] = value.item() if isinstance(value, np.generic) else value
        elif isinstance(value, dict) and _plain(value):  # e.g. tuning_: what an automatic choice tried
            scalars[attr] = value
        else:
            raise CorruptFileError(f"cannot save {cls}.{attr} of type {type(value).__name__} safely")
    buf = io.BytesIO()
    np.savez(buf, **arrays, **{f"{attr}{i}": v for attr, vs in lists.items() for i, v in enumerate(vs)})
    spec = {"class": cls, "params": model.get_params(deep=False), "scalars": scalars, "arrays": sorted(arrays),
            "lists": {attr: len(vs) for attr, vs in lists.items()}}
    return json.dumps(spec, sort_keys=True).encode(), buf.getvalue()


def load_model(spec_bytes: bytes, npz: Path | bytes) -> Any:
    spec = json.loads(spec_bytes)
    cls = HEAD_CLASSES.get(spec.get("class"))
    if cls is None:
        raise CorruptFileError(f"head names class {spec.get('class')!r}, which is not a head class")
    model = cls(**spec["params"])
    for attr, value in spec["scalars"].items():
        setattr(model, attr, value)
    with np.load(io.BytesIO(npz) if isinstance(npz, bytes) else npz, allow_pickle=False) as data:
        for attr in spec["arrays"]:
            setattr(model, attr, data[attr])
        for attr, n in spec["lists"].items():
            setattr(model, attr, [data[f"{attr}{i}"] for i in range(n)])
    return model


def _write(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def write_head_dir(store: Path, name: str, meta: dict, model: Any, train_hashes: np.ndarray) -> str:
    """Write a new version of head `name` in the store directory `store` (see the module docstring); returns its
    manifest checksum."""
    parent = heads_root(store) / name
    make_dir(parent)
    tmp = parent / f".head.tmp.{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    model_json, model_npz = dump_model(model)
    hashes = io.BytesIO()
    np.save(hashes, np.asarray(train_hashes, dtype="S16"), allow_pickle=False)  # 16 raw bytes each
    files = {"head.json": json.dumps(meta, indent=2, sort_keys=True, default=str).encode(),
             "model.json": model_json, "model.npz": model_npz, "train_hashes.npy": hashes.getvalue()}
    for fname, data in files.items():
        _write(tmp / fname, data)
    manifest = json.dumps({"files": {f: hashlib.sha256(d).hexdigest() for f, d in files.items()}},
                          indent=2, sort_keys=True).encode()
    _write(tmp / "manifest.json", manifest)
    fsync_dir(tmp)
    fault_point("head.save.before_rename")
    checksum = hashlib.sha256(manifest).hexdigest()
    final = head_dir(store, name, checksum)
    if final.exists():  # the very same head was saved before (and verified on load)
        shutil.rmtree(tmp)
    else:
        os.replace(tmp, final)
    fsync_dir(parent)
    return checksum


def read_head_dir(d: Path, checksum: str | None, name: str) -> tuple[dict, Any, np.ndarray]:
    """(meta, model, train hashes) after verifying the manifest (against `checksum` when the store gives one)
    and every model file against the manifest. Never unpickles anything."""
    what = f"head {name!r}"
    try:
        blobs = read_verified(d, checksum, what)
        if set(blobs) != set(MODEL_FILES):
            raise CorruptFileError(f"{what}: its manifest lists {sorted(blobs)}, expected {sorted(MODEL_FILES)}")
    except CorruptFileError as e:
        raise CorruptFileError(f"{e}; refusing to load it: refit the head (`heads fit ...`)") from None
    try:
        meta = json.loads(blobs["head.json"])
        model = load_model(blobs["model.json"], blobs["model.npz"])
        hashes = np.load(io.BytesIO(blobs["train_hashes.npy"]), allow_pickle=False)
    except (ValueError, KeyError, TypeError, OSError) as e:
        raise CorruptFileError(f"head {name!r}: model files are unreadable ({e})") from None
    return meta, model, hashes


def export_head_dir(src: Path, dest: Path) -> None:
    """Copy a verified head directory (model files + manifest) to `dest` for use outside the store."""
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise InputError(f"{dest} exists and is not empty; export to a new folder (or remove that one first)")
    dest.mkdir(parents=True, exist_ok=True)
    for fname in (*MODEL_FILES, "manifest.json"):
        shutil.copy2(src / fname, dest / fname)

