"""A deterministic word-level tokenizer: :func:`ddpmkit.caption_words` (lower-cased runs of
letters and digits), a fixed vocabulary, a leading summary token, right padding."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch

from ddpmkit import caption_words

PAD, UNK, CLS = "<pad>", "<unk>", "<cls>"
"""The special tokens, ids 0, 1 and 2: padding, an out-of-vocabulary word, and the summary token
that starts every sequence (its encoding is the pooled vector)."""
SPECIALS = (PAD, UNK, CLS)


def vocabulary_of(texts: Iterable[str]) -> list[str]:
    """The sorted distinct words of ``texts`` (a vocabulary built from a few captions)."""
    return sorted({w for text in texts for w in caption_words(text)})


class WordTokenizer:
    """Text -> ``(ids, mask)`` of a fixed length ``max_length``.

    A sequence is ``<cls> w_1 ... w_n <pad> ...``: the summary token, then the words (a word
    outside the vocabulary is ``<unk>``), cut to ``max_length``, then padding. ``mask`` is
    ``True`` on the real tokens, the summary token included, so the empty caption (the null
    condition) is one real token, ``<cls>``, and never an all-padding row.
    """

    def __init__(self, vocabulary: Sequence[str], max_length: int) -> None:
        if max_length < 1:
            raise ValueError(f"max_length must be >= 1, got {max_length}")
        clash = sorted(set(vocabulary) & set(SPECIALS))
        if clash or len(set(vocabulary)) != len(vocabulary):
            raise ValueError(f"the vocabulary repeats a word or names a special token: {clash}")
        self.tokens = [*SPECIALS, *vocabulary]
        self.ids = {token: i for i, token in enumerate(self.tokens)}
        self.max_length = max_length

    def __len__(self) -> int:
        """The number of token ids, special tokens included."""
        return len(self.tokens)

    def encode(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """``(ids, mask)``, both ``(B, max_length)``: long ids and a bool mask of real tokens."""
        if isinstance(texts, str):
            raise TypeError("encode takes a sequence of texts, not one string")
        ids = torch.full((len(texts), self.max_length), self.ids[PAD], dtype=torch.long)
        for row, text in enumerate(texts):
            unk = self.ids[UNK]
            seq = [self.ids[CLS], *(self.ids.get(w, unk) for w in caption_words(text))]
            seq = seq[: self.max_length]
            ids[row, : len(seq)] = torch.tensor(seq)
        return ids, ids != self.ids[PAD]

    def decode(self, ids: torch.Tensor) -> list[str]:
        """The words of each row of ``ids``, joined by spaces (special tokens dropped,
        ``<unk>`` kept)."""
        skip = {self.ids[PAD], self.ids[CLS]}
        return [
            " ".join(self.tokens[i] for i in row.tolist() if i not in skip) for row in ids.long()
        ]
