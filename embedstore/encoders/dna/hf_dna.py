"""`hf-dna:<dir or hub id>[@commit]`: a Hugging Face DNA language model (Nucleotide Transformer, GPN, models
whose code ships with the checkpoint), windowed over long sequences and pooled."""

from __future__ import annotations

import inspect
import re
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from embedstore.encoders.base import Embedded
from embedstore.encoders.dna.alphabet import reverse_complement
from embedstore.encoders.dna.base import DNAEncoder
from embedstore.encoders.dna.windows import WINDOW_OPTIONS, Windows, pool_windows
from embedstore.encoders.hf_model import LAYER, HFModel, hidden_layer
from embedstore.encoders.options import Option, merge
from embedstore.errors import EncoderUnavailableError, InputError


GPN_TYPES = ("GPN", "ConvNet", "GPNRoFormer", "GPNStar")
_COMMIT = re.compile(r"[0-9a-f]{40}")


@dataclass(frozen=True)
class _TokenPlan:
    """What the tokenizer does around a window: special ids before and after it, and the case it reads."""

    prefix: list[int]
    suffix: list[int]
    lower: bool
    pad_id: int


class HFDNAEncoder(DNAEncoder, HFModel):
    """`hf-dna:<dir or hub id>[@commit]`: a DNA language model's hidden layer (`layer`, default -1: the last; an
    earlier layer is often the better feature of a masked-LM), pooled over real tokens (`pooling=mean`, default) or
    its first special token (`pooling=cls`), per window, then over windows; `rc=true` averages the sequence's and
    its reverse complement's vectors.

    Models: Nucleotide Transformer v1 (ESM, native in transformers), GPN (PyPI gpn registers its classes), and
    models whose code ships with the checkpoint (config.json `auto_map`: NT v2, DNABERT-2, HyenaDNA, Caduceus),
    loaded with trust_remote_code only from a local directory the user names or a hub id pinned to a commit.
    A window holds `window` tokens (default: the model's maximum length less its special tokens)."""

    scheme = "hf-dna"
    OPTIONS = merge(DNAEncoder.OPTIONS, HFModel.OPTIONS, WINDOW_OPTIONS, (
        Option("pooling", "choice", "mean", ("mean", "cls"), fingerprint=True,
               help="mean over real tokens, or the first special token"),
        Option("rc", "bool", False, fingerprint=True, help="average with the reverse complement's vector"),
        LAYER))
    window_token_budget = 65_536  # on CUDA: padded tokens per forward pass
    MAX_WINDOWS = 64

    def __init__(self, spec: str, name: str, options: dict[str, str], revision: str | None = None):
        super().__init__(spec, name, options, revision)
        self.pooling = self.opts["pooling"]
        self.rc = self.opts["rc"]
        self.layer = self.opts["layer"]

    @cached_property
    def _config(self) -> dict:
        cfg = self.config_file("config.json")
        if not cfg:
            raise EncoderUnavailableError(f"encoder {self.spec!r}: {self.model_dir} has no readable config.json; "
                                          "expected a Hugging Face model directory")
        return cfg

    @cached_property
    def remote_code(self) -> bool:
        """Whether the model's own code (config.json auto_map) must run; allowed only when pinned or local."""
        auto_map = self._config.get("auto_map") or {}
        if not auto_map:
            return False
        if Path(self.name).expanduser().is_dir() or (self.revision and _COMMIT.fullmatch(self.revision)):
            return True
        found = f"revision {self.revision!r}, a branch or tag that can move" if self.revision else "no revision"
        raise InputError(
            f"encoder {self.spec!r}: {self.name} ships its own model code (config.json auto_map: "
            f"{', '.join(sorted(auto_map))}), which would run with trust_remote_code, and the spec gives {found}. "
            f"Pin the code to a commit, hf-dna:{self.name}@<40-hex commit>, or download the model, review its code "
            "and pass its local directory, hf-dna:/path/to/model")

    @cached_property
    def max_length(self) -> int:
        """Tokens per window including special tokens: option, else the tightest limit the config files state
        (ESM's absolute positions start after the padding index), else 512."""
        if self.opts["max_length"]:
            return self.opts["max_length"]
        cfg, limits = self._config, []
        tok_limit = self.config_file("tokenizer_config.json").get("model_max_length")
        if isinstance(tok_limit, int) and tok_limit < 10 ** 7:
            limits.append(tok_limit)
        pos = cfg.get("max_position_embeddings")
        if isinstance(pos, int):
            absolute_esm = cfg.get("model_type") == "esm" and cfg.get("position_embedding_type",
                                                                         "absolute") == "absolute"
            limits.append(pos - (cfg.get("pad_token_id") or 0) - 1 if absolute_esm else pos)
        return min(limits) if limits else 512

    def identity(self) -> dict:
        """`layer` only where it is not the default, so stores made before the option keep their fingerprints."""
        return {"files": self._weights_hash, "max_length": self.max_length, "pooling": self.pooling, "rc": self.rc,
                "remote_code": self.remote_code, "alphabet": self.alphabet.identity(),
                **Windows.identity_of(self.opts, "max_length - special tokens", "3/4 window", self.MAX_WINDOWS),
                **({"layer": self.layer} if self.layer != -1 else {})}

    def versions(self) -> dict:
        out = super().versions()
        if self._config.get("model_type") in GPN_TYPES:
            from importlib.metadata import version
            out["gpn"] = version("gpn")
        return out

    @cached_property
    def _loaded(self):
        import torch
        from transformers import AutoModel, AutoModelForMaskedLM, AutoTokenizer
        from transformers.utils import logging as hf_logging
        hf_logging.disable_progress_bar()
        cfg, remote = self._config, self.remote_code
        if cfg.get("model_type") in GPN_TYPES:
            try:
                import gpn
            except ImportError:
                raise EncoderUnavailableError(f"encoder {self.spec!r}: {cfg['model_type']} is a GPN model, whose "
                                              "classes come with PyPI gpn: pip install gpn") from None
            gpn.register_auto_classes()
        auto_map = cfg.get("auto_map") or {}
        masked_lm_only = remote and "AutoModel" not in auto_map and "AutoModelForMaskedLM" in auto_map
        dtype = torch.bfloat16 if self._dtype == "bfloat16" and self._device.startswith("cuda") else torch.float32
        tok = AutoTokenizer.from_pretrained(self.model_dir, local_files_only=True, trust_remote_code=remote)
        quiet = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()  # a masked-LM checkpoint has no pooler: its load report would alarm
        try:
            model = (AutoModelForMaskedLM if masked_lm_only else AutoModel).from_pretrained(
                self.model_dir, local_files_only=True, trust_remote_code=remote, dtype=dtype)
        finally:
            hf_logging.set_verbosity(quiet)
        if masked_lm_only:  # e.g. NT v2 declares only its masked-LM class: take the encoder under the head
            model = model.base_model
        model = model.to(self._device).eval()
        takes = inspect.signature(model.forward).parameters
        extra = {}
        if self.layer != -1:
            if "output_hidden_states" not in takes and not any(p.kind is p.VAR_KEYWORD for p in takes.values()):
                raise EncoderUnavailableError(
                    f"encoder {self.spec!r}: layer={self.layer} needs the model's hidden states, and "
                    f"{type(model).__name__}.forward takes no output_hidden_states (it takes {', '.join(takes)}); "
                    "omit layer to use its last layer")
            extra["output_hidden_states"] = True
        return tok, model, "attention_mask" in takes, extra

    @property
    def tokenizer(self):
        return self._loaded[0]

    @cached_property
    def _plan(self) -> _TokenPlan:
        """Found by tokenising a probe with and without special tokens, which works for any tokenizer family."""
        tok = self.tokenizer
        probe = "ACGTACGTACGTACGTACGTACGT"
        ids, lower = tok(probe, add_special_tokens=False)["input_ids"], False
        if tok.unk_token_id is not None and tok.unk_token_id in ids:
            low = tok(probe.lower(), add_special_tokens=False)["input_ids"]
            if tok.unk_token_id not in low:
                probe, ids, lower = probe.lower(), low, True
        full = tok(probe)["input_ids"]
        at = next((i for i in range(len(full) - len(ids) + 1) if full[i:i + len(ids)] == ids), None)
        if not ids or at is None:
            raise EncoderUnavailableError(f"encoder {self.spec!r}: cannot tell how its tokenizer wraps a sequence "
                                          f"(tokens {full} for {probe!r}); pass a model with a standard tokenizer")
        plan = _TokenPlan(full[:at], full[at + len(ids):], lower,
                          tok.pad_token_id if tok.pad_token_id is not None else 0)
        if self.pooling == "cls" and not plan.prefix:
            raise InputError(f"encoder {self.spec!r}: pooling=cls needs a token the tokenizer puts first, and this "
                             "one adds none; use pooling=mean")
        return plan

    @cached_property
    def windows(self) -> Windows:
        body = self.max_length - len(self._plan.prefix) - len(self._plan.suffix)
        if body < 1:
            raise InputError(f"encoder {self.spec!r}: max_length {self.max_length} leaves no room for sequence "
                             "tokens beside the special tokens")
        w = Windows.from_options(self.spec, self.opts, body, None, self.MAX_WINDOWS)
        if w.window > body:
            raise InputError(f"encoder {self.spec!r}: window {w.window} tokens exceeds the model's {body} "
                             f"(max_length {self.max_length} less special tokens)")
        return w

    @cached_property
    def dim(self) -> int:
        """From a probe forward pass: configs name the width differently, and some models widen it."""
        ids = self.tokenizer("acgt" if self._plan.lower else "ACGT", add_special_tokens=False)["input_ids"]
        probe = self._window_batches([self._plan.prefix + ids + self._plan.suffix])
        return int(self._forward_windows(probe).shape[1])

    def prepare(self, seqs: list[str]):
        """Normalise, tokenise each strand whole, cut the token ids into windows, pad windows into batches."""
        plan, windows = self._plan, self.windows
        texts = [self.alphabet.normalise(s) for s in seqs]
        strands = [texts, [reverse_complement(t) for t in texts]] if self.rc else [texts]
        rows, owner, weights = [], [], []
        n_tok, truncated = np.zeros(len(seqs), np.int64), np.zeros(len(seqs), bool)
        for s, batch in enumerate(strands):
            ids_list = self.tokenizer([t.lower() for t in batch] if plan.lower else batch,
                                      add_special_tokens=False, verbose=False)["input_ids"]
            for i, ids in enumerate(ids_list):
                spans, cut = windows.spans(len(ids))
                if s == 0:
                    n_tok[i], truncated[i] = len(ids), cut
                for a, b in spans:
                    rows.append(plan.prefix + ids[a:b] + plan.suffix)
                    owner.append(i * len(strands) + s)
                    weights.append(windows.weight(a, b))
        return (self._window_batches(rows), np.asarray(owner), np.asarray(weights, np.float64), len(strands),
                n_tok, truncated)

    def _window_batches(self, rows: list[list[int]]) -> list[tuple[np.ndarray, Any, Any]]:
        """Windows sorted by length into padded batches: `batch_size` windows on CPU, a padded-token budget on
        CUDA; a model that takes no attention mask only ever sees batches of equal length (no padding)."""
        import torch
        takes_mask = self._loaded[2]
        lengths = np.fromiter(map(len, rows), np.int64, len(rows))
        order = np.argsort(-lengths, kind="stable")
        out, start = [], 0
        while start < len(order):
            longest = int(lengths[order[start]])
            size = (max(1, self.window_token_budget // longest) if self._device.startswith("cuda")
                    else self.batch_size)
            idx = order[start:start + size]
            if not takes_mask:
                idx = idx[lengths[idx] == longest]
            ids = torch.full((len(idx), longest), self._plan.pad_id, dtype=torch.long)
            mask = torch.zeros((len(idx), longest), dtype=torch.long)
            for j, r in enumerate(idx):
                ids[j, :lengths[r]] = torch.tensor(rows[r])
                mask[j, :lengths[r]] = 1
            out.append((idx, ids, mask))
            start += len(idx)
        return out

    def _forward_windows(self, batches: list[tuple[np.ndarray, Any, Any]]) -> np.ndarray:
        """Pooled vector of every window, in window order."""
        import torch
        _, model, takes_mask, extra = self._loaded
        parts, where = [], []
        for idx, ids, mask in batches:
            ids, mask = ids.to(self._device), mask.to(self._device)
            with torch.inference_mode(), self.autocast():
                out = model(input_ids=ids, **({"attention_mask": mask} if takes_mask else {}), **extra)
                hidden = hidden_layer(out, self.layer, self.spec)
                if self.pooling == "cls":
                    pooled = hidden[:, 0]
                else:
                    m = mask.unsqueeze(-1).to(hidden.dtype)
                    pooled = (hidden * m).sum(1) / m.sum(1).clamp(min=1)
            parts.append(pooled.float().cpu().numpy())
            where.append(idx)
        vectors = np.concatenate(parts)
        out_vectors = np.empty_like(vectors)
        out_vectors[np.concatenate(where)] = vectors
        return out_vectors

    def run(self, prepared) -> Embedded:
        batches, owner, weights, n_strands, n_tok, truncated = prepared
        per_strand = pool_windows(self._forward_windows(batches), owner, weights, len(n_tok) * n_strands)
        return Embedded(per_strand.reshape(len(n_tok), n_strands, -1).mean(axis=1), n_tok, truncated)
