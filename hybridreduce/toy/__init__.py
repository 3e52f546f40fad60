"""The embedded toy task: a seeded synthetic long-video QA benchmark and the small hybrid video VLM trained on it.

Modules, by job::

    questions   the question types in one table (QUESTIONS): words, answers, relevant-token rule; follow-ups
    config      ToyConfig, its named variants (VARIANTS: static, clutter) and splits
    render      events, background canvas, camera, noise: the videos (Event, Sample)
    dataset     make_sample (a question and the video built around it), ToyDataset
    encoding    Vocab, encode_sample, collate, patchify: the model inputs
    evaluate    multiple-choice scoring (AnswerSheet), EVS inputs, accuracy tables, evaluate()
    model       ToyVLM: patch encoder + projector + a stock NemotronHForCausalLM
    train_config  the training config (configs/toy.yaml): TrainConfig, ToySpec, load_spec, build_model
    losses      one training step: batches, auxiliary heads, losses, the in-LM reduction a batch draws
    train       train-toy: the training loop
    checkpointing  saving a run's state, branching from it, warm restarts and depth up-scaling
    demo        the demo: every reduction method (DEMO_METHODS) on the shipped checkpoint
    stats       the benchmark's own statistics (relevant tokens, what EVS keeps of them)

Each question (colour / when / where / count / order of coloured shapes) needs only a few of the ``F·H·W``
visual tokens, and :func:`encode_sample` marks which ones (``relevant_mask``). The benchmark comes in two
variants (:data:`VARIANTS`: ``static``, ``clutter``; :meth:`ToyConfig.preset`), and
:mod:`hybridreduce.toy.stats` measures its own statistics (relevant tokens, what EVS keeps of them).
"""

from .config import PALETTE, VARIANTS, ToyConfig, align_lengths
from .dataset import ToyDataset, make_sample
from .encoding import Vocab, collate, encode_sample, patchify, shared_vocab, visual_grid
from .model import ToyVisionEncoder, ToyVLM, ToyVLMConfig
from .questions import ALL_QTYPES, QTYPES, QUESTIONS, QuestionType, answer_words, chance_level
from .render import Event, Sample

__all__ = [
    "ALL_QTYPES",
    "PALETTE",
    "QTYPES",
    "QUESTIONS",
    "VARIANTS",
    "Event",
    "QuestionType",
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
