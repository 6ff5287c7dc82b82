"""`keras:` image encoder: keras.applications ResNet50 and MobileNetV2 (random weights: none can be downloaded)
saved as .keras files and ingested through their specs must give what Keras itself gives on the same images
(keras.utils.load_img + the application's preprocess_input + the pooling layer); ?layer=, ?preprocess=, the
fingerprint, and clear errors for files Keras 3 cannot read without TensorFlow."""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
import types
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from embedstore.errors import EncoderUnavailableError, InputError
from tests.conftest import cli

if importlib.util.find_spec("keras") is None:
    pytest.skip("needs keras>=3 (pip install 'embedstore[keras]')", allow_module_level=True)

# Keras' torch backend converts variables with np.array(tensor) when saving, which numpy 2 warns about (Keras'
# own code, once per weight)
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword")


@pytest.fixture(scope="module")
def keras():
    from embedstore.encoders.image.keras import import_keras
    try:
        return import_keras()
    except EncoderUnavailableError as e:
        pytest.skip(f"keras is installed but not usable on torch here: {e}")


def _enc(spec: str):
    from embedstore.encoders import get_encoder
    return get_encoder(spec)


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    """RGB PNGs of several sizes and aspect ratios (resizing is checked), in two class folders."""
    from PIL import Image
    root = tmp_path_factory.mktemp("keras-photos")
    rng = np.random.default_rng(0)
    for cls, tint in (("red", (200, 60, 60)), ("blue", (60, 60, 200))):
        (root / cls).mkdir()
        for i, (w, h) in enumerate([(80, 50), (37, 90), (64, 64)]):
            a = np.clip(rng.normal(0, 50, (h, w, 3)) + np.array(tint), 0, 255).astype(np.uint8)
            Image.fromarray(a).save(root / cls / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def apps(keras, tmp_path_factory) -> dict[str, Path]:
    """keras.applications models at small input sizes, saved where `keras:<path>` loads them."""
    root = tmp_path_factory.mktemp("keras-apps")
    keras.utils.set_random_seed(0)
    paths = {"resnet": root / "resnet50.keras", "mobilenet_v2": root / "mnv2.keras"}
    keras.applications.ResNet50(weights=None, input_shape=(64, 64, 3), classes=10).save(paths["resnet"])
    keras.applications.MobileNetV2(weights=None, input_shape=(96, 96, 3), alpha=0.35, classes=10).save(
        paths["mobilenet_v2"])
    return paths


@pytest.fixture(scope="module")
def custom(keras, tmp_path_factory) -> Path:
    """A small functional model no keras.applications name describes."""
    layers = keras.layers
    keras.utils.set_random_seed(1)
    inp = keras.Input((32, 40, 3))
    x = layers.Conv2D(8, 3, activation="relu", name="conv_a")(inp)
    x = layers.Conv2D(12, 3, name="conv_b")(x)
    x = layers.GlobalMaxPooling2D(name="pool")(x)
    out = layers.Dense(3, activation="softmax", name="head")(layers.Dropout(0.2)(x))
    path = tmp_path_factory.mktemp("keras-custom") / "mine.keras"
    keras.Model(inp, out, name="mine").save(path)
    return path


@pytest.fixture(scope="module")
def encoders(apps) -> dict:
    """One default encoder per application, loaded once for the tests that share it."""
    return {app: _enc(f"keras:{path}") for app, path in apps.items()}


def _keras_reference(keras, path: Path | Any, files: list[Path], layer: str, preprocess, size: tuple[int, int],
                     interpolation: str = "bilinear") -> np.ndarray:
    """What a Keras user computes: load_img at the model's size, preprocess_input, the layer's output (of the
    model saved at `path`, or of a model already loaded)."""
    model = keras.saving.load_model(path, compile=False) if isinstance(path, Path) else path
    x = np.stack([keras.utils.img_to_array(keras.utils.load_img(f, target_size=size, interpolation=interpolation))
                  for f in files])
    sub = keras.Model(model.inputs[0], model.get_layer(layer).output)
    out = keras.ops.convert_to_numpy(sub(keras.ops.convert_to_tensor(preprocess(x)), training=False))
    return out.mean(axis=(1, 2)) if out.ndim == 4 else out


def _close(ours: np.ndarray, theirs: np.ndarray, rel: float = 1e-4) -> None:
    assert ours.shape == theirs.shape
    err = np.linalg.norm(ours - theirs, axis=1) / np.linalg.norm(theirs, axis=1)
    assert err.max() < rel, f"relative error {err.max():.2e}"


# -- preprocessing ------------------------------------------------------------------------------------------------
def test_every_application_mode_reproduces_its_own_preprocess_input(keras):
    """The mean/std (and BGR flip) each application maps to give exactly its preprocess_input."""
    import importlib

    from embedstore.encoders.image.keras import MODES, MODULE_MODES
    x = np.random.default_rng(0).integers(0, 256, (2, 5, 7, 3)).astype(np.float32)
    for module, mode in MODULE_MODES.items():
        mean, std, bgr = MODES[mode]
        ours = (x - np.float32(mean) * 255) / (np.float32(std) * 255)
        ours = ours[..., ::-1] if bgr else ours
        app = importlib.import_module(f"keras.applications.{module}")
        theirs = keras.ops.convert_to_numpy(app.preprocess_input(x.copy()))
        np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-4, err_msg=module)


