"""Audio decoding: the raw bytes of one file -> mono float32 samples at the model's rate. Used by audio sources
(header facts for the item's metadata), audio encoders and the decoding workers (media/workers.py) alike.

Decoder: soundfile (libsndfile: WAV incl. 24-bit and 32/64-bit float, FLAC, OGG/Vorbis, Opus, MP3, AIFF, AU),
chosen over torchaudio because its wheels bundle libsndfile and do not depend on the installed torch's exact
version (torchaudio wheels are built for one torch release). Resampler: soxr (the SoX resampler, high quality,
streaming), never nearest-sample picking. Channels are averaged to mono (librosa's `to_mono` rule, also for 5.1).

The file is read in blocks of BLOCK_SECONDS, each downmixed and resampled as a stream, so memory holds the
encoded bytes and the mono result at the model's rate (an hour at 16 kHz: 230 MB), never the full-rate
multichannel float64 array. Outcomes that are skipped with a reason (never a NaN vector): not audio, zero
length, truncated, NaN/inf samples, longer than `max_seconds`, and digital silence (every sample below one
16-bit step, 1/32768: a recording with nothing in it, which would otherwise embed as a vector of the model's
bias, matching every other silent file).
"""

from __future__ import annotations

import io
import math
import re
import struct
from dataclasses import dataclass
from typing import Sequence

import numpy as np

AUDIO_SUFFIXES = frozenset({".wav", ".wave", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".aif", ".aiff", ".au",
                            ".snd"})
BLOCK_SECONDS = 1   # a cut or corrupt stream is reported to the second
DEFAULT_MAX_SECONDS = 4 * 3600.0
SILENCE = 1 / 32768


class AudioDecodeError(ValueError):
    """Why one file cannot be used; the message is recorded as the item's skip reason."""


def audio_info(data: bytes) -> dict | None:
    """The header facts recorded in an item's metadata (sample rate, channels, duration, format), or None when the
    bytes are not readable audio (the encoder then records why)."""
    import soundfile as sf
    try:
        info = sf.info(io.BytesIO(data))
    except Exception:  # noqa: BLE001 - libsndfile raises several types on non-audio bytes
        return None
    return {"sample_rate": int(info.samplerate), "channels": int(info.channels),
            "duration": round(float(info.duration), 4), "format": info.format, "subtype": info.subtype}


def _wav_shortfall(data: bytes) -> int:
    """Bytes a RIFF/WAVE file's data chunk declares beyond the end of the file (0 when whole, or not a WAV).
    libsndfile reads a cut WAV without complaint, so a truncated download would embed as a shorter clip."""
    if len(data) < 12 or data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        return 0
    at = 12
    while at + 8 <= len(data):
        cid, size = data[at:at + 4], struct.unpack("<I", data[at + 4:at + 8])[0]
        if cid == b"data":
            return max(0, at + 8 + size - len(data)) if size != 0xFFFFFFFF else 0
        at += 8 + size + (size & 1)
    return 0


