"""Images: robust decoding (in worker processes) and image sources (folders, tar shards, path columns, arrays).

Decoding turns the raw bytes of one file into the model's uint8 input, [height, width, 3], as the model's own
preprocessing would (resize, crop or pad, from its config): EXIF orientation applied; CMYK, palette, grey,
1-bit and 16-bit images converted (16-bit scaled to 8, not clipped); transparency composited on white; an
animated image gives its first frame; large JPEGs decoded at 1/2, 1/4 or 1/8 scale (draft mode) while that keeps
at least twice the resize target (the resampling filter does the rest); images over `max_pixels` refused before their pixels are read (decompression bombs).
A file that cannot be decoded (truncated, empty, not an image) gets a reason, never a crash or a grey image.

Sources yield Records whose content is the file's bytes, so the content hash is of the bytes as stored:
    a directory       every image file below it (and the members of tar shards in it); label = parent folder
    a tar shard       .tar, .tar.gz, .tgz, read as a stream; label = a webdataset `.cls`/`.txt` sidecar of the
                      same sample, else the member's parent folder (`train/<class>/0001.jpg`)
    a table           CSV/TSV/JSONL/Parquet or a DataFrame with a path column (paths relative to the table's folder)
                      or a column of encoded image bytes
    arrays            `from_arrays(images, labels)`: uint8 [n, h, w] or [n, h, w, c]; each image's content is its
                      .npy serialisation
"""

from __future__ import annotations

import gzip
import io
import math
import os
import pickle
import struct
import subprocess
import sys
import tarfile
import threading
import warnings
import weakref
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import numpy as np

from embedstore.errors import InputError
from embedstore.ingest.sources import Record, Source, TableOptions, open_rows

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".jfif", ".png", ".gif", ".bmp", ".webp", ".tif", ".tiff", ".ppm",
                            ".pgm", ".pbm", ".pnm", ".ico", ".npy"})
TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz")
LABEL_SIDECARS = ("cls", "txt")      # webdataset extensions read as the sample's label, in this order
NPY_MAGIC = b"\x93NUMPY"
DEFAULT_MAX_PIXELS = 89_478_485       # Pillow's own default limit (about 0.25 GiB of RGBA)


# -- decoding ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Preprocess:
    """How a decoded image becomes the model's input; every field changes the vectors (part of the fingerprint).

    mode "shortest": scale the shorter side to `resize` (torchvision's Resize(int)), then center-crop `size`;
    "squash": scale to `resize` exactly, then center-crop; "keep-ratio": scale by timm/open_clip's ResizeKeepRatio
    rule (`longest` = 1 fits the longer side, 0 the shorter) to `resize`, then center-crop or pad with `fill`.
    """

    size: tuple[int, int]                  # (height, width) fed to the model
    resize: tuple[int, int]                # (height, width) target of the resize step
    mode: str = "shortest"
    interpolation: str = "bicubic"         # bicubic | bilinear | nearest | lanczos | box | hamming
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    longest: float = 0.0                   # keep-ratio only
    fill: tuple[int, int, int] = (0, 0, 0)  # padding colour (keep-ratio, or a crop larger than the image)
    draft: bool = True                     # JPEG: libjpeg decodes at a reduced scale still >= 2x `resize`

    def __post_init__(self) -> None:
        if self.mode not in ("shortest", "squash", "keep-ratio"):
            raise InputError(f"image preprocessing mode must be shortest, squash or keep-ratio, not {self.mode!r}")
        if self.interpolation not in _RESAMPLE:
            raise InputError(f"image interpolation must be one of {sorted(_RESAMPLE)}, not {self.interpolation!r}")

    def as_dict(self) -> dict:
        return asdict(self)


_RESAMPLE = {"nearest": 0, "lanczos": 1, "bilinear": 2, "bicubic": 3, "box": 4, "hamming": 5}  # PIL's codes


class DecodeError(Exception):
    """One file could not be decoded; the message is the reason recorded with the item."""


