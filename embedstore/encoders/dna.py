"""DNA and RNA sequence encoders, sharing one alphabet policy and one rule for sequences longer than a model:

    kmer:<k>                  k-mer spectrum (normalised counts, optional TF-IDF): weight-free, fast, a strong baseline
    tiara                     tiara's pretrained 6-mer TF-IDF + MLP (PyPI tiara==1.0.2): its 1024-d hidden layer
    hf-dna:<dir or id>[@rev]  a Hugging Face DNA language model (Nucleotide Transformer, GPN, remote-code models)

Alphabet policy (options of every DNA encoder; part of the fingerprint). The content hash is of the sequence as
read; normalising is done here:
    softmask=upper|mask         lowercase (soft-masked) bases are upper-cased (default) or hard-masked to N
    ambiguous=mask|keep|reject  IUPAC codes R Y S W K M B D H V become N (default), reach the model as they are, or
                                skip the item (N included) with the code and its position
    U is read as T (RNA).
Anything else (digits, `*`, `-`, a space inside a sequence) skips the item with a reason naming the character
and its 1-based position; the item's key names the record (`SELECT key, reason FROM items WHERE status =
'skipped'`). Skipping, not failing, keeps the good records of a large file and loses nothing silently.

Long sequences: cut into windows of `window` units (tokens for hf-dna, bases for tiara) every `stride` units,
the last window ending at the sequence end (so it may be shorter); window vectors are averaged weighted by
window length (`window_pooling=length`, default) or plainly (`mean`). At most `max_windows` windows per strand
are used: a longer input is embedded from its start and marked `truncated`. `n_tokens` records the full input
length in those units, so its number of windows is 1 + ceil(max(n_tokens - window, 0) / stride).
"""

from __future__ import annotations

import inspect
import itertools
import re
from dataclasses import dataclass
from functools import cached_property, lru_cache
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from embedstore.encoders.base import Embedded, Encoder, check_options, choice, hash_files
from embedstore.encoders.text import TransformerTextEncoder, _read_json
from embedstore.errors import EncoderUnavailableError, InputError

IUPAC_AMBIGUOUS = "RYSWKMBDHV"
_NUCLEOTIDES = "ACGTUN" + IUPAC_AMBIGUOUS
_INVALID = re.compile(f"[^{_NUCLEOTIDES}{_NUCLEOTIDES.lower()}]")
_NOT_ACGT = re.compile("[^ACGT]")
_COMPLEMENT = str.maketrans("ACGTUNRYSWKMBDHV", "TGCAANYRSWMKVHDB")


# -- options -----------------------------------------------------------------------------------------------------
def _int(spec: str, options: dict[str, str], name: str, default: int | None, low: int = 1) -> int | None:
    if name not in options:
        return default
    try:
        value = int(options[name])
    except ValueError:
        value = low - 1
    if value < low:
        raise InputError(f"encoder {spec!r}: {name} must be a whole number >= {low}, not {options[name]!r}")
    return value


def _flag(spec: str, options: dict[str, str], name: str) -> bool:
    return choice(spec, {k: v.lower() for k, v in options.items()}, name, ("false", "true")) == "true"


# -- alphabet ----------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Alphabet:
    """How an encoder reads a nucleotide sequence: case, ambiguity codes, U."""

    softmask: str = "upper"
    ambiguous: str = "mask"

    OPTIONS = frozenset({"softmask", "ambiguous"})

    @classmethod
    def from_options(cls, spec: str, options: dict[str, str]) -> "Alphabet":
        return cls(choice(spec, options, "softmask", ("upper", "mask")),
                   choice(spec, options, "ambiguous", ("mask", "keep", "reject")))

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


# -- k-mers ------------------------------------------------------------------------------------------------------
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


@lru_cache(maxsize=16)
def _has_kmer(k: int) -> re.Pattern:
    return re.compile(f"[ACGT]{{{k}}}")


