"""`st:<dir or cached hub id>[@revision]`: a sentence-transformers pipeline, with its own pooling and normalisation.

Where it runs on CPU (`runtime=auto`): bf16 autocast in torch on an AMX CPU (about twice float32 there); elsewhere
the whole pipeline as a float32 ONNX Runtime graph, exported once to the model cache (all-MiniLM-L6-v2 on an AVX2
CPU: about 1.2x torch, the same vectors to cosine >= 0.9999, so the same fingerprint; benchmarks/README.md).
`?quantize=int8` runs the whole pipeline (transformer, pooling, normalisation) as a dynamically quantised int8
ONNX Runtime graph on CPU, exported once to the model cache: its own fingerprint, since its vectors differ from
float32 (all-MiniLM-L6-v2 on SST-2: benchmarks/README.md gives the agreement and the accuracy change).
"""

from __future__ import annotations

import json
import os
from functools import cached_property
from typing import Any

import numpy as np

from embedstore.encoders import onnx_runtime
from embedstore.encoders.base import Embedded
from embedstore.encoders.device import resolve_dtype
from embedstore.encoders.options import Option, merge
from embedstore.encoders.text.transformer import TransformerTextEncoder
from embedstore.errors import EncoderUnavailableError, InputError

QUANTIZE = Option("quantize", "choice", "none", ("none", "int8"), fingerprint=True,
                  help="int8: the pipeline as a dynamic-int8 ONNX Runtime graph on CPU (own fingerprint)")
PROBE = ["a probe sentence for the exported graph", "ok"]


class SentenceTransformerEncoder(TransformerTextEncoder):
    """dtype=auto is bf16 on an AMX CPU: all-MiniLM-L6-v2 on SST-2 agrees with float32 to cosine >= 0.9999 per
    sentence at about twice the speed (benchmarks/bench_sst2.py; tests/test_encoders.py); dtype=float32 opts out
    (and then runs in ONNX Runtime where it is installed, as on CPUs without AMX)."""

    scheme = "st"
    cpu_bf16 = True
    OPTIONS = merge(TransformerTextEncoder.OPTIONS, (QUANTIZE, onnx_runtime.RUNTIME))

    def __init__(self, spec: str, name: str, options: dict[str, str], revision: str | None = None):
        super().__init__(spec, name, options, revision)
        if self.quantized and self.opts["device"] not in (None, "cpu"):
            raise InputError(f"encoder {spec!r}: quantize=int8 runs in ONNX Runtime on the CPU, not on "
                             f"{self.opts['device']}; drop quantize=int8 or device")
        if self.quantized and self.opts["runtime"] == "torch":
            raise InputError(f"encoder {spec!r}: quantize=int8 runs in ONNX Runtime, not torch; drop "
                             "runtime=torch or quantize=int8")
        if self.quantized and (pkg := onnx_runtime.missing()) is not None:
            raise EncoderUnavailableError(f"encoder {spec!r}: quantize=int8 needs {pkg}: pip install onnx "
                                          "onnxruntime (or drop quantize=int8)")

    @property
    def quantized(self) -> bool:
        return self.opts["quantize"] == "int8"

    @cached_property
    def _device(self) -> str:
        """The CPU for the int8 graph (whatever EMBEDSTORE_DEVICE says), else as torch encoders choose."""
        return "cpu" if self.quantized else TransformerTextEncoder._device.func(self)

    @cached_property
    def _dtype(self) -> str:
        """float32 where an ONNX graph is asked for (quantize=int8, runtime=onnx): bf16 autocast is torch's."""
        if self.quantized or self.opts["runtime"] == "onnx":
            return resolve_dtype(self.opts["dtype"], self._device)
        return TransformerTextEncoder._dtype.func(self)

    @cached_property
    def _onnx(self) -> onnx_runtime.OnnxModel | None:
        """The pipeline in ONNX Runtime: the int8 graph when quantized, else float32 where `runtime` picks it
        (onnx_runtime.choose), else None (torch)."""
        if self.quantized:
            return onnx_runtime.load(*self._pipeline(), self.fingerprint, self.spec, quantize="int8",
                                     agreement=0.8, instead="drop ?quantize=int8")
        return onnx_runtime.choose(self, self._pipeline)

    def _pipeline(self) -> tuple[Any, dict]:
        """The whole pipeline as one module of positional token tensors (for export), and a probe batch."""
        import torch
        model = self._model
        probe = {k: v for k, v in self._tokenize(PROBE).items()
                 if k in ("input_ids", "attention_mask", "token_type_ids")}
        names = list(probe)

        class Pipeline(torch.nn.Module):  # positional tensors in, the pipeline's sentence embedding out
            def __init__(self) -> None:
                super().__init__()
                self.st = model

            def forward(self, *tensors: Any) -> Any:
                return self.st(dict(zip(names, tensors)))["sentence_embedding"]

        return Pipeline().eval(), probe

    @property
    def dtype(self) -> str:
        return "int8" if self.quantized else self._dtype

    def versions(self) -> dict:
        """onnxruntime's version wherever it may run this encoder: read without exporting or loading anything (the
        catalog asks inside a transaction, a Ray driver asks without ever embedding)."""
        if self.opts["runtime"] == "torch" or onnx_runtime.missing():
            return super().versions()
        import onnxruntime
        return {**super().versions(), "onnxruntime": onnxruntime.__version__}

    def embed(self, contents: Any, progress: Any = None) -> Embedded:
        """The runtime is chosen (and the graph exported) before the prefetch thread starts tokenising: the export's
        probe uses the same tokenizer, which is not safe to call from two threads."""
        if len(contents):
            _ = self._onnx
        return super().embed(contents, progress)

    @property
    def ran_on(self) -> str:
        return "cpu/onnxruntime" if self._onnx is not None else self._device

    def run(self, prepared: tuple[dict, np.ndarray, np.ndarray]) -> Embedded:
        if self._onnx is None:
            return super().run(prepared)
        feats, n_tok, truncated = prepared
        vectors = self._onnx({k: v.numpy().astype(np.int64) for k, v in feats.items() if hasattr(v, "numpy")})
        return Embedded(vectors.astype(np.float32), n_tok, truncated)

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
        """`quantize` only when asked, so that float32 stores keep their fingerprints."""
        return {"files": self._weights_hash, "max_length": self.max_length,
                **({"quantize": "int8 dynamic, per-channel weights", "onnx_opset": onnx_runtime.OPSET}
                   if self.quantized else {})}

    def _tokenize(self, texts: list[str]) -> dict:
        m = self._model
        return (m.preprocess if hasattr(m, "preprocess") else m.tokenize)(texts)

    def _forward(self, feats: dict):
        return self._model(feats)["sentence_embedding"]