def decode_batch(items: Sequence[bytes], pp: Preprocess, max_pixels: int = DEFAULT_MAX_PIXELS
                 ) -> tuple[np.ndarray, list[str | None]]:
    """Decode and preprocess a batch: (uint8 [n, h, w, 3], reasons). A failed item's row stays zero and its
    reason is set; callers must never embed such a row. Runs in a worker process (see Decoder)."""
    out = np.zeros((len(items), *pp.size, 3), dtype=np.uint8)
    reasons: list[str | None] = [None] * len(items)
    for i, data in enumerate(items):
        try:
            out[i] = decode_image(data, pp, max_pixels)
        except DecodeError as e:
            reasons[i] = str(e)
        except Exception as e:  # noqa: BLE001 - any decoder failure on one file must only skip that file
            reasons[i] = f"cannot decode image ({type(e).__name__}: {e})"
    return out, reasons


def decode_image(data: bytes, pp: Preprocess, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """One file's bytes -> uint8 [h, w, 3] as the model's preprocessing defines it; raises DecodeError."""
    from PIL import Image, ImageOps, UnidentifiedImageError
    if not data:
        raise DecodeError("empty file (0 bytes)")
    if bytes(data[:6]) == NPY_MAGIC:
        return _resize_crop(_array_image(np.load(io.BytesIO(data), allow_pickle=False)), pp)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            img = Image.open(io.BytesIO(data))
        except UnidentifiedImageError:
            raise DecodeError(f"not an image: no known image format ({len(data):,} bytes starting "
                              f"{bytes(data[:8])!r})") from None
        except Image.DecompressionBombError as e:
            raise DecodeError(f"decompression bomb guard: {e}; raise ?max_pixels= if the image is genuine") from None
        w, h = img.size
        if w * h > max_pixels:
            raise DecodeError(f"decompression bomb guard: {w}x{h} = {w * h:,} pixels exceeds max_pixels="
                              f"{max_pixels:,}; raise ?max_pixels= if the image is genuine")
        if pp.draft and img.format == "JPEG":
            target = 2 * max(pp.resize)  # twice: libjpeg's DCT scaling is cheap but blurs less than resampling
            img.draft(None, (target, target))  # a scale of 1/2..1/8 whose both sides stay >= target
        try:
            img.load()  # an animated image stays on its first frame
        except OSError as e:
            raise DecodeError(f"truncated or corrupt image data ({img.format}: {e})") from None
        img = ImageOps.exif_transpose(img)
    return _resize_crop(_to_rgb(img), pp)


def _to_rgb(img: Any) -> Any:
    """Any Pillow mode -> RGB: 16/32-bit integers scaled from 0..65535, transparency composited on white."""
    from PIL import Image
    if img.mode.startswith("I"):  # I;16, I;16B, I;16L, I;16N, I (16-bit PNG/TIFF are read as these)
        a = np.asarray(img).astype(np.float64)
        img = Image.fromarray(np.rint(np.clip(a, 0, 65535) * (255 / 65535)).astype(np.uint8), "L")
    elif img.mode == "F":
        a = np.nan_to_num(np.asarray(img, dtype=np.float64))
        scale = 255.0 if a.max(initial=0) <= 1.0 else 1.0  # float images in [0, 1], else taken as 0..255
        img = Image.fromarray(np.rint(np.clip(a * scale, 0, 255)).astype(np.uint8), "L")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in img.info:
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return img if img.mode == "RGB" else img.convert("RGB")


def _array_image(a: np.ndarray) -> Any:
    """A numpy image (from from_arrays) -> RGB Pillow image; dtype and shape checked."""
    from PIL import Image
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[:, :, 0]
    if a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[2] not in (3, 4)) or 0 in a.shape:
        raise DecodeError(f"array of shape {a.shape} is not an image: expected (h, w), (h, w, 1), (h, w, 3) "
                          "or (h, w, 4)")
    if a.dtype == np.uint16:
        a = np.rint(a * (255 / 65535)).astype(np.uint8)
    elif a.dtype == bool:
        a = a.astype(np.uint8) * 255
    elif a.dtype.kind == "f":
        if not np.isfinite(a).all() or a.min() < 0 or a.max() > 1:
            raise DecodeError("float array values must be finite and in [0, 1]; pass uint8 (0..255) or scale them")
        a = np.rint(a * 255).astype(np.uint8)
    elif a.dtype.kind in "iu" and a.dtype != np.uint8:
        if a.min() < 0 or a.max() > 255:
            raise DecodeError(f"{a.dtype} array values outside 0..255; pass uint8, uint16, or floats in [0, 1]")
        a = a.astype(np.uint8)
    elif a.dtype != np.uint8:
        raise DecodeError(f"array of dtype {a.dtype} is not an image; pass uint8, uint16, bool or floats in [0, 1]")
    return _to_rgb(Image.fromarray(np.ascontiguousarray(a)))


