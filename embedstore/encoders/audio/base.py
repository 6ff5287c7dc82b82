"""What every speech encoder (whisper:, hf-audio:) shares: decoding in worker processes, windowing, and pooling.

A clip is decoded to mono float32 at the model's rate (media/audio.py, in the decoding workers while the model
runs the previous batch), cut into windows of `window_seconds`, and each window's frame states are summed over
the frames that hold audio (never a window's padding). An item's vector is the mean over all its valid frames,
across windows: a 2-minute file and its four 30 s windows give the frame-weighted mean of the windows. Windows
run through the model `batch_size` at a time, so an hour-long file needs the memory of one batch of windows,
not of the hour's states. The window length, pooling and rate are part of the fingerprint.

Options: batch_size (windows per forward pass), workers (decoding processes; 0 = in the prefetch thread),
max_seconds (longer files are skipped with the reason).
"""

from __future__ import annotations

from functools import cached_property
from typing import Any

import numpy as np

from embedstore.encoders.base import Embedded, Encoder
from embedstore.encoders.options import Option
from embedstore.hashing import content_hash
from embedstore.media.audio import DEFAULT_MAX_SECONDS, AudioJob
from embedstore.media.workers import Decoder

AUDIO_OPTIONS = (
    Option("workers", "int", None, low=0, high=256, help="decoding processes (0: decode in the prefetch thread)"),
    Option("max_seconds", "float", DEFAULT_MAX_SECONDS, low=0.001, help="longer files are skipped, with the reason"),
)


class AudioEncoder(Encoder):
    """Subclasses provide `sample_rate`, `window_seconds`, `dim`, `identity`, and `_window_states(windows)`."""

    modality = "audio"
    batch_size = 8  # windows per forward pass (option batch_size)
    first_chunk = 32  # a few seconds of work per transaction: a crash loses little
    sample_rate: int
    window_seconds: float

    def __init__(self, spec: str, name: str, options: dict[str, str], revision: str | None = None):
        super().__init__(spec, name, options, revision)
        self._failures: dict[str, str] = {}  # content hash -> why it could not be decoded

    def _window_states(self, windows: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """For windows of at most `window_seconds`: (sum of the states of the frames that hold audio [w, dim]
        float64, the number of those frames [w])."""
        raise NotImplementedError

    @property
    def pads_exactly(self) -> bool:
        """Whether padding a window to its batch's longest leaves its states unchanged (the model masks it). When
        not, windows run one at a time, so a vector never depends on the clips that shared its batch."""
        return True

    @cached_property
    def dim(self) -> int:
        """From one forward pass of 0.1 s of silence: what the pooled states really are."""
        return int(self._window_states([np.zeros(self.sample_rate // 10, np.float32)])[0].shape[1])

    def pooling_identity(self) -> dict:
        return {"sample_rate": self.sample_rate, "window_seconds": self.window_seconds,
                "pooling": "mean over frames holding audio, across windows"}

    def versions(self) -> dict:
        import soundfile
        import soxr
        return {**super().versions(), "soundfile": soundfile.__version__, "libsndfile":
                soundfile.__libsndfile_version__, "soxr": soxr.__version__}

    # -- per item ------------------------------------------------------------------------------------------------
    def skip_reason(self, content: Any) -> str | None:
        """Cheap checks before decoding, and afterwards why a decoded file failed (decoding runs in workers, so
        the reason is known only once its batch was decoded; the pipeline asks again then)."""
        if isinstance(content, str):
            return ("expected audio bytes, found text (audio is read from files, tar shards, --path-column or "
                    "from_waveforms)")
        if not content:
            return "empty file (0 bytes)"
        return self._failures.get(content_hash(content)) if self._failures else None

    def length(self, content: Any) -> int:
        return len(content) if isinstance(content, (bytes, bytearray)) else 0

    # -- the batch loop ------------------------------------------------------------------------------------------
    @cached_property
    def _decoder(self) -> Decoder:
        return Decoder(AudioJob(self.sample_rate, self.opts["max_seconds"]), self.opts["workers"])

    def prepare(self, contents: list[bytes]) -> list[np.ndarray | None]:
        waves, reasons = self._decoder(contents)
        for data, why in zip(contents, reasons):
            if why:
                self._failures[content_hash(data)] = why
        return waves

    def windows(self, wave: np.ndarray) -> list[np.ndarray]:
        step = int(round(self.window_seconds * self.sample_rate))
        return [wave[i:i + step] for i in range(0, len(wave), step)]

    def run(self, prepared: list[np.ndarray | None]) -> Embedded:
        vectors = np.full((len(prepared), self.dim), np.nan, dtype=np.float32)  # NaN rows: failed, never stored
        owners = [(i, w) for i, wave in enumerate(prepared) if wave is not None for w in self.windows(wave)]
        sums = np.zeros((len(prepared), self.dim))
        counts = np.zeros(len(prepared))
        step = self.batch_size if self.pads_exactly else 1
        for start in range(0, len(owners), step):
            part = owners[start:start + step]
            s, c = self._window_states([w for _, w in part])
            for (i, _), si, ci in zip(part, s, c):
                sums[i] += si
                counts[i] += ci
        ok = counts > 0
        vectors[ok] = (sums[ok] / counts[ok, None]).astype(np.float32)
        return Embedded(vectors)
