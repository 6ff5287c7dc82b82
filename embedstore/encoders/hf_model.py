"""`HFModel`: the base of encoders that run a Hugging Face model directory (text `st:`/`hf:`, DNA `hf-dna:`):
where it is, what its weights hash to, its `max_length` option, and the library versions recorded with it."""

from __future__ import annotations

from functools import cached_property
from pathlib import Path

from embedstore.encoders.base import hash_files
from embedstore.encoders.device import TorchEncoder
from embedstore.encoders.hub import read_json, resolve_model_dir, unused_by_torch
from embedstore.encoders.options import Option, merge

MAX_LENGTH = Option("max_length", "int", None, low=1, high=1_000_000, fingerprint=True,
                    help="tokens per input (default: the model's own limit)")


class HFModel(TorchEncoder):
    """A Hugging Face model directory (local, cached, or pinned hub id): where it is and what its weights hash."""

    OPTIONS = merge(TorchEncoder.OPTIONS, (MAX_LENGTH,))

    @cached_property
    def model_dir(self) -> Path:
        return resolve_model_dir(self.spec, self.name, self.revision)

    @cached_property
    def _weights_hash(self) -> dict[str, str]:
        return hash_files(self.model_dir, unused_by_torch)

    def config_file(self, name: str) -> dict:
        """An optional JSON file of the model directory ({} when absent)."""
        return read_json(self.model_dir / name)

    def versions(self) -> dict:
        import tokenizers
        import transformers
        return {**super().versions(), "transformers": transformers.__version__, "tokenizers": tokenizers.__version__}
