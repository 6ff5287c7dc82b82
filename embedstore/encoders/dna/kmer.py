"""`kmer:<k>`: the k-mer spectrum (normalised counts, optional TF-IDF) of a sequence: weight-free, fast, a strong
baseline; the vectorised counter here also serves tiara."""

from __future__ import annotations

from functools import cached_property, lru_cache
from pathlib import Path
from typing import Sequence

import numpy as np

from embedstore.encoders.base import Embedded
from embedstore.encoders.dna.base import DNAEncoder, no_kmer_reason
from embedstore.encoders.hub import tiara_dir
from embedstore.encoders.options import Option, merge
from embedstore.errors import InputError


_CODE = np.full(256, 4, dtype=np.uint8)
for _i, _b in enumerate(b"ACGT"):
    _CODE[_b] = _i


def kmer_counts(seqs: Sequence[str], k: int):
    """Counts of every A/C/G/T k-mer per sequence, as a float32 CSR matrix [n, 4**k] in lexicographic order
    (AAA..., AAC..., tiara's order); k-mers that touch any other letter are not counted.

    Vectorised over the whole batch: sequences are joined by separators, k-mer indices come from k shifted
    adds of 2-bit codes, and a k-mer is valid when a running count of non-ACGT letters does not move across it."""
    from scipy import sparse
    n = len(seqs)
    codes = _CODE[np.frombuffer("\0".join(seqs).encode("ascii", "replace"), dtype=np.uint8)]
    n_win = len(codes) - k + 1
    if n_win <= 0:
        return sparse.csr_matrix((n, 4 ** k), dtype=np.float32)
    bad = np.concatenate([[0], np.cumsum(codes > 3, dtype=np.int64)])
    pos = np.flatnonzero(bad[k:] == bad[:-k])
    idx = np.zeros(len(pos), dtype=np.int64)
    for j in range(k):
        idx = (idx << 2) | (codes[pos + j] & 3)
    lengths = np.fromiter((len(s) + 1 for s in seqs), dtype=np.int64, count=n)
    rows = np.repeat(np.arange(n), lengths)[pos]
    return sparse.csr_matrix((np.ones(len(pos), np.float32), (rows, idx)), shape=(n, 4 ** k))


@lru_cache(maxsize=8)
def canonical_columns(k: int) -> tuple[np.ndarray, int]:
    """For each of the 4**k k-mers, its column among canonical k-mers (a k-mer and its reverse complement share
    one), and the number of canonical k-mers."""
    i = np.arange(4 ** k, dtype=np.int64)
    rc, x = np.zeros_like(i), i.copy()
    for _ in range(k):
        rc = (rc << 2) | (3 - (x & 3))
        x >>= 2
    _, column = np.unique(np.minimum(i, rc), return_inverse=True)
    return column, int(column.max()) + 1


def fit_idf(seqs: Sequence[str], k: int) -> np.ndarray:
    """Smoothed inverse document frequencies of the 4**k k-mers over `seqs` (tiara's formula,
    ln((n + 1) / (df + 1)) + 1): save with np.save and pass as kmer:<k>?idf=<file.npy>."""
    df = (kmer_counts([s.upper() for s in seqs], k) > 0).sum(axis=0).A1
    return (np.log((len(seqs) + 1) / (df + 1)) + 1).astype(np.float32)


def _normalise_rows(counts, norm: str):
    """Rows of a CSR matrix scaled to unit L1 or L2 norm (or left as they are) on its stored entries, so that the
    dense matrix is written once, afterwards."""
    if norm == "none":
        return counts
    from sklearn.preprocessing import normalize
    return normalize(counts, norm=norm, copy=False)


