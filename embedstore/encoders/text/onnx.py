"""`onnx:<model.onnx>?tokenizer=<dir>`: a transformer text encoder exported to ONNX, run with onnxruntime.

The ONNX graph takes input_ids and attention_mask; its token embeddings (the first float output of shape
[batch, tokens, dim], or `?output=<name>`) are pooled here as declared (`pooling=mean|cls`, `normalize`), so the
same file gives the same vectors as the sentence-transformers pipeline it was exported from.
"""

from __future__ import annotations

import os
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from embedstore.encoders.base import Embedded, hash_files
from embedstore.encoders.text.base import TextEncoder
from embedstore.encoders.device import BATCH_SIZE
from embedstore.encoders.options import Option
from embedstore.errors import EncoderUnavailableError
from embedstore.fsutil import sha256_file


class ONNXTextEncoder(TextEncoder):
    scheme = "onnx"
    OPTIONS = (
        Option("tokenizer", "str", help="directory with tokenizer.json or vocab.txt (default: beside the file)"),
        Option("pooling", "choice", "mean", ("mean", "cls"), fingerprint=True),
        Option("normalize", "bool", False, fingerprint=True, help="L2-normalise the pooled vector"),
        Option("max_length", "int", 128, low=1, high=1_000_000, fingerprint=True, help="tokens per text"),
        Option("output", "str", fingerprint=True, help="the graph output holding token embeddings"),
        BATCH_SIZE)

    def __init__(self, spec: str, name: str, options: dict[str, str], revision: str | None = None):
        super().__init__(spec, name, options, revision)
        self.path = Path(name).expanduser()
        if not self.path.is_file():
            raise EncoderUnavailableError(f"encoder {spec!r}: no ONNX file at {self.path}")
        self.tokenizer_dir = Path(self.opts["tokenizer"] or self.path.parent).expanduser()
        if not (self.tokenizer_dir / "tokenizer.json").exists() and not (self.tokenizer_dir / "vocab.txt").exists():
            raise EncoderUnavailableError(f"encoder {spec!r}: no tokenizer files in {self.tokenizer_dir}; pass "
                                          "?tokenizer=<directory with tokenizer.json or vocab.txt>")
        self.pooling = self.opts["pooling"]
        self.normalize = self.opts["normalize"]
        self.max_length = self.opts["max_length"]

    @cached_property
    def _session(self):
        try:
            import onnxruntime as ort
        except ImportError:
            raise EncoderUnavailableError("onnx: encoders need onnxruntime: pip install onnxruntime") from None
        so = ort.SessionOptions()
        so.intra_op_num_threads = os.cpu_count() or 1
        return ort.InferenceSession(str(self.path), so, providers=["CPUExecutionProvider"])

    @cached_property
    def _output(self) -> str:
        outs = self._session.get_outputs()
        if self.opts["output"]:
            return self.opts["output"]
        for o in outs:
            if len(o.shape) == 3 and "float" in o.type:
                return o.name
        raise EncoderUnavailableError(f"encoder {self.spec!r}: no [batch, tokens, dim] float output among "
                                      f"{[(o.name, o.shape) for o in outs]}; pass ?output=<name>")

    @cached_property
    def tokenizer(self) -> Any:
        from transformers import AutoTokenizer
        return AutoTokenizer.from_pretrained(str(self.tokenizer_dir), local_files_only=True)

    @cached_property
    def dim(self) -> int:
        """From the graph when its output width is static, else by running one probe input."""
        out = next(o for o in self._session.get_outputs() if o.name == self._output)
        if isinstance(out.shape[-1], int):
            return out.shape[-1]
        return int(self.run(self.prepare(["dimension probe"])).vectors.shape[1])

    @property
    def unit_norm(self) -> bool:
        return self.normalize

    def identity(self) -> dict:
        tok_files = hash_files(self.tokenizer_dir, lambda rel: not rel.startswith(("tokenizer", "vocab",
                                                                                  "special_tokens")))
        return {"onnx": sha256_file(self.path), "tokenizer": tok_files, "pooling": self.pooling,
                "normalize": self.normalize, "max_length": self.max_length, "output": self._output}

    def versions(self) -> dict:
        import onnxruntime
        return {**super().versions(), "onnxruntime": onnxruntime.__version__}

    def prepare(self, texts: list[str]) -> tuple[dict, np.ndarray, np.ndarray]:
        f = self.tokenizer(texts, padding=True, truncation=True, max_length=self.max_length, return_tensors="np")
        n_tok, truncated = self.count_tokens(self.tokenizer, texts, f["attention_mask"].sum(1))
        feeds = {"input_ids": f["input_ids"].astype(np.int64), "attention_mask": f["attention_mask"].astype(np.int64)}
        return feeds, n_tok, truncated

    def run(self, prepared: tuple[dict, np.ndarray, np.ndarray]) -> Embedded:
        feeds, n_tok, truncated = prepared
        names = {i.name for i in self._session.get_inputs()}
        hidden = self._session.run([self._output], {k: v for k, v in feeds.items() if k in names})[0]
        if self.pooling == "cls":
            pooled = hidden[:, 0]
        else:
            mask = feeds["attention_mask"][..., None].astype(np.float32)
            pooled = (hidden * mask).sum(1) / np.maximum(mask.sum(1), 1)
        if self.normalize:
            pooled = pooled / np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12)
        return Embedded(pooled.astype(np.float32), n_tok, truncated)
