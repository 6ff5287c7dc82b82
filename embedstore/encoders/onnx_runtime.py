"""Running an encoder's torch model through ONNX Runtime on the CPU: exported once to the model cache (keyed by the
encoder's fingerprint and the exporter's versions), checked against torch on a probe batch, then run.

Why: ONNX Runtime's CPU kernels run some models ahead of torch (efficientnet-lite0 on 2 cores: about 1.7x torch in
channels-last, benchmarks/bench_images.py; all-MiniLM-L6-v2 on an AVX2 CPU about 1.2x, benchmarks/bench_text_cpu.py).
`choose` is the one rule of the `runtime` option for every family that has it. The graph is float32, so its vectors agree with torch's to
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
import socket
import threading
import time
import warnings
from pathlib import Path
from typing import Any, Callable

import numpy as np

from embedstore import config
from embedstore.encoders.options import Option
from embedstore.errors import EncoderUnavailableError, InputError

log = logging.getLogger(__name__)

RUNTIME = Option("runtime", "choice", "auto", ("auto", "torch", "onnx"),
                 help="on CPU: onnx (ONNX Runtime, float32, exported once and cached), torch, or auto (onnx where onnx "
                      "and onnxruntime are installed, except st: models on AMX CPUs: bf16 torch); CUDA runs torch")
OPSET = 17
EXPORT_VERSION = 1  # bump when the exported graph's contract changes: old cache entries are then left unused
AGREEMENT = 0.9999  # cosine every probe vector must reach against torch


def missing() -> str | None:
    """The package ONNX export or inference lacks here, or None."""
    return next((m for m in ("onnx", "onnxruntime") if importlib.util.find_spec(m) is None), None)


def cpu_threads() -> int:
    """As many threads as torch would use here: the cores this process may run on (its affinity, which containers
    and taskset narrow), fewer where OMP_NUM_THREADS or torch.set_num_threads says (Ray sets it per actor, so N
    actors on a node share its cores instead of each taking all of them)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    import torch
    return max(1, min(cores, torch.get_num_threads()))


def cache_path(fingerprint: str) -> Path:
    import torch
    key = json.dumps([fingerprint, torch.__version__, OPSET, EXPORT_VERSION])
    return config.model_cache() / "onnx" / f"{hashlib.sha256(key.encode()).hexdigest()[:32]}.onnx"


class OnnxModel:
    """An exported graph with one output, run on the CPU with every core this process has."""

    def __init__(self, path: Path):
        import onnxruntime as ort
        so = ort.SessionOptions()
        so.intra_op_num_threads = cpu_threads()
        so.log_severity_level = 3  # errors only: its graph-optimiser notices are not the user's business
        self.path = path
        self.session = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        self.inputs = [i.name for i in self.session.get_inputs()]

    def __call__(self, x: np.ndarray | dict[str, np.ndarray]) -> np.ndarray:
        feeds = {k: v for k, v in x.items() if k in self.inputs} if isinstance(x, dict) else {self.inputs[0]: x}
        return self.session.run(None, feeds)[0]


def choose(enc: Any, build: Callable[[], tuple[Any, Any]], cannot: str | None = None) -> "OnnxModel | None":
    """The ONNX Runtime model of `enc` when its `runtime` option picks one, else None (run torch). `onnx` asks for
    it (refused where it cannot run); `auto` takes it on CPU in float32 where onnx and onnxruntime are installed,
    and falls back to torch, with a warning, when the export fails or disagrees with torch. `build()` gives the
    module to export and a probe input; `cannot` is why this encoder's model cannot be exported at all."""
    want = enc.opts["runtime"]
    cannot = cannot or (f"it runs on the CPU, and this encoder runs on {enc.device}" if enc.device != "cpu"
                        else f"it runs float32, and dtype={enc.dtype} was asked" if enc.dtype != "float32" else None)
    if want == "onnx" and cannot:
        raise InputError(f"encoder {enc.spec!r}: runtime=onnx is not available ({cannot}); use runtime=torch "
                         "or runtime=auto")
    if want == "torch" or cannot or (want == "auto" and missing()):
        return None
    try:
        return load(*build(), enc.fingerprint, enc.spec)
    except EncoderUnavailableError as e:
        if want == "onnx":
            raise
        log.warning("%s; running torch", e)
        return None


def _no_autocast() -> Any:
    """A region without CPU autocast: the graph is traced, and checked, in float32 (an encoder's embed() runs in
    an autocast region when its dtype is bf16)."""
    import torch
    return torch.autocast("cpu", enabled=False)


def _as_inputs(example: Any) -> dict[str, Any]:
    """A tensor or a dict of tensors, as the graph's named inputs."""
    return dict(example) if isinstance(example, dict) else {"input": example}


STALE_EXPORT_S = 3600  # a temporary export file this old, of a process gone, was left by a killed export


