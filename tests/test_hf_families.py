"""`hf:` beyond BERT-like encoders: decoder-only (GPT-2) and encoder-decoder (T5, BART) models, `?layer=` for
`hf:` and `hf-dna:`, and the clear errors (cls on a causal model, a layer out of range, a model that is not a text
model). Tiny randomly initialised models saved to local directories, checked against transformers run directly."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from embedstore.cli import embedstore_cmd
from embedstore.encoders import get_encoder
from embedstore.errors import EncoderUnavailableError, InputError
from tests.conftest import write_tsv
from tests.test_dna import remote_model, tiny_nt  # noqa: F401  (fixtures)
from tests.test_encoders import tiny_bert  # noqa: F401  (fixture)

# lengths differ, so a batch pads
TEXTS = ["a warm, funny film", "the plot is thin and the acting is worse than the plot", "ok", "hello world"]


def save_bpe_tokenizer(d, padding_side: str = "right"):
    """A GPT-2-like byte-level BPE tokenizer with no pad token (the case that failed), trained on a few lines."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast
    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    tk.train_from_iterator(TEXTS * 3, trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>"],
                                                          initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<|endoftext|>", eos_token="<|endoftext|>",
                                  model_max_length=64, padding_side=padding_side,
                                  model_input_names=["input_ids", "attention_mask"])
    tok.save_pretrained(d)
    return tok


@pytest.fixture(scope="module")
def tiny_gpt2(tmp_path_factory):
    """A 2-layer, 32-wide GPT-2 whose tokenizer has no pad token."""
    import torch
    from transformers import GPT2Config, GPT2Model
    d = tmp_path_factory.mktemp("tiny-gpt2")
    tok = save_bpe_tokenizer(d)
    torch.manual_seed(0)
    GPT2Model(GPT2Config(vocab_size=len(tok), n_layer=2, n_embd=32, n_head=2, n_positions=64, bos_token_id=0,
                         eos_token_id=0)).save_pretrained(d)
    return d


def _with_bert_tokenizer(tmp_path_factory, tiny_bert, name: str, build) -> Path:
    """A tiny model `build(vocab_size)` saved beside the tiny BERT's (MiniLM's uncased) tokenizer."""
    import torch
    from transformers import AutoTokenizer
    d = tmp_path_factory.mktemp(name)
    tok = AutoTokenizer.from_pretrained(tiny_bert)
    torch.manual_seed(0)
    build(tok.vocab_size).save_pretrained(d)
    tok.save_pretrained(d)
    return d


@pytest.fixture(scope="module")
def tiny_t5(tmp_path_factory, tiny_bert):  # noqa: F811
    """A 2-layer T5."""
    from transformers import T5Config, T5Model
    return _with_bert_tokenizer(tmp_path_factory, tiny_bert, "tiny-t5", lambda v: T5Model(T5Config(
        vocab_size=v, d_model=32, d_kv=16, d_ff=64, num_layers=2, num_heads=2, decoder_start_token_id=0)))


@pytest.fixture(scope="module")
def tiny_bart(tmp_path_factory, tiny_bert):  # noqa: F811
    """A BART (no encoder-only class in transformers: loaded whole, cut to its encoder)."""
    from transformers import BartConfig, BartModel
    return _with_bert_tokenizer(tmp_path_factory, tiny_bert, "tiny-bart", lambda v: BartModel(BartConfig(
        vocab_size=v, d_model=32, encoder_layers=2, decoder_layers=1, encoder_attention_heads=2,
        decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=64, max_position_embeddings=64)))


def alone(model, tok, text: str, layer: int = -1):
    """Hidden states of one text run by itself (no padding at all): [tokens, dim]."""
    import torch
    with torch.no_grad():
        out = model(**tok([text], return_tensors="pt"), output_hidden_states=True)
    return (out.last_hidden_state if layer == -1 else out.hidden_states[layer])[0]


def test_gpt2_without_a_pad_token_pools_mean_and_last_like_each_text_alone(tiny_gpt2, tmp_path):
    from transformers import AutoModel, AutoTokenizer
    tok, model = AutoTokenizer.from_pretrained(tiny_gpt2), AutoModel.from_pretrained(tiny_gpt2).eval()
    assert tok.pad_token is None  # what made `embedstore ingest --encoder hf:<gpt2>` fail
    mean = np.stack([alone(model, tok, t).mean(0).numpy() for t in TEXTS])
    last = np.stack([alone(model, tok, t)[-1].numpy() for t in TEXTS])
    left = shutil.copytree(tiny_gpt2, tmp_path / "left")
    save_bpe_tokenizer(left, padding_side="left")  # a tokenizer set to pad on the left changes nothing
    for d in (tiny_gpt2, left):
        enc = get_encoder(f"hf:{d}?normalize=false&batch_size=4")
        assert enc.dim == 32 and enc.max_length == 64  # n_positions, GPT-2's name for the position limit
        np.testing.assert_allclose(enc.embed(TEXTS).vectors, mean, rtol=1e-4, atol=1e-5)  # mean is the default
        np.testing.assert_allclose(get_encoder(f"hf:{d}?normalize=false&pooling=last").embed(TEXTS).vectors, last,
                                   rtol=1e-4, atol=1e-5)
    assert get_encoder(f"hf:{tiny_gpt2}?pooling=last").fingerprint != get_encoder(f"hf:{tiny_gpt2}").fingerprint
    with pytest.raises(InputError, match=r"option pooling takes <mean\|cls\|max\|last>, not 'sum'"):
        get_encoder(f"hf:{tiny_gpt2}?pooling=sum")
    with pytest.raises(InputError, match=r"pooling=cls takes the first token, and GPT2Model is a decoder-only "
                                         r"model whose first token sees only itself.*use pooling=mean"):
        _ = get_encoder(f"hf:{tiny_gpt2}?pooling=cls").dim


