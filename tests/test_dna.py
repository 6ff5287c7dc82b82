"""DNA sequences: the alphabet policy, FASTA/FASTQ edge cases, kmer:/tiara/hf-dna: against direct computations,
long-sequence windows, the trust_remote_code rule, GUE slices and the CLI.

No DNA language-model weights exist here: hf-dna is tested on tiny randomly initialised models saved to local
directories (an ESM model like Nucleotide Transformer v1, a GPN model, and a model whose code the test writes)."""

from __future__ import annotations

import gzip
import itertools
import json
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest

from embedstore.encoders import get_encoder, list_encoders
from embedstore.encoders.dna.alphabet import Alphabet, reverse_complement
from embedstore.encoders.dna.kmer import fit_idf
from embedstore.encoders.dna.windows import plan_windows
from embedstore.testing import save_random_esm
from embedstore.errors import InputError
from tests.conftest import DATASETS, REPO, cli, require_data

GUE = DATASETS / "dna" / "gue"


def items(store, dataset):
    return {r["key"]: r for r in store.sql(
        f"SELECT key, text, label, meta, status, reason FROM item_status WHERE dataset = '{dataset}'").to_dicts()}


# -- alphabet ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("options, seq, normalised, reason", [
    ({}, "acgtNRyu", "ACGTNNNT", None),                                   # soft-mask folded, IUPAC -> N, U -> T
    ({"softmask": "mask"}, "ACgtA", "ACNNA", None),                       # soft-masked bases hard-masked
    ({"ambiguous": "keep"}, "ACRYN", "ACRYN", None),
    ({"ambiguous": "reject"}, "ACGTAyC", None, "ambiguous base 'y' at position 6"),
    ({"ambiguous": "reject"}, "ACGTN", None, "ambiguous base 'N' at position 5"),
    ({}, "ACG1T", None, "invalid character '1' at position 4 of 5"),
    ({}, "ACG T", None, "invalid character ' ' at position 4"),
    ({}, "ACGT*", None, "invalid character '\\*' at position 5"),
    ({}, "", None, "empty sequence"),
])
def test_alphabet_policy(options, seq, normalised, reason):
    a = Alphabet(**{"softmask": "upper", "ambiguous": "mask", **options})
    if reason:
        assert re.match(reason, a.check(seq) or ""), a.check(seq)
    else:
        assert a.check(seq) is None and a.normalise(seq) == normalised


def test_policy_enters_the_fingerprint_and_options_are_checked():
    base = get_encoder("kmer:3")
    assert get_encoder("kmer:3?softmask=mask").fingerprint != base.fingerprint
    assert get_encoder("kmer:3?ambiguous=reject").fingerprint != base.fingerprint
    assert get_encoder("kmer:3?ambiguous=mask").fingerprint == base.fingerprint  # the default, spelled out
    with pytest.raises(InputError, match=r"option ambiguous takes <mask\|keep\|reject>, not 'drop'"):
        get_encoder("kmer:3?ambiguous=drop")
    with pytest.raises(InputError, match=r"unknown option\(s\) \['pooling'\]"):
        get_encoder("kmer:3?pooling=cls")
    with pytest.raises(InputError, match="expected kmer:<k> with k from 1 to 8"):
        get_encoder("kmer:12")
    assert reverse_complement("ACGTRYN") == "NRYACGT"


# -- kmer ----------------------------------------------------------------------------------------------------------
def brute_counts(seq: str, k: int) -> np.ndarray:
    index = {"".join(p): i for i, p in enumerate(itertools.product("ACGT", repeat=k))}
    v = np.zeros(4 ** k)
    for i in range(len(seq) - k + 1):
        if seq[i:i + k] in index:
            v[index[seq[i:i + k]]] += 1
    return v


