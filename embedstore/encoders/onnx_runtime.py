"""Running an encoder's torch model through ONNX Runtime on the CPU: exported once to the model cache (keyed by the
encoder's fingerprint and the exporter's versions), checked against torch on a probe batch, then run.

Why: ONNX Runtime's CPU kernels run some backbones well ahead of torch (efficientnet-lite0 on 2 cores: about 1.7x
torch in channels-last, benchmarks/bench_images.py). The graph is float32, so its vectors agree with torch's to
cosine >= 0.9999 (checked at every load) and keep the fingerprint; the runtime is recorded per vector, in its
device ("cpu/onnxruntime"). Exports are written under a temporary name and renamed, so concurrent processes and a
killed export never leave a half-written file behind.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from embedstore import config
from embedstore.encoders.options import Option
from embedstore.errors import EncoderUnavailableError

log = logging.getLogger(__name__)

RUNTIME = Option("runtime", "choice", "auto", ("auto", "torch", "onnx"),
                 help="on CPU: onnx (ONNX Runtime, exported once and cached), torch, or auto (onnx when onnx and "
                      "onnxruntime are installed); CUDA always runs torch")
OPSET = 17
EXPORT_VERSION = 1  # bump when the exported graph's contract changes: old cache entries are then left unused
AGREEMENT = 0.9999  # cosine every probe vector must reach against torch


def missing() -> str | None:
    """The package ONNX export or inference lacks here, or None."""
    return next((m for m in ("onnx", "onnxruntime") if importlib.util.find_spec(m) is None), None)


def cpu_threads() -> int:
    """The cores this process may run on (its affinity, which containers and taskset narrow)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def cache_path(fingerprint: str) -> Path:
    import torch
    key = json.dumps([fingerprint, torch.__version__, OPSET, EXPORT_VERSION])
    return config.model_cache() / "onnx" / f"{hashlib.sha256(key.encode()).hexdigest()[:32]}.onnx"


class OnnxModel:
    """An exported graph with one input and one output, run on the CPU with every core this process has."""

    def __init__(self, path: Path):
        import onnxruntime as ort
        so = ort.SessionOptions()
        so.intra_op_num_threads = cpu_threads()
        so.log_severity_level = 3  # errors only: its graph-optimiser notices are not the user's business
        self.path = path
        self.session = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        self.input = self.session.get_inputs()[0].name

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.input: x})[0]


def _export(module: Any, example: Any, path: Path) -> None:
    import torch
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp")
    try:
        fast_mha = torch.backends.mha.get_fastpath_enabled()
        torch.backends.mha.set_fastpath_enabled(False)  # nn.MultiheadAttention's fused kernel (CLIP) has no ONNX form
        with torch.inference_mode(False), torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the tracer's notes on Python control flow it has unrolled
            torch.onnx.export(module, (example,), str(tmp), input_names=["input"], output_names=["output"],
                              dynamic_axes={"input": {0: "n"}, "output": {0: "n"}}, opset_version=OPSET,
                              dynamo=False)
        os.replace(tmp, path)
    finally:
        torch.backends.mha.set_fastpath_enabled(fast_mha)
        tmp.unlink(missing_ok=True)


def load(module: Any, example: Any, fingerprint: str, spec: str) -> OnnxModel:
    """`module` (a torch module of one tensor input) as an ONNX Runtime model: exported on first use, then read
    from the cache; refused when its vectors on `example` do not agree with torch's."""
    if (pkg := missing()) is not None:
        raise EncoderUnavailableError(f"encoder {spec!r}: runtime=onnx needs {pkg}: pip install onnx onnxruntime "
                                      "(or runtime=torch)")
    import torch
    path = cache_path(fingerprint)
    model = None
    if path.exists():
        try:
            model = OnnxModel(path)
        except Exception as e:  # onnxruntime raises its own exception types for an unreadable graph
            log.warning("encoder %s: the cached ONNX export %s cannot be read (%s); exporting it again", spec, path,
                        str(e).strip().splitlines()[0][:200])
    if model is None:
        log.warning("encoder %s: exporting the model to ONNX once (cached at %s)", spec, path)
        try:
            _export(module, example, path)
        except Exception as e:  # the exporter's failures have no common type
            raise EncoderUnavailableError(f"encoder {spec!r}: the model could not be exported to ONNX "
                                          f"({type(e).__name__}: {str(e).strip().splitlines()[0][:300]}); use "
                                          "runtime=torch") from None
        model = OnnxModel(path)
    with torch.inference_mode():
        want = module(example).float().numpy()
    try:
        got = model(example.numpy())
    except Exception as e:  # a graph of other inputs: onnxruntime's own exception types
        got, why = None, str(e).strip().splitlines()[0][:200]
    else:
        cos = (want * got).sum(1) / np.maximum(np.linalg.norm(want, axis=1) * np.linalg.norm(got, axis=1), 1e-30)
        why = (f"shape {got.shape} vs {want.shape}" if got.shape != want.shape
               else f"cosine {float(np.nan_to_num(cos.min())):.6f} < {AGREEMENT}")
    if got is None or got.shape != want.shape or not cos.min() >= AGREEMENT:
        raise EncoderUnavailableError(f"encoder {spec!r}: its ONNX export ({path}) disagrees with torch ({why}); "
                                      f"delete it to export again, or use runtime=torch")
    return model
