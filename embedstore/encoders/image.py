"""Image encoders: `timm:<name>` and `torchvision:<name>[@weights]` (ImageNet-pretrained backbones for transfer
learning, features taken before the classifier), the base they share with `clip:` (encoders/clip.py), and the
`efficientnet-lite0` alias's weights mapping.

The loop: decode + resize/crop in worker processes (embedstore.ingest.images.Decoder) while the model runs the
previous batch; uint8 pixels go to the device (pinned, non-blocking on CUDA), are normalised there and run in
bf16 on CUDA. On CUDA, JPEG batches can instead be decoded on the device by nvjpeg (`gpu_decode`, see below).
Preprocessing comes from the model's own config (timm data config, torchvision weights transforms, open_clip
preprocess config) and is part of the fingerprint.

Options (spec `?key=value&...`): batch_size, device, dtype=auto|float32|bfloat16, workers (decoding processes;
0 = decode in the prefetch thread), max_pixels (decompression-bomb guard), draft=true|false (JPEG draft-mode
decoding, changes pixels slightly: in the fingerprint), gpu_decode=auto|true|false. timm: also weights=<file or
dir>, key_map=name|position, pool=<timm global_pool>. torchvision: weights=<file>.
No weights are downloaded: pretrained weights must be in the local cache or given as a file.
"""

from __future__ import annotations

import io
import os
import time
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from embedstore.encoders.base import (DTYPES, Embedded, Encoder, check_options, choice, hash_files,
                                      resolve_dtype)
from embedstore.errors import EncoderUnavailableError, InputError
from embedstore.fsutil import sha256_file
from embedstore.ingest.hashing import content_hash
from embedstore.ingest.images import DEFAULT_MAX_PIXELS, Decoder, Preprocess, resized_size

_TRUE = ("1", "true", "yes")


def _flag(spec: str, options: dict[str, str], key: str, default: str) -> bool:
    value = options.get(key, default).lower()
    if value not in _TRUE + ("0", "false", "no"):
        raise InputError(f"encoder {spec!r}: {key} must be true or false, not {value!r}")
    return value in _TRUE


def read_state_dict(path: Path) -> dict:
    """Tensors of a checkpoint file (.safetensors, or a torch pickle read with weights_only=True)."""
    import torch
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file
        sd = load_file(str(path))
    else:
        try:
            sd = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 - torch raises many types for a bad or unsafe file
            raise EncoderUnavailableError(f"cannot read weights {path}: {type(e).__name__}: {e}") from None
    for wrapper in ("state_dict", "model", "module"):
        if isinstance(sd, dict) and isinstance(sd.get(wrapper), dict):
            sd = sd[wrapper]
    if not isinstance(sd, dict) or not sd:
        raise EncoderUnavailableError(f"{path}: expected a state dict of tensors, found {type(sd).__name__}")
    return {k.removeprefix("module."): v for k, v in sd.items()}


def map_by_position(model_sd: dict, file_sd: dict, what: str) -> dict:
    """Rename a checkpoint's tensors onto the model's keys by position (same architecture written by another
    codebase, e.g. efficientnet-lite0's lukemelas-style keys onto timm's); every tensor's shape must match."""
    if len(model_sd) != len(file_sd):
        raise EncoderUnavailableError(f"{what}: key_map=position needs one tensor per model tensor; the model has "
                                      f"{len(model_sd)}, the file {len(file_sd)}")
    out = {}
    for i, ((key, want), (src, got)) in enumerate(zip(model_sd.items(), file_sd.items())):
        if tuple(want.shape) != tuple(got.shape):
            raise EncoderUnavailableError(f"{what}: tensor {i} {src!r} has shape {tuple(got.shape)}, but the model's "
                                          f"{key!r} has {tuple(want.shape)}: not the same architecture")
        out[key] = got
    return out


def not_model_file(rel: str) -> bool:
    """Files of a model directory that do not change its vectors (READMEs, images...): left out of its hash."""
    return not rel.endswith((".json", ".safetensors", ".bin", ".pth", ".pt", ".txt.gz"))


