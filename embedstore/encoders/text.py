"""Transformer text encoders: `st:<name or dir>` (sentence-transformers pipelines, their own pooling and
normalisation) and `hf:<name or dir>[@revision]` (a Hugging Face encoder with declared pooling).

Options (spec `?key=value&...`): max_length, normalize (hf), pooling=mean|cls|max (hf), batch_size,
device, dtype=auto|float32|bfloat16. Only options that change vectors enter the fingerprint: device and dtype
do not (they are recorded per vector; bf16 and fp32 agree to cosine >= 0.99, see tests).
"""

from __future__ import annotations

import json
import os
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from embedstore import config
from embedstore.encoders.base import (DTYPES, Embedded, Encoder, check_options, choice, hash_files,
                                      resolve_dtype)
from embedstore.errors import EncoderUnavailableError, InputError

# Files a torch load never reads: left out of the weights hash so that they cannot change the fingerprint.
_UNUSED = ("README.md", "onnx/", "openvino/", "tf_model", "flax_model", "rust_model", "model.h5",
           "data_config.json", "train_script.py")


def _unused(rel: str) -> bool:
    return rel.startswith(_UNUSED) or rel.endswith((".msgpack", ".h5", ".ot"))


def resolve_model_dir(spec: str, name: str, revision: str | None) -> Path:
    """A local directory as given, else the Hugging Face cache (no network), else a clear offline error."""
    path = Path(name).expanduser()
    if path.is_dir():
        return path.resolve()
    if path.suffix or name.startswith((".", "/", "~")):
        raise EncoderUnavailableError(f"encoder {spec!r}: no model directory at {path}")
    from huggingface_hub import snapshot_download
    try:
        return Path(snapshot_download(name, revision=revision, local_files_only=True))
    except Exception:
        pass
    if os.environ.get("HF_HUB_OFFLINE") not in (None, "", "0"):
        reason = "HF_HUB_OFFLINE is set"
    else:
        try:
            return Path(snapshot_download(name, revision=revision))
        except Exception as e:  # network errors come in many types
            reason = f"the download failed: {type(e).__name__}: {str(e).splitlines()[0][:200]}"
    raise EncoderUnavailableError(
        f"encoder {spec!r}: {name!r} is not a local directory and not in the Hugging Face cache, and {reason}. "
        f"Download the model elsewhere and pass its directory (e.g. st:/models/{name.split('/')[-1]}), or use "
        "an installed alias (`embedstore encoders` lists them)")


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _torch_device(option: str | None) -> str:
    want = option or config.setting("device")
    if want == "auto":
        import torch
        return "cuda" if torch.cuda.is_available() else "cpu"
    return want


