"""Decoding (images, audio) in worker processes: fresh interpreters fed batches over a private pipe, so decoding
overlaps the model and a native decoder that crashes on one file loses only that file."""

from __future__ import annotations

import os
import pickle
import struct
import subprocess
import sys
import threading
import weakref
from pathlib import Path
from typing import Any, Protocol, Sequence

import numpy as np


class DecodeJob(Protocol):
    """What decoding is (media/images.py ImageJob, media/audio.py AudioJob); pickled to the workers."""

    noun: str

    def allocate(self, n: int) -> Any: ...

    def run(self, items: Sequence[bytes]) -> tuple[Any, list[str | None]]: ...


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
    """A decoding worker: read (job, items), write job.run(items) = (outputs, reasons), until stdin closes."""
    _init_worker()
    replies = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # anything printed goes to stderr, never into the replies
    while (request := _receive(sys.stdin.buffer)) is not None:
        job, items = request
        _send(replies, job.run(items))


class _Worker:
    """One decoding process: a fresh interpreter (not a fork, and not a re-import of the caller's script),
    started with close_fds, so it holds no DuckDB connection, lock, thread or CUDA context of the parent."""

    def __init__(self) -> None:
        root = str(Path(__file__).resolve().parents[2])
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))}
        self.proc = subprocess.Popen([sys.executable, "-c", "from embedstore.media.workers import serve; serve()"],
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
    so that only the file that kills a decoder is skipped, with that reason.

    The job says what decoding is: `run(items)` -> (outputs, reasons) in a worker, `allocate(n)` the container of
    n outputs (a uint8 array for images, a list for audio)."""

    def __init__(self, job: DecodeJob, workers: int | None = None):
        self.job = job
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

    def __call__(self, items: Sequence[bytes]) -> tuple[Any, list[str | None]]:
        if self.workers <= 0 or len(items) < 2:
            return self.job.run(items)
        parts = [list(idx) for idx in np.array_split(np.arange(len(items)), min(self.workers, len(items)))]
        outputs = self.job.allocate(len(items))
        reasons: list[str | None] = [None] * len(items)
        with self._lock:
            for w, idx in enumerate(parts):  # all workers decode at once; replies are read in turn
                self._worker(w).send((self.job, [items[i] for i in idx]))
            lost = []
            for w, idx in enumerate(parts):
                reply = self._procs[w].receive()
                if reply is None:
                    self._procs[w].stop()  # reaped, so that _worker() replaces it
                    lost += idx
                    continue
                for i, out, why in zip(idx, *reply):
                    outputs[i], reasons[i] = out, why
            for i in lost:
                worker = self._worker(0)
                worker.send((self.job, [items[i]]))
                reply = worker.receive()
                if reply is None:
                    worker.stop()
                    reasons[i] = (f"the {self.job.noun} decoder crashed on this file (worker exit code "
                                  f"{worker.proc.returncode})")
                else:
                    outputs[i], reasons[i] = reply[0][0], reply[1][0]
        return outputs, reasons

    def close(self) -> None:
        """Stop the workers now (they also stop when the Decoder is garbage-collected or Python exits)."""
        self._finalizer()