def random_seqs(n: int, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    return ["".join(rng.choice(list("ACGTACGTACGTacgtNR"), size=rng.integers(8, 300))) for _ in range(n)]


def test_kmer_matches_a_direct_count():
    seqs = random_seqs(60)
    enc = get_encoder("kmer:4")
    want = np.stack([brute_counts(enc.alphabet.normalise(s), 4) for s in seqs])
    out = enc.embed(seqs)
    np.testing.assert_allclose(out.vectors, want / want.sum(1, keepdims=True), rtol=1e-5, atol=1e-7)
    assert enc.dim == 256 and list(out.n_tokens) == [len(s) for s in seqs]
    raw = get_encoder("kmer:4?norm=none").embed(seqs).vectors
    np.testing.assert_array_equal(raw, want)
    # canonical: a k-mer and its reverse complement share a column, so a sequence and its RC are identical
    canon = get_encoder("kmer:4?canonical=true&norm=none")
    v = canon.embed([enc.alphabet.normalise(seqs[0]), reverse_complement(enc.alphabet.normalise(seqs[0]))]).vectors
    assert canon.dim == 136 and v.shape == (2, 136)
    np.testing.assert_array_equal(v[0], v[1])
    assert v[0].sum() == want[0].sum()
    assert get_encoder("kmer:4").skip_reason("ACGNNACG").startswith("no 4-mer of unambiguous bases")


def test_kmer_tfidf_from_a_file_and_from_tiara(tmp_path):
    seqs = random_seqs(40, seed=1)
    idf = fit_idf(seqs, 3)
    np.save(tmp_path / "idf.npy", idf)
    enc = get_encoder(f"kmer:3?idf={tmp_path / 'idf.npy'}")
    counts = np.stack([brute_counts(enc.alphabet.normalise(s), 3) for s in seqs]) * idf
    np.testing.assert_allclose(enc.embed(seqs).vectors, counts / np.linalg.norm(counts, axis=1, keepdims=True),
                               rtol=1e-5, atol=1e-7)
    copy = tmp_path / "copy.npy"
    shutil.copy(tmp_path / "idf.npy", copy)
    assert get_encoder(f"kmer:3?idf={copy}").fingerprint == enc.fingerprint  # the vector is hashed, not the path
    np.save(tmp_path / "bad.npy", idf[:10])
    with pytest.raises(InputError, match="expected 64 finite floats"):
        _ = get_encoder(f"kmer:3?idf={tmp_path / 'bad.npy'}").fingerprint
    require_tiara()
    assert get_encoder("kmer:6?idf=tiara").idf.shape == (4096,)


# -- tiara -------------------------------------------------------------------------------------------------------
def require_tiara() -> None:
    """Located, never imported: importing tiara pulls numba, which its --no-deps install does not bring."""
    import importlib.util
    if importlib.util.find_spec("tiara") is None:
        pytest.skip("needs PyPI tiara==1.0.2 (the set-up command installs it with --no-deps)")


@pytest.fixture(scope="module")
def tiara():
    require_tiara()
    return get_encoder("tiara")


def test_tiara_is_its_network_cut_below_the_output(tiara):
    """Direct computation in plain torch with tiara's own layer layout (NNet1) and its idf vector."""
    import torch
    root = tiara.models_dir
    state = torch.load(root / "nnet-models/first_nnet_kmer_6.pkl", weights_only=True)
    net = torch.nn.Sequential(torch.nn.Linear(4096, 2048), torch.nn.Dropout(0.2), torch.nn.ReLU(),
                              torch.nn.Linear(2048, 1024), torch.nn.ReLU(), torch.nn.Dropout(0.2),
                              torch.nn.Linear(1024, 5), torch.nn.Softmax(1))
    net.load_state_dict(state)
    idf = np.load(root / "tfidf-models/k6-first-stage/model.npy")
    hidden = net[:5].eval()

    def direct(seq: str) -> np.ndarray:
        x = brute_counts(seq, 6) * idf
        with torch.no_grad():
            return hidden(torch.tensor(x / np.linalg.norm(x), dtype=torch.float32)[None])[0].numpy()

    short = "GCTAGCTCATCTTGCGGCTGGGCGGGGCCCAGGACTGCTGCTGCTGACCGCCTTGATAGGCTACACCGTG"
    rng = np.random.default_rng(2)
    long = "".join(rng.choice(list("ACGT"), size=12_000))  # windows [0, 5000), [5000, 10000), [10000, 12000)
    out = tiara.embed([short, long])
    want_long = (5000 * direct(long[:5000]) + 5000 * direct(long[5000:10000]) + 2000 * direct(long[10000:])) / 12000
    np.testing.assert_allclose(out.vectors[0], direct(short), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(out.vectors[1], want_long, rtol=1e-4, atol=1e-5)
    assert tiara.dim == 1024 and (out.vectors[0] > 0).sum() > 50  # a real, non-degenerate activation
    assert list(out.n_tokens) == [70, 12_000] and not out.truncated.any()


# -- FASTA / FASTQ -------------------------------------------------------------------------------------------------
FASTA_CASES = {
    # name: (bytes, {key: (sequence, description)} or an error pattern)
    "multiline": (b">s1 first\nACGT\nACGT\nAC\n>s2\nGGGG\n", {"s1": ("ACGTACGTAC", "first"), "s2": ("GGGG", "")}),
    "blank_lines": (b"\n>s1\nACGT\n\nACGT\n\n\n>s2\nTTTT\n\n", {"s1": ("ACGTACGT", ""), "s2": ("TTTT", "")}),
    "crlf": (b">s1 desc\r\nACGT\r\nAC\r\n>s2\r\nGG\r\n", {"s1": ("ACGTAC", "desc"), "s2": ("GG", "")}),
    "gt_in_description": (b">s1 a>b >c label=x\nACGT\n", {"s1": ("ACGT", "a>b >c label=x")}),
    "no_final_newline": (b">s1\nACGT\n>s2\nGGCC", {"s1": ("ACGT", ""), "s2": ("GGCC", "")}),
    "empty_header_id": (b">\nACGT\n> \nGGGG\n", {"x.fa:1": ("ACGT", ""), "x.fa:2": ("GGGG", "")}),
    "not_fasta": (b"ACGT\n>s1\nACGT\n", "x.fa:1: expected a FASTA header line starting with '>'"),
}


@pytest.mark.parametrize("case", sorted(FASTA_CASES))
def test_fasta_edge_cases(case, store, tmp_path):
    data, want = FASTA_CASES[case]
    path = tmp_path / "x.fa"
    path.write_bytes(data)
    if isinstance(want, str):
        with pytest.raises(InputError, match=want):
            store.ingest(path, dataset="d", encoder="kmer:2", progress=False)
        return
    store.ingest(path, dataset="d", encoder="kmer:2", progress=False)
    got = {k: (r["text"], json.loads(r["meta"])["description"]) for k, r in items(store, "d").items()}
    assert got == want


def test_fasta_gzip_duplicates_labels_and_bad_characters(store, tmp_path):
    path = tmp_path / "genes.fa.gz"
    with gzip.open(path, "wb") as f:
        f.write(b">g1 label=pos\nACGTACGT\n>g1 label=neg\nTTTTGGGG\n>g2 label=neg\nACGT1CGT\n>g1~2\nCCCC\n"
                b">rna label=pos\nacguuu\n")
    r = store.ingest(path, dataset="genes", encoder="kmer:2", label_column="label", progress=False)
    assert any("2 repeated record id(s) got a suffix to stay unique: g1 -> g1~2, g1~2 -> g1~2~2" in n
               for n in r.notes)  # a note of the report (and its summary), not a Python warning
    rows = items(store, "genes")
    assert sorted(rows) == ["g1", "g1~2", "g1~2~2", "g2", "rna"]  # nothing dropped, keys unique
    assert (rows["g1"]["label"], rows["g1~2"]["label"], rows["g1~2~2"]["label"]) == ("pos", "neg", None)
    assert rows["g2"]["status"] == "skipped"
    assert rows["g2"]["reason"].startswith("invalid character '1' at position 5 of 8")
    assert any("invalid character '1' at position 5" in line for line in r.summary().splitlines())
    # RNA and soft-masked input: the content is stored as read, the vector is that of the normalised DNA
    assert rows["rna"]["text"] == "acguuu"
    X, _ = store.features("genes", encoder="kmer:2", label=None)
    direct = get_encoder("kmer:2").embed(["ACGTTT"]).vectors
    assert any(np.allclose(x, direct[0]) for x in X)


def test_fastq_records_and_their_defects(store, tmp_path):
    path = tmp_path / "reads.fastq"
    path.write_text("@r1 lane=1\nACGTAC\n+\nIIIII#\n"          # 4-line record; quality I = 40, # = 2
                    "@r2\nACGT\nAC\n+r2\n@III\nII\n"             # multi-line; a quality line starting with '@'
                    "\n"                                          # blank line between records
                    "@r3\nACG\n+\nIIIIII\n"                       # quality longer than the sequence
                    "@r4\nACGTACGT\n+\nIIII")                     # file ends inside the quality
    store.ingest(path, dataset="reads", encoder="kmer:2", progress=False)
    rows = items(store, "reads")
    assert rows["r1"]["status"] == "ok" and json.loads(rows["r1"]["meta"])["mean_quality"] == pytest.approx(
        (5 * 40 + 2) / 6, abs=0.01)
    assert rows["r2"]["text"] == "ACGTAC" and rows["r2"]["status"] == "ok"
    assert rows["r3"]["reason"] == "record starting at line 12: quality has 6 characters, sequence 3"
    assert rows["r4"]["reason"] == ("record starting at line 16: the file ends before its quality line is "
                                    "complete")


# -- hf-dna: tiny models -----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_nt(tmp_path_factory):
    """A 1-layer, 16-wide ESM model with Nucleotide Transformer v1's tokenizer layout (6-mer tokens), whose
    context is 12 tokens: <cls> + 10 sequence tokens + <eos>."""
    return save_random_esm(tmp_path_factory.mktemp("tiny-nt"), hidden=16, layers=1, heads=2, intermediate=32,
                           context=12)


def direct_windows(model_dir, seq: str, spans, weights, pooling: str = "mean") -> np.ndarray:
    """What the encoder should compute, written out: tokenise, cut, run each window alone, pool, average."""
    import torch
    from transformers import AutoModel, AutoTokenizer
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModel.from_pretrained(model_dir, trust_remote_code=True).eval()
    ids = tok(seq, add_special_tokens=False)["input_ids"]
    last = tok.eos_token_id if tok.eos_token_id is not None else tok.sep_token_id
    vecs = []
    for a, b in spans:
        window = torch.tensor([[tok.cls_token_id, *ids[a:b], last]])
        assert window.shape[1] <= tok.model_max_length
        with torch.no_grad():
            out = model(input_ids=window)
        h = (out[0] if isinstance(out, tuple) else out.last_hidden_state)[0]
        vecs.append((h[0] if pooling == "cls" else h.mean(0)).numpy())
    w = np.asarray(weights, float)
    return (np.stack(vecs) * w[:, None]).sum(0) / w.sum()


def test_windows_plan():
    assert plan_windows(50, 10, 7) == [(0, 10), (7, 17), (14, 24), (21, 31), (28, 38), (35, 45), (42, 50)]
    assert plan_windows(10, 10, 7) == [(0, 10)] and plan_windows(3, 10, 10) == [(0, 3)]
    assert plan_windows(25, 10, 10) == [(0, 10), (10, 20), (20, 25)]


def test_sequence_five_times_the_context_is_embedded_from_all_its_windows(tiny_nt, store):
    rng = np.random.default_rng(3)
    seq = "".join(rng.choice(list("ACGT"), size=360))  # 60 six-mer tokens: 5x the 12-token context
    enc = get_encoder(f"hf-dna:{tiny_nt}")
    assert (enc.max_length, enc.windows.window, enc.windows.stride) == (12, 10, 7)
    spans = [(0, 10), (7, 17), (14, 24), (21, 31), (28, 38), (35, 45), (42, 52), (49, 59), (56, 60)]
    weights = [10] * 8 + [4]  # the last window holds the last 4 tokens
    out = enc.embed([seq, seq[:60]])
    np.testing.assert_allclose(out.vectors[0], direct_windows(tiny_nt, seq, spans, weights), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(out.vectors[1], direct_windows(tiny_nt, seq[:60], [(0, 10)], [1]),
                               rtol=1e-4, atol=1e-5)
    assert list(out.n_tokens) == [60, 10] and not out.truncated.any()
    plain = get_encoder(f"hf-dna:{tiny_nt}?window_pooling=mean&pooling=cls")
    np.testing.assert_allclose(plain.embed([seq]).vectors[0], direct_windows(tiny_nt, seq, spans, [1] * 9, "cls"),
                               rtol=1e-4, atol=1e-5)
    both = get_encoder(f"hf-dna:{tiny_nt}?rc=true")
    rc = reverse_complement(seq)
    np.testing.assert_allclose(both.embed([seq]).vectors[0],
                               (out.vectors[0] + direct_windows(tiny_nt, rc, spans, weights)) / 2,
                               rtol=1e-4, atol=1e-5)
    fps = {e.fingerprint for e in (enc, plain, both, get_encoder(f"hf-dna:{tiny_nt}?stride=10"))}
    assert len(fps) == 4  # window settings, pooling and rc are part of the identity
    # through the store: n_tokens and the cap on windows are recorded per vector
    capped = f"hf-dna:{tiny_nt}?max_windows=3"
    store.ingest([seq, seq[:60]], dataset="nt", encoder=capped, progress=False)
    rec = store.resolve_encoder(capped, "nt")
    rows = store.sql(f"SELECT e.n_tokens, e.truncated FROM items i JOIN {rec.table} e USING (content_hash) "
                     "ORDER BY e.n_tokens").rows()
    assert rows == [(10, False), (60, True)]
    with pytest.raises(InputError, match="window 11 tokens exceeds the model's 10"):
        _ = get_encoder(f"hf-dna:{tiny_nt}?window=11").windows


def test_bf16_autocast_agrees_with_fp32(tiny_nt):
    seqs = random_seqs(4, seed=4)
    fp32 = get_encoder(f"hf-dna:{tiny_nt}").embed(seqs).vectors
    bf16 = get_encoder(f"hf-dna:{tiny_nt}?dtype=bfloat16").embed(seqs).vectors
    cos = (fp32 * bf16).sum(1) / np.linalg.norm(fp32, axis=1) / np.linalg.norm(bf16, axis=1)
    assert cos.min() >= 0.99


CONFIG_CODE = '''
from transformers import PretrainedConfig


class TinyDNAConfig(PretrainedConfig):
    model_type = "tiny-dna"

    def __init__(self, vocab_size=10, hidden_size=8, **kwargs):
        super().__init__(**kwargs)
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
'''

MODEL_CODE = '''
import torch
from transformers import PreTrainedModel

from .configuration_tiny import TinyDNAConfig


class TinyDNAModel(PreTrainedModel):
    """Like HyenaDNA: no attention mask, so padding would change the outputs."""

    config_class = TinyDNAConfig

    def __init__(self, config):
        super().__init__(config)
        self.embed = torch.nn.Embedding(config.vocab_size, config.hidden_size)
        self.conv = torch.nn.Conv1d(config.hidden_size, config.hidden_size, 3, padding=1)
        self.post_init()

    def forward(self, input_ids):
        h = self.embed(input_ids).transpose(1, 2)
        return (torch.tanh(self.conv(h)).transpose(1, 2),)
'''


def char_tokenizer(vocab: dict, model_max_length: int, specials: bool):
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast
    tk = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tk.pre_tokenizer = pre_tokenizers.Split("", "isolated")
    if specials:
        tk.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]", special_tokens=[
            ("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])])
    return PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="[UNK]", pad_token="[PAD]",
                                   model_max_length=model_max_length,
                                   **({"cls_token": "[CLS]", "sep_token": "[SEP]"} if specials else {}))


@pytest.fixture(scope="module")
def remote_model(tmp_path_factory):
    """A model directory whose code ships with it (config.json auto_map), like NT v2, DNABERT-2 or HyenaDNA."""
    import torch
    from transformers import AutoConfig, AutoModel
    d = tmp_path_factory.mktemp("tiny-remote")
    (d / "configuration_tiny.py").write_text(CONFIG_CODE)
    (d / "modeling_tiny.py").write_text(MODEL_CODE)
    (d / "config.json").write_text(json.dumps({
        "model_type": "tiny-dna", "vocab_size": 10, "hidden_size": 8,
        "auto_map": {"AutoConfig": "configuration_tiny.TinyDNAConfig", "AutoModel": "modeling_tiny.TinyDNAModel"}}))
    torch.manual_seed(0)
    AutoModel.from_config(AutoConfig.from_pretrained(d, trust_remote_code=True),
                          trust_remote_code=True).save_pretrained(d)
    vocab = {"[PAD]": 0, "[CLS]": 1, "[SEP]": 2, "[UNK]": 3, "[MASK]": 4, "A": 5, "C": 6, "G": 7, "T": 8, "N": 9}
    char_tokenizer(vocab, 8, specials=True).save_pretrained(d)
    return d


def test_model_code_shipped_with_a_local_checkpoint_loads_and_pools(remote_model):
    enc = get_encoder(f"hf-dna:{remote_model}")
    seqs = ["ACGTACGTACGTAC", "ACG", "TTGACN"]  # 14 bases = 3 windows of 6 (stride 4); unequal lengths
    out = enc.embed(seqs)
    assert enc.remote_code and enc.dim == 8 and (enc.windows.window, enc.windows.stride) == (6, 4)
    want = direct_windows(remote_model, seqs[0], [(0, 6), (4, 10), (8, 14)], [6, 6, 6])
    np.testing.assert_allclose(out.vectors[0], want, rtol=1e-4, atol=1e-5)
    for i in (1, 2):  # batched with others, yet equal to running alone: no padding reached the model
        np.testing.assert_allclose(out.vectors[i], direct_windows(remote_model, seqs[i], [(0, len(seqs[i]))], [1]),
                                   rtol=1e-4, atol=1e-5)


def test_remote_code_needs_a_pinned_commit_or_a_local_directory(remote_model, tmp_path, monkeypatch):
    import huggingface_hub.constants
    commit = "0123456789abcdef0123456789abcdef01234567"
    snapshot = tmp_path / "hub" / "models--embedstore-test--tiny-remote" / "snapshots" / commit
    shutil.copytree(remote_model, snapshot)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    (snapshot.parent.parent / "refs").mkdir()
    (snapshot.parent.parent / "refs" / "main").write_text(commit)
    with pytest.raises(InputError, match=r"ships its own model code \(config.json auto_map: AutoConfig, AutoModel\)"
                                         r".*and the spec gives no revision. Pin the code to a commit"):
        _ = get_encoder("hf-dna:embedstore-test/tiny-remote").fingerprint
    with pytest.raises(InputError, match="revision 'main', a branch or tag that can move"):
        _ = get_encoder("hf-dna:embedstore-test/tiny-remote@main").fingerprint
    pinned = get_encoder(f"hf-dna:embedstore-test/tiny-remote@{commit}")
    local = get_encoder(f"hf-dna:{remote_model}")
    assert pinned.fingerprint == local.fingerprint  # same files, same vectors, wherever they come from
    np.testing.assert_allclose(pinned.embed(["ACGTAC"]).vectors, local.embed(["ACGTAC"]).vectors, rtol=1e-6)


def test_gpn_model_loads_through_its_registration(tmp_path):
    gpn = pytest.importorskip("gpn", reason="needs PyPI gpn (installed by the set-up command)")
    import torch
    from gpn.model import GPNConfig, GPNModel
    torch.manual_seed(0)
    GPNModel(GPNConfig(vocab_size=7, hidden_size=16, intermediate_size=32, num_hidden_layers=2)).save_pretrained(
        tmp_path)
    vocab = {"[PAD]": 0, "[MASK]": 1, "[UNK]": 2, "a": 3, "c": 4, "g": 5, "t": 6}  # GPN reads lowercase
    char_tokenizer(vocab, 32, specials=False).save_pretrained(tmp_path)
    enc = get_encoder(f"hf-dna:{tmp_path}")
    out = enc.embed(["ACGTACGTAA", "acgtac"])
    assert enc._plan.lower and enc.dim == 16 and np.isfinite(out.vectors).all()
    gpn.register_auto_classes()
    from transformers import AutoModel
    model = AutoModel.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        want = model(input_ids=torch.tensor([[3, 4, 5, 6, 3, 4]])).last_hidden_state[0].mean(0).numpy()
    np.testing.assert_allclose(out.vectors[1], want, rtol=1e-4, atol=1e-5)


# -- real data, CLI, lazy imports --------------------------------------------------------------------------------
def test_gue_prom_slice_kmer_logreg_learns(store):
    """3,000 GUE prom_core_all training sequences -> kmer:4 -> logistic regression, scored on 1,000 test rows
    (MCC about 0.4; chance is 0; all 47k rows with kmer:6 reach 0.56, see benchmarks/bench_dna.py)."""
    import pandas as pd
    import heads
    folder = require_data(GUE / "prom" / "prom_core_all")
    for split, n in (("train", 3000), ("test", 1000)):
        rows = pd.read_csv(folder / f"{split}.csv", nrows=n)
        r = store.ingest(rows, dataset=f"prom-{split}", encoder="kmer:4", text_column="sequence",
                         label_column="label", progress=False)
        assert r.embedded == rows["sequence"].nunique() and not r.skipped
    heads.fit(store, "prom-train", label="label", model="logreg", encoder="kmer:4", name="prom-lr")
    assert heads.evaluate(store, "prom-lr", "prom-test")["mcc"] > 0.3


def test_other_sequence_column_names_and_mixed_case(store):
    import pandas as pd
    ecoli = pd.read_csv(require_data(DATASETS / "dna" / "nucleic_transformer" / "ecoli_promoters" / "v9d3.csv"),
                        nrows=200)
    assert ecoli["seqs"].str.contains("[acgt]").any()  # soft-masked style lowercase in the file
    r = store.ingest(ecoli, dataset="ecoli", encoder="kmer:4", text_column="seqs", label_column="labels",
                     progress=False)
    gb = pd.read_csv(DATASETS / "dna" / "genomic_benchmarks_test" / "test_human_nontata_promoters.csv", nrows=200)
    r2 = store.ingest(gb, dataset="gb", encoder="kmer:4", text_column="seq", label_column="label", progress=False)
    assert r.rows == r2.rows == 200 and not r.skipped and not r2.skipped


def test_cli_fasta_ingest_sequence_column_and_search(tmp_path):
    fa = tmp_path / "genes.fa"
    fa.write_text(">a\nACGTACGTACGTAAAA\n>b\nTTTTGGGGCCCCAAAA\n>c\nACGTACGTACGTAAAT\n")
    csv = tmp_path / "prom.csv"
    csv.write_text("sequence,label\nACGTACGTTT,1\nGGGGCCCCAA,0\nACGTACGTTA,1\n")
    s = tmp_path / "store"
    out = cli("embedstore", "ingest", str(fa), "--dataset", "genes", "--encoder", "kmer:3", "--quiet", store=s)
    assert "items new 3" in out.stdout
    cli("embedstore", "ingest", str(csv), "--dataset", "prom", "--sequence-column", "sequence", "--label-column",
        "label", "--encoder", "kmer:3", "--quiet", store=s)
    hits = json.loads(cli("embedstore", "search", "--dataset", "genes", "--sequence", "acgtacgtacgtaaaa", "-k", "2",
                          "--output-format", "json", store=s).stdout)
    assert [h["key"] for h in hits] == ["a", "c"] and hits[0]["score"] == pytest.approx(1.0, abs=1e-5)
    bad = cli("embedstore", "search", "--dataset", "genes", "--sequence", "ACGU-ACG", store=s, check=False)
    assert bad.returncode != 0 and "invalid character '-' at position 5" in bad.stderr


def test_heads_fit_on_kmer_plus_tiara(tiara, store):
    import heads
    rng = np.random.default_rng(5)
    gc_rich = ["".join(rng.choice(list("GCGCGA"), size=200)) for _ in range(60)]
    at_rich = ["".join(rng.choice(list("ATATAC"), size=200)) for _ in range(60)]
    rows = [{"sequence": s, "label": y} for ss, y in ((gc_rich, "gc"), (at_rich, "at")) for s in ss]
    for enc in ("kmer:3", "tiara"):
        store.ingest(rows, dataset="toy", encoder=enc, text_column="sequence", label_column="label", progress=False)
    head, metrics = heads.fit(store, "toy", label="label", model="logreg", encoder="kmer:3+tiara", name="toy", cv=2)
    assert head.meta["dim"] == 64 + 1024 and metrics["accuracy"] > 0.9


def test_reading_the_registry_and_dna_fingerprints_import_no_torch(tiny_nt):
    code = ("import sys; from embedstore.encoders import get_encoder; "
            "from embedstore.encoders.registry import list_encoders; list_encoders(); "
            f"[get_encoder(s).fingerprint for s in ('kmer:6', 'hf-dna:{tiny_nt}')]; "
            "assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)
    assert {r["spec"] for r in list_encoders()} >= {"kmer:<...>", "tiara:<...>", "hf-dna:<...>"}


def test_a_prepared_kmer_batch_gives_the_same_vectors_twice():
    """run() leaves its prepared batch as it was (a retried batch, after an out-of-memory split, is run again):
    canonical merging once summed the shared counts in place."""
    from embedstore.encoders import get_encoder
    for spec in ("kmer:4?canonical=true", "kmer:4", "kmer:3?canonical=true&norm=l2"):
        enc = get_encoder(spec)
        prepared = enc.prepare(["ACGTACGTTTGACCA", "GGGGCCCCAAAATTTT", "ACGTNNNACGGT"])
        first = enc.run(prepared).vectors
        assert np.array_equal(enc.run(prepared).vectors, first), spec
