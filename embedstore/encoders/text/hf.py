"""`hf:<dir or hub id>[@revision]?pooling=mean|cls|max|last&normalize=true&layer=-1`: a Hugging Face text model's
hidden states, pooled as declared.

Three families run. Encoders (BERT, RoBERTa...). Decoder-only models (GPT-2, Llama...; causal attention): a
tokenizer without a pad token pads with its end-of-text token, else with the token of id 0; no token is added, so
the embeddings stay as trained and the weights hash is unchanged, and which id pads changes no vector (padded
positions are masked out of attention and pooling). The encoder of encoder-decoder models (T5, BART): loaded
without the decoder's weights where transformers has an encoder-only class (T5EncoderModel), else loaded whole and
cut to `get_encoder()`. Batches are padded on the right whatever the tokenizer says, so that every real token keeps
the position it has when its text runs alone (absolute position embeddings) and a vector never depends on its
batchmates.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from embedstore.encoders.hf_model import LAYER, hidden_layer
from embedstore.encoders.options import Option, merge
from embedstore.encoders.text.transformer import TransformerTextEncoder
from embedstore.errors import EncoderUnavailableError, InputError

SUPPORTED = ("hf: runs Hugging Face text models: encoders (BERT-like), decoder-only models (GPT-2-like) and the "
             "encoder of encoder-decoder models (T5, BART)")
OTHER_MODALITIES = ("pixel_values", "input_features", "input_values")  # image and speech models' inputs




@dataclass(frozen=True)
class _Loaded:
    tokenizer: Any
    module: Any                 # what runs: the model, or the encoder of an encoder-decoder model
    inputs: tuple[str, ...]     # tokenizer outputs the module takes
    extra: dict[str, bool]      # further forward arguments (no cache; hidden states when a layer is asked for)


class HFTextEncoder(TransformerTextEncoder):
    """Pooling: `mean` over real tokens (the default for every family, decoder-only included: a causal model's last
    token has seen the whole text, but its state is shaped to predict the next token, and the mean over all
    positions is the steadier feature from a frozen model not trained to embed; one default also keeps the
    fingerprints of existing stores), `last` (the last real token: the one position of a causal model that has
    seen the whole text, for models trained to embed that way), `max`, and `cls` (the first token), which is
    refused for decoder-only models: under causal attention the first token sees only itself."""

    scheme = "hf"
    OPTIONS = merge(TransformerTextEncoder.OPTIONS, (
        Option("pooling", "choice", "mean", ("mean", "cls", "max", "last"), fingerprint=True,
               help="mean over real tokens, the first token, the maximum, or the last real token"),
        Option("normalize", "bool", True, fingerprint=True, help="L2-normalise the pooled vector"),
        LAYER))

    @property
    def pooling(self) -> str:
        return self.opts["pooling"]

    @property
    def normalize(self) -> bool:
        return self.opts["normalize"]

    @property
    def layer(self) -> int:
        return self.opts["layer"]

    @property
    def unit_norm(self) -> bool:
        return self.normalize

    @cached_property
    def _loaded(self) -> _Loaded:
        import torch
        from transformers import AutoConfig, AutoTokenizer
        from transformers.utils import logging as hf_logging
        hf_logging.disable_progress_bar()
        try:
            config = AutoConfig.from_pretrained(self.model_dir, local_files_only=True)
        except (ValueError, OSError, KeyError) as e:
            raise EncoderUnavailableError(f"encoder {self.spec!r}: transformers cannot read {self.model_dir}/"
                                          f"config.json ({str(e).strip().splitlines()[0]}). {SUPPORTED}") from None
        base = self._base_class(config)
        tok = AutoTokenizer.from_pretrained(self.model_dir, local_files_only=True)
        if tok.pad_token is None:
            tok.pad_token = tok.eos_token if tok.eos_token is not None else tok.convert_ids_to_tokens(0)
        tok.padding_side = "right"
        dtype = torch.bfloat16 if self._dtype == "bfloat16" and self._device.startswith("cuda") else torch.float32
        load = {"local_files_only": True, "dtype": dtype}
        if config.is_encoder_decoder:
            import transformers
            alone = getattr(transformers, base.__name__.removesuffix("Model") + "EncoderModel", None)
            module = (alone.from_pretrained(self.model_dir, **load) if alone
                      else base.from_pretrained(self.model_dir, **load).get_encoder())
        else:
            module = base.from_pretrained(self.model_dir, **load)
        takes = inspect.signature(module.forward).parameters
        extra = {"use_cache": False} if "use_cache" in takes else {}
        if self.layer != -1:
            extra["output_hidden_states"] = True
        inputs = ("input_ids", "attention_mask") + (("token_type_ids",) if "token_type_ids" in takes else ())
        return _Loaded(tok, module.to(self._device).eval(), inputs, extra)

    def _base_class(self, config: Any) -> type:
        """transformers' base model class for this config, once it is known to be a text model that can be pooled
        as asked (checked before any weights load)."""
        from transformers.models.auto import modeling_auto as auto
        try:
            base = auto.MODEL_MAPPING[type(config)]
        except KeyError:
            raise EncoderUnavailableError(f"encoder {self.spec!r}: transformers has no base model for model_type "
                                          f"{config.model_type!r}. {SUPPORTED}") from None
        takes = inspect.signature(base.forward).parameters
        if "input_ids" not in takes or any(name in takes for name in OTHER_MODALITIES):
            found = ", ".join(n for n in takes if n not in ("self", "kwargs"))
            raise EncoderUnavailableError(f"encoder {self.spec!r}: {base.__name__} (model_type "
                                          f"{config.model_type!r}) is not a text-only model (it takes {found}). "
                                          f"{SUPPORTED}; `embedstore encoders` lists the encoders of other "
                                          "modalities")
        causal = (not config.is_encoder_decoder and config.model_type in auto.MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
                  and config.model_type not in auto.MODEL_FOR_MASKED_LM_MAPPING_NAMES)
        if causal and self.pooling == "cls":
            raise InputError(f"encoder {self.spec!r}: pooling=cls takes the first token, and {base.__name__} is a "
                             "decoder-only model whose first token sees only itself (causal attention); use "
                             "pooling=mean (the default) or pooling=last")
        return base

    @property
    def tokenizer(self):
        return self._loaded.tokenizer

    @cached_property
    def max_length(self) -> int:
        """Option, else min(tokenizer limit, position embeddings, 512), read from the config files (GPT-2's
        configs name the position limit n_positions)."""
        if self.opts["max_length"]:
            return self.opts["max_length"]
        cfg = self.config_file("config.json")
        limit = cfg.get("max_position_embeddings", cfg.get("n_positions", 512))
        tok_limit = self.config_file("tokenizer_config.json").get("model_max_length", limit)
        return int(min(tok_limit if isinstance(tok_limit, int) else limit, limit, 512))

    @cached_property
    def dim(self) -> int:
        """From a probe forward pass, which also checks, before any batch, that the model returns the hidden
        state asked for (a layer in range, an output that can be pooled)."""
        return int(self.run(self.prepare(["a"])).vectors.shape[1])

    def identity(self) -> dict:
        """`layer` only where it is not the default, so stores made before the option keep their fingerprints."""
        return {"files": self._weights_hash, "max_length": self.max_length, "pooling": self.pooling,
                "normalize": self.normalize, **({"layer": self.layer} if self.layer != -1 else {})}

    def _forward(self, feats: dict):
        import torch
        m = self._loaded
        out = m.module(**{k: v for k, v in feats.items() if k in m.inputs}, **m.extra)
        hidden = hidden_layer(out, self.layer, self.spec)
        mask = feats["attention_mask"]
        if self.pooling == "cls":
            pooled = hidden[:, 0]
        elif self.pooling == "last":  # the highest position holding a real token, whichever side padding is on
            at = (mask * torch.arange(mask.shape[1], device=mask.device)).argmax(1)
            pooled = hidden[torch.arange(len(at), device=hidden.device), at]
        elif self.pooling == "max":
            pooled = hidden.masked_fill(mask.unsqueeze(-1) == 0, float("-inf")).max(1).values
        else:
            weights = mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * weights).sum(1) / weights.sum(1).clamp(min=1)
        pooled = pooled.float()
        return torch.nn.functional.normalize(pooled, dim=-1) if self.normalize else pooled