def decode_audio(data: bytes, rate: int, max_seconds: float = DEFAULT_MAX_SECONDS) -> np.ndarray:
    """One file's bytes -> float32 mono samples at `rate`; raises AudioDecodeError with the reason."""
    import soundfile as sf
    import soxr
    if not data:
        raise AudioDecodeError("empty file (0 bytes)")
    if short := _wav_shortfall(data):
        raise AudioDecodeError(f"truncated WAV: its header declares {short:,} more bytes of samples than the file "
                               "holds (an interrupted copy or download)")
    try:
        f = sf.SoundFile(io.BytesIO(data))
    except Exception as e:  # noqa: BLE001 - libsndfile's error types vary by version
        detail = re.sub(r"^Error opening <[^>]*>: ", "", str(e).strip()) or type(e).__name__
        raise AudioDecodeError(f"not a readable audio file ({detail})") from None
    with f:
        sr, frames = int(f.samplerate), int(f.frames)
        if frames <= 0:
            raise AudioDecodeError("zero-length audio (the file holds no samples)")
        if frames / sr > max_seconds:
            raise AudioDecodeError(f"{frames / sr:,.0f} s of audio is over the limit of {max_seconds:,.0f} s "
                                   "(option max_seconds)")
        stream = soxr.ResampleStream(sr, rate, 1, dtype="float32", quality="HQ") if sr != rate else None
        out = np.empty(math.ceil(frames * rate / sr) + 64, np.float32)  # filled in place: no second copy
        at, peak, mixed_peak, read = 0, 0.0, 0.0, 0

        def put(x: np.ndarray) -> None:
            nonlocal out, at
            if at + len(x) > len(out):
                out = np.concatenate([out[:at], np.empty(len(x) + 64, np.float32)])
            out[at:at + len(x)] = x
            at += len(x)
        try:
            for block in f.blocks(blocksize=sr * BLOCK_SECONDS, dtype="float32", always_2d=True):
                if not np.isfinite(block).all():
                    bad = read + int(np.flatnonzero(~np.isfinite(block).all(axis=1))[0])
                    raise AudioDecodeError(f"NaN or infinite sample values (first at {bad / sr:.3f} s)")
                read += len(block)
                mono = block.mean(axis=1, dtype=np.float32) if block.shape[1] > 1 else block[:, 0]
                peak = max(peak, float(np.abs(block).max(initial=0.0)))
                mixed_peak = max(mixed_peak, float(np.abs(mono).max(initial=0.0)))
                put(stream.resample_chunk(mono) if stream else mono)
            if stream:
                put(stream.resample_chunk(np.zeros(0, np.float32), last=True))
        except AudioDecodeError:
            raise
        except Exception as e:  # noqa: BLE001 - a decode error mid-file (cut FLAC/MP3 frames)
            raise AudioDecodeError(f"the audio stream is corrupt or truncated after {read / sr:.2f} s "
                                   f"({str(e).strip() or type(e).__name__})") from None
    if read < frames * 0.99:
        raise AudioDecodeError(f"truncated: the header declares {frames / sr:.2f} s, the file holds "
                               f"{read / sr:.2f} s")
    if peak < SILENCE:
        raise AudioDecodeError("silent: every sample is below one 16-bit step (digital silence, nothing to embed)")
    if mixed_peak < SILENCE:
        raise AudioDecodeError(f"the {f.channels} channels cancel out when mixed to mono (anti-phase): nothing is "
                               "left to embed; fix the channel polarity or pass one channel")
    if at == 0:
        raise AudioDecodeError(f"too short: {frames} sample(s) at {sr:,} Hz give no sample at the model's "
                               f"{rate:,} Hz")
    return out[:at]


@dataclass(frozen=True)
class AudioJob:
    """What a decoding worker does with a batch of audio files (media/workers.py): decode at `rate`."""

    rate: int
    max_seconds: float = DEFAULT_MAX_SECONDS
    noun = "audio"

    def allocate(self, n: int) -> list:
        return [None] * n

    def run(self, items: Sequence[bytes]) -> tuple[list, list[str | None]]:
        out: list = [None] * len(items)
        reasons: list[str | None] = [None] * len(items)
        for i, data in enumerate(items):
            try:
                out[i] = decode_audio(data, self.rate, self.max_seconds)
            except AudioDecodeError as e:
                reasons[i] = str(e)
            except Exception as e:  # noqa: BLE001 - any failure on one file must only skip that file
                reasons[i] = f"cannot decode audio ({type(e).__name__}: {e})"
        return out, reasons


def to_wav(samples: np.ndarray, rate: int) -> bytes:
    """Samples held in memory (from_waveforms) as the bytes of a 32-bit float WAV: one content format for every
    audio item, hashed and decoded like a file. [n] is mono, [n, channels] multichannel. Floats are taken as they
    are (full scale = 1.0); int8/int16/int32 and uint8 arrays are PCM, scaled by their type's range as soundfile
    reads such files, so a clip gives one vector whichever type holds it."""
    import soundfile as sf
    a = np.asarray(samples)
    if a.ndim not in (1, 2) or a.size == 0:
        raise AudioDecodeError(f"expected a non-empty array [samples] or [samples, channels], found shape {a.shape}")
    if a.ndim == 2 and a.shape[1] > 64 and a.shape[0] < a.shape[1]:
        raise AudioDecodeError(f"shape {a.shape} reads as {a.shape[1]:,} channels of {a.shape[0]} samples: clips "
                               "are [samples, channels]; pass the transposed array (x.T)")
    if a.dtype.kind in "iu":
        if a.dtype.itemsize > 4 or a.dtype.kind == "u" and a.dtype.itemsize > 1:
            raise AudioDecodeError(f"{a.dtype} samples have no PCM scale: pass float samples in [-1, 1] or "
                                   "int16/int32/uint8 PCM")
        info = np.iinfo(a.dtype)
        a = (a.astype(np.float64) - (128 if a.dtype.kind == "u" else 0)) / (-float(info.min) if info.min else 128)
    elif a.dtype.kind != "f":
        raise AudioDecodeError(f"expected float or integer PCM samples, found {a.dtype}")
    buf = io.BytesIO()
    sf.write(buf, a.astype(np.float32, copy=False), int(rate), format="WAV", subtype="FLOAT")
    return buf.getvalue()
