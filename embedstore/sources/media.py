"""Media sources (images, audio): every input that holds media files, as Records whose content is the file's bytes
(the content hash is of the bytes as stored):
    a directory       every image (audio) file below it (and the members of tar shards in it); label = parent folder
    a tar shard       .tar, .tar.gz, .tgz, read as a stream; label = a webdataset `.cls`/`.txt` sidecar of the
                      same sample, else the member's parent folder (`train/<class>/0001.jpg`)
    a table           CSV/TSV/JSONL/Parquet or a DataFrame with a path column (paths relative to the table's folder)
                      or a column of encoded image bytes
    arrays            `from_arrays(images, labels)`: uint8 [n, h, w] or [n, h, w, c]; each image's content is its
                      .npy serialisation. `from_waveforms(waves, sample_rate, labels)`: each clip's content is a
                      32-bit float WAV of it
Audio items record the header's sample rate, channels and duration in their metadata (read here: cheap).
Decoding is not done here (media/images.py, media/audio.py): a file that cannot be decoded is skipped by the
encoder, with why.
"""

from __future__ import annotations

import gzip
import io
import math
import os
import tarfile
from collections import Counter
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import numpy as np

from embedstore.errors import InputError, SourceCutError
from embedstore.media.audio import AUDIO_SUFFIXES, audio_info, to_wav
from embedstore.media.images import IMAGE_SUFFIXES, to_npy
from embedstore.sources.records import Record, Source, TableOptions
from embedstore.sources.tables import open_rows

SUFFIXES = {"image": IMAGE_SUFFIXES, "audio": AUDIO_SUFFIXES}
NOUNS = {"image": "images", "audio": "audio files"}
TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz")
LABEL_SIDECARS = ("cls", "txt")      # webdataset extensions read as the sample's label, in this order


def _is_tar(path: Path) -> bool:
    return path.name.lower().endswith(TAR_SUFFIXES)


def _sample_key(member: str) -> tuple[str, str]:
    """webdataset's rule: a sample is the path up to the first dot of the file name; the rest is the field."""
    folder, _, name = member.rpartition("/")
    stem, _, ext = name.partition(".")
    return (f"{folder}/{stem}" if folder else stem), ext.lower()


def _parent_label(rel: str) -> str | None:
    parent = rel.rpartition("/")[0]
    return parent.rpartition("/")[2] or None


def tar_subset(src: str | Path, dst: str | Path, per_label: int) -> Path:
    """The first `per_label` files of each parent-folder label of a tar shard (plain or gzip), written as a new
    .tar.gz: a class-stratified slice (e.g. CIFAR-10's `train/<class>/NNNN.jpg`) to try an encoder on quickly."""
    seen: Counter = Counter()
    with tarfile.open(src, "r|*") as tf, tarfile.open(dst, "w:gz") as out:
        for m in tf:
            label = _parent_label(m.name) if m.isfile() else None
            if label and seen[label] < per_label:
                seen[label] += 1
                out.addfile(m, io.BytesIO(tf.extractfile(m).read()))
    return Path(dst)


def _with_info(r: Record, modality: str) -> Record:
    """An audio item's header facts join its metadata (for images there is nothing to add)."""
    if modality == "audio" and isinstance(r.content, bytes) and (info := audio_info(r.content)):
        r.meta = {**(r.meta or {}), **info}
    return r


def _tar_records(path: Path, prefix: str, source: str, modality: str) -> Iterator[Record]:
    """Members of one tar shard as a stream; a sample's media file(s) get its .cls/.txt label and .json
    metadata."""
    import json

    def emit(sample: dict[str, tuple[str, bytes]]) -> Iterator[Record]:
        label = next((sample[ext][1].decode("utf-8", "replace").strip() for ext in LABEL_SIDECARS
                      if ext in sample), None)
        meta = None
        if "json" in sample:
            try:
                meta = json.loads(sample["json"][1])
            except ValueError:
                meta = None
            meta = meta if isinstance(meta, dict) else None
        for ext, (name, data) in sample.items():
            if "." + ext.rsplit(".", 1)[-1] in SUFFIXES[modality]:
                yield _with_info(Record(prefix + name, data, label if label is not None else _parent_label(name),
                                        meta, source), modality)

    current, sample = None, {}
    try:
        with tarfile.open(path, mode="r|*") as tf:
            for member in tf:
                if not member.isfile():
                    continue
                key, ext = _sample_key(member.name)
                if key != current and sample:
                    yield from emit(sample)
                    sample = {}
                current = key
                handle = tf.extractfile(member)
                sample[ext] = (member.name, handle.read() if handle else b"")
    except (tarfile.TarError, EOFError, OSError, gzip.BadGzipFile) as e:
        raise SourceCutError(f"{path}: the tar archive is truncated or corrupt in {current or 'its first member'} "
                         f"({type(e).__name__}: {e}); items read before it are kept") from None
    if sample:
        yield from emit(sample)