def _remove_dead_exports(path: Path) -> None:
    """Delete the temporary files of exports to `path` that a killed process left: of this host (a cache folder
    shared by several machines holds other hosts' live exports too), of a PID that is gone, and over an hour old
    (containers sharing a host name and a cache folder do not see each other's PIDs). What cannot be deleted
    (another user's file) is left."""
    host, now = socket.gethostname(), time.time()
    for old in path.parent.glob(f".{path.stem}.{host}.*.tmp"):
        pid = old.name[len(f".{path.stem}.{host}."):].split(".")[0]
        try:
            if pid.isdigit() and not _alive(int(pid)) and now - old.stat().st_mtime > STALE_EXPORT_S:
                old.unlink()
        except OSError:
            pass


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _export(module: Any, example: Any, path: Path, quantize: str = "none") -> None:
    """Trace `module` on `example` to ONNX (batch axis dynamic, and the token axis of 2-D integer inputs), then
    quantise it when asked (`int8`: int8 weights with a scale per output channel, activations quantised per batch
    as it runs), into `path`."""
    import torch
    inputs = _as_inputs(example)
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_dead_exports(path)
    tmp = path.with_name(f".{path.stem}.{socket.gethostname()}.{os.getpid()}.{threading.get_ident()}.tmp")
    traced = tmp.with_suffix(".fp32.tmp") if quantize != "none" else tmp
    dynamic = {k: ({0: "n", 1: "tokens"} if v.ndim == 2 and not v.is_floating_point() else {0: "n"})
               for k, v in inputs.items()}
    fast_mha = torch.backends.mha.get_fastpath_enabled()
    try:
        torch.backends.mha.set_fastpath_enabled(False)  # nn.MultiheadAttention's fused kernel (CLIP) has no ONNX form
        with torch.inference_mode(False), torch.no_grad(), _no_autocast(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the tracer's notes on Python control flow it has unrolled
            torch.onnx.export(module, tuple(inputs.values()), str(traced), input_names=list(inputs),
                              output_names=["output"], dynamic_axes={**dynamic, "output": {0: "n"}},
                              opset_version=OPSET, dynamo=False)
        if quantize == "int8":
            from onnxruntime.quantization import QuantType, quantize_dynamic
            # per-channel weight scales: MiniLM on SST-2 agreed with float32 to cosine 0.990 mean / 0.966 min, against
            # 0.955 / 0.854 with one scale per tensor, at the same speed
            level = logging.root.manager.disable
            logging.disable(max(level, logging.WARNING))  # its advice to pre-process the graph, on the root logger
            try:
                quantize_dynamic(str(traced), str(tmp), weight_type=QuantType.QInt8, per_channel=True)
            finally:
                logging.disable(level)
        os.replace(tmp, path)
    finally:
        torch.backends.mha.set_fastpath_enabled(fast_mha)
        tmp.unlink(missing_ok=True)
        traced.unlink(missing_ok=True)


def load(module: Any, example: Any, fingerprint: str, spec: str, quantize: str = "none",
         agreement: float = AGREEMENT, instead: str = "use runtime=torch") -> OnnxModel:
    """`module` (a torch module of one tensor, or of the named tensors of a dict) as an ONNX Runtime model:
    exported on first use, then read from the cache; refused when its vectors on `example` do not agree with
    torch's to `agreement` (a looser bound for a quantised graph: there it guards against a broken export).
    `instead`: what the errors advise doing instead."""
    if (pkg := missing()) is not None:
        raise EncoderUnavailableError(f"encoder {spec!r}: ONNX Runtime needs {pkg}: pip install onnx onnxruntime")
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
            _export(module, example, path, quantize)
        except Exception as e:  # the exporter's failures have no common type
            where = (f" (the cache folder {path.parent}: set EMBEDSTORE_MODEL_CACHE to a writable folder with room)"
                     if isinstance(e, OSError) else "")
            raise EncoderUnavailableError(f"encoder {spec!r}: the model could not be exported to ONNX "
                                          f"({type(e).__name__}: {str(e).strip().splitlines()[0][:300]}){where}; "
                                          f"{instead}") from None
        try:
            model = OnnxModel(path)
        except Exception as e:  # an operator this onnxruntime lacks, say: its own exception types
            raise EncoderUnavailableError(f"encoder {spec!r}: ONNX Runtime cannot load the export {path} "
                                          f"({str(e).strip().splitlines()[0][:300]}); {instead}") from None
    inputs = _as_inputs(example)
    with torch.inference_mode(), _no_autocast():  # torch's float32 vectors, whatever region the caller is in
        want = module(*inputs.values()).float().numpy()
    try:
        got = model({k: v.numpy() for k, v in inputs.items()})
    except Exception as e:  # a graph of other inputs: onnxruntime's own exception types
        got, why = None, str(e).strip().splitlines()[0][:200]
    else:
        cos = (want * got).sum(1) / np.maximum(np.linalg.norm(want, axis=1) * np.linalg.norm(got, axis=1), 1e-30)
        why = (f"shape {got.shape} vs {want.shape}" if got.shape != want.shape
               else f"cosine {float(np.nan_to_num(cos.min())):.6f} < {agreement}")
    if got is None or got.shape != want.shape or not cos.min() >= agreement:
        raise EncoderUnavailableError(f"encoder {spec!r}: its ONNX export ({path}) disagrees with torch ({why}); "
                                      f"delete it to export again, or {instead.removeprefix('use ')}")
    return model
