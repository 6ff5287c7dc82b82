"""What every text encoder (st:, hf:, onnx:, hashing:) shares."""

from __future__ import annotations

from typing import Any

import numpy as np

from embedstore.encoders.base import Encoder


EMPTY_TEXT = "empty or whitespace-only text"


class TextEncoder(Encoder):
    """What every text encoder shares: empty text is skipped, and batches sort by length in characters (about 4
    per token), capped where the model truncates (`max_length` tokens) since beyond it every text costs the same."""

    modality = "text"
    max_length: int = 0  # tokens; 0: no cap

    def skip_reason(self, content: str) -> str | None:
        return EMPTY_TEXT if not content or not content.strip() else None

    def length(self, content: str) -> int:
        return min(len(content), 4 * self.max_length) if self.max_length else len(content)

    def count_tokens(self, tokenizer: Any, texts: list[str], n_tok: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(tokens before truncation, truncated) per text, from the padded batch's token counts: only texts at the
        cap can have been cut, so only those are tokenised again, whole."""
        n_tok = np.asarray(n_tok, dtype=np.int64).copy()
        truncated = np.zeros(len(texts), dtype=bool)
        for i in np.flatnonzero(n_tok >= self.max_length):
            full = len(tokenizer(texts[i], truncation=False)["input_ids"])
            n_tok[i], truncated[i] = full, full > self.max_length
        return n_tok, truncated