def _file_record(path: Path, key: str, label: str | None, source: str, meta: dict | None = None,
                 modality: str = "image") -> Record:
    try:
        return _with_info(Record(key, path.read_bytes(), label, meta, source), modality)
    except OSError as e:
        return Record(key, None, label, meta, source, reason=f"cannot read {path}: {e.strerror or e}")


def _dir_records(root: Path, files: list[Path], modality: str) -> Iterator[Record]:
    for path in files:
        rel = path.relative_to(root).as_posix()
        if _is_tar(path):
            yield from _tar_records(path, rel + "/", root.name, modality)
        else:
            yield _file_record(path, rel, _parent_label(rel), root.name, modality=modality)


def _listed(root: Path, modality: str) -> tuple[list[Path], list[str]]:
    """Media files and tar shards below `root` (hidden ones skipped), and notes on what was left out."""
    files, ignored = [], 0
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for fn in sorted(filenames):
            p = Path(dirpath, fn)
            if fn.startswith("."):
                continue
            if p.suffix.lower() in SUFFIXES[modality] or _is_tar(p):
                files.append(p)
            else:
                ignored += 1
    notes = [f"{root}: ignored {ignored:,} files that are neither {NOUNS[modality]} "
             f"({', '.join(sorted(SUFFIXES[modality]))}) nor tar shards"] if ignored else []
    return files, notes


def _table_records(src: Source, base: Path | None, modality: str) -> Iterator[Record]:
    """Rows whose content is a path (read here, relative to `base`) or already the encoded bytes."""
    for r in src:
        if isinstance(r.content, str):
            path = Path(r.content).expanduser()
            path = path if path.is_absolute() or base is None else base / path
            meta = {**(r.meta or {}), "path": r.content}
            if not path.is_file():
                yield Record(r.key, None, r.label, meta, r.source, reason=r.reason or f"file not found: {path}")
            else:
                rec = _file_record(path, r.key, r.label, r.source, meta, modality)
                rec.reason = r.reason or rec.reason
                yield rec
        else:
            yield _with_info(r, modality)


def open_media_source(source: Any, opts: TableOptions, name: str | None = None, modality: str = "image") -> Source:
    """A Source of image or audio Records (content = encoded bytes) from any supported input; see the module
    docstring."""
    if isinstance(source, Source):
        return source
    if isinstance(source, np.ndarray):
        if modality == "audio":
            raise InputError("audio arrays need their sample rate: pass from_waveforms(waves, sample_rate, labels)")
        return from_arrays(source, name=name or "arrays")
    if isinstance(source, (str, Path)):
        path = Path(source).expanduser()
        if not path.exists():
            raise InputError(f"no such file or directory: {path}")
        if path.is_dir():
            files, notes = _listed(path, modality)
            total = None if any(_is_tar(p) for p in files) else len(files)
            return Source(path.name, _dir_records(path, files, modality), total, notes)
        if _is_tar(path):
            return Source(path.name, _tar_records(path, "", path.name, modality))
        if path.suffix.lower() in SUFFIXES[modality]:
            return Source(path.parent.name, iter([_file_record(path, path.name, None, path.parent.name,
                                                               modality=modality)]), 1)
    if not opts.path_column:
        arrays = "numpy arrays" if modality == "image" else "from_waveforms(...)"
        raise InputError(f"{name or source!r}: a table ingested with an {modality} encoder needs --path-column "
                         f"(the column of {modality} file paths, or of encoded file bytes); folders, tar shards "
                         f"and {arrays} need none")
    src = open_rows(source, opts, name)
    base = Path(source).expanduser().resolve().parent if isinstance(source, (str, Path)) else None
    return Source(src.name, _table_records(src, base, modality), src.total, src.notes)


