"""What every DNA encoder shares (kmer:, tiara, hf-dna:)."""

from __future__ import annotations

import re
from functools import cached_property, lru_cache

import numpy as np

from embedstore.encoders.base import Encoder
from embedstore.encoders.dna.alphabet import ALPHABET_OPTIONS, Alphabet


class DNAEncoder(Encoder):
    """The alphabet policy, length in bases, and batches cut by a base-pair budget on every device (a long contig
    fans out into many windows, so a fixed count of sequences could exhaust memory)."""

    modality = "dna"
    bp_budget = 2_000_000
    OPTIONS = ALPHABET_OPTIONS

    @cached_property
    def alphabet(self) -> Alphabet:
        return Alphabet(self.opts["softmask"], self.opts["ambiguous"])

    def length(self, content: str) -> int:
        return len(content)

    def skip_reason(self, content: str) -> str | None:
        return self.alphabet.check(content)

    def plan_batches(self, lengths: np.ndarray) -> list[np.ndarray]:
        """Longest first; at most `batch_size` sequences on CPU, on CUDA as many as the budget holds (their
        windows are then cut into forward passes by a padded-token budget)."""
        order = np.argsort(-lengths, kind="stable")
        cap = len(order) if self.device.startswith("cuda") else self.batch_size
        batches, start = [], 0
        while start < len(order):
            size = max(1, min(cap, self.bp_budget // max(int(lengths[order[start]]), 1)))
            batches.append(order[start:start + size])
            start += size
        return batches


@lru_cache(maxsize=16)
def _has_kmer(k: int) -> re.Pattern:
    return re.compile(f"[ACGT]{{{k}}}")


def no_kmer_reason(normalised: str, k: int) -> str | None:
    """Why a k-mer based encoder cannot embed this (normalised) sequence, or None."""
    if _has_kmer(k).search(normalised):
        return None
    return (f"no {k}-mer of unambiguous bases (A/C/G/T) in this {len(normalised):,} bp sequence; a {k}-mer "
            "spectrum needs at least one")
