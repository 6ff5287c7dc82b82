"""`timm:<name>?weights=<file>` (else the local cache), `timm:<dir>` or `timm:hf-hub:<repo>` (timm's Hugging Face
layout): a timm backbone's features before the classifier. Options beyond the image ones: weights=<file>,
key_map=name|position, pool=<timm global_pool>. No weights are downloaded."""

from __future__ import annotations

from functools import cached_property
from pathlib import Path
from typing import Any

from embedstore.encoders.base import hash_files
from embedstore.encoders.hub import cached_weights, given_file, hf_hub_dir, read_json
from embedstore.encoders.image.base import ImageEncoder
from embedstore.encoders.image.weights import map_by_position, not_model_file, read_state_dict
from embedstore.encoders.options import Option, merge
from embedstore.errors import EncoderUnavailableError, InputError
from embedstore.fsutil import sha256_file
from embedstore.media.images import Preprocess


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
    OPTIONS = merge(ImageEncoder.OPTIONS, (
        Option("weights", "str", fingerprint=True, help="checkpoint file (.safetensors, .pth)"),
        Option("key_map", "choice", "name", ("name", "position"), fingerprint=True,
               help="match checkpoint tensors to the model by name, or by position (another codebase's names)"),
        Option("pool", "str", fingerprint=True, help="timm global_pool (default: the model's own)")))

    def __init__(self, spec: str, name: str, options: dict[str, str], revision: str | None = None):
        super().__init__(spec, name, options, revision)
        self.key_map = self.opts["key_map"]
        self.pool = self.opts["pool"]  # None: the model's own global pooling

    @cached_property
    def _source(self) -> tuple[str, Path | None, Path | None]:
        """(architecture[.tag], weights file, model directory); exactly one of the last two is set."""
        name = self.name.removeprefix("local-dir:")
        name = hf_hub_dir(self.spec, name, self.revision, "the repo's directory, timm:/path/to/dir")
        if Path(name).expanduser().is_dir():
            directory = Path(name).expanduser().resolve()
            if self.opts["weights"]:
                raise InputError(f"encoder {self.spec!r}: a model directory holds its weights; drop ?weights=")
            cfg = read_json(directory / "config.json", self.spec)
            return str(cfg.get("architecture", "")), None, directory
        import timm
        if not timm.is_model(name.split(".")[0]):
            raise EncoderUnavailableError(f"encoder {self.spec!r}: timm has no model {name!r} (timm.list_models() "
                                          "lists them), and it is not a directory")
        if self.opts["weights"]:
            return name, given_file(self.spec, self.opts["weights"]), None
        return name, self._cached_weights(name), None

    def _cached_weights(self, name: str) -> Path:
        import torch
        from timm.models import get_pretrained_cfg
        cfg = get_pretrained_cfg(name)
        cfg = cfg.to_dict() if cfg is not None else {}
        return cached_weights(self.spec, cfg.get("hf_hub_id"), ("model.safetensors", "pytorch_model.bin"),
                              cfg.get("url"), Path(torch.hub.get_dir()) / "checkpoints",
                              f"the pretrained weights of {name}",
                              f"timm:{name}?weights=/path/to/model.safetensors (or a directory in timm's hub layout: "
                              "timm:/path)")

    @cached_property
    def _pretrained_cfg(self) -> dict:
        arch, _, directory = self._source
        if directory is not None:
            return dict(read_json(directory / "config.json", self.spec).get("pretrained_cfg", {}))
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