def _no_kmer_reason(normalised: str, k: int) -> str | None:
    if _has_kmer(k).search(normalised):
        return None
    return (f"no {k}-mer of unambiguous bases (A/C/G/T) in this {len(normalised):,} bp sequence; a {k}-mer "
            "spectrum needs at least one")


def fit_idf(seqs: Sequence[str], k: int) -> np.ndarray:
    """Smoothed inverse document frequencies of the 4**k k-mers over `seqs` (tiara's formula,
    ln((n + 1) / (df + 1)) + 1): save with np.save and pass as kmer:<k>?idf=<file.npy>."""
    df = (kmer_counts([s.upper() for s in seqs], k) > 0).sum(axis=0).A1
    return (np.log((len(seqs) + 1) / (df + 1)) + 1).astype(np.float32)


def _normalise_rows(x: np.ndarray, norm: str) -> np.ndarray:
    if norm == "none":
        return x
    scale = np.abs(x).sum(1) if norm == "l1" else np.sqrt((x * x).sum(1))
    return x / np.maximum(scale, 1e-12)[:, None]


# -- windows -----------------------------------------------------------------------------------------------------
def plan_windows(n: int, window: int, stride: int) -> list[tuple[int, int]]:
    """[start, end) spans covering 0..n: starts every `stride`, each `window` long, the last one ending at n."""
    spans, start = [], 0
    while True:
        end = min(start + window, n)
        spans.append((start, end))
        if end == n:
            return spans
        start += stride


def pool_windows(vectors: np.ndarray, owner: np.ndarray, weights: np.ndarray, n: int) -> np.ndarray:
    """Weighted mean of window vectors per owner (0..n-1): one sparse product, no Python loop."""
    from scipy import sparse
    p = sparse.csr_matrix((weights.astype(np.float64), (owner, np.arange(len(owner)))), shape=(n, len(owner)))
    total = np.asarray(p.sum(axis=1)).ravel()
    with np.errstate(invalid="ignore", divide="ignore"):  # an owner without weight gets NaN: recorded as a skip
        return (np.asarray(p @ vectors.astype(np.float64)) / total[:, None]).astype(np.float32)