def _labels_for(caller: str, noun: str, n: int, labels: Iterable | None, keys: Sequence[str] | None
                ) -> list[str | None] | None:
    """Labels as strings, once the labels and keys given are checked to be one per item."""
    labels = None if labels is None else [None if v is None else str(v) for v in labels]
    for what, given in (("labels", labels), ("keys", keys)):
        if given is not None and len(given) != n:
            raise InputError(f"{caller}: {n:,} {noun} but {len(given):,} {what}")
    return labels


def from_arrays(images: np.ndarray | Sequence[np.ndarray], labels: Iterable | None = None, *, name: str = "arrays",
                keys: Sequence[str] | None = None) -> Source:
    """Images held in memory (e.g. Fashion-MNIST from read_idx) as a Source: keys `<name>:<i>` (from 1) unless
    given; labels optional. Pass it to `store.ingest(...)` with an image encoder."""
    n = len(images)
    labels = _labels_for("from_arrays", "images", n, labels, keys)
    records = (Record(keys[i] if keys is not None else f"{name}:{i + 1}", to_npy(np.asarray(images[i])),
                      labels[i] if labels is not None else None, None, name) for i in range(n))
    return Source(name, records, n)


def from_waveforms(waves: np.ndarray | Sequence[np.ndarray], sample_rate: int, labels: Iterable | None = None, *,
                   name: str = "waveforms", keys: Sequence[str] | None = None) -> Source:
    """Audio held in memory as a Source: each clip [samples] (mono) or [samples, channels] at `sample_rate` Hz
    becomes a 32-bit float WAV (so it is hashed, decoded and resampled like a file). Keys `<name>:<i>` (from 1)
    unless given; labels optional. Pass it to `store.ingest(...)` with an audio encoder."""
    if isinstance(sample_rate, float) and sample_rate.is_integer():
        sample_rate = int(sample_rate)
    if isinstance(waves, np.ndarray) and waves.ndim == 1:
        raise InputError(f"from_waveforms takes a list of clips (or a 2-D array, one clip per row), found one 1-D "
                         f"array of {len(waves):,} samples: pass [clip]")
    if not isinstance(sample_rate, (int, np.integer)) or not 1 <= sample_rate <= 1_000_000:
        raise InputError(f"from_waveforms: sample_rate must be a whole number of Hz from 1 to 1,000,000, not "
                         f"{sample_rate!r}")
    n = len(waves)
    labels = _labels_for("from_waveforms", "clips", n, labels, keys)

    def records() -> Iterator[Record]:
        for i in range(n):
            key = keys[i] if keys is not None else f"{name}:{i + 1}"
            label = labels[i] if labels is not None else None
            try:
                data = to_wav(waves[i], int(sample_rate))
            except (ValueError, RuntimeError) as e:  # bad shape or type; soundfile's errors are RuntimeErrors
                yield Record(key, None, label, None, name, reason=f"clip {i + 1}: {e}")
                continue
            yield _with_info(Record(key, data, label, None, name), "audio")
    return Source(name, records(), n)


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """An IDX file (MNIST / Fashion-MNIST format, optionally .gz) as a numpy array."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    dtypes = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
    if len(data) < 4 or data[:2] != b"\0\0" or data[2] not in dtypes:
        raise InputError(f"{path}: not an IDX file (expected 2 zero bytes, a type code and a rank; found "
                         f"{data[:4]!r})")
    rank = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(rank))
    body = np.frombuffer(data, dtype=dtypes[data[2]], offset=4 + 4 * rank)
    if body.size != math.prod(shape):
        raise InputError(f"{path}: header says shape {shape} ({math.prod(shape):,} values), the file holds "
                         f"{body.size:,}")
    return body.reshape(shape).astype(body.dtype.newbyteorder("="))
