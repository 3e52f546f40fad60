"""The embedded toy task: a seeded synthetic long-video QA benchmark (:mod:`hybridreduce.toy.data`)
and the small hybrid video VLM that is trained on it (:mod:`hybridreduce.toy.model`).

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
from .model import ToyVisionEncoder, ToyVLM, ToyVLMConfig

__all__ = [
    "PALETTE",
    "QTYPES",
    "Event",
    "Sample",
    "ToyVLM",
    "ToyVLMConfig",
    "ToyVisionEncoder",
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
