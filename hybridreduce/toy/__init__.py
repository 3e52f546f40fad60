"""The embedded toy task: a seeded synthetic long-video QA benchmark (:mod:`hybridreduce.toy.data`).

Each question (colour / when / where / count of a coloured shape) needs only a few of the ``T·R·C``
visual tokens, and :func:`encode_sample` marks which ones (``relevant_mask``).
"""

from .data import (
    PALETTE,
    QTYPES,
    Event,
    Sample,
    ToyConfig,
    ToyDataset,
    Vocab,
    answer_words,
    chance_level,
    collate,
    encode_sample,
    make_sample,
    patchify,
    visual_grid,
)

__all__ = [
    "PALETTE",
    "QTYPES",
    "Event",
    "Sample",
    "ToyConfig",
    "ToyDataset",
    "Vocab",
    "answer_words",
    "chance_level",
    "collate",
    "encode_sample",
    "make_sample",
    "patchify",
    "visual_grid",
]
