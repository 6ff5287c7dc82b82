"""`hashing:<dim>`: a weight-free bag of word uni/bi-grams hashed into `dim` signed buckets, L2-normalised.

Deterministic and fast (scikit-learn's HashingVectorizer, MurmurHash3): a classical baseline, and the encoder
the tests and pipeline benchmarks use when the model itself should not be what is measured.
"""

from __future__ import annotations

import numpy as np

from embedstore.encoders.base import Embedded, Encoder
from embedstore.errors import InputError


class HashingEncoder(Encoder):
    scheme = "hashing"
    modality = "text"
    batch_size = 4096

    def __init__(self, spec: str, name: str, options: dict[str, str]):
        super().__init__(spec, name, options)
        try:
            self._dim = int(name or 256)
            self._ngram = int(options.get("ngram", 2))
        except ValueError:
            raise InputError(f"hashing encoder spec {spec!r}: expected hashing:<dim>[?ngram=N], e.g. hashing:256")
        if not 2 <= self._dim <= 1 << 20 or not 1 <= self._ngram <= 3:
            raise InputError(f"hashing encoder spec {spec!r}: dim must be 2..1048576 and ngram 1..3")
        from sklearn.feature_extraction.text import HashingVectorizer
        self._vec = HashingVectorizer(n_features=self._dim, ngram_range=(1, self._ngram), alternate_sign=True,
                                      norm="l2", lowercase=True, dtype=np.float32)

    def identity(self) -> dict:
        return {"dim": self._dim, "ngram": self._ngram, "algorithm": "sklearn-HashingVectorizer-murmur3-l2",
                "token_pattern": self._vec.token_pattern}

    @property
    def dim(self) -> int:
        return self._dim

    def versions(self) -> dict:
        import sklearn
        return {**super().versions(), "scikit-learn": sklearn.__version__}

    def skip_reason(self, content: str) -> str | None:
        return "empty or whitespace-only text" if not content or not content.strip() else None

    def run(self, prepared: list[str]) -> Embedded:
        return Embedded(self._vec.transform(prepared).toarray())
