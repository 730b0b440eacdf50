"""The data kinds: a data set, and the optional reader of generated images."""

from __future__ import annotations

import abc

import torch

from ddpmkit.core.component import Component
from ddpmkit.core.errors import ConfigError
from ddpmkit.core.values import Batch, Example, caption_words
from ddpmkit.core.wiring import CheckContext


class Dataset(Component, abc.ABC):
    """A data set component (kind ``dataset``, a supporting kind beside the six interfaces).

    Examples are indexed ``0 .. len-1``; every example has ``channels`` channels and is
    ``image_size`` pixels square. ``num_classes`` is 0 for unlabelled data. A data set whose
    generated images can be read back (``[eval] attributes``) registers an
    :class:`AttributeReader` under its own name.
    """

    channels: int
    image_size: int
    num_classes: int = 0

    @property
    def shape(self) -> tuple[int, ...]:
        """Shape of one example: ``(channels, image_size, image_size)``; vector data overrides
        it with ``(channels,)``."""
        return (self.channels, self.image_size, self.image_size)

    @abc.abstractmethod
    def __len__(self) -> int:
        """Number of examples."""

    @abc.abstractmethod
    def __getitem__(self, index: int) -> Example:
        """The example at ``index``."""

    def batch(self, indices: list[int]) -> Batch:
        """Collate the examples at ``indices`` (override for a faster path)."""
        examples = [self[i] for i in indices]
        return Batch(
            images=torch.stack([e.image for e in examples]),
            labels=torch.tensor([e.label for e in examples], dtype=torch.long),
            captions=tuple(e.caption for e in examples),
        )

    def caption_vocabulary(self) -> list[str]:
        """The sorted distinct words (:func:`caption_words`) of this data set's captions: the
        vocabulary a text conditioner is built with. The default reads every example."""
        found: set[str] = set()
        for start in range(0, len(self), 256):
            batch = self.batch(list(range(start, min(len(self), start + 256))))
            found.update(w for caption in batch.captions for w in caption_words(caption))
        return sorted(found)

    def check(self, context: CheckContext) -> None:
        """A data set with no example is refused."""
        if len(self) == 0:
            name = context.name or type(self).__name__
            raise ConfigError(f"{context.key or 'data'}: data set {name!r} is empty")


class AttributeReader(Component, abc.ABC):
    """Reads generated images back into the attributes a data set draws (kind
    ``attribute-reader``, optional: most data sets have none).

    A reader is registered under the name of the data set it reads (``shapes``), which is how
    ``[eval] attributes`` finds it; it is built with its own (usually empty) ``Params`` and
    :meth:`bind`-ed to the data set before it reads anything. Attributes are named strings,
    e.g. ``{"shape": "circle", "color": "red", "position": "left"}``.
    """

    def bind(self, dataset: Dataset) -> None:
        """Called once with the data set whose samples this reader reads, before any reading.
        A reader whose labels mean something only through the data set's params (the order
        of ``shapes``' shapes) records it here; the default does nothing."""

    @abc.abstractmethod
    def read_attributes(self, images: torch.Tensor) -> list[dict[str, str] | None]:
        """The attributes each of ``images`` (``(B, *dataset.shape)`` in ``[-1, 1]``) shows,
        ``None`` for an image that shows none: one entry per image."""

    def label_attributes(self, label: int) -> dict[str, str] | None:
        """The attributes a label stands for (``shapes``: ``{"shape": "circle"}``), against
        which :meth:`read_attributes` of a sample conditioned on it is checked; ``None``
        (the default) when labels have no readable meaning."""
        return None

    def caption_attributes(self, caption: str) -> dict[str, str] | None:
        """The attributes a caption (a text prompt) stands for (``shapes``: ``"a red circle"``
        -> ``{"shape": "circle", "color": "red"}``), against which :meth:`read_attributes` of a
        sample drawn for it is checked; ``None`` (the default) when captions have no readable
        meaning."""
        return None
