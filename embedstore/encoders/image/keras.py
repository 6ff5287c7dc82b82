"""`keras:<model.keras | model.h5 | model dir>`: a Keras 3 image model run on the torch backend (no TensorFlow),
its features before the classifier.

Keras is imported lazily with KERAS_BACKEND=torch (a Keras already imported with another backend is refused: one
process has one backend). The model is loaded with `compile=False` and in Keras' safe mode (no Python `lambda`
code is run from a file).

Features: the layer feeding the classifier (a final Dense on vectors, or the 1x1 Conv2D of MobileNet's heads,
behind any softmax/flatten/reshape/dropout), e.g. `avg_pool` of keras.applications.ResNet50; a model without a
classifier gives its output. `?layer=<name>` takes another layer. A 4-D feature map is averaged over space.

Preprocessing: plain resize ("squash", no crop) to the model's input size (224 where it is None), as
`keras.utils.load_img(target_size=...)` does, then the application's own `preprocess_input` written as mean/std
(caffe: RGB->BGR and ImageNet means; tf: x / 127.5 - 1; torch: ImageNet mean/std; none: 0..255 as they are, for
the applications whose models hold their own Rescaling/Normalization layers). The application is read from the
model's name (`resnet50`, `mobilenetv2_1.00_224`, ...), else `?preprocess=caffe|tf|torch|none|<application>`
must say it. `?interpolation=` chooses the resize filter (bilinear; `nearest` is load_img's default).
"""

from __future__ import annotations

import os
import re
import sys
import zipfile
from functools import cached_property
from pathlib import Path
from typing import Any

from embedstore.encoders.base import hash_files
from embedstore.encoders.image.base import ImageEncoder
from embedstore.encoders.options import Option, merge
from embedstore.errors import EncoderUnavailableError, InputError
from embedstore.fsutil import sha256_file
from embedstore.media.images import Preprocess

# keras.applications' preprocess_input modes as (mean, std) in 0..1 units, RGB order, and whether the model reads
# BGR: the base computes (x - 255 mean) / (255 std) on 0..255 pixels, which is each mode's formula.
CAFFE_MEAN_RGB = (123.68, 116.779, 103.939)  # keras' BGR means [103.939, 116.779, 123.68], reversed
MODES: dict[str, tuple[tuple[float, float, float], tuple[float, float, float], bool]] = {
    "caffe": (tuple(m / 255 for m in CAFFE_MEAN_RGB), (1 / 255,) * 3, True),  # type: ignore[dict-item]
    "tf": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5), False),                          # x / 127.5 - 1
    "torch": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225), False),          # x / 255, ImageNet mean/std
    "none": ((0.0, 0.0, 0.0), (1 / 255,) * 3, False),                         # 0..255 unchanged
}

# keras.applications: (model name pattern, module whose preprocess_input applies, its mode). Order matters where
# one name starts another (resnet50v2 / resnet50, mobilenetv2 / mobilenet, efficientnetv2 / efficientnet).
APPLICATIONS: tuple[tuple[str, str, str], ...] = (
    (r"resnet(50|101|152)v2", "resnet_v2", "tf"),
    (r"resnet(50|101|152)", "resnet", "caffe"),
    (r"vgg16", "vgg16", "caffe"),
    (r"vgg19", "vgg19", "caffe"),
    (r"xception", "xception", "tf"),
    (r"inception_v3", "inception_v3", "tf"),
    (r"inception_resnet_v2", "inception_resnet_v2", "tf"),
    (r"mobilenetv2_[0-9.]+_[0-9]+", "mobilenet_v2", "tf"),
    (r"mobilenet_[0-9.]+_[0-9]+", "mobilenet", "tf"),
    (r"mobilenetv3(small|large)", "mobilenet_v3", "none"),
    (r"densenet(121|169|201)", "densenet", "torch"),
    (r"nasnet_(mobile|large)", "nasnet", "tf"),
    (r"efficientnetv2-(b[0-3]|s|m|l)", "efficientnet_v2", "none"),
    (r"efficientnetb[0-7]", "efficientnet", "none"),
    (r"convnext_(tiny|small|base|large|xlarge)", "convnext", "none"),
)
MODULE_MODES = {module: mode for _, module, mode in APPLICATIONS} | {"resnet50": "caffe"}  # keras' alias module
# Layers that pass a classifier's output through (behind it) or do nothing at inference (before it).
_HEAD_TAIL = ("Activation", "Softmax", "Flatten", "Reshape")
_DROPOUTS = ("Dropout", "SpatialDropout1D", "SpatialDropout2D", "GaussianDropout", "GaussianNoise", "AlphaDropout")
INTERPOLATIONS = ("bilinear", "nearest", "bicubic", "lanczos", "box", "hamming")  # Pillow's, as load_img takes them
NEEDS_TF = ("load it with TensorFlow (pip install tensorflow; tf.keras) and save it again in Keras 3's format: "
            "model.save('model.keras'), then use keras:model.keras")


