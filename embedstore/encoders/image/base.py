"""What every image family (timm, torchvision, clip) shares: options, decoding, and the uint8 -> device ->
normalise -> model loop.

Decode + resize/crop run in worker processes (embedstore.media.workers.Decoder) while the model runs the
previous batch; uint8 pixels go to the device (pinned, non-blocking on CUDA), are normalised there and run in
bf16 on CUDA. On CUDA, JPEG batches can instead be decoded on the device by nvjpeg (`gpu_decode`, gpu_decode.py).
On CPU the normalisation and the model run in ONNX Runtime where it is installed (`runtime`, onnx_runtime.py):
efficientnet-lite0 ran about 1.7x faster there than in torch, with the same vectors (cosine >= 0.9999).
Preprocessing comes from the model's own config and is part of the fingerprint.

Options: batch_size, device, dtype=auto|float32|bfloat16, runtime=auto|torch|onnx, workers (decoding processes;
0 = decode in the prefetch thread), max_pixels (decompression-bomb guard), draft=true|false (JPEG draft-mode
decoding, changes pixels slightly: in the fingerprint), gpu_decode=auto|true|false.
"""

from __future__ import annotations

import time
from functools import cached_property
from typing import Any

import numpy as np

from embedstore.encoders.base import Embedded
from embedstore.encoders import onnx_runtime
from embedstore.encoders.device import TorchEncoder
from embedstore.encoders.image import gpu_decode
from embedstore.encoders.options import Option, merge
from embedstore.errors import EncoderUnavailableError
from embedstore.hashing import content_hash
from embedstore.media.images import DEFAULT_MAX_PIXELS, ImageJob, Preprocess
from embedstore.media.workers import Decoder

IMAGE_OPTIONS = (
    Option("workers", "int", None, low=0, high=256, help="decoding processes (0: decode in the prefetch thread)"),
    Option("max_pixels", "int", DEFAULT_MAX_PIXELS, low=1, help="decompression-bomb guard"),
    Option("draft", "bool", True, fingerprint=True, help="JPEG draft-mode decoding (changes pixels slightly)"),
    # off until a GPU run shows nvjpeg winning (no GPU has run this path yet: issue 16)
    Option("gpu_decode", "switch", False, help="nvjpeg decoding on CUDA: false (default), true, or auto "
           "(time both on the first batches, keep the faster)"),
    onnx_runtime.RUNTIME,
)


