"""The alphabet policy every DNA encoder shares (options softmask and ambiguous, part of the fingerprint). The
content hash is of the sequence as read; normalising is done here:
    softmask=upper|mask         lowercase (soft-masked) bases are upper-cased (default) or hard-masked to N
    ambiguous=mask|keep|reject  IUPAC codes R Y S W K M B D H V become N (default), reach the model as they are, or
                                skip the item (N included) with the code and its position
    U is read as T (RNA).
Anything else (digits, `*`, `-`, a space inside a sequence) skips the item with a reason naming the character
and its 1-based position.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cached_property

from embedstore.encoders.options import Option

IUPAC_AMBIGUOUS = "RYSWKMBDHV"
_NUCLEOTIDES = "ACGTUN" + IUPAC_AMBIGUOUS
_INVALID = re.compile(f"[^{_NUCLEOTIDES}{_NUCLEOTIDES.lower()}]")
_NOT_ACGT = re.compile("[^ACGT]")
_COMPLEMENT = str.maketrans("ACGTUNRYSWKMBDHV", "TGCAANYRSWMKVHDB")

ALPHABET_OPTIONS = (
    Option("softmask", "choice", "upper", ("upper", "mask"), fingerprint=True,
           help="lowercase bases upper-cased, or hard-masked to N"),
    Option("ambiguous", "choice", "mask", ("mask", "keep", "reject"), fingerprint=True,
           help="IUPAC ambiguity codes read as N, kept, or a skip"),
)


@dataclass(frozen=True)
class Alphabet:
    """How an encoder reads a nucleotide sequence: case, ambiguity codes, U."""

    softmask: str = "upper"
    ambiguous: str = "mask"

    def identity(self) -> dict:
        return {"softmask": self.softmask, "ambiguous": self.ambiguous, "u_as_t": True}

    @cached_property
    def _table(self) -> dict[int, str]:
        table = {}
        for ch in _NUCLEOTIDES:
            out = "T" if ch == "U" else "N" if self.ambiguous == "mask" and ch in IUPAC_AMBIGUOUS else ch
            table[ord(ch)] = out
            table[ord(ch.lower())] = out if self.softmask == "upper" else "N"
        return table

    def normalise(self, seq: str) -> str:
        """Upper-case A C G T N (and kept IUPAC codes), position for position (no character is removed)."""
        return seq.translate(self._table)

    def check(self, seq: str) -> str | None:
        """Why this sequence cannot be read under the policy (the first offending position), or None."""
        if not seq:
            return "empty sequence"
        bad = _INVALID.search(seq)
        if bad:
            return (f"invalid character {bad.group()!r} at position {bad.start() + 1:,} of {len(seq):,}; expected "
                    f"nucleotide codes A C G T/U, N or IUPAC {' '.join(IUPAC_AMBIGUOUS)} (any case)")
        if self.ambiguous == "reject":
            amb = _NOT_ACGT.search(self.normalise(seq))
            if amb:
                return (f"ambiguous base {seq[amb.start()]!r} at position {amb.start() + 1:,} and the encoder's "
                        "alphabet policy is ambiguous=reject (ambiguous=mask reads it as N)")
        return None


def reverse_complement(seq: str) -> str:
    """Reverse complement of a normalised (upper-case) sequence; IUPAC codes map to their complements."""
    return seq.translate(_COMPLEMENT)[::-1]
