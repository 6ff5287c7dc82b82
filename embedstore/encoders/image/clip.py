"""`clip:<model>@<pretrained tag or checkpoint file>`, `clip:hf-hub:<repo>`, `clip:<directory>`: open_clip models.

The image tower embeds images (L2-normalised, like open_clip's `encode_image(normalize=True)`); the text tower of
the same checkpoint embeds search queries and zero-shot label prompts into the same space (`embed_text`).
Nothing is downloaded: a pretrained tag must already be in the local cache (open_clip's Hugging Face or URL
cache), a hub repo in the Hugging Face cache; otherwise pass the checkpoint file or a directory holding
open_clip_config.json and the weights (the layout open_clip's hub repos use).
"""

from __future__ import annotations

import os
from functools import cached_property
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from embedstore.encoders.base import hash_files
from embedstore.encoders.hub import cached_weights, hf_hub_dir, read_json
from embedstore.encoders.image.base import ImageEncoder
from embedstore.encoders.image.weights import not_model_file
from embedstore.errors import EncoderUnavailableError
from embedstore.fsutil import sha256_file
from embedstore.media.images import Preprocess


class OpenCLIPEncoder(ImageEncoder):
    scheme = "clip"
    text_batch_size = 256

    @cached_property
    def _resolved(self) -> dict:
        """Where the model comes from, without building it: open_clip's name and `pretrained` argument, the
        model and preprocess configs, the quick-GELU flag of a tag, and the files whose hashes identify it."""
        name = self.name
        name = hf_hub_dir(self.spec, name, self.revision,
                          "the repo's directory (open_clip_config.json + weights), clip:/path/to/dir")
        name = name.removeprefix("local-dir:")
        directory = Path(name).expanduser()
        if directory.is_dir():
            directory = directory.resolve()
            cfg = read_json(directory / "open_clip_config.json", self.spec)
            if "model_cfg" not in cfg:
                raise EncoderUnavailableError(f"encoder {self.spec!r}: {directory}/open_clip_config.json has no "
                                              "model_cfg (expected open_clip's hub layout)")
            return {"open_clip": f"local-dir:{directory}", "pretrained": None, "model_cfg": cfg["model_cfg"],
                    "preprocess_cfg": cfg.get("preprocess_cfg", {}), "quick_gelu": False,
                    "files": hash_files(directory, not_model_file)}
        import open_clip
        model_cfg = open_clip.get_model_config(name)
        if model_cfg is None:
            raise EncoderUnavailableError(f"encoder {self.spec!r}: open_clip has no model {name!r} and it is not a "
                                          f"directory; models include {', '.join(open_clip.list_models()[:8])}, ...")
        if not self.revision:
            tags = ", ".join(open_clip.list_pretrained_tags_by_model(name)) or "none"
            raise EncoderUnavailableError(f"encoder {self.spec!r}: say which weights: clip:{name}@<pretrained tag> "
                                          f"(tags: {tags}) or clip:{name}@/path/to/checkpoint")
        if Path(self.revision).expanduser().is_file():
            path = Path(self.revision).expanduser().resolve()
            return {"open_clip": name, "pretrained": str(path), "model_cfg": model_cfg, "preprocess_cfg": {},
                    "quick_gelu": False, "files": {path.name: sha256_file(path)}}
        tag_cfg = open_clip.get_pretrained_cfg(name, self.revision)
        if not tag_cfg:
            raise EncoderUnavailableError(f"encoder {self.spec!r}: {self.revision!r} is neither a file nor a "
                                          f"pretrained tag of {name}; tags: "
                                          f"{open_clip.list_pretrained_tags_by_model(name)}")
        path = self._cached_checkpoint(name, tag_cfg)
        keys = ("mean", "std", "interpolation", "resize_mode", "fill_color")
        return {"open_clip": name, "pretrained": str(path), "model_cfg": model_cfg,
                "preprocess_cfg": {k: tag_cfg[k] for k in keys if k in tag_cfg},
                "quick_gelu": bool(tag_cfg.get("quick_gelu", False)), "files": {path.name: sha256_file(path)}}

    def _cached_checkpoint(self, name: str, tag_cfg: dict) -> Path:
        """A tag's checkpoint from open_clip's caches only (the Hugging Face cache, ~/.cache/clip)."""
        repo, filename = os.path.split(tag_cfg.get("hf_hub") or "")
        names = (filename,) if filename else ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")
        if filename.endswith((".bin", ".pth")):
            names = (filename[:-4] + ".safetensors", filename)
        return cached_weights(self.spec, repo or None, names, tag_cfg.get("url"), Path("~/.cache/clip").expanduser(),
                              f"the CLIP weights {name}@{self.revision}",
                              f"the file, clip:{name}@/path/to/open_clip_pytorch_model.bin, or the hub repo's "
                              "directory, clip:/path/to/dir")

    @cached_property
    def preprocess(self) -> Preprocess:
        from open_clip.transform import PreprocessCfg, merge_preprocess_dict
        r = self._resolved
        size = r["model_cfg"]["vision_cfg"].get("image_size", 224)
        cfg = merge_preprocess_dict(PreprocessCfg(size=size), r["preprocess_cfg"])
        h, w = (cfg["size"], cfg["size"]) if isinstance(cfg["size"], int) else tuple(cfg["size"])
        common = dict(size=(h, w), resize=(h, w), interpolation=cfg["interpolation"], mean=tuple(cfg["mean"]),
                      std=tuple(cfg["std"]), draft=self._draft)
        if cfg["resize_mode"] == "squash":
            return Preprocess(mode="squash", **common)
        if cfg["resize_mode"] == "longest":
            return Preprocess(mode="keep-ratio", longest=1.0, fill=(int(cfg.get("fill_color", 0)),) * 3, **common)
        return Preprocess(mode="shortest", **common)

    def _weights_identity(self) -> dict:
        r = self._resolved
        return {"model_cfg": r["model_cfg"], "files": r["files"], "quick_gelu": r["quick_gelu"], "normalize": True}

    unit_norm = True  # encode_image(normalize=True)

    def versions(self) -> dict:
        import open_clip
        return {**super().versions(), "open_clip": open_clip.__version__}

    def _load(self) -> Any:
        import open_clip
        r = self._resolved
        try:
            return open_clip.create_model(r["open_clip"], pretrained=r["pretrained"], force_quick_gelu=r["quick_gelu"],
                                          require_pretrained=True, device="cpu")
        except RuntimeError as e:
            raise EncoderUnavailableError(f"encoder {self.spec!r}: open_clip could not load the weights: "
                                          f"{str(e).splitlines()[-1][:300]}") from None

    def _forward(self, x: Any) -> Any:
        return self._model.encode_image(x, normalize=True)

    # -- the text tower ------------------------------------------------------------------------------------------
    @cached_property
    def _tokenizer(self) -> Any:
        import open_clip
        return open_clip.get_tokenizer(self._resolved["open_clip"])

    def embed_text(self, texts: Sequence[str]) -> np.ndarray:
        """L2-normalised text-tower vectors [n, dim], in the image vectors' space (text-to-image search, zero-shot
        labels). Not cached in the store: queries and prompts are few."""
        import torch
        out = []
        for i in range(0, len(texts), self.text_batch_size):
            tokens = self._tokenizer(list(texts[i:i + self.text_batch_size])).to(self._device)
            with torch.inference_mode(), self.autocast():
                out.append(self._model.encode_text(tokens, normalize=True).float().cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, self.dim), np.float32)

    @property
    def logit_scale(self) -> float:
        """The temperature CLIP was trained with: softmax(logit_scale * cosine) gives zero-shot probabilities."""
        return float(self._model.logit_scale.detach().exp())
