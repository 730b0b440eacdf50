"""Text conditioning: a word-level tokenizer, a small Transformer encoder and the ``text``
conditioner that trains them with the denoiser."""

from ddpmkit_conditioning.text.conditioner import TextConditioner, TextConditionerParams
from ddpmkit_conditioning.text.encoder import TextEncoder
from ddpmkit_conditioning.text.tokenizer import WordTokenizer

__all__ = ["TextConditioner", "TextConditionerParams", "TextEncoder", "WordTokenizer"]