def application_of(name: str) -> tuple[str, str] | None:
    """(keras.applications module, preprocess mode) for a model name keras.applications gives, else None."""
    for pattern, module, mode in APPLICATIONS:
        if re.fullmatch(pattern, name, flags=re.IGNORECASE):
            return module, mode
    return None


def parse_preprocess(spec: str, value: str) -> tuple[str, str]:
    """?preprocess= as (what it names, mode): a mode, a keras.applications module or a model name."""
    low = value.strip().lower()
    if low in MODES:
        return low, low
    if low in MODULE_MODES:
        return low, MODULE_MODES[low]
    found = application_of(low)
    if found:
        return found
    raise InputError(f"encoder {spec!r}: option preprocess takes a mode ({'|'.join(MODES)}) or a keras.applications "
                     f"module ({', '.join(sorted(MODULE_MODES))}), not {value!r}")


def import_keras() -> Any:
    """Keras 3 on the torch backend: KERAS_BACKEND is set to torch before the first import (a process has one
    backend, so a Keras imported earlier with another one is refused)."""
    if "keras" not in sys.modules:
        os.environ["KERAS_BACKEND"] = "torch"
    try:
        import keras
    except ImportError as e:
        raise EncoderUnavailableError(f"the keras: encoder needs Keras 3 on the torch backend ({e}); install it with "
                                      "pip install 'embedstore[keras]' (keras>=3.0, no TensorFlow needed)") from None
    version = getattr(keras, "__version__", "0")
    if int(version.split(".")[0]) < 3:
        raise EncoderUnavailableError(f"the keras: encoder needs Keras 3, found keras {version} (Keras 2 runs only on "
                                      "TensorFlow); pip install 'keras>=3'")
    backend = keras.backend.backend()
    if backend != "torch":
        raise EncoderUnavailableError(
            f"keras was already imported in this process with the {backend!r} backend; the keras: encoder runs "
            "models on torch: set KERAS_BACKEND=torch before anything imports keras (or start a new process)")
    return keras