@dataclass(frozen=True)
class Windows:
    """Window length and stride (in the encoder's units), how windows are pooled, and the cap per strand."""

    window: int
    stride: int
    pooling: str
    max_windows: int

    OPTIONS = frozenset({"window", "stride", "window_pooling", "max_windows"})

    @classmethod
    def from_options(cls, spec: str, options: dict[str, str], window: int, stride: int | None,
                     max_windows: int) -> "Windows":
        """`window`/`stride` options override the encoder's defaults (stride default: 3/4 of the window)."""
        window = _int(spec, options, "window", window)
        stride = _int(spec, options, "stride", stride or max(1, window * 3 // 4))
        if stride > window:
            raise InputError(f"encoder {spec!r}: stride ({stride}) must not exceed window ({window}), or bases "
                             "between windows would never be seen")
        return cls(window, stride, choice(spec, options, "window_pooling", ("length", "mean")),
                   _int(spec, options, "max_windows", max_windows))

    @staticmethod
    def identity_of(spec: str, options: dict[str, str], default_window: Any, default_stride: Any,
                    max_windows: int) -> dict:
        """The fingerprint's view, computable without loading a model (defaults may be descriptions)."""
        return {"window": _int(spec, options, "window", default_window),
                "stride": _int(spec, options, "stride", default_stride),
                "window_pooling": choice(spec, options, "window_pooling", ("length", "mean")),
                "max_windows": _int(spec, options, "max_windows", max_windows)}

    def spans(self, n: int) -> tuple[list[tuple[int, int]], bool]:
        """The windows of an input n units long, and whether the cap cut it short."""
        spans = plan_windows(n, self.window, self.stride)
        return spans[:self.max_windows], len(spans) > self.max_windows

    def weight(self, a: int, b: int) -> int:
        return b - a if self.pooling == "length" else 1


# -- the shared part of every DNA encoder ------------------------------------------------------------------------
class _DNA:
    """Mixin: the alphabet policy, length in bases, and batches cut by a base-pair budget on every device (a long
    contig fans out into many windows, so a fixed count of sequences could exhaust memory)."""

    modality = "dna"
    bp_budget = 2_000_000
    alphabet: Alphabet
    batch_size: int
    device: str

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


# -- kmer:<k> ----------------------------------------------------------------------------------------------------
class KmerEncoder(_DNA, Encoder):
    """`kmer:<k>[?norm=l1|l2|none&canonical=true&idf=<file.npy>|tiara]`: the k-mer spectrum of the sequence.

    norm: l1 (frequencies; default without idf), l2 (default with idf), none (raw counts). canonical=true merges
    each k-mer with its reverse complement (strand-agnostic, about half the dimensions). idf weights counts by a
    fixed inverse-document-frequency vector of 4**k floats: a .npy file (hashed into the fingerprint; see
    fit_idf) or `tiara` (tiara's, fitted on genomes of all domains of life; k = 4, 5 or 6)."""

    scheme = "kmer"
    batch_size = 2048
    MAX_K = 8

    def __init__(self, spec: str, name: str, options: dict[str, str]):
        super().__init__(spec, name, options)
        check_options(spec, self.scheme, options, {"norm", "canonical", "idf"} | Alphabet.OPTIONS)
        try:
            self.k = int(name)
        except ValueError:
            self.k = 0
        if not 1 <= self.k <= self.MAX_K:
            raise InputError(f"encoder {spec!r}: expected kmer:<k> with k from 1 to {self.MAX_K} "
                             f"(4**k dimensions), e.g. kmer:6")
        self.alphabet = Alphabet.from_options(spec, options)
        self.canonical = _flag(spec, options, "canonical")
        self.idf_source = options.get("idf") or None
        self.norm = choice(spec, options, "norm", ("l2", "l1", "none") if self.idf_source else ("l1", "l2", "none"))

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
                             f"file of {4 ** self.k} floats (embedstore.encoders.dna.fit_idf makes one)") from None
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
    def dim(self) -> int:
        return canonical_columns(self.k)[1] if self.canonical else 4 ** self.k

    def versions(self) -> dict:
        import scipy
        return {**super().versions(), "scipy": scipy.__version__}

    def skip_reason(self, content: str) -> str | None:
        return super().skip_reason(content) or _no_kmer_reason(self.alphabet.normalise(content), self.k)

    def prepare(self, seqs: list[str]):
        return kmer_counts([self.alphabet.normalise(s) for s in seqs], self.k), np.fromiter(map(len, seqs), np.int64)

    def run(self, prepared) -> Embedded:
        from scipy import sparse
        counts, lengths = prepared
        if self.idf is not None:
            counts = counts.multiply(self.idf[None, :]).tocsr()
        if self.canonical:  # re-label columns; toarray() adds the entries that land on one column
            column, n = canonical_columns(self.k)
            counts = sparse.csr_matrix((counts.data, column[counts.indices], counts.indptr), (counts.shape[0], n))
        x = counts.toarray()
        return Embedded(_normalise_rows(x, self.norm).astype(np.float32), lengths, np.zeros(len(lengths), bool))


# -- tiara -------------------------------------------------------------------------------------------------------
def tiara_dir() -> Path:
    """tiara's `models` folder, located without importing the package (its import pulls numba)."""
    import importlib.util
    found = importlib.util.find_spec("tiara")  # finds the package folder without running its __init__
    if found is None or not found.submodule_search_locations:
        raise EncoderUnavailableError("the tiara encoder needs PyPI tiara 1.0.2, whose declared pins (torch~=1.7) "
                                      "cannot be met here: pip install tiara==1.0.2 --no-deps")
    return Path(next(iter(found.submodule_search_locations))) / "models"


class TiaraEncoder(_DNA, Encoder):
    """`tiara[:<models dir>]`: tiara's first-stage classifier (archaea/bacteria/eukarya/organelle, trained on
    5 kb genome fragments) cut below its output layer. A sequence's 6-mer counts are TF-IDF weighted with tiara's
    idf vector and L2-normalised, then pass Linear(4096, 2048)+ReLU and Linear(2048, 1024)+ReLU: that 1024-d
    activation is the embedding. Like tiara, sequences are read in 5,000 bp windows (non-overlapping by default;
    tiara drops a short tail, this encoder keeps it, length-weighted).

    Files read: the weights `.pkl` (a torch state dict: loaded with weights_only=True, so no code runs), the idf
    `.npy` (allow_pickle=False) and its params.txt. tiara's Python code is never imported."""

    scheme = "tiara"
    batch_size = 1024
    K, HIDDEN = 6, 1024
    FILES = ("nnet-models/first_nnet_kmer_6.pkl", "tfidf-models/k6-first-stage/model.npy",
             "tfidf-models/k6-first-stage/params.txt")
    SHAPES = {"0.weight": (2048, 4096), "0.bias": (2048,), "3.weight": (1024, 2048), "3.bias": (1024,)}

    def __init__(self, spec: str, name: str, options: dict[str, str]):
        super().__init__(spec, name, options)
        check_options(spec, self.scheme, options, set(Alphabet.OPTIONS | Windows.OPTIONS))
        self.alphabet = Alphabet.from_options(spec, options)
        self.windows = Windows.from_options(spec, options, 5000, 5000, 10_000)

    @cached_property
    def models_dir(self) -> Path:
        root = Path(self.name).expanduser() if self.name else tiara_dir()
        missing = [f for f in self.FILES if not (root / f).is_file()]
        if missing:
            raise EncoderUnavailableError(f"encoder {self.spec!r}: {root} lacks {missing}; expected tiara 1.0.2's "
                                          "models folder (pip install tiara==1.0.2 --no-deps)")
        return root

    @cached_property
    def _files_hash(self) -> dict[str, str]:
        return hash_files(self.models_dir, lambda rel: rel not in self.FILES)

    def identity(self) -> dict:
        return {"files": self._files_hash, "k": self.K, "layer": "ReLU(fc2): 1024-d", "tfidf": "l2",
                "alphabet": self.alphabet.identity(), **vars(self.windows)}

    @property
    def dim(self) -> int:
        return self.HIDDEN

    def versions(self) -> dict:
        import scipy
        import torch
        return {**super().versions(), "scipy": scipy.__version__, "torch": torch.__version__}

    @cached_property
    def _params(self) -> tuple[np.ndarray, ...]:
        """(idf, W0^T, b0, W1^T, b1) as float32 numpy arrays, each checked against the shapes tiara documents."""
        import torch
        root = self.models_dir
        params = dict(line.strip().split(":", 1) for line in (root / self.FILES[2]).read_text().splitlines()
                      if ":" in line)
        if params.get("k") != str(self.K) or params.get("smooth") != "True":
            raise EncoderUnavailableError(f"encoder {self.spec!r}: {root / self.FILES[2]} says {params}; expected "
                                          "k:6 and smooth:True (tiara 1.0.2)")
        try:
            state = torch.load(root / self.FILES[0], map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 - torch raises many types for a bad or unsafe (code-running) file
            raise EncoderUnavailableError(f"encoder {self.spec!r}: cannot read weights {root / self.FILES[0]}: "
                                          f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from None
        found = {k: tuple(state[k].shape) for k in self.SHAPES if isinstance(state, dict) and k in state}
        if found != self.SHAPES:
            raise EncoderUnavailableError(f"encoder {self.spec!r}: {root / self.FILES[0]} holds {found}; expected "
                                          f"{self.SHAPES} (tiara 1.0.2's first-stage 6-mer network)")
        try:
            idf = np.load(root / self.FILES[1], allow_pickle=False).astype(np.float32)
        except (OSError, ValueError) as e:  # e.g. an object array, which would need unpickling
            raise EncoderUnavailableError(f"encoder {self.spec!r}: cannot read the idf vector {root / self.FILES[1]} "
                                          f"({e})") from None
        w = {k: state[k].float().numpy() for k in self.SHAPES}
        return (idf, np.ascontiguousarray(w["0.weight"].T), w["0.bias"], np.ascontiguousarray(w["3.weight"].T),
                w["3.bias"])

    def skip_reason(self, content: str) -> str | None:
        return super().skip_reason(content) or _no_kmer_reason(self.alphabet.normalise(content), self.K)

    def prepare(self, seqs: list[str]):
        """Windows -> TF-IDF rows (sparse) -> first layer; the sparse product skips the 4,096-wide dense input."""
        idf, w0t, b0, _, _ = self._params
        texts, owner, weights, truncated = [], [], [], np.zeros(len(seqs), bool)
        for i, seq in enumerate(seqs):
            norm = self.alphabet.normalise(seq)
            spans, truncated[i] = self.windows.spans(len(norm))
            for a, b in spans:
                texts.append(norm[a:b])
                owner.append(i)
                weights.append(self.windows.weight(a, b))
        tfidf = kmer_counts(texts, self.K).multiply(idf[None, :]).tocsr()
        norms = np.sqrt(np.asarray(tfidf.multiply(tfidf).sum(axis=1)).ravel())
        tfidf = tfidf.multiply(1 / np.maximum(norms, 1e-12)[:, None]).tocsr()
        h1 = np.maximum(np.asarray(tfidf @ w0t) + b0, 0)
        weights = np.asarray(weights, np.float64) * (norms > 0)  # a window without any 6-mer carries no signal
        return h1, np.asarray(owner), weights, np.fromiter(map(len, seqs), np.int64), truncated

    def run(self, prepared) -> Embedded:
        h1, owner, weights, lengths, truncated = prepared
        _, _, _, w1t, b1 = self._params
        h2 = np.maximum(h1 @ w1t + b1, 0)
        return Embedded(pool_windows(h2, owner, weights, len(lengths)), lengths, truncated)


# -- hf-dna:<dir or hub id> --------------------------------------------------------------------------------------
GPN_TYPES = ("GPN", "ConvNet", "GPNRoFormer", "GPNStar")
_COMMIT = re.compile(r"[0-9a-f]{40}")


NT_V1_VOCAB = (["<unk>", "<pad>", "<mask>", "<cls>", "<eos>", "<bos>"]
               + ["".join(p) for p in itertools.product("ATCG", repeat=6)] + list("ATCGN"))


def save_random_esm(root: str | Path, hidden: int, layers: int, heads: int, intermediate: int, context: int,
                    seed: int = 0) -> Path:
    """A randomly initialised ESM checkpoint with Nucleotide Transformer v1's 6-mer tokenizer layout, saved where
    `hf-dna:<root>` loads it: no DNA language-model weights can be downloaded here, so tests check the code path
    and benchmarks time the real architecture with it. `context` counts tokens, <cls> and <eos> included."""
    import torch
    from transformers import EsmConfig, EsmModel, EsmTokenizer
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    (root / "vocab.txt").write_text("\n".join(NT_V1_VOCAB))
    EsmTokenizer(str(root / "vocab.txt"), model_max_length=context).save_pretrained(root)
    torch.manual_seed(seed)
    EsmModel(EsmConfig(vocab_size=len(NT_V1_VOCAB), hidden_size=hidden, num_hidden_layers=layers,
                       num_attention_heads=heads, intermediate_size=intermediate, max_position_embeddings=context + 2,
                       pad_token_id=1, mask_token_id=2, position_embedding_type="absolute", token_dropout=False),
             add_pooling_layer=False).save_pretrained(root)
    return root


@dataclass(frozen=True)
class _TokenPlan:
    """What the tokenizer does around a window: special ids before and after it, and the case it reads."""

    prefix: list[int]
    suffix: list[int]
    lower: bool
    pad_id: int


class HFDNAEncoder(_DNA, TransformerTextEncoder):
    """`hf-dna:<dir or hub id>[@commit]`: a DNA language model's last hidden layer, pooled over real tokens
    (`pooling=mean`, default) or its first special token (`pooling=cls`), per window, then over windows;
    `rc=true` averages the sequence's and its reverse complement's vectors.

    Models: Nucleotide Transformer v1 (ESM, native in transformers), GPN (PyPI gpn registers its classes), and
    models whose code ships with the checkpoint (config.json `auto_map`: NT v2, DNABERT-2, HyenaDNA, Caduceus),
    loaded with trust_remote_code only from a local directory the user names or a hub id pinned to a commit.
    A window holds `window` tokens (default: the model's maximum length less its special tokens)."""

    scheme = "hf-dna"
    _OPTIONS = (TransformerTextEncoder._OPTIONS | {"pooling", "rc"} | Alphabet.OPTIONS | Windows.OPTIONS)
    window_token_budget = 65_536  # on CUDA: padded tokens per forward pass
    MAX_WINDOWS = 64

    def __init__(self, spec: str, name: str, options: dict[str, str], revision: str | None = None):
        super().__init__(spec, name, options, revision)
        self.alphabet = Alphabet.from_options(spec, options)
        self.pooling = choice(spec, options, "pooling", ("mean", "cls"))
        self.rc = _flag(spec, options, "rc")
        Windows.identity_of(spec, options, 0, 0, self.MAX_WINDOWS)  # checks the window options now

    @cached_property
    def _config(self) -> dict:
        cfg = _read_json(self.model_dir / "config.json")
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
        if "max_length" in self.options:
            return _int(self.spec, self.options, "max_length", 512, low=2)
        cfg, limits = self._config, []
        tok_limit = _read_json(self.model_dir / "tokenizer_config.json").get("model_max_length")
        if isinstance(tok_limit, int) and tok_limit < 10 ** 7:
            limits.append(tok_limit)
        pos = cfg.get("max_position_embeddings")
        if isinstance(pos, int):
            absolute_esm = cfg.get("model_type") == "esm" and cfg.get("position_embedding_type",
                                                                         "absolute") == "absolute"
            limits.append(pos - (cfg.get("pad_token_id") or 0) - 1 if absolute_esm else pos)
        return min(limits) if limits else 512

    def identity(self) -> dict:
        return {"files": self._weights_hash, "max_length": self.max_length, "pooling": self.pooling, "rc": self.rc,
                "remote_code": self.remote_code, "alphabet": self.alphabet.identity(),
                **Windows.identity_of(self.spec, self.options, "max_length - special tokens", "3/4 window",
                                      self.MAX_WINDOWS)}

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
        takes_mask = "attention_mask" in inspect.signature(model.forward).parameters
        return tok, model, takes_mask

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
        w = Windows.from_options(self.spec, self.options, body, None, self.MAX_WINDOWS)
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
        model, takes_mask = self._loaded[1], self._loaded[2]
        autocast = torch.autocast(self._device.split(":")[0], dtype=torch.bfloat16,
                                  enabled=self._dtype == "bfloat16")
        parts, where = [], []
        for idx, ids, mask in batches:
            ids, mask = ids.to(self._device), mask.to(self._device)
            with torch.inference_mode(), autocast:
                out = model(input_ids=ids, attention_mask=mask) if takes_mask else model(input_ids=ids)
                hidden = _last_hidden(out, self.spec)
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


def _last_hidden(out: Any, spec: str):
    """The last hidden layer from any model output: a ModelOutput, or a tuple whose first item it is."""
    if isinstance(out, (tuple, list)):
        return out[0]
    hidden = getattr(out, "last_hidden_state", None)
    if hidden is None and getattr(out, "hidden_states", None) is not None:
        hidden = out.hidden_states[-1]
    if hidden is None:
        raise EncoderUnavailableError(f"encoder {spec!r}: the model returned {type(out).__name__} without a last "
                                      "hidden state; expected a base model (AutoModel) output")
    return hidden