class TransformerTextEncoder(Encoder):
    """Shared by st: and hf:: tokenise in the prefetch thread, run under inference mode, pool, move to CPU."""

    modality = "text"
    _OPTIONS = {"max_length", "batch_size", "device", "dtype"}
    token_budget = 4 * 131_072  # lengths are characters, about 4 per token: ~131k padded tokens per CUDA batch

    def length(self, content: str) -> int:
        return min(len(content), 4 * self.max_length)  # beyond the cap every text costs the same

    def __init__(self, spec: str, name: str, options: dict[str, str], revision: str | None = None):
        super().__init__(spec, name, options)
        check_options(spec, self.scheme, options, self._OPTIONS)
        self.revision = revision
        self.batch_size = int(options.get("batch_size", 32))
        self._want_dtype = choice(spec, options, "dtype", DTYPES)

    @cached_property
    def model_dir(self) -> Path:
        return resolve_model_dir(self.spec, self.name, self.revision)

    @cached_property
    def _weights_hash(self) -> dict[str, str]:
        return hash_files(self.model_dir, _unused)

    @cached_property
    def _device(self) -> str:
        return _torch_device(self.options.get("device"))  # imports torch: only when the model is needed

    @cached_property
    def _dtype(self) -> str:
        return resolve_dtype(self._want_dtype, self._device)

    @property
    def device(self) -> str:
        return self._device

    @property
    def dtype(self) -> str:
        return self._dtype

    def versions(self) -> dict:
        import tokenizers
        import torch
        import transformers
        return {**super().versions(), "torch": torch.__version__, "transformers": transformers.__version__,
                "tokenizers": tokenizers.__version__}

    def skip_reason(self, content: str) -> str | None:
        return "empty or whitespace-only text" if not content or not content.strip() else None

    # subclasses provide: tokenizer, max_length, _forward(features) -> torch.Tensor [n, dim]
    tokenizer: Any

    def _tokenize(self, texts: list[str]) -> dict:
        return self.tokenizer(texts, padding=True, truncation=True, max_length=self.max_length,
                              return_tensors="pt")

    def prepare(self, texts: list[str]) -> tuple[dict, np.ndarray, np.ndarray]:
        feats = self._tokenize(texts)
        n_tok = feats["attention_mask"].sum(1).numpy().astype(np.int64)
        truncated = np.zeros(len(texts), dtype=bool)
        for i in np.flatnonzero(n_tok >= self.max_length):  # only inputs at the cap can have been cut
            full = len(self.tokenizer(texts[i], truncation=False)["input_ids"])
            n_tok[i], truncated[i] = full, full > self.max_length
        if self._device.startswith("cuda"):
            feats = {k: (v.pin_memory() if hasattr(v, "pin_memory") else v) for k, v in feats.items()}
        return feats, n_tok, truncated

    def run(self, prepared: tuple[dict, np.ndarray, np.ndarray]) -> Embedded:
        import torch
        feats, n_tok, truncated = prepared
        feats = {k: (v.to(self._device, non_blocking=True) if hasattr(v, "to") else v) for k, v in feats.items()}
        autocast = torch.autocast(self._device.split(":")[0], dtype=torch.bfloat16,
                                  enabled=self._dtype == "bfloat16")
        with torch.inference_mode(), autocast:
            out = self._forward(feats)
        return Embedded(out.float().cpu().numpy(), n_tok, truncated)

    def _forward(self, feats: dict):
        raise NotImplementedError


class SentenceTransformerEncoder(TransformerTextEncoder):
    scheme = "st"

    @cached_property
    def _model(self):
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "true")
        from sentence_transformers import SentenceTransformer
        from transformers.utils import logging as hf_logging
        hf_logging.disable_progress_bar()
        model = SentenceTransformer(str(self.model_dir), device=self._device, local_files_only=True)
        if "max_length" in self.options:
            model.max_seq_length = int(self.options["max_length"])
        model.eval()
        return model

    @property
    def tokenizer(self):
        return self._model.tokenizer

    @cached_property
    def max_length(self) -> int:
        """From the options or the model's config files, so that the fingerprint needs no torch import."""
        if "max_length" in self.options:
            return int(self.options["max_length"])
        if "_model" not in self.__dict__:
            cfg = _read_json(self.model_dir / "sentence_bert_config.json")
            if isinstance(cfg.get("max_seq_length"), int):
                return cfg["max_seq_length"]
        return int(self._model.max_seq_length)

    @property
    def dim(self) -> int:
        m = self._model
        get = getattr(m, "get_embedding_dimension", None) or m.get_sentence_embedding_dimension
        return int(get())

    def identity(self) -> dict:
        return {"files": self._weights_hash, "max_length": self.max_length}

    def _tokenize(self, texts: list[str]) -> dict:
        m = self._model
        return (m.preprocess if hasattr(m, "preprocess") else m.tokenize)(texts)

    def _forward(self, feats: dict):
        return self._model(feats)["sentence_embedding"]


class HFTextEncoder(TransformerTextEncoder):
    scheme = "hf"
    _OPTIONS = TransformerTextEncoder._OPTIONS | {"pooling", "normalize"}

    def __init__(self, spec: str, name: str, options: dict[str, str], revision: str | None = None):
        super().__init__(spec, name, options, revision)
        self.pooling = options.get("pooling", "mean")
        if self.pooling not in ("mean", "cls", "max"):
            raise InputError(f"encoder {spec!r}: pooling must be mean, cls or max, not {self.pooling!r}")
        self.normalize = options.get("normalize", "true").lower() in ("1", "true", "yes")

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
        if "max_length" in self.options:
            return int(self.options["max_length"])
        limit = _read_json(self.model_dir / "config.json").get("max_position_embeddings", 512)
        tok_limit = _read_json(self.model_dir / "tokenizer_config.json").get("model_max_length", limit)
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
