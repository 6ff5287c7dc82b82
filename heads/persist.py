"""Safe head files: nothing that runs code on load.

    <store>/heads/<name>/head.json       provenance: fingerprints, dim, classes, label, metrics, versions
    <store>/heads/<name>/model.json      scikit-learn models: class (from an allowlist), params, fitted scalars
    <store>/heads/<name>/model.npz       ... and their fitted arrays (numpy, allow_pickle=False)
    <store>/heads/<name>/model.lgb.txt   LightGBM models (the booster's own text format)
    <store>/heads/<name>/train_hashes.npy  content hashes of the training items (overlap warnings)
    <store>/heads/<name>/manifest.json   sha256 of each file; the database stores the manifest's sha256

Written into a temporary directory, fsynced, then renamed into place; loading checks every checksum first.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from embedstore.errors import CorruptFileError
from embedstore.fsutil import fsync_dir, sha256_file

# The only classes a head file may name; the class is looked up here, never imported from the file's text.
ALLOWED_CLASSES = {
    "sklearn.linear_model.LogisticRegression": ("sklearn.linear_model", "LogisticRegression"),
}


def _class_name(model: Any) -> str:
    return f"{type(model).__module__.split('._')[0]}.{type(model).__name__}"


def dump_sklearn(model: Any) -> tuple[bytes, bytes]:
    """(model.json, model.npz) for an allowlisted estimator: params + fitted attributes, no pickle."""
    import io
    cls = _class_name(model)
    if cls not in ALLOWED_CLASSES:
        raise CorruptFileError(f"cannot save a {cls} head safely; allowed: {sorted(ALLOWED_CLASSES)}")
    scalars, arrays = {}, {}
    for attr, value in vars(model).items():
        if not attr.endswith("_") or attr.startswith("_"):
            continue
        if isinstance(value, np.ndarray):
            if value.dtype == object:
                value = value.astype(str)
            arrays[attr] = value
        elif isinstance(value, (int, float, str, bool, type(None), np.integer, np.floating)):
            scalars[attr] = value.item() if isinstance(value, np.generic) else value
        else:
            raise CorruptFileError(f"cannot save {cls}.{attr} of type {type(value).__name__} safely")
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    spec = {"class": cls, "params": model.get_params(deep=False), "scalars": scalars, "arrays": sorted(arrays)}
    return json.dumps(spec, sort_keys=True, default=str).encode(), buf.getvalue()


def load_sklearn(spec_bytes: bytes, npz_path: Path) -> Any:
    import importlib
    spec = json.loads(spec_bytes)
    if spec.get("class") not in ALLOWED_CLASSES:
        raise CorruptFileError(f"head names class {spec.get('class')!r}, which is not allowed")
    module, name = ALLOWED_CLASSES[spec["class"]]
    model = getattr(importlib.import_module(module), name)(**spec["params"])
    for attr, value in spec["scalars"].items():
        setattr(model, attr, value)
    with np.load(npz_path, allow_pickle=False) as data:
        for attr in spec["arrays"]:
            setattr(model, attr, data[attr])
    return model


def _write(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def save_head(root: Path, name: str, meta: dict, model: Any, model_format: str,
              train_hashes: list[str]) -> str:
    """Write the head directory atomically; returns the manifest checksum for the database."""
    root.mkdir(parents=True, exist_ok=True)
    tmp = root / f".tmp-{name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    files: dict[str, bytes] = {"head.json": json.dumps(meta, indent=2, sort_keys=True, default=str).encode()}
    if model_format == "lightgbm":
        files["model.lgb.txt"] = model.booster_.model_to_string().encode()
    else:
        files["model.json"], files["model.npz"] = dump_sklearn(model)
    for fname, data in files.items():
        _write(tmp / fname, data)
    np.save(tmp / "train_hashes.npy", np.array([bytes.fromhex(h) for h in train_hashes], dtype="S16"),
            allow_pickle=False)
    manifest = {"files": {p.name: sha256_file(p) for p in sorted(tmp.iterdir())}}
    manifest_bytes = json.dumps(manifest, indent=2, sort_keys=True).encode()
    _write(tmp / "manifest.json", manifest_bytes)
    fsync_dir(tmp)
    final = root / name
    old = root / f".old-{name}-{os.getpid()}"
    if final.exists():
        os.replace(final, old)
    os.replace(tmp, final)
    fsync_dir(root)
    shutil.rmtree(old, ignore_errors=True)
    return hashlib.sha256(manifest_bytes).hexdigest()


def load_head_files(root: Path, name: str, checksum: str) -> tuple[dict, Any, np.ndarray]:
    """(meta, model, train hashes) after verifying the manifest against `checksum` and every file against it."""
    d = root / name
    man_path = d / "manifest.json"
    if not man_path.exists():
        raise CorruptFileError(f"head {name!r}: {man_path} is missing; refit the head (`heads fit ...`)")
    raw = man_path.read_bytes()
    if hashlib.sha256(raw).hexdigest() != checksum:
        raise CorruptFileError(f"head {name!r}: manifest checksum does not match the database; the head files were "
                               "modified or replaced. Refusing to load it; refit the head")
    try:
        files = json.loads(raw)["files"]
    except (ValueError, KeyError) as e:
        raise CorruptFileError(f"head {name!r}: unreadable manifest ({e})") from None
    present = {p.name for p in d.iterdir()} - {"manifest.json"}
    if present != set(files):
        raise CorruptFileError(f"head {name!r}: files {sorted(present)} differ from the manifest {sorted(files)}")
    for fname, digest in files.items():
        if sha256_file(d / fname) != digest:
            raise CorruptFileError(f"head {name!r}: {fname} does not match its checksum; refusing to load it")
    meta = json.loads((d / "head.json").read_text())
    if "model.lgb.txt" in files:
        import lightgbm as lgb
        model: Any = lgb.Booster(model_str=(d / "model.lgb.txt").read_text())
    else:
        try:
            model = load_sklearn((d / "model.json").read_bytes(), d / "model.npz")
        except (ValueError, KeyError, TypeError) as e:
            raise CorruptFileError(f"head {name!r}: model files are unreadable ({e})") from None
    hashes = np.load(d / "train_hashes.npy", allow_pickle=False)
    return meta, model, hashes
