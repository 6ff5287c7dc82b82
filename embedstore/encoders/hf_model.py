"""`HFModel`: the base of encoders that run a Hugging Face model directory (text `st:`/`hf:`, DNA `hf-dna:`, speech
`hf-audio:`): where it is, what its weights hash to, its `max_length` and `layer` options (`hidden_layer` reads the
chosen hidden state), and the library versions recorded with it."""

from __future__ import annotations

from functools import cached_property
from pathlib import Path
from typing import Any

from embedstore.encoders.base import hash_files
from embedstore.encoders.device import TorchEncoder
from embedstore.encoders.hub import read_json, resolve_model_dir, unused_by_torch
from embedstore.encoders.options import Option, merge
from embedstore.errors import EncoderUnavailableError, InputError

MAX_LENGTH = Option("max_length", "int", None, low=1, high=1_000_000, fingerprint=True,
                    help="tokens per input (default: the model's own limit)")
LAYER = Option("layer", "int", -1, fingerprint=True,
               help="hidden layer: -1 = the last (default), -k = k-th from the end, k >= 0 = hidden_states[k] "
                    "(0 = the embeddings)")


def hidden_layer(out: Any, layer: int, spec: str) -> Any:
    """Hidden state `layer` of a model output: -1 is the model's own output (last_hidden_state, after any final
    norm); other values index `hidden_states` (asked for with output_hidden_states=True; 0 = the embeddings).
    A tuple output (some models' own code) is read as (last hidden state, ...)."""
    if isinstance(out, (tuple, list)):
        if layer == -1:
            return out[0]
        raise EncoderUnavailableError(f"encoder {spec!r}: layer={layer} needs the model's hidden states by name, "
                                      "and its output is a plain tuple; omit layer (the last layer) or use a model "
                                      "that returns a transformers ModelOutput")
    last, states = getattr(out, "last_hidden_state", None), getattr(out, "hidden_states", None)
    if layer == -1 and last is not None:
        return last
    if states is None:
        want = "a last hidden state" if layer == -1 else f"hidden states (for layer={layer})"
        raise EncoderUnavailableError(f"encoder {spec!r}: the model returned {type(out).__name__} without {want}; "
                                      "expected a base model (AutoModel) output")
    if not -len(states) <= layer < len(states):
        n = len(states) - 1
        raise InputError(f"encoder {spec!r}: layer={layer} is out of range: the model has {n} layer"
                         f"{'' if n == 1 else 's'}, so layer takes {-n - 1}..{n} (0 = the embeddings, -1 = the last "
                         "layer)")
    return states[layer]


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
