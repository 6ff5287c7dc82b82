"""`st:<dir or cached hub id>[@revision]`: a sentence-transformers pipeline, with its own pooling and normalisation."""

from __future__ import annotations

import json
import os
from functools import cached_property

from embedstore.encoders.text.transformer import TransformerTextEncoder


class SentenceTransformerEncoder(TransformerTextEncoder):
    """dtype=auto is bf16 on an AMX CPU: all-MiniLM-L6-v2 on SST-2 agrees with float32 to cosine >= 0.9999 per
    sentence at about twice the speed (benchmarks/bench_sst2.py; tests/test_encoders.py); dtype=float32 opts out."""

    scheme = "st"
    cpu_bf16 = True

    @cached_property
    def _model(self):
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "true")
        from sentence_transformers import SentenceTransformer
        from transformers.utils import logging as hf_logging
        hf_logging.disable_progress_bar()
        model = SentenceTransformer(str(self.model_dir), device=self._device, local_files_only=True)
        if self.opts["max_length"]:
            model.max_seq_length = self.opts["max_length"]
        model.eval()
        return model

    @property
    def tokenizer(self):
        return self._model.tokenizer

    @cached_property
    def max_length(self) -> int:
        """From the options or the model's config files, so that the fingerprint needs no torch import."""
        if self.opts["max_length"]:
            return self.opts["max_length"]
        if "_model" not in self.__dict__:
            cfg = self.config_file("sentence_bert_config.json")
            if isinstance(cfg.get("max_seq_length"), int):
                return cfg["max_seq_length"]
        return int(self._model.max_seq_length)

    @property
    def dim(self) -> int:
        m = self._model
        get = getattr(m, "get_embedding_dimension", None) or m.get_sentence_embedding_dimension
        return int(get())

    @cached_property
    def unit_norm(self) -> bool:
        """The pipeline ends in a Normalize module (from modules.json, which the loaded model was built from)."""
        try:  # a list, which read_json (objects only) would not return
            modules = json.loads((self.model_dir / "modules.json").read_text())
        except (OSError, ValueError):
            return False
        return isinstance(modules, list) and any(str(m.get("type", "")).endswith(".Normalize") for m in modules
                                                 if isinstance(m, dict))

    def identity(self) -> dict:
        return {"files": self._weights_hash, "max_length": self.max_length}

    def _tokenize(self, texts: list[str]) -> dict:
        m = self._model
        return (m.preprocess if hasattr(m, "preprocess") else m.tokenize)(texts)

    def _forward(self, feats: dict):
        return self._model(feats)["sentence_embedding"]