def resized_size(w: int, h: int, pp: Preprocess) -> tuple[int, int]:
    """(width, height) after the resize step, by torchvision's / timm's / open_clip's own rounding."""
    if pp.mode == "shortest":
        short, long = (w, h) if w <= h else (h, w)
        new_short = pp.resize[0]
        new_long = int(new_short * long / short)  # torchvision's rule (truncation)
        return (new_short, new_long) if w <= h else (new_long, new_short)
    if pp.mode == "squash":
        return pp.resize[1], pp.resize[0]
    ratio_h, ratio_w = h / pp.resize[0], w / pp.resize[1]
    ratio = max(ratio_h, ratio_w) * pp.longest + min(ratio_h, ratio_w) * (1.0 - pp.longest)
    return max(1, round(w / ratio)), max(1, round(h / ratio))


def _resize_crop(img: Any, pp: Preprocess) -> np.ndarray:
    """Resize then center-crop (or pad) exactly as torchvision/timm/open_clip do it on PIL images."""
    from PIL import Image
    w, h = img.size
    new = resized_size(w, h, pp)
    if new != (w, h):
        img = img.resize(new, resample=Image.Resampling(_RESAMPLE[pp.interpolation]))
    ch, cw = pp.size
    w, h = img.size
    if w < cw or h < ch:  # pad evenly (extra pixel right/bottom), then crop
        canvas = Image.new("RGB", (max(w, cw), max(h, ch)), pp.fill)
        canvas.paste(img, ((max(w, cw) - w) // 2, (max(h, ch) - h) // 2))
        img, (w, h) = canvas, canvas.size
    top, left = int(round((h - ch) / 2.0)), int(round((w - cw) / 2.0))
    if (w, h) != (cw, ch):
        img = img.crop((left, top, left + cw, top + ch))
    return np.asarray(img, dtype=np.uint8)


def _init_worker() -> None:
    """Pillow settings of a decoding worker: a truncated file is an error (never a partly grey image), and
    the size guard is ours (max_pixels) rather than Pillow's fixed one. The calling process is left alone."""
    from PIL import Image, ImageFile
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    Image.MAX_IMAGE_PIXELS = None


def _send(f: Any, obj: Any) -> None:
    data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    f.write(struct.pack("<Q", len(data)))
    f.write(data)
    f.flush()


def _receive(f: Any) -> Any:
    """The next message, or None at end of stream (the other side is gone)."""
    head = f.read(8)
    if len(head) < 8:
        return None
    (n,) = struct.unpack("<Q", head)
    data = f.read(n)
    return pickle.loads(data) if len(data) == n else None  # noqa: S301 - our own worker, over a private pipe


def serve() -> None:
    """A decoding worker: read (items, preprocess, max_pixels), write (pixels, reasons), until stdin closes."""
    _init_worker()
    replies = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # anything printed goes to stderr, never into the replies
    while (request := _receive(sys.stdin.buffer)) is not None:
        _send(replies, decode_batch(*request))


class _Worker:
    """One decoding process: a fresh interpreter (not a fork, and not a re-import of the caller's script),
    started with close_fds, so it holds no DuckDB connection, lock, thread or CUDA context of the parent."""

    def __init__(self) -> None:
        root = str(Path(__file__).resolve().parents[2])
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))}
        self.proc = subprocess.Popen([sys.executable, "-c", "from embedstore.ingest.images import serve; serve()"],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, close_fds=True, env=env)

    def send(self, request: tuple) -> None:
        try:
            _send(self.proc.stdin, request)
        except (BrokenPipeError, OSError):
            pass  # it died; receive() reports it

    def receive(self) -> tuple[np.ndarray, list[str | None]] | None:
        return _receive(self.proc.stdout)

    def stop(self) -> None:
        for f in (self.proc.stdin, self.proc.stdout):
            try:
                f.close()
            except OSError:
                pass
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def _stop_all(workers: list[_Worker]) -> None:
    for w in workers:
        w.stop()


