"""`tiara`: tiara's pretrained 6-mer TF-IDF + MLP (PyPI tiara==1.0.2); its 1024-d hidden layer is the embedding."""

from __future__ import annotations

from functools import cached_property
from pathlib import Path

import numpy as np

from embedstore.encoders.base import Embedded, hash_files
from embedstore.encoders.dna.base import DNAEncoder, no_kmer_reason
from embedstore.encoders.dna.kmer import kmer_counts
from embedstore.encoders.dna.windows import WINDOW_OPTIONS, Windows, pool_windows
from embedstore.encoders.hub import tiara_dir
from embedstore.encoders.options import merge
from embedstore.errors import EncoderUnavailableError


class TiaraEncoder(DNAEncoder):
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

    OPTIONS = merge(DNAEncoder.OPTIONS, WINDOW_OPTIONS)

    def __init__(self, spec: str, name: str, options: dict[str, str], revision: str | None = None):
        super().__init__(spec, name, options, revision)
        self.windows = Windows.from_options(spec, self.opts, 5000, 5000, 10_000)

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
        return super().skip_reason(content) or no_kmer_reason(self.alphabet.normalise(content), self.K)

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