def test_resize_is_load_img_plain_resize_without_crop(keras, apps, photos):
    from embedstore.media.images import decode_image
    files = sorted(photos.rglob("*.png"))
    for interpolation in ("nearest", "bilinear"):
        enc = _enc(f"keras:{apps['mobilenet_v2']}?interpolation={interpolation}")
        assert (enc.preprocess.mode, enc.preprocess.size, enc.preprocess.resize) == ("squash", (96, 96), (96, 96))
        for f in files:
            theirs = keras.utils.img_to_array(keras.utils.load_img(f, target_size=(96, 96),
                                                                   interpolation=interpolation))
            assert np.array_equal(decode_image(f.read_bytes(), enc.preprocess), theirs.astype(np.uint8))


# -- keras.applications through the store ---------------------------------------------------------------------
@pytest.mark.model
@pytest.mark.parametrize("app, layer, size, dim", [("resnet", "avg_pool", (64, 64), 2048),
                                                   ("mobilenet_v2", "global_average_pooling2d", (96, 96), 1280)])
def test_ingested_vectors_are_keras_own_features(keras, apps, encoders, photos, store, app, layer, size, dim):
    import importlib
    enc = encoders[app]  # the `keras:<path>` spec's encoder, as store.ingest(encoder="keras:...") makes it
    report = store.ingest(photos, dataset=app, encoder=enc, progress=False)
    assert (report.new_items, report.embedded, report.skipped) == (6, 6, {})
    X, y, fs = store.features(app, encoder=f"keras:{apps[app]}", return_meta=True)
    assert X.shape == (6, dim) and sorted(set(y)) == ["blue", "red"]
    assert enc.identity()["layer"] == layer and enc.identity()["pool"] == "none" and enc.dim == dim
    assert enc.identity()["preprocess_input"] == {"resnet": "caffe", "mobilenet_v2": "tf"}[app]
    preprocess = importlib.import_module(f"keras.applications.{app}").preprocess_input
    # the model Keras loaded from the file (loading it again would only repeat keras.saving.load_model)
    theirs = _keras_reference(keras, enc._keras_model, [photos / k for k in fs.keys], layer, preprocess, size)
    _close(X, theirs)


@pytest.mark.model
def test_layer_option_pools_a_feature_map_and_unknown_layers_list_names(keras, apps, encoders, photos):
    files = sorted(photos.rglob("*.png"))[:3]
    spec = f"keras:{apps['resnet']}"
    enc = _enc(f"{spec}?layer=conv4_block6_out")
    ours = enc.embed([f.read_bytes() for f in files]).vectors
    assert enc.identity()["pool"] == "avg" and ours.shape == (3, 1024)
    theirs = _keras_reference(keras, encoders["resnet"]._keras_model, files, "conv4_block6_out",
                              keras.applications.resnet50.preprocess_input, (64, 64))
    _close(ours, theirs)
    assert enc.fingerprint != encoders["resnet"].fingerprint
    with pytest.raises(InputError, match=r"no layer 'avg_pol'.*'avg_pool', 'predictions'.*model.summary"):
        _enc(f"{spec}?layer=avg_pol").dim


