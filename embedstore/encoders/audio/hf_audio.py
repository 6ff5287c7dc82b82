"""`hf-audio:<model directory or hub id>`: a transformers speech encoder (wav2vec2, HuBERT, WavLM, Whisper...), its
frame states averaged over the frames that hold audio.

The feature extractor comes from the model directory (preprocessor_config.json: sample rate, normalisation,
whether the model takes an attention mask). Windows of one batch are padded together; models trained with an
attention mask get it, the others get zero padding as their feature extractor prescribes, and in both cases
padding frames are left out of the mean (their count from the model's own convolution arithmetic,
`_get_feat_extract_output_lengths`); models without a mask run their windows one at a time, so that no vector
depends on the clips that shared its batch. Whisper checkpoints run their encoder alone on 30 s windows of log-mel
features (2 mel frames per state). `?layer=-k` takes an earlier hidden state (-1, the last, is the default);
`?window=<seconds>` cuts long files (default 30; Whisper's is fixed at 30).
"""

from __future__ import annotations

import math
from functools import cached_property
from typing import Any

import numpy as np

from embedstore.encoders.audio.base import AUDIO_OPTIONS, AudioEncoder
from embedstore.encoders.device import TorchEncoder
from embedstore.encoders.hf_model import LAYER, HFModel, hidden_layer
from embedstore.encoders.options import Option, merge
from embedstore.errors import EncoderUnavailableError

WHISPER_HOP = 160


class HFAudioEncoder(AudioEncoder, HFModel):
    scheme = "hf-audio"
    OPTIONS = merge(TorchEncoder.OPTIONS, (
        Option("window", "float", 30.0, low=0.1, high=3600, fingerprint=True,
               help="seconds per window; long files are cut and their windows' frames averaged"),
        LAYER,
        *AUDIO_OPTIONS))

    @cached_property
    def _loaded(self) -> tuple[Any, Any]:
        import torch
        from transformers import AutoConfig, AutoFeatureExtractor, AutoModel
        from transformers.utils import logging as hf_logging
        hf_logging.disable_progress_bar()
        try:
            fe = AutoFeatureExtractor.from_pretrained(self.model_dir, local_files_only=True)
        except (OSError, ValueError) as e:
            raise EncoderUnavailableError(f"encoder {self.spec!r}: no speech feature extractor in {self.model_dir} "
                                          f"(preprocessor_config.json): {e}") from None
        config = AutoConfig.from_pretrained(self.model_dir, local_files_only=True)
        dtype = torch.bfloat16 if self._dtype == "bfloat16" and self._device.startswith("cuda") else torch.float32
        model = AutoModel.from_pretrained(self.model_dir, local_files_only=True, dtype=dtype)
        if config.model_type == "whisper":
            model = model.get_encoder()
        elif not hasattr(model, "_get_feat_extract_output_lengths"):
            raise EncoderUnavailableError(
                f"encoder {self.spec!r}: {config.model_type} is not a speech encoder hf-audio can pool; supported: "
                "wav2vec2, HuBERT, WavLM, data2vec-audio, UniSpeech (any model with a convolutional feature "
                "encoder) and Whisper")
        return fe, model.to(self._device).eval()

    @property
    def _whisper(self) -> bool:
        return self._loaded[1].config.model_type == "whisper"

    @property
    def sample_rate(self) -> int:  # type: ignore[override]
        return int(self._loaded[0].sampling_rate)

    @property
    def window_seconds(self) -> float:  # type: ignore[override]
        fe = self._loaded[0]
        return float(fe.chunk_length) if self._whisper else self.opts["window"]

    @property
    def pads_exactly(self) -> bool:
        """Whisper windows are all 30 s; wav2vec2-style models are exact only with an attention mask (those
        trained without one, like wav2vec2-base, take zero padding that still shifts the real frames' states)."""
        return self._whisper or bool(getattr(self._loaded[0], "return_attention_mask", False))

    def identity(self) -> dict:
        return {"files": self._weights_hash, "layer": self.opts["layer"], **self.pooling_identity()}

    def _frames(self, lengths: list[int], n_states: int) -> np.ndarray:
        """States per window that hold audio (at least 1)."""
        import torch
        if self._whisper:
            got = [math.ceil(n / (2 * WHISPER_HOP)) for n in lengths]
        else:
            got = self._loaded[1]._get_feat_extract_output_lengths(torch.tensor(lengths)).tolist()
        return np.clip(np.array(got, dtype=np.int64), 1, n_states)

    def _window_states(self, windows: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        import torch
        fe, model = self._loaded
        min_len = 400 if not self._whisper else 1  # the convolutional front end's receptive field (25 ms)
        windows = [w if len(w) >= min_len else np.pad(w, (0, min_len - len(w))) for w in windows]
        if self._whisper:
            feats = fe(windows, sampling_rate=self.sample_rate, return_tensors="pt")
            inputs = {"input_features": feats["input_features"]}
        else:
            feats = fe(windows, sampling_rate=self.sample_rate, padding=True, return_tensors="pt",
                       return_attention_mask=True)
            inputs = {"input_values": feats["input_values"]}
            if getattr(fe, "return_attention_mask", False):
                inputs["attention_mask"] = feats["attention_mask"]
        inputs = {k: v.to(self._device) for k, v in inputs.items()}
        key = "input_features" if self._whisper else "input_values"
        inputs[key] = inputs[key].to(next(model.parameters()).dtype)
        with torch.inference_mode(), self.autocast():
            out = model(**inputs, output_hidden_states=True)
        states = hidden_layer(out, self.opts["layer"], self.spec).float()
        frames = self._frames([len(w) for w in windows], states.shape[1])
        mask = torch.arange(states.shape[1], device=states.device)[None, :] < torch.as_tensor(
            frames, device=states.device)[:, None]
        sums = (states * mask[..., None]).sum(1).double().cpu().numpy()
        return sums, frames
