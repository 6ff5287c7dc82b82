"""Encoders: one base class and batching loop (base.py), one option grammar (options.py), one spec grammar and
registry (registry.py), where weights come from (hub.py), torch device/dtype (device.py), and a subpackage per
family: text/, image/, dna/."""

from embedstore.encoders.base import Embedded, Encoder
from embedstore.encoders.registry import get_encoder, list_encoders, parse_spec

__all__ = ["Embedded", "Encoder", "get_encoder", "list_encoders", "parse_spec"]