class Decoder:
    """Decodes batches split across worker processes (see _Worker); `workers=0` decodes in the calling thread.
    A worker that dies on a file (a crash in a native decoder) is replaced, and its files are retried one by one
    so that only the file that kills a decoder is skipped, with that reason."""

    def __init__(self, pp: Preprocess, max_pixels: int = DEFAULT_MAX_PIXELS, workers: int | None = None):
        self.pp, self.max_pixels = pp, max_pixels
        self.workers = min(os.cpu_count() or 1, 8) if workers is None else workers
        self._procs: list[_Worker] = []
        self._lock = threading.Lock()
        self._finalizer = weakref.finalize(self, _stop_all, self._procs)

    def _worker(self, i: int) -> _Worker:
        while len(self._procs) <= i:
            self._procs.append(_Worker())
        if self._procs[i].proc.poll() is not None:
            self._procs[i] = _Worker()
        return self._procs[i]

    def __call__(self, items: Sequence[bytes]) -> tuple[np.ndarray, list[str | None]]:
        if self.workers <= 0 or len(items) < 2:
            return decode_batch(items, self.pp, self.max_pixels)
        parts = [list(idx) for idx in np.array_split(np.arange(len(items)), min(self.workers, len(items)))]
        pixels = np.zeros((len(items), *self.pp.size, 3), dtype=np.uint8)
        reasons: list[str | None] = [None] * len(items)
        with self._lock:
            for w, idx in enumerate(parts):  # all workers decode at once; replies are read in turn
                self._worker(w).send(([items[i] for i in idx], self.pp, self.max_pixels))
            lost = []
            for w, idx in enumerate(parts):
                reply = self._procs[w].receive()
                if reply is None:
                    self._procs[w].stop()  # reaped, so that _worker() replaces it
                    lost += idx
                    continue
                pixels[idx], reasons_w = reply
                for i, why in zip(idx, reasons_w):
                    reasons[i] = why
            for i in lost:
                worker = self._worker(0)
                worker.send(([items[i]], self.pp, self.max_pixels))
                reply = worker.receive()
                if reply is None:
                    worker.stop()
                    reasons[i] = f"the image decoder crashed on this file (worker exit code {worker.proc.returncode})"
                else:
                    pixels[i], reasons[i] = reply[0][0], reply[1][0]
        return pixels, reasons

    def close(self) -> None:
        """Stop the workers now (they also stop when the Decoder is garbage-collected or Python exits)."""
        self._finalizer()


# -- sources ---------------------------------------------------------------------------------------------------
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


def _tar_records(path: Path, prefix: str, source: str) -> Iterator[Record]:
    """Members of one tar shard as a stream; a sample's image(s) get its .cls/.txt label and .json metadata."""
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
            if "." + ext.rsplit(".", 1)[-1] in IMAGE_SUFFIXES:
                yield Record(prefix + name, data, label if label is not None else _parent_label(name), meta, source)

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
        raise InputError(f"{path}: the tar archive is truncated or corrupt after {current or 'its start'} "
                         f"({type(e).__name__}: {e}); items read before it are kept") from None
    if sample:
        yield from emit(sample)


def _file_record(path: Path, key: str, label: str | None, source: str, meta: dict | None = None) -> Record:
    try:
        return Record(key, path.read_bytes(), label, meta, source)
    except OSError as e:
        return Record(key, None, label, meta, source, reason=f"cannot read {path}: {e.strerror or e}")


def _dir_records(root: Path, files: list[Path]) -> Iterator[Record]:
    for path in files:
        rel = path.relative_to(root).as_posix()
        if _is_tar(path):
            yield from _tar_records(path, rel + "/", root.name)
        else:
            yield _file_record(path, rel, _parent_label(rel), root.name)


