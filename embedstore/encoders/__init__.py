"""Encoders: one base class (base.py), one spec grammar and registry (registry.py), a module per family."""

from embedstore.encoders.base import Embedded, Encoder
from embedstore.encoders.registry import get_encoder, list_encoders, parse_spec

__all__ = ["Embedded", "Encoder", "get_encoder", "list_encoders", "parse_spec"]
