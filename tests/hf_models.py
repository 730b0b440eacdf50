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


def save_tiny_clip(folder: Path) -> Path:
    """A randomly initialised CLIPModel (both towers 2 layers of width 32, 16-pixel images in
    4-pixel patches, a 16-dim joint space) and the WORDS tokenizer, in ``folder``; the text
    tower pools at [SEP], its end-of-text token."""
    import transformers

    config = transformers.CLIPConfig(
        text_config={
            "vocab_size": len(WORDS),
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "max_position_embeddings": 16,
            "pad_token_id": 0,
            "bos_token_id": 2,
            "eos_token_id": 3,
        },
        vision_config={
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "image_size": 16,
            "patch_size": 4,
        },
        projection_dim=16,
    )
    torch.manual_seed(0)
    transformers.CLIPModel(config).save_pretrained(str(folder))
    save_word_tokenizer(folder)
    return folder