def _listed(root: Path) -> tuple[list[Path], list[str]]:
    """Image files and tar shards below `root` (hidden ones skipped), and notes on what was left out."""
    files, ignored = [], 0
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for fn in sorted(filenames):
            p = Path(dirpath, fn)
            if fn.startswith("."):
                continue
            if p.suffix.lower() in IMAGE_SUFFIXES or _is_tar(p):
                files.append(p)
            else:
                ignored += 1
    notes = [f"{root}: ignored {ignored:,} files that are neither images ({', '.join(sorted(IMAGE_SUFFIXES))}) "
             "nor tar shards"] if ignored else []
    return files, notes


def _table_records(src: Source, base: Path | None) -> Iterator[Record]:
    """Rows whose content is a path (read here, relative to `base`) or already the encoded bytes."""
    for r in src:
        if isinstance(r.content, str):
            path = Path(r.content).expanduser()
            path = path if path.is_absolute() or base is None else base / path
            meta = {**(r.meta or {}), "path": r.content}
            if not path.is_file():
                yield Record(r.key, None, r.label, meta, r.source, reason=r.reason or f"file not found: {path}")
            else:
                rec = _file_record(path, r.key, r.label, r.source, meta)
                rec.reason = r.reason or rec.reason
                yield rec
        else:
            yield r


def open_image_source(source: Any, opts: TableOptions, name: str | None = None) -> Source:
    """A Source of image Records (content = encoded bytes) from any supported input; see the module docstring."""
    if isinstance(source, Source):
        return source
    if isinstance(source, np.ndarray):
        return from_arrays(source, name=name or "arrays")
    if isinstance(source, (str, Path)):
        path = Path(source).expanduser()
        if not path.exists():
            raise InputError(f"no such file or directory: {path}")
        if path.is_dir():
            files, notes = _listed(path)
            total = None if any(_is_tar(p) for p in files) else len(files)
            return Source(path.name, _dir_records(path, files), total, notes)
        if _is_tar(path):
            return Source(path.name, _tar_records(path, "", path.name))
        if path.suffix.lower() in IMAGE_SUFFIXES:
            return Source(path.parent.name, iter([_file_record(path, path.name, None, path.parent.name)]), 1)
    if not opts.path_column:
        raise InputError(f"{name or source!r}: a table ingested with an image encoder needs --path-column (the "
                         "column of image file paths, or of encoded image bytes); folders, tar shards and "
                         "numpy arrays need none")
    src = open_rows(source, opts, name)
    base = Path(source).expanduser().resolve().parent if isinstance(source, (str, Path)) else None
    return Source(src.name, _table_records(src, base), src.total, src.notes)


def to_npy(image: np.ndarray) -> bytes:
    """One array image as .npy bytes: the content whose hash identifies it, and what the decoder reads."""
    buf = io.BytesIO()
    np.lib.format.write_array(buf, np.ascontiguousarray(image), allow_pickle=False)
    return buf.getvalue()


def from_arrays(images: np.ndarray | Sequence[np.ndarray], labels: Iterable | None = None, *, name: str = "arrays",
                keys: Sequence[str] | None = None) -> Source:
    """Images held in memory (e.g. Fashion-MNIST from read_idx) as a Source: keys `<name>:<i>` (from 1) unless
    given; labels optional. Pass it to `store.ingest(...)` with an image encoder."""
    n = len(images)
    labels = None if labels is None else [None if v is None else str(v) for v in labels]
    if labels is not None and len(labels) != n:
        raise InputError(f"from_arrays: {n:,} images but {len(labels):,} labels")
    if keys is not None and len(keys) != n:
        raise InputError(f"from_arrays: {n:,} images but {len(keys):,} keys")
    records = (Record(keys[i] if keys is not None else f"{name}:{i + 1}", to_npy(np.asarray(images[i])),
                      labels[i] if labels is not None else None, None, name) for i in range(n))
    return Source(name, records, n)


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


__all__ = ["Decoder", "DecodeError", "Preprocess", "decode_batch", "decode_image", "from_arrays",
           "open_image_source", "read_idx", "resized_size", "to_npy"]