def hub_cached_file(repo: str, filenames: tuple[str, ...]) -> Path | None:
    """The first of `filenames` in the local Hugging Face cache of `repo` (never the network), or None."""
    from huggingface_hub import hf_hub_download
    for fn in filenames:
        try:
            return Path(hf_hub_download(repo, fn, local_files_only=True))
        except Exception:  # noqa: BLE001 - not cached (the hub raises several types)
            continue
    return None


def hub_cached_snapshot(repo: str, revision: str | None) -> Path | None:
    """A Hugging Face repo's directory in the local cache (never the network), or None."""
    from huggingface_hub import snapshot_download
    try:
        return Path(snapshot_download(repo, revision=revision, local_files_only=True))
    except Exception:  # noqa: BLE001
        return None


class ImageEncoder(Encoder):
    """What every image family shares: options, decoding, the uint8 -> device -> normalise -> model loop."""

    modality = "image"
    _OPTIONS = {"batch_size", "device", "dtype", "workers", "max_pixels", "draft", "gpu_decode"}

    def __init__(self, spec: str, name: str, options: dict[str, str], revision: str | None = None):
        super().__init__(spec, name, options)
        check_options(spec, self.scheme, options, self._OPTIONS)
        self.revision = revision
        try:
            self._batch_size = int(options["batch_size"]) if "batch_size" in options else None
            self._workers = int(options["workers"]) if "workers" in options else None
            self.max_pixels = int(options.get("max_pixels", DEFAULT_MAX_PIXELS))
        except ValueError as e:
            raise InputError(f"encoder {spec!r}: batch_size, workers and max_pixels are integers ({e})") from None
        self._want_dtype = choice(spec, options, "dtype", DTYPES)
        self._draft = _flag(spec, options, "draft", "true")
        self._gpu_decode = options.get("gpu_decode", "auto").lower()
        if self._gpu_decode not in ("auto", "true", "false"):
            raise InputError(f"encoder {spec!r}: gpu_decode must be auto, true or false")
        self._failures: dict[str, str] = {}  # content hash -> why it could not be decoded
        self._decode_seconds = {"cpu": (0, 0.0), "gpu": (0, 0.0)}  # path -> (batches, last seconds per image)

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

    # -- identity, device --------------------------------------------------------------------------------------
    def identity(self) -> dict:
        return {**self._weights_identity(), "preprocess": self.preprocess.as_dict()}

    def versions(self) -> dict:
        import PIL
        import torch
        import torchvision
        return {**super().versions(), "torch": torch.__version__, "torchvision": torchvision.__version__,
                "pillow": PIL.__version__}

    @cached_property
    def _device(self) -> str:
        from embedstore.encoders.text import _torch_device
        return _torch_device(self.options.get("device"))

    @property
    def device(self) -> str:
        return self._device

    @property
    def dtype(self) -> str:
        return resolve_dtype(self._want_dtype, self._device)

    @property
    def batch_size(self) -> int:  # type: ignore[override]
        return self._batch_size or (256 if self._device.startswith("cuda") else 32)

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
        return Decoder(self.preprocess, self.max_pixels, self._workers)

    def prepare(self, contents: list[bytes]) -> tuple[Any, np.ndarray]:
        """Decode a batch (workers, or nvjpeg on CUDA): (uint8 [n_ok, h, w, 3] tensor, ok mask)."""
        import torch
        cuda = self._device.startswith("cuda")
        if cuda and self._use_gpu_decode():
            t0 = time.perf_counter()
            on_device = self._gpu_batch(contents)
            if on_device is not None:
                self._timed("gpu", t0, len(contents))
                return on_device, np.ones(len(contents), bool)
        t0 = time.perf_counter()
        pixels, reasons = self._decoder(contents)
        self._timed("cpu", t0, len(contents))
        ok = np.array([why is None for why in reasons], dtype=bool)
        for data, why in zip(contents, reasons):
            if why:
                self._failures[content_hash(data)] = why
        batch = torch.from_numpy(pixels[ok] if not ok.all() else pixels)
        return (batch.pin_memory() if cuda else batch), ok

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
        if ok.any():
            mean, std = self._norm
            # NHWC pixels viewed as NCHW keep channels-last strides (through float() and the normalisation):
            # convolutions run faster so, on CPU (about 1.3-1.5x for efficientnet-lite0 here) as on GPU
            x = pixels.to(self._device, non_blocking=True).permute(0, 3, 1, 2).float()
            x = ((x - mean) / std).contiguous(memory_format=torch.channels_last)
            autocast = torch.autocast(self._device.split(":")[0], dtype=torch.bfloat16,
                                      enabled=self.dtype == "bfloat16")
            with torch.inference_mode(), autocast:
                out = self._forward(x)
            vectors[ok] = out.float().cpu().numpy()
        return Embedded(vectors)

    # -- CUDA: JPEG decoding on the device ------------------------------------------------------------------
    def _timed(self, path: str, t0: float, n: int) -> None:
        self._decode_seconds[path] = (self._decode_seconds[path][0] + 1, (time.perf_counter() - t0) / max(n, 1))

    def _use_gpu_decode(self) -> bool:
        """gpu_decode=true/false as told; auto: two batches each way (the first warms up), then the faster."""
        if self._gpu_decode != "auto":
            return self._gpu_decode == "true"
        (n_cpu, cpu), (n_gpu, gpu) = self._decode_seconds["cpu"], self._decode_seconds["gpu"]
        if n_cpu < 2:
            return False
        return n_gpu < 2 or gpu < cpu

    def _gpu_batch(self, contents: list[bytes]) -> Any | None:
        """A batch of plain JPEGs decoded by nvjpeg and resized on the device, or None to use the CPU workers.

        Only batches whose every file is a JPEG within max_pixels go this way, so every failure still gets its
        reason from the CPU decoder. Pixels match the CPU path up to resampling rounding, except that draft mode
        does not apply (vectors are expected to agree like bf16 and fp32 do). Not measured in this project: its
        sessions have no GPU."""
        from PIL import Image
        for data in contents:
            if bytes(data[:3]) != b"\xff\xd8\xff":
                return None
            try:
                w, h = Image.open(io.BytesIO(data)).size  # header only
            except Exception:  # noqa: BLE001 - the CPU path will give the reason
                return None
            if w * h > self.max_pixels:
                return None
        import torch
        from torchvision.io import ImageReadMode, decode_jpeg
        stream = self._decode_stream  # a side stream: decoding overlaps the model running on the default one
        with torch.cuda.stream(stream):
            try:
                images = decode_jpeg([torch.frombuffer(bytearray(d), dtype=torch.uint8) for d in contents],
                                     mode=ImageReadMode.RGB, device=self._device, apply_exif_orientation=True)
            except RuntimeError:
                return None
            out = torch.stack([self._gpu_resize_crop(img) for img in images])
        stream.synchronize()  # blocks this prefetch thread only
        out.record_stream(torch.cuda.current_stream(self._device))
        return out

    @cached_property
    def _decode_stream(self) -> Any:
        import torch
        return torch.cuda.Stream(device=self._device)

    def _gpu_resize_crop(self, img: Any) -> Any:
        """[3, h, w] uint8 on the device -> [H, W, 3] uint8, by the same sizes as the CPU path (antialiased)."""
        import torch
        import torch.nn.functional as F
        pp = self.preprocess
        h, w = img.shape[1:]
        nw, nh = resized_size(w, h, pp)
        x = img[None].float()
        if (nw, nh) != (w, h):
            mode = pp.interpolation if pp.interpolation in ("bilinear", "bicubic") else "bilinear"
            x = F.interpolate(x, size=(nh, nw), mode=mode, antialias=True, align_corners=False)
        ch, cw = pp.size
        if nw < cw or nh < ch:
            pad_w, pad_h = max(cw - nw, 0), max(ch - nh, 0)
            canvas = torch.tensor(pp.fill, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
            canvas = canvas.expand(1, 3, nh + pad_h, nw + pad_w).clone()
            canvas[:, :, pad_h // 2:pad_h // 2 + nh, pad_w // 2:pad_w // 2 + nw] = x
            x, nh, nw = canvas, nh + pad_h, nw + pad_w
        top, left = int(round((nh - ch) / 2.0)), int(round((nw - cw) / 2.0))
        x = x[:, :, top:top + ch, left:left + cw]
        return x.round_().clamp_(0, 255).to(torch.uint8)[0].permute(1, 2, 0)


# -- timm -----------------------------------------------------------------------------------------------------------
def _timm_preprocess(cfg: dict, draft: bool) -> Preprocess:
    """timm's eval transform (transforms_imagenet_eval) as a Preprocess."""
    import math
    from timm.data import resolve_data_config
    data = resolve_data_config(pretrained_cfg=cfg)
    h, w = data["input_size"][1:]
    crop_pct = data.get("crop_pct") or 0.875
    scale = (math.floor(h / crop_pct), math.floor(w / crop_pct))
    mode = data.get("crop_mode") or "center"
    common = dict(size=(h, w), resize=scale, interpolation=data["interpolation"], mean=tuple(data["mean"]),
                  std=tuple(data["std"]), draft=draft)
    if mode == "squash":
        return Preprocess(mode="squash", **common)
    if mode == "border":
        return Preprocess(mode="keep-ratio", longest=1.0, fill=tuple(round(255 * v) for v in data["mean"]),
                          **common)
    if scale[0] == scale[1]:
        return Preprocess(mode="shortest", **common)
    return Preprocess(mode="keep-ratio", longest=0.0, **common)


class TimmEncoder(ImageEncoder):
    """`timm:<model name>` (weights from ?weights=<file>, else the local cache), or `timm:<dir>` /
    `timm:hf-hub:<repo>` in timm's Hugging Face layout (config.json + model.safetensors)."""

    scheme = "timm"
    _OPTIONS = ImageEncoder._OPTIONS | {"weights", "key_map", "pool"}

    def __init__(self, spec: str, name: str, options: dict[str, str], revision: str | None = None):
        super().__init__(spec, name, options, revision)
        self.key_map = options.get("key_map", "name")
        if self.key_map not in ("name", "position"):
            raise InputError(f"encoder {spec!r}: key_map must be name or position, not {self.key_map!r}")
        self.pool = options.get("pool")  # None: the model's own global pooling

    @cached_property
    def _source(self) -> tuple[str, Path | None, Path | None]:
        """(architecture[.tag], weights file, model directory); exactly one of the last two is set."""
        name = self.name.removeprefix("local-dir:")
        if name.startswith("hf-hub:"):
            local = hub_cached_snapshot(name[len("hf-hub:"):], self.revision)
            if local is None:
                raise EncoderUnavailableError(
                    f"encoder {self.spec!r}: {name} is not in the local Hugging Face cache, and nothing is downloaded "
                    "here. Download the repo elsewhere and pass its directory: timm:/path/to/dir")
            name = str(local)
        if Path(name).expanduser().is_dir():
            directory = Path(name).expanduser().resolve()
            if "weights" in self.options:
                raise InputError(f"encoder {self.spec!r}: a model directory holds its weights; drop ?weights=")
            cfg = read_json_file(directory / "config.json", self.spec)
            return str(cfg.get("architecture", "")), None, directory
        import timm
        if not timm.is_model(name.split(".")[0]):
            raise EncoderUnavailableError(f"encoder {self.spec!r}: timm has no model {name!r} (timm.list_models() "
                                          "lists them), and it is not a directory")
        if "weights" in self.options:
            path = Path(self.options["weights"]).expanduser()
            if not path.is_file():
                raise EncoderUnavailableError(f"encoder {self.spec!r}: no weights file at {path}")
            return name, path.resolve(), None
        return name, self._cached_weights(name), None

    def _cached_weights(self, name: str) -> Path:
        import torch
        from timm.models import get_pretrained_cfg
        cfg = get_pretrained_cfg(name)
        cfg = cfg.to_dict() if cfg is not None else {}
        found = hub_cached_file(cfg["hf_hub_id"], ("model.safetensors", "pytorch_model.bin")) \
            if cfg.get("hf_hub_id") else None
        if found is None and cfg.get("url"):
            path = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(cfg["url"])
            found = path if path.is_file() else None
        if found is None:
            where = cfg.get("hf_hub_id") or cfg.get("url") or "nowhere (timm knows no pretrained weights for it)"
            raise EncoderUnavailableError(
                f"encoder {self.spec!r}: the pretrained weights of {name} ({where}) are not in the local cache, and "
                "nothing is downloaded here. Download them elsewhere and pass the file: "
                f"timm:{name}?weights=/path/to/model.safetensors (or a directory in timm's hub layout: timm:/path)")
        return found

    @cached_property
    def _pretrained_cfg(self) -> dict:
        arch, _, directory = self._source
        if directory is not None:
            return dict(read_json_file(directory / "config.json", self.spec).get("pretrained_cfg", {}))
        from timm.models import get_pretrained_cfg
        cfg = get_pretrained_cfg(arch)
        return cfg.to_dict() if cfg is not None else {}

    @cached_property
    def preprocess(self) -> Preprocess:
        return _timm_preprocess(self._pretrained_cfg, self._draft)

    def _weights_identity(self) -> dict:
        arch, weights, directory = self._source
        files = hash_files(directory, not_model_file) if directory is not None else \
            {weights.name: sha256_file(weights)}
        return {"model": arch.split(".")[0], "files": files, "key_map": self.key_map,
                "pool": self.pool or "model default"}

    def versions(self) -> dict:
        import timm
        return {**super().versions(), "timm": timm.__version__}

    def _load(self) -> Any:
        import timm
        arch, weights, directory = self._source
        if directory is not None:
            model = timm.create_model(f"local-dir:{directory}", pretrained=True)
        else:
            model = timm.create_model(arch, pretrained=False)
            state = read_state_dict(weights)
            if self.key_map == "position":
                state = map_by_position(model.state_dict(), state, f"encoder {self.spec!r} ({weights.name})")
            heads = model.pretrained_cfg.get("classifier") or ()
            heads = (heads,) if isinstance(heads, str) else tuple(heads)
            state = {k: v for k, v in state.items() if not k.startswith(tuple(h + "." for h in heads))}
        try:
            model.reset_classifier(0, **({"global_pool": self.pool} if self.pool is not None else {}))
        except (TypeError, ValueError, AssertionError, NotImplementedError) as e:
            raise InputError(f"encoder {self.spec!r}: pool {self.pool!r} is not one {arch} supports ({e})") from None
        if directory is None:
            missing, unexpected = (set(model.state_dict()) - set(state)), (set(state) - set(model.state_dict()))
            if missing or unexpected:
                hint = " (the file may use another codebase's names: try ?key_map=position)" \
                    if self.key_map == "name" else ""
                raise EncoderUnavailableError(
                    f"encoder {self.spec!r}: {weights.name} does not fit timm's {arch}: {len(missing)} model tensors "
                    f"missing (e.g. {sorted(missing)[:3]}), {len(unexpected)} unexpected (e.g. "
                    f"{sorted(unexpected)[:3]}){hint}")
            try:
                model.load_state_dict(state, strict=True)
            except RuntimeError as e:
                raise EncoderUnavailableError(f"encoder {self.spec!r}: {weights.name} does not fit {arch}: "
                                              f"{str(e).splitlines()[-1].strip()}") from None
        return model


def read_json_file(path: Path, spec: str) -> dict:
    import json
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise EncoderUnavailableError(f"encoder {spec!r}: cannot read {path}: {e}") from None


# -- torchvision ----------------------------------------------------------------------------------------------------
class TorchvisionEncoder(ImageEncoder):
    """`torchvision:<builder>[@<weights enum member>]`, e.g. torchvision:resnet50@IMAGENET1K_V2 (default:
    DEFAULT): the last Linear layer (the ImageNet classifier) is replaced by identity; the rest of the model,
    its pooling included, is as torchvision defines it."""

    scheme = "torchvision"
    _OPTIONS = ImageEncoder._OPTIONS | {"weights"}

    @cached_property
    def _weights_enum(self) -> Any:
        import torchvision.models as tvm
        try:
            enum = tvm.get_model_weights(self.name)
        except (ValueError, KeyError):
            raise EncoderUnavailableError(f"encoder {self.spec!r}: torchvision has no model {self.name!r}; "
                                          f"classification models: {', '.join(sorted(tvm.list_models(tvm))[:12])}, "
                                          "...") from None
        tag = self.revision or "DEFAULT"
        try:
            return enum[tag]
        except KeyError:
            raise EncoderUnavailableError(f"encoder {self.spec!r}: {enum.__name__} has no {tag!r}; choose one of "
                                          f"{[w.name for w in enum]}") from None

    @cached_property
    def _weights_file(self) -> Path:
        import torch
        w = self._weights_enum
        if "weights" in self.options:
            path = Path(self.options["weights"]).expanduser()
            if not path.is_file():
                raise EncoderUnavailableError(f"encoder {self.spec!r}: no weights file at {path}")
            return path.resolve()
        filename = os.path.basename(w.url)
        path = Path(torch.hub.get_dir()) / "checkpoints" / filename
        if not path.is_file():
            raise EncoderUnavailableError(
                f"encoder {self.spec!r}: the weights {type(w).__name__}.{w.name} ({filename}) are not in the torch "
                f"hub cache ({path.parent}), and nothing is downloaded here. Download {w.url} elsewhere and pass it: "
                f"torchvision:{self.name}?weights=/path/to/{filename}")
        return path

    @cached_property
    def preprocess(self) -> Preprocess:
        t = self._weights_enum.transforms()
        if not all(hasattr(t, a) for a in ("crop_size", "resize_size", "mean", "std", "interpolation")):
            raise EncoderUnavailableError(f"encoder {self.spec!r}: {self.name} is not an image classification model "
                                          f"(its transforms are {type(t).__name__})")
        crop, resize = t.crop_size[0], t.resize_size[0]
        return Preprocess(size=(crop, crop), resize=(resize, resize), mode="shortest",
                          interpolation=t.interpolation.value, mean=tuple(t.mean), std=tuple(t.std), draft=self._draft)

    def _weights_identity(self) -> dict:
        w = self._weights_enum
        return {"model": self.name, "weights": f"{type(w).__name__}.{w.name}",
                "files": {self._weights_file.name: sha256_file(self._weights_file)}, "pool": "model default"}

    def _load(self) -> Any:
        from unittest import mock

        import torch
        import torchvision.models as tvm
        from torchvision.models._api import WeightsEnum
        state = read_state_dict(self._weights_file)
        # The builder sets the arguments these weights need (e.g. inception's transform_input) and loads them;
        # it is handed our file's tensors instead of downloading.
        with mock.patch.object(WeightsEnum, "get_state_dict", lambda *a, **k: state):
            try:
                model = tvm.get_model(self.name, weights=self._weights_enum)
            except RuntimeError as e:
                raise EncoderUnavailableError(f"encoder {self.spec!r}: {self._weights_file.name} does not fit "
                                              f"{self.name}: {str(e).splitlines()[0]}") from None
        n_classes = len(self._weights_enum.meta.get("categories") or [])
        linears = [(n, m) for n, m in model.named_modules()
                   if isinstance(m, torch.nn.Linear) and m.out_features == n_classes]
        if not linears:
            raise EncoderUnavailableError(f"encoder {self.spec!r}: found no Linear classifier with {n_classes} "
                                          f"outputs in {self.name} to take features before")
        parent_name, _, attr = linears[-1][0].rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, attr, torch.nn.Identity())
        return model