class ImageEncoder(TorchEncoder):
    """Subclasses provide `preprocess`, `_load`, `_weights_identity` (and `_forward` when not the model's call)."""

    modality = "image"
    first_chunk = 128  # a few seconds of work per transaction on CPU: a crash loses little
    exports_to_onnx = True  # the model is a torch module the ONNX exporter can trace (not Keras)
    OPTIONS = merge(TorchEncoder.OPTIONS, IMAGE_OPTIONS)

    def __init__(self, spec: str, name: str, options: dict[str, str], revision: str | None = None):
        super().__init__(spec, name, options, revision)
        self.max_pixels = self.opts["max_pixels"]
        self._draft = self.opts["draft"]
        self._failures: dict[str, str] = {}  # content hash -> why it could not be decoded
        self._chooser = gpu_decode.DecodeChooser(self.opts["gpu_decode"])

    # -- what a family provides ------------------------------------------------------------------------------
    @cached_property
    def preprocess(self) -> Preprocess:
        """The model's own preprocessing (read from its config, without building the model)."""
        raise NotImplementedError

    def _load(self) -> Any:
        """The model as a torch module mapping normalised float [n, 3, h, w] to pooled features [n, dim]."""
        raise NotImplementedError

    def _weights_identity(self) -> dict:
        """Model id and weight-file hashes (no device, no dtype)."""
        raise NotImplementedError

    def _forward(self, x: Any) -> Any:
        return self._model(x)

    # -- identity ----------------------------------------------------------------------------------------------
    def identity(self) -> dict:
        return {**self._weights_identity(), "preprocess": self.preprocess.as_dict()}

    def versions(self) -> dict:
        import PIL
        import torchvision
        return {**super().versions(), "torchvision": torchvision.__version__, "pillow": PIL.__version__}

    @property
    def batch_size(self) -> int:  # type: ignore[override]
        return self.opts["batch_size"] or (256 if self._device.startswith("cuda") else 32)

    @batch_size.setter
    def batch_size(self, value: int) -> None:
        """The base class sets the option's value; the getter reads it from the options already."""

    @cached_property
    def _model(self) -> Any:
        return self._load().to(self._device).eval()

    @cached_property
    def dim(self) -> int:
        """From one forward pass of a blank image: what the pooled features really are."""
        import torch
        h, w = self.preprocess.size
        with torch.inference_mode():
            out = self._forward(torch.zeros(1, 3, h, w, device=self._device))
        if out.ndim != 2:
            raise EncoderUnavailableError(f"encoder {self.spec!r}: the model gives features of shape "
                                          f"{tuple(out.shape)}, not pooled vectors; choose a pooling (?pool=avg)")
        return int(out.shape[1])

    # -- per item ------------------------------------------------------------------------------------------------
    def skip_reason(self, content: Any) -> str | None:
        """Cheap checks before decoding, and afterwards why a decoded file failed (decoding runs in workers, so
        the reason is known only once its batch was decoded; the pipeline asks again then)."""
        if isinstance(content, str):
            return "expected image bytes, found text (images are read from files, tar shards or --path-column)"
        if not content:
            return "empty file (0 bytes)"
        return self._failures.get(content_hash(content)) if self._failures else None

    # -- the batch loop ------------------------------------------------------------------------------------------
    @cached_property
    def _decoder(self) -> Decoder:
        return Decoder(ImageJob(self.preprocess, self.max_pixels), self.opts["workers"])

    @cached_property
    def _decode_stream(self) -> Any:
        import torch
        return torch.cuda.Stream(device=self._device)

    def prepare(self, contents: list[bytes]) -> tuple[Any, np.ndarray]:
        """Decode a batch (workers, or nvjpeg on CUDA): (uint8 [n_ok, h, w, 3] tensor, ok mask)."""
        import torch
        cuda = self._device.startswith("cuda")
        if cuda and self._chooser.use_gpu():
            t0 = time.perf_counter()
            on_device = gpu_decode.gpu_batch(contents, self.preprocess, self.max_pixels, self._device,
                                             self._decode_stream)
            if on_device is not None:
                self._chooser.timed("gpu", t0, len(contents))
                return on_device, np.ones(len(contents), bool)
        t0 = time.perf_counter()
        pixels, reasons = self._decoder(contents)
        self._chooser.timed("cpu", t0, len(contents))
        ok = np.array([why is None for why in reasons], dtype=bool)
        for data, why in zip(contents, reasons):
            if why:
                self._failures[content_hash(data)] = why
        batch = torch.from_numpy(pixels[ok] if not ok.all() else pixels)
        return (batch.pin_memory() if cuda else batch), ok

    @cached_property
    def _onnx(self) -> onnx_runtime.OnnxModel | None:
        """The model in ONNX Runtime (uint8 NHWC pixels in, pooled features out) when `runtime` picks it
        (onnx_runtime.choose)."""
        def build() -> tuple[Any, Any]:
            import torch
            h, w = self.preprocess.size
            probe = np.random.default_rng(0).integers(0, 256, (2, h, w, 3), dtype=np.uint8)
            return _from_pixels(self), torch.from_numpy(probe)

        return onnx_runtime.choose(self, build, None if self.exports_to_onnx
                                   else f"{self.scheme}: models are not torch modules")

    @property
    def ran_on(self) -> str:
        return "cpu/onnxruntime" if self._onnx is not None else self._device

    @cached_property
    def _norm(self) -> tuple[Any, Any]:
        import torch
        pp = self.preprocess
        mean = torch.tensor(pp.mean, dtype=torch.float32, device=self._device).view(1, 3, 1, 1) * 255
        std = torch.tensor(pp.std, dtype=torch.float32, device=self._device).view(1, 3, 1, 1) * 255
        return mean, std

    def run(self, prepared: tuple[Any, np.ndarray]) -> Embedded:
        import torch
        pixels, ok = prepared
        vectors = np.full((len(ok), self.dim), np.nan, dtype=np.float32)  # NaN rows: failed decodes, never stored
        if ok.any() and self._onnx is not None:
            vectors[ok] = self._onnx(pixels.numpy())
        elif ok.any():
            mean, std = self._norm
            # NHWC pixels viewed as NCHW keep channels-last strides (through float() and the normalisation):
            # convolutions run faster so, on CPU (about 1.3-1.5x for efficientnet-lite0 here) as on GPU
            x = pixels.to(self._device, non_blocking=True).permute(0, 3, 1, 2).float()
            x = ((x - mean) / std).contiguous(memory_format=torch.channels_last)
            with torch.inference_mode(), self.autocast():
                out = self._forward(x)
            vectors[ok] = out.float().cpu().numpy()
        return Embedded(vectors)



def _from_pixels(enc: ImageEncoder) -> Any:
    """An image encoder's torch path as one module, for export: uint8 [n, h, w, 3] -> normalised NCHW -> features."""
    import torch

    class FromPixels(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = enc._model  # registered, so that its weights become the graph's initialisers
            self.mean, self.std = (t.cpu().clone() for t in enc._norm)  # plain tensors, not inference-mode ones

        def forward(self, pixels: Any) -> Any:
            x = (pixels.permute(0, 3, 1, 2).float() - self.mean) / self.std
            return enc._forward(x).float()

    return FromPixels().eval()  # a new module trains by default, and the exporter restores that mode to all of it