# -- a model of one's own -------------------------------------------------------------------------------------
def test_a_custom_model_needs_preprocess_and_then_matches_keras(keras, custom, photos):
    with pytest.raises(EncoderUnavailableError, match=r"'mine' is not one keras.applications names.*\?preprocess="):
        _enc(f"keras:{custom}").fingerprint
    with pytest.raises(InputError, match="option preprocess takes a mode"):
        _enc(f"keras:{custom}?preprocess=imagenet")
    files = sorted(photos.rglob("*.png"))
    enc = _enc(f"keras:{custom}?preprocess=torch")
    ours = enc.embed([f.read_bytes() for f in files]).vectors
    assert enc.identity()["layer"] == "pool" and ours.shape == (6, 12)  # the dropout before the head is skipped
    torch_mode = lambda x: keras.applications.densenet.preprocess_input(x)  # noqa: E731 - keras' 'torch' mode
    _close(ours, _keras_reference(keras, custom, files, "pool", torch_mode, (32, 40)))
    # a mode and the application that uses it are one preprocessing: one fingerprint, one cache
    assert _enc(f"keras:{custom}?preprocess=densenet").fingerprint == enc.fingerprint
    assert _enc(f"keras:{custom}?preprocess=tf").fingerprint != enc.fingerprint


def test_fingerprint_follows_the_file_bytes_layer_and_preprocessing(keras, custom, tmp_path):
    spec = f"keras:{custom}?preprocess=tf"
    base = _enc(spec).fingerprint
    copy = tmp_path / "elsewhere.keras"
    shutil.copy(custom, copy)
    assert _enc(f"keras:{copy}?preprocess=tf").fingerprint == base  # the bytes, not the path
    model = keras.saving.load_model(custom, compile=False)
    kernel = model.get_layer("conv_b").kernel
    kernel.assign(keras.ops.convert_to_numpy(kernel) + 0.01)
    model.save(copy)
    assert _enc(f"keras:{copy}?preprocess=tf").fingerprint != base
    others = {_enc(f"{spec}&layer=conv_b").fingerprint, _enc(f"keras:{custom}?preprocess=caffe").fingerprint,
              _enc(f"{spec}&interpolation=nearest").fingerprint, _enc(f"{spec}&draft=false").fingerprint}
    assert len(others) == 4 and base not in others
    assert _enc(f"{spec}&batch_size=3").fingerprint == base


def test_channels_first_models_and_unzipped_keras_directories(keras, photos, tmp_path):
    import zipfile
    layers = keras.layers
    keras.utils.set_random_seed(2)
    inp = keras.Input((3, 20, 24))
    x = layers.Conv2D(5, 3, data_format="channels_first", name="conv")(inp)
    x = layers.GlobalAveragePooling2D(data_format="channels_first", name="pool")(x)
    path = tmp_path / "cf.keras"
    keras.Model(inp, layers.Dense(2, name="head")(x), name="cf").save(path)
    zipfile.ZipFile(path).extractall(tmp_path / "cf")  # config.json, metadata.json, model.weights.h5
    files = sorted(photos.rglob("*.png"))[:3]
    enc = _enc(f"keras:{path}?preprocess=tf")
    ours = enc.embed([f.read_bytes() for f in files]).vectors
    assert enc.preprocess.size == (20, 24) and enc.identity()["channels"] == "first"
    tf_mode = lambda x: keras.applications.mobilenet_v2.preprocess_input(x).transpose(0, 3, 1, 2)  # noqa: E731
    _close(ours, _keras_reference(keras, path, files, "pool", tf_mode, (20, 24)))
    from_dir = _enc(f"keras:{tmp_path / 'cf'}?preprocess=tf")
    assert set(from_dir.identity()["files"]) == {"config.json", "metadata.json", "model.weights.h5"}
    np.testing.assert_allclose(from_dir.embed([f.read_bytes() for f in files]).vectors, ours, rtol=1e-6)
    on_map = _enc(f"keras:{path}?preprocess=tf&layer=conv")  # averaged over its channels-first space
    np.testing.assert_allclose(on_map.embed([f.read_bytes() for f in files]).vectors, ours, rtol=1e-5, atol=1e-7)


