"""For tests and benchmarks only: tiny random models saved where a user's spec loads them. No DNA language-model
weights can be downloaded here, so the code path is checked, and the real architecture timed, with random
weights saved locally and loaded back through the path a user takes (`hf-dna:<dir>`)."""

from __future__ import annotations

import itertools
from pathlib import Path

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
