"""`torchvision:<builder>[@<weights enum member>]?weights=<file>`: a torchvision classifier minus its last Linear
layer. No weights are downloaded: they must be in the torch hub cache or given as a file."""

from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from functools import cached_property
from pathlib import Path
from typing import Any, Iterator

from embedstore.encoders.hub import given_file, offline_error
from embedstore.encoders.image.base import ImageEncoder
from embedstore.encoders.image.weights import read_state_dict
from embedstore.encoders.options import Option, merge
from embedstore.errors import EncoderUnavailableError
from embedstore.fsutil import sha256_file
from embedstore.media.images import Preprocess


class TorchvisionEncoder(ImageEncoder):
    """`torchvision:<builder>[@<weights enum member>]`, e.g. torchvision:resnet50@IMAGENET1K_V2 (default:
    DEFAULT): the last Linear layer (the ImageNet classifier) is replaced by identity; the rest of the model,
    its pooling included, is as torchvision defines it."""

    scheme = "torchvision"
    OPTIONS = merge(ImageEncoder.OPTIONS, (Option("weights", "str", fingerprint=True, help="checkpoint file"),))

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
        if self.opts["weights"]:
            return given_file(self.spec, self.opts["weights"])
        filename = os.path.basename(w.url)
        path = Path(torch.hub.get_dir()) / "checkpoints" / filename
        if not path.is_file():
            raise offline_error(self.spec, f"the weights {type(w).__name__}.{w.name} ({filename})",
                                f"torchvision:{self.name}?weights=/path/to/{filename} (from {w.url})",
                                where=f"the torch hub cache ({path.parent})")
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
        import torch
        import torchvision.models as tvm
        # The builder sets the arguments these weights need (e.g. inception's transform_input) and loads them
        # through torch.hub, which reads a checkpoint already in its cache instead of downloading: it is given a
        # private cache holding exactly the file the fingerprint hashed (read safely first, see read_state_dict).
        w = self._weights_enum
        with private_hub_cache(self._weights_file, os.path.basename(w.url)):
            try:
                model = tvm.get_model(self.name, weights=w)
            except RuntimeError as e:
                raise EncoderUnavailableError(f"encoder {self.spec!r}: {self._weights_file.name} does not fit "
                                              f"{self.name}: {str(e).splitlines()[0]}") from None
        n_classes = len(w.meta.get("categories") or [])
        linears = [(n, m) for n, m in model.named_modules()
                   if isinstance(m, torch.nn.Linear) and m.out_features == n_classes]
        if not linears:
            raise EncoderUnavailableError(f"encoder {self.spec!r}: found no Linear classifier with {n_classes} "
                                          f"outputs in {self.name} to take features before")
        parent_name, _, attr = linears[-1][0].rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, attr, torch.nn.Identity())
        return model


@contextmanager
def private_hub_cache(weights: Path, filename: str) -> Iterator[None]:
    """torch.hub pointed at a temporary directory whose checkpoints/<filename> is `weights` (as a plain torch
    checkpoint of its tensors), restored afterwards; nothing can be downloaded through it."""
    import torch
    state = read_state_dict(weights)  # refuses unsafe pickles and non-tensor files before torch.hub reads it
    before = torch.hub.get_dir()
    with tempfile.TemporaryDirectory(prefix="embedstore-hub-") as tmp:
        target = Path(tmp) / "checkpoints" / filename
        target.parent.mkdir()
        torch.save(state, target)
        del state
        torch.hub.set_dir(tmp)
        try:
            yield
        finally:
            torch.hub.set_dir(before)