class KerasEncoder(ImageEncoder):
    """`keras:<file or dir>[?layer=<name>&preprocess=<mode or application>&interpolation=<filter>]`."""

    scheme = "keras"
    exports_to_onnx = False
    OPTIONS = merge(ImageEncoder.OPTIONS, (
        Option("layer", "str", fingerprint=True,
               help="layer whose output is the feature (default: the one feeding the classifier)"),
        Option("preprocess", "str", fingerprint=True,
               help="caffe|tf|torch|none or a keras.applications module (default: read from the model's name)"),
        Option("interpolation", "choice", "bilinear", INTERPOLATIONS, fingerprint=True,
               help="resize filter to the model's input size (nearest = keras.utils.load_img's default)")))

    def __init__(self, spec: str, name: str, options: dict[str, str], revision: str | None = None):
        super().__init__(spec, name, options, revision)
        self._given_preprocess = parse_preprocess(spec, self.opts["preprocess"]) if self.opts["preprocess"] else None

    # -- the file --------------------------------------------------------------------------------------------
    @cached_property
    def _path(self) -> Path:
        """The model file or directory, checked for what Keras 3 can read without TensorFlow."""
        path = Path(self.name).expanduser()
        expected = ("expected a Keras 3 .keras file (model.save('model.keras')), a legacy .h5 file or an unzipped "
                    ".keras directory (config.json + model.weights.h5)")
        if not self.name:
            raise InputError(f"encoder {self.spec!r}: no model path; {expected}, e.g. keras:/models/resnet50.keras")
        if not path.exists():
            raise EncoderUnavailableError(f"encoder {self.spec!r}: no Keras model at {path} (not found); {expected}")
        path = path.resolve()
        if path.is_dir():
            if (path / "saved_model.pb").is_file() or (path / "saved_model.pbtxt").is_file():
                raise EncoderUnavailableError(f"encoder {self.spec!r}: {path} is a TensorFlow SavedModel, which only "
                                              f"TensorFlow can load (Keras 3 cannot); {NEEDS_TF}")
            if not (path / "config.json").is_file():
                raise EncoderUnavailableError(f"encoder {self.spec!r}: the directory {path} holds no Keras model "
                                              f"(no config.json); {expected}")
        elif path.suffix == ".pb":
            raise EncoderUnavailableError(f"encoder {self.spec!r}: {path.name} is a TensorFlow graph, which only "
                                          f"TensorFlow can load; {NEEDS_TF}")
        elif path.suffix == ".keras":
            if not zipfile.is_zipfile(path):
                raise EncoderUnavailableError(f"encoder {self.spec!r}: {path} is not a .keras archive (a zip of "
                                              "config.json and weights): it is damaged or another format; " + expected)
        elif path.suffix not in (".h5", ".hdf5"):
            raise EncoderUnavailableError(f"encoder {self.spec!r}: cannot tell what {path.name} is from its suffix "
                                          f"{path.suffix or '(none)'}; {expected}")
        return path

    @cached_property
    def _keras_model(self) -> Any:
        """The whole model as saved, loaded on this encoder's device."""
        keras = import_keras()
        path = self._path
        legacy = path.suffix in (".h5", ".hdf5")
        try:
            with keras.device(self._device):
                return keras.saving.load_model(str(path), compile=False, safe_mode=True)
        except Exception as e:  # noqa: BLE001 - Keras raises many types; each becomes one clear message
            full = " ".join(str(e).split())
            why = (full.split(". ")[0] or full)[:300]  # Keras appends long advice after its first sentence
            if "lambda" in full.lower() and "safe_mode" in full:
                raise EncoderUnavailableError(
                    f"encoder {self.spec!r}: {path.name} holds a Lambda layer (Python code), which embedstore does "
                    "not run from a file (Keras' safe mode); replace it by built-in layers and save the model again"
                ) from None
            unknown = "Could not locate" in full or "Unknown layer" in full
            if (legacy and unknown) or any(w in full for w in ("TFOpLambda", "SlicingOpLambda", "tensorflow")):
                raise EncoderUnavailableError(
                    f"encoder {self.spec!r}: Keras 3 cannot load {path.name} without TensorFlow ({why}); a model "
                    f"saved by tf.keras may hold TensorFlow ops or layers Keras 3 lacks: {NEEDS_TF}") from None
            if unknown:
                raise EncoderUnavailableError(
                    f"encoder {self.spec!r}: {path.name} uses a custom class Keras cannot find ({why}); embedstore "
                    "loads models built from Keras' own layers only") from None
            raise EncoderUnavailableError(f"encoder {self.spec!r}: Keras cannot load {path} "
                                          f"({type(e).__name__}: {why})") from None

    # -- what the model says ---------------------------------------------------------------------------------
    @cached_property
    def _input(self) -> tuple[int, int, bool]:
        """(height, width, channels_last) from the model's one input; 224 where a side is None."""
        model = self._keras_model
        inputs = list(getattr(model, "inputs", None) or [])
        if len(inputs) != 1:
            raise EncoderUnavailableError(f"encoder {self.spec!r}: expected a model with one image input, found "
                                          f"{len(inputs) or 'no known'} inputs; build it with keras.Input(shape=(h, w, "
                                          "3)) before saving")
        shape = tuple(inputs[0].shape)
        if len(shape) != 4:
            raise EncoderUnavailableError(f"encoder {self.spec!r}: not an image model: its input has shape {shape} "
                                          "(expected a batch of images, [batch, height, width, 3])")
        if shape[-1] == 3:
            h, w, last = shape[1], shape[2], True
        elif shape[1] == 3:
            h, w, last = shape[2], shape[3], False
        else:
            raise EncoderUnavailableError(f"encoder {self.spec!r}: the model's input {shape} has no axis of 3 colour "
                                          "channels; embedstore feeds RGB images (batch, height, width, 3)")
        return int(h or 224), int(w or 224), last

    @cached_property
    def _application(self) -> tuple[str, str] | None:
        """(keras.applications module, mode) from the model's name, or from the one application nested in it
        (keras.Sequential([ResNet50(...), Dense(...)]))."""
        model = self._keras_model
        found = application_of(model.name)
        if found:
            return found
        keras = import_keras()
        nested = {application_of(layer.name) for layer in model.layers if isinstance(layer, keras.Model)} - {None}
        return nested.pop() if len(nested) == 1 else None

    @cached_property
    def _mode(self) -> tuple[str, str]:
        """(what chose it, preprocess mode)."""
        _ = self._input  # a model that is not an image model says so first
        if self._given_preprocess:
            return self._given_preprocess
        app = self._application
        if app is None:
            raise EncoderUnavailableError(
                f"encoder {self.spec!r}: the model {self._keras_model.name!r} is not one keras.applications names, so "
                "its preprocessing is unknown; say it with ?preprocess=caffe|tf|torch|none or the application, e.g. "
                f"keras:{self.name}?preprocess=tf (pixels / 127.5 - 1) or ?preprocess=none (0..255 as they are)")
        module, mode = app
        if mode == "none" and not self._has_own_preprocessing():
            raise EncoderUnavailableError(
                f"encoder {self.spec!r}: a keras.applications.{module} model expects its own Rescaling/Normalization "
                "layers, and this one has none (built with include_preprocessing=False?); say how pixels are scaled "
                "with ?preprocess=tf|torch|caffe")
        return module, mode

    def _has_own_preprocessing(self) -> bool:
        keras = import_keras()
        kinds = (keras.layers.Rescaling, keras.layers.Normalization)
        models = [self._keras_model] + [m for m in self._keras_model.layers if isinstance(m, keras.Model)]
        return any(isinstance(layer, kinds) for m in models for layer in m.layers[:6])

    @cached_property
    def preprocess(self) -> Preprocess:
        h, w, _ = self._input
        mean, std, _ = MODES[self._mode[1]]
        return Preprocess(size=(h, w), resize=(h, w), mode="squash", interpolation=self.opts["interpolation"],
                          mean=mean, std=std, draft=self._draft)

    # -- the feature layer -----------------------------------------------------------------------------------
    @cached_property
    def _feature(self) -> tuple[Any, str]:
        """(symbolic output tensor, layer name) of the features."""
        model = self._keras_model
        _ = self._input
        if self.opts["layer"]:
            return self._named_layer(self.opts["layer"])
        outputs = list(getattr(model, "outputs", None) or [])
        if len(outputs) != 1:
            raise EncoderUnavailableError(f"encoder {self.spec!r}: the model has {len(outputs)} outputs; choose the "
                                          f"feature layer with ?layer= (e.g. {', '.join(self._some_names())})")
        out = outputs[0]
        tensor, layer = self._before_classifier(out)
        return (tensor, layer) if tensor is not None else (out, _producer(out)[0].name)

    def _before_classifier(self, out: Any) -> tuple[Any, str]:
        """What feeds the classifier behind `out` (skipping softmax/flatten/reshape after it and dropout before
        it), or (None, '') when `out` is not a classifier's."""
        t = out
        layer, parents = _producer(t)
        while type(layer).__name__ in _HEAD_TAIL and len(parents) == 1:
            t = parents[0]
            layer, parents = _producer(t)
        kind = type(layer).__name__
        shape = tuple(parents[0].shape) if len(parents) == 1 else ()
        on_vectors = kind == "Dense" and len(shape) == 2
        spatial = (shape[1:3] if self._input[2] else shape[2:4]) if len(shape) == 4 else ()
        on_pooled = kind == "Conv2D" and tuple(spatial) == (1, 1)  # MobileNet's 1x1 conv on the pooled map
        if not (on_vectors or on_pooled):
            return None, ""
        t = parents[0]
        layer, parents = _producer(t)
        while type(layer).__name__ in _DROPOUTS and len(parents) == 1:
            t = parents[0]
            layer, parents = _producer(t)
        return t, layer.name

    def _named_layer(self, name: str) -> tuple[Any, str]:
        model = self._keras_model
        try:
            layer = model.get_layer(name)
        except ValueError:
            raise InputError(f"encoder {self.spec!r}: the model has no layer {name!r}; its last layers are "
                             f"{', '.join(self._some_names())} ({len(model.layers)} in all: model.summary() lists "
                             "them)") from None
        try:
            tensor = layer.output
        except (AttributeError, ValueError) as e:
            raise InputError(f"encoder {self.spec!r}: layer {name!r} has no single output in this model ({e}); "
                             "choose another with ?layer=") from None
        if not hasattr(tensor, "shape"):
            raise InputError(f"encoder {self.spec!r}: layer {name!r} has {len(tensor)} outputs; choose a layer with "
                             "one")
        return tensor, name

    def _some_names(self) -> list[str]:
        return [repr(layer.name) for layer in self._keras_model.layers[-8:]]

    @cached_property
    def _pool(self) -> str:
        """'avg' where the feature is a [batch, h, w, c] map (averaged over space), else 'none'."""
        tensor, layer = self._feature
        rank = len(tensor.shape)
        if rank not in (2, 4):
            raise InputError(f"encoder {self.spec!r}: layer {layer!r} gives {tuple(tensor.shape)}, neither vectors "
                             "(2-D) nor a feature map (4-D, averaged over space); choose another with ?layer= (e.g. "
                             f"{', '.join(self._some_names())})")
        return "avg" if rank == 4 else "none"

    # -- identity ----------------------------------------------------------------------------------------------
    def _weights_identity(self) -> dict:
        path = self._path
        files = {"files": hash_files(path)} if path.is_dir() else {"sha256": sha256_file(path)}
        # the mode, not what named it: ?preprocess=caffe and a resnet50's own name give the same vectors
        return {"model": self._keras_model.name, **files, "layer": self._feature[1], "pool": self._pool,
                "preprocess_input": self._mode[1], "channels": "last" if self._input[2] else "first"}

    def versions(self) -> dict:
        return {**super().versions(), "keras": import_keras().__version__}

    # -- running -----------------------------------------------------------------------------------------------
    def _load(self) -> Any:
        """The sub-model from the input to the feature layer (it shares the loaded model's weights)."""
        keras = import_keras()
        tensor, _ = self._feature
        _ = self._pool  # checks the rank before anything runs
        with keras.device(self._device):
            # one input tensor, not the list: called with one batch, Keras would warn that the structures differ
            return keras.Model(self._keras_model.inputs[0], tensor, name=f"{self._keras_model.name}_features")

    @cached_property
    def _model(self) -> Any:
        # Keras places its variables itself (loaded under keras.device): torch's .to() would detach them
        return self._load()

    def _forward(self, x: Any) -> Any:
        """Normalised RGB NCHW -> the model's layout (BGR for caffe, NHWC for channels_last) -> pooled [n, dim]."""
        keras = import_keras()
        _, _, last = self._input
        if MODES[self._mode[1]][2]:
            x = x.flip(1)
        if last:
            x = x.permute(0, 2, 3, 1)
        with keras.device(self._device):
            out = self._model(x, training=False)
        if self._pool == "avg":
            out = out.mean(dim=(1, 2) if last else (2, 3))
        return out


def _producer(tensor: Any) -> tuple[Any, list]:
    """(the layer that made a symbolic tensor, that call's input tensors)."""
    history = tensor._keras_history
    layer = history.operation
    node = layer._inbound_nodes[history.node_index]
    return layer, list(node.input_tensors)
