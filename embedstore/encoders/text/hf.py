"""`hf:<dir or hub id>[@revision]?pooling=mean|cls|max&normalize=true`: a Hugging Face encoder's last hidden layer,
pooled as declared."""

from __future__ import annotations

from functools import cached_property

from embedstore.encoders.options import Option, merge
from embedstore.encoders.text.transformer import TransformerTextEncoder


class HFTextEncoder(TransformerTextEncoder):
    scheme = "hf"
    OPTIONS = merge(TransformerTextEncoder.OPTIONS, (
        Option("pooling", "choice", "mean", ("mean", "cls", "max"), fingerprint=True,
               help="mean over real tokens, the first token, or the maximum"),
        Option("normalize", "bool", True, fingerprint=True, help="L2-normalise the pooled vector")))

    @property
    def pooling(self) -> str:
        return self.opts["pooling"]

    @property
    def normalize(self) -> bool:
        return self.opts["normalize"]

    @property
    def unit_norm(self) -> bool:
        return self.normalize

    @cached_property
    def _loaded(self):
        import torch
        from transformers import AutoModel, AutoTokenizer
        from transformers.utils import logging as hf_logging
        hf_logging.disable_progress_bar()
        tok = AutoTokenizer.from_pretrained(self.model_dir, local_files_only=True)
        model = AutoModel.from_pretrained(self.model_dir, local_files_only=True,
                                          dtype=torch.bfloat16 if self._dtype == "bfloat16" and
                                          self._device.startswith("cuda") else torch.float32)
        return tok, model.to(self._device).eval()

    @property
    def tokenizer(self):
        return self._loaded[0]

    @cached_property
    def max_length(self) -> int:
        """Option, else min(tokenizer limit, position embeddings, 512), read from the config files."""
        if self.opts["max_length"]:
            return self.opts["max_length"]
        limit = self.config_file("config.json").get("max_position_embeddings", 512)
        tok_limit = self.config_file("tokenizer_config.json").get("model_max_length", limit)
        return int(min(tok_limit if isinstance(tok_limit, int) else limit, limit, 512))

    @property
    def dim(self) -> int:
        return int(self._loaded[1].config.hidden_size)

    def identity(self) -> dict:
        return {"files": self._weights_hash, "max_length": self.max_length, "pooling": self.pooling,
                "normalize": self.normalize}

    def _forward(self, feats: dict):
        import torch
        model = self._loaded[1]
        hidden = model(**{k: v for k, v in feats.items() if k in ("input_ids", "attention_mask",
                                                                     "token_type_ids")}).last_hidden_state
        mask = feats["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        if self.pooling == "cls":
            pooled = hidden[:, 0]
        elif self.pooling == "max":
            pooled = hidden.masked_fill(mask == 0, float("-inf")).max(1).values
        else:
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)
        pooled = pooled.float()
        return torch.nn.functional.normalize(pooled, dim=-1) if self.normalize else pooled
