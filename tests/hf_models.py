"""Tiny randomly initialised transformers models, saved with save_pretrained, for the tests of
the hf-text conditioner and the hf-clip guidance (and their conformance tests)."""

from __future__ import annotations

from pathlib import Path

import torch

WORDS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "a", "red", "blue", "circle", "on", "the", "left"]


def save_word_tokenizer(folder: Path) -> None:
    """A WordLevel tokenizer over WORDS, [CLS] caption [SEP], as a transformers fast
    tokenizer written with save_pretrained."""
    import transformers
    from tokenizers import Tokenizer, models, pre_tokenizers, processors

    ids = {w: i for i, w in enumerate(WORDS)}
    tok = Tokenizer(models.WordLevel(ids, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)]
    )
    fast = transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
    )
    fast.save_pretrained(str(folder))


def save_tiny_bert(folder: Path) -> Path:
    """A randomly initialised 2-layer BERT of width 32 and its tokenizer, in ``folder``."""
    import transformers

    config = transformers.BertConfig(
        vocab_size=len(WORDS),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=32,
    )
    torch.manual_seed(0)
    transformers.BertModel(config).save_pretrained(str(folder))
    save_word_tokenizer(folder)
    return folder