def test_legacy_h5_loads_without_tensorflow_unless_it_holds_tensorflow_ops(keras, custom, photos, tmp_path):
    import h5py
    files = [f.read_bytes() for f in sorted(photos.rglob("*.png"))[:2]]
    h5 = tmp_path / "mine.h5"
    keras.saving.load_model(custom, compile=False).save(h5)
    same = _enc(f"keras:{custom}?preprocess=tf").embed(files).vectors
    np.testing.assert_allclose(_enc(f"keras:{h5}?preprocess=tf").embed(files).vectors, same, rtol=1e-5)
    with h5py.File(h5, "r+") as f:  # what tf.keras writes for a TensorFlow op called in a functional model
        cfg = json.loads(f.attrs["model_config"])
        cfg["config"]["layers"][1]["class_name"] = "TFOpLambda"
        f.attrs["model_config"] = json.dumps(cfg)
    with pytest.raises(EncoderUnavailableError, match=r"without TensorFlow.*TFOpLambda.*model.save\('model.keras'\)"):
        _enc(f"keras:{h5}?preprocess=tf").fingerprint


def test_clear_errors_for_what_keras_cannot_read(keras, tmp_path):
    with pytest.raises(EncoderUnavailableError, match="no Keras model at .*absent.keras.*not found"):
        _enc(f"keras:{tmp_path}/absent.keras").fingerprint
    saved_model = tmp_path / "exported"
    (saved_model / "variables").mkdir(parents=True)
    (saved_model / "saved_model.pb").write_bytes(b"\x08\x01")
    with pytest.raises(EncoderUnavailableError, match=r"TensorFlow SavedModel.*pip install tensorflow.*\.keras"):
        _enc(f"keras:{saved_model}").fingerprint
    (tmp_path / "broken.keras").write_bytes(b"not a zip")
    with pytest.raises(EncoderUnavailableError, match="not a .keras archive"):
        _enc(f"keras:{tmp_path}/broken.keras").fingerprint
    layers = keras.layers
    vectors = keras.Sequential([keras.Input((10,)), layers.Dense(3)], name="tabular")
    vectors.save(tmp_path / "tabular.keras")
    with pytest.raises(EncoderUnavailableError, match=r"not an image model: its input has shape \(None, 10\)"):
        _enc(f"keras:{tmp_path}/tabular.keras?preprocess=tf").fingerprint
    code = keras.Sequential([keras.Input((8, 8, 3)), layers.Lambda(lambda x: x * 2), layers.Flatten()], name="code")
    code.save(tmp_path / "code.keras")
    with pytest.raises(EncoderUnavailableError, match="Lambda layer .*safe mode"):
        _enc(f"keras:{tmp_path}/code.keras?preprocess=tf").fingerprint
    seq = keras.Sequential([keras.Input((8, 8, 3)), layers.Reshape((8, 24))], name="tokens")
    seq.save(tmp_path / "tokens.keras")
    with pytest.raises(InputError, match=r"gives \(None, 8, 24\), neither vectors"):
        _enc(f"keras:{tmp_path}/tokens.keras?preprocess=tf").dim


def test_keras_with_another_backend_is_refused(monkeypatch):
    from embedstore.encoders.image.keras import import_keras
    fake = types.SimpleNamespace(__version__="3.9.0", backend=types.SimpleNamespace(backend=lambda: "jax"))
    monkeypatch.setitem(sys.modules, "keras", fake)
    with pytest.raises(EncoderUnavailableError, match="already imported .* 'jax' backend.*KERAS_BACKEND=torch"):
        import_keras()


def test_spec_parsing_imports_neither_keras_nor_torch(tmp_path):
    code = (f"import sys; from embedstore.encoders import get_encoder; e = get_encoder('keras:{tmp_path}/m.keras"
            "?preprocess=resnet50&layer=avg_pool'); assert not {'keras', 'torch'} & set(sys.modules), 'imported'")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_cli_ingest_gives_the_api_vectors(keras, custom, photos, tmp_path):
    import embedstore
    spec = f"keras:{custom}?preprocess=tf"
    path = tmp_path / "cli-store"
    out = cli("embedstore", "ingest", str(photos), "--dataset", "pets", "--encoder", spec, "--quiet", store=path)
    assert out.returncode == 0
    with embedstore.open(path, read_only=True) as store:
        X, _, fs = store.features("pets", encoder=spec, return_meta=True)
    ours = _enc(spec).embed([(photos / k).read_bytes() for k in fs.keys]).vectors
    assert X.shape == (6, 12) and np.allclose(X, ours, rtol=1e-5, atol=1e-6)
