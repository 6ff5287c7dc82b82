"""What the torch transformer text encoders (`st:`, `hf:`) share: tokenising in the prefetch thread (with truncation
detection), running under inference mode and bf16 autocast where asked, and moving vectors back to the CPU.

Options: max_length, batch_size, device, dtype=auto|float32|bfloat16. Only options that change vectors enter
the fingerprint: device and dtype do not (they are recorded per vector; bf16 and fp32 agree to cosine >= 0.99,
see tests).
"""

from __future__ import annotations

from functools import cached_property
from typing import Any

import numpy as np

from embedstore.encoders.base import Embedded
from embedstore.encoders.text.base import TextEncoder
from embedstore.encoders.hf_model import HFModel


class TransformerTextEncoder(TextEncoder, HFModel):
    """Subclasses provide: tokenizer, max_length, _forward(features) -> torch.Tensor [n, dim]."""

    token_budget = 4 * 131_072  # lengths are characters, about 4 per token: ~131k padded tokens per CUDA batch
    tokenizer: Any

    @cached_property
    def batch_size(self) -> int:
        """Texts per forward pass unless ?batch_size= says: bf16 on CPU (AMX tiles) gains from larger matrices, 128
        texts ran 1.3x faster than 32 on SST-2 (512: slower again); float32 gains nothing from more than 32."""
        return 128 if self._dtype == "bfloat16" and self._device == "cpu" else 32

    def _tokenize(self, texts: list[str]) -> dict:
        return self.tokenizer(texts, padding=True, truncation=True, max_length=self.max_length,
                              return_tensors="pt")

    def prepare(self, texts: list[str]) -> tuple[dict, np.ndarray, np.ndarray]:
        feats = self._tokenize(texts)
        n_tok, truncated = self.count_tokens(self.tokenizer, texts, feats["attention_mask"].sum(1).numpy())
        if self._device.startswith("cuda"):
            feats = {k: (v.pin_memory() if hasattr(v, "pin_memory") else v) for k, v in feats.items()}
        return feats, n_tok, truncated

    def run(self, prepared: tuple[dict, np.ndarray, np.ndarray]) -> Embedded:
        import torch
        feats, n_tok, truncated = prepared
        feats = {k: (v.to(self._device, non_blocking=True) if hasattr(v, "to") else v) for k, v in feats.items()}
        with torch.inference_mode(), self.autocast():
            out = self._forward(feats)
        return Embedded(out.float().cpu().numpy(), n_tok, truncated)

    def _forward(self, feats: dict):
        raise NotImplementedError