class KmerEncoder(DNAEncoder):
    """`kmer:<k>[?norm=l1|l2|none&canonical=true&idf=<file.npy>|tiara]`: the k-mer spectrum of the sequence.

    norm: l1 (frequencies; default without idf), l2 (default with idf), none (raw counts). canonical=true merges
    each k-mer with its reverse complement (strand-agnostic, about half the dimensions). idf weights counts by a
    fixed inverse-document-frequency vector of 4**k floats: a .npy file (hashed into the fingerprint; see
    fit_idf) or `tiara` (tiara's, fitted on genomes of all domains of life; k = 4, 5 or 6)."""

    scheme = "kmer"
    batch_size = 2048
    MAX_K = 8
    OPTIONS = merge(DNAEncoder.OPTIONS, (
        Option("norm", "choice", None, ("l1", "l2", "none"), fingerprint=True,
               help="row normalisation (default: l1, or l2 with idf)"),
        Option("canonical", "bool", False, fingerprint=True, help="merge each k-mer with its reverse complement"),
        Option("idf", "str", None, fingerprint=True, help="inverse document frequencies: a .npy file or tiara")))

    def __init__(self, spec: str, name: str, options: dict[str, str], revision: str | None = None):
        super().__init__(spec, name, options, revision)
        try:
            self.k = int(name)
        except ValueError:
            self.k = 0
        if not 1 <= self.k <= self.MAX_K:
            raise InputError(f"encoder {spec!r}: expected kmer:<k> with k from 1 to {self.MAX_K} "
                             f"(4**k dimensions), e.g. kmer:6")
        self.canonical = self.opts["canonical"]
        self.idf_source = self.opts["idf"]
        self.norm = self.opts["norm"] or ("l2" if self.idf_source else "l1")

    @cached_property
    def idf(self) -> np.ndarray | None:
        if self.idf_source is None:
            return None
        if self.idf_source == "tiara":
            if self.k not in (4, 5, 6):
                raise InputError(f"encoder {self.spec!r}: tiara ships idf vectors for k = 4, 5 and 6, not {self.k}")
            path = tiara_dir() / "tfidf-models" / f"k{self.k}-first-stage" / "model.npy"
        else:
            path = Path(self.idf_source).expanduser()
        try:
            idf = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as e:
            raise InputError(f"encoder {self.spec!r}: cannot read the idf vector {path} ({e}); expected a .npy "
                             f"file of {4 ** self.k} floats (embedstore.encoders.dna.kmer.fit_idf makes one)") from None
        if idf.shape != (4 ** self.k,) or not np.issubdtype(idf.dtype, np.floating) or not np.isfinite(idf).all():
            raise InputError(f"encoder {self.spec!r}: {path} holds {idf.dtype} {idf.shape}; expected "
                             f"{4 ** self.k} finite floats (one per {self.k}-mer, lexicographic ACGT order)")
        return idf.astype(np.float32)

    def identity(self) -> dict:
        import hashlib
        return {"k": self.k, "norm": self.norm, "canonical": self.canonical, "alphabet": self.alphabet.identity(),
                "idf_sha256": None if self.idf is None else hashlib.sha256(self.idf.tobytes()).hexdigest(),
                "counts": "A/C/G/T k-mers, lexicographic; k-mers touching other letters not counted"}

    @property
    def unit_norm(self) -> bool:
        return self.norm == "l2"

    @property
    def dim(self) -> int:
        return canonical_columns(self.k)[1] if self.canonical else 4 ** self.k

    def versions(self) -> dict:
        import scipy
        return {**super().versions(), "scipy": scipy.__version__}

    def skip_reason(self, content: str) -> str | None:
        return super().skip_reason(content) or no_kmer_reason(self.alphabet.normalise(content), self.k)

    def prepare(self, seqs: list[str]):
        return kmer_counts([self.alphabet.normalise(s) for s in seqs], self.k), np.fromiter(map(len, seqs), np.int64)

    def run(self, prepared) -> Embedded:
        from scipy import sparse
        counts, lengths = prepared
        if self.idf is not None:
            counts = counts.multiply(self.idf[None, :]).tocsr()
        if self.canonical:  # re-label columns
            column, n = canonical_columns(self.k)
            counts = sparse.csr_matrix((counts.data.copy(), column[counts.indices], counts.indptr.copy()),
                                       (counts.shape[0], n))  # a copy: summing below must not alter the batch
        if self.canonical:
            counts.sum_duplicates()  # entries that landed on one column, added before the norms are taken
        x = _normalise_rows(counts.astype(np.float32), self.norm).toarray()
        return Embedded(x, lengths, np.zeros(len(lengths), bool))
