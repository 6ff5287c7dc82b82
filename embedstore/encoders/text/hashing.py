"""`hashing:<dim>`: a weight-free bag of word uni/bi-grams hashed into `dim` signed buckets, L2-normalised.

Deterministic and fast (scikit-learn's HashingVectorizer, MurmurHash3): a classical baseline, and the encoder
the tests and pipeline benchmarks use when the model itself should not be what is measured.
"""

from __future__ import annotations

import numpy as np

from embedstore.encoders.base import Embedded
from embedstore.encoders.text.base import TextEncoder
from embedstore.encoders.options import Option
from embedstore.errors import InputError


class HashingEncoder(TextEncoder):
    scheme = "hashing"
    batch_size = 4096
    OPTIONS = (Option("ngram", "int", 2, low=1, high=3, fingerprint=True, help="longest word n-gram"),)

    def __init__(self, spec: str, name: str, options: dict[str, str], revision: str | None = None):
        super().__init__(spec, name, options, revision)
        try:
            self._dim = int(name or 256)
        except ValueError:
            self._dim = 0
        if not 2 <= self._dim <= 1 << 20:
            raise InputError(f"encoder {spec!r}: expected hashing:<dim> with dim from 2 to 1048576, e.g. "
                             "hashing:256")
        self._ngram = self.opts["ngram"]
        from sklearn.feature_extraction.text import HashingVectorizer
        self._vec = HashingVectorizer(n_features=self._dim, ngram_range=(1, self._ngram), alternate_sign=True,
                                      norm="l2", lowercase=True, dtype=np.float32)

    unit_norm = True

    def identity(self) -> dict:
        return {"dim": self._dim, "ngram": self._ngram, "algorithm": "sklearn-HashingVectorizer-murmur3-l2",
                "token_pattern": self._vec.token_pattern}

    @property
    def dim(self) -> int:
        return self._dim

    def versions(self) -> dict:
        import sklearn
        return {**super().versions(), "scikit-learn": sklearn.__version__}

    def run(self, prepared: list[str]) -> Embedded:
        return Embedded(self._vec.transform(prepared).toarray())