@pytest.mark.parametrize("family", ["t5", "bart"])
def test_encoder_decoder_models_run_their_encoder_alone(family, request):
    import torch
    from transformers import AutoModel, AutoTokenizer, T5EncoderModel
    d = request.getfixturevalue(f"tiny_{family}")
    tok = AutoTokenizer.from_pretrained(d)
    ref = T5EncoderModel.from_pretrained(d) if family == "t5" else AutoModel.from_pretrained(d).get_encoder()
    with torch.no_grad():
        f = tok(TEXTS, padding=True, return_tensors="pt")
        h = ref.eval()(input_ids=f["input_ids"], attention_mask=f["attention_mask"]).last_hidden_state
        m = f["attention_mask"].unsqueeze(-1).float()
        want = ((h * m).sum(1) / m.sum(1)).numpy()
    enc = get_encoder(f"hf:{d}?normalize=false")
    np.testing.assert_allclose(enc.embed(TEXTS).vectors, want, rtol=1e-4, atol=1e-5)
    assert enc.dim == 32 and not hasattr(enc._loaded.module, "decoder")


def test_layer_picks_a_hidden_state_and_only_a_non_default_one_enters_the_fingerprint(tiny_bert):  # noqa: F811
    from transformers import AutoModel, AutoTokenizer
    tok, model = AutoTokenizer.from_pretrained(tiny_bert), AutoModel.from_pretrained(tiny_bert).eval()
    default = get_encoder(f"hf:{tiny_bert}?normalize=false")
    for layer in (-2, 0, 1):
        want = np.stack([alone(model, tok, t, layer).mean(0).numpy() for t in TEXTS])
        enc = get_encoder(f"hf:{tiny_bert}?normalize=false&layer={layer}")
        np.testing.assert_allclose(enc.embed(TEXTS).vectors, want, rtol=1e-4, atol=1e-5)
        assert enc.identity()["layer"] == layer and enc.fingerprint != default.fingerprint
    assert "layer" not in default.identity()  # stores made before the option keep their fingerprints
    assert get_encoder(f"hf:{tiny_bert}?layer=-1&normalize=false").fingerprint == default.fingerprint
    with pytest.raises(InputError, match=r"layer=-4 is out of range: the model has 2 layers, so layer takes -3\.\.2"):
        _ = get_encoder(f"hf:{tiny_bert}?layer=-4").dim


def test_hf_dna_layer(tiny_nt, remote_model):  # noqa: F811
    import torch
    from transformers import AutoModel, AutoTokenizer
    tok, model = AutoTokenizer.from_pretrained(tiny_nt), AutoModel.from_pretrained(tiny_nt).eval()
    seqs = ["ACGTAC" * 4, "TTGACA" * 7]  # 4 and 7 six-mer tokens: one window each, padded in one batch
    default = get_encoder(f"hf-dna:{tiny_nt}")
    for layer in (0, -2):  # the embeddings, both ways of naming them (a 1-layer model)
        want = []
        for s in seqs:
            ids = torch.tensor([[tok.cls_token_id, *tok(s, add_special_tokens=False)["input_ids"], tok.eos_token_id]])
            with torch.no_grad():
                want.append(model(input_ids=ids, output_hidden_states=True).hidden_states[layer][0].mean(0).numpy())
        enc = get_encoder(f"hf-dna:{tiny_nt}?layer={layer}")
        np.testing.assert_allclose(enc.embed(seqs).vectors, np.stack(want), rtol=1e-4, atol=1e-5)
        assert enc.fingerprint != default.fingerprint
    assert "layer" not in default.identity()
    with pytest.raises(InputError, match=r"layer=2 is out of range: the model has 1 layer, so layer takes -2\.\.1"):
        _ = get_encoder(f"hf-dna:{tiny_nt}?layer=2").dim
    with pytest.raises(EncoderUnavailableError, match=r"layer=-2 needs the model's hidden states, and "
                                                      r"TinyDNAModel.forward takes no output_hidden_states"):
        _ = get_encoder(f"hf-dna:{remote_model}?layer=-2").dim


@pytest.fixture(scope="module")
def tiny_vit(tmp_path_factory):
    """An image model's directory, handed to hf: by mistake."""
    import torch
    from transformers import ViTConfig, ViTModel
    d = tmp_path_factory.mktemp("tiny-vit")
    torch.manual_seed(0)
    ViTModel(ViTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                       image_size=32, patch_size=16)).save_pretrained(d)
    (d / "preprocessor_config.json").write_text(json.dumps({"image_processor_type": "ViTImageProcessor"}))
    return d


@pytest.mark.parametrize("spec, says", [
    ("hf:{bert}?layer=5", "layer=5 is out of range: the model has 2 layers, so layer takes -3..2"),
    ("hf:{vit}", "ViTModel (model_type 'vit') is not a text-only model (it takes pixel_values"),
])
def test_cli_ingest_says_what_is_wrong_without_a_traceback(spec, says, tiny_bert, tiny_vit, tmp_path,  # noqa: F811
                                                           capsys):
    rows = write_tsv(tmp_path / "rows.tsv", [("a warm film", "pos"), ("a thin plot", "neg")])
    code = embedstore_cmd.main(["ingest", str(rows), "--dataset", "d", "--encoder",
                                spec.format(bert=tiny_bert, vit=tiny_vit), "--store", str(tmp_path / "store")])
    err = capsys.readouterr().err
    assert code == 2 and says in err and "Traceback" not in err and err.startswith("error: "), err
    if "vit" in spec:
        assert "decoder-only models (GPT-2-like)" in err  # it names what hf: runs
