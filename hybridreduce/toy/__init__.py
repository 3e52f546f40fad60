"""The embedded toy task: a seeded synthetic long-video QA benchmark (:mod:`hybridreduce.toy.data`)
and the small hybrid video VLM that is trained on it (:mod:`hybridreduce.toy.model`).

Each question (colour / when / where / count / order of coloured shapes) needs only a few of the ``T·R·C``
visual tokens, and :func:`encode_sample` marks which ones (``relevant_mask``). The benchmark comes in two
variants (:data:`VARIANTS`: ``static``, ``clutter``; :meth:`ToyConfig.preset`), and
:mod:`hybridreduce.toy.stats` measures its own statistics (relevant tokens, what EVS keeps of them).
"""

from .data import (
    ALL_QTYPES,
    PALETTE,
    QTYPES,
    VARIANTS,
    Event,
    Sample,
    ToyConfig,
    ToyDataset,
    Vocab,
    align_lengths,
    answer_words,
    chance_level,
    collate,
    encode_sample,
    make_sample,
    patchify,
    shared_vocab,
    visual_grid,
)
from .model import ToyVisionEncoder, ToyVLM, ToyVLMConfig

__all__ = [
    "ALL_QTYPES",
    "PALETTE",
    "QTYPES",
    "VARIANTS",
    "Event",
    "Sample",
    "ToyVLM",
    "ToyVLMConfig",
    "ToyVisionEncoder",
    "ToyConfig",
    "ToyDataset",
    "Vocab",
    "align_lengths",
    "answer_words",
    "chance_level",
    "collate",
    "encode_sample",
    "make_sample",
    "patchify",
    "shared_vocab",
    "visual_grid",
]
