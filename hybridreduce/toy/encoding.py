"""The toy benchmark's model inputs: the vocabulary (:class:`Vocab`), one sample's sequence
(:func:`encode_sample`), batches (:func:`collate`) and patches (:func:`patchify`).

Sequence layout (:func:`encode_sample`), every sample of one config has the same length ``T``::

    <pad>*n_pad  <bos>  (<frame> <video>*H·W) * F  question words  <answer>

The whole sequence is LEFT-padded (``n_pad = max_question_len − len(question)``), so ``<answer>`` is always
the last position (``T − 1``): the model's logits there are scored against ``answer_id``.
``attention_mask`` is 0 on the padding. Visual tokens are in frame-major, then row, then column order,
the order of :func:`patchify`. ``max_question_len`` is the longest question of ``qtypes`` unless
``question_len`` asks for more: :func:`~hybridreduce.toy.config.align_lengths` gives configs of one video
geometry (say ``static`` and ``clutter``) one common ``T``, so their samples stack into one batch.

Mixing variants in one model: the vocabulary of a config with ``order`` is the one without it plus the
words ``before yes no`` at the end, and one with ``first`` adds ``which first or`` after those (:class:`Vocab`),
so every id of a ``static`` model keeps its meaning;
:func:`shared_vocab` returns the vocabulary that covers a list of configs.

Shapes use the dimension letters of :mod:`hybridreduce.glossary`; a frame's pixel size is ``H·P × W·P``.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence

import numpy as np
import torch

from ..errors import InputError
from .config import ToyConfig
from .questions import (
    FIRST_WORDS,
    ORDER_WORDS,
    PAIR_QTYPES,
    QUADRANTS,
    QUESTION_WORDS,
    answer_words,
    bin_word,
    cell_word,
)
from .render import Sample

SPECIAL_TOKENS = ("<pad>", "<bos>", "<video>", "<frame>", "<answer>")


class Vocab:
    """The word-level vocabulary of a config: specials, question words, colours, numbers, cells, bins.

    Ids are fixed by the config: ``<pad>`` = 0, ``<bos>`` = 1, ``<video>`` = 2, ``<frame>`` = 3,
    ``<answer>`` = 4, then :data:`~hybridreduce.toy.questions.QUESTION_WORDS`, the config's colours, the numbers
    ``0 .. max(frames − 1, count_range[1])``, the cell words, the time-bin words and the quadrant words;
    then, only when ``qtypes`` has ``order`` or ``first``, :data:`~hybridreduce.toy.questions.ORDER_WORDS`
    (``before yes no``), and only when it has ``first``, :data:`~hybridreduce.toy.questions.FIRST_WORDS`
    (``which first or``).
    New words are only ever appended, so two configs that differ only in variant settings (camera, noise,
    distractors, ``order``, ``first``) have vocabularies one of which is a prefix of the other, and a model trained
    on the shorter keeps every id (the shipped checkpoint's ``static`` vocabulary is the first 86 words of the
    ``clutter`` one). Use :func:`shared_vocab` for a model trained on several configs.
    """

    def __init__(self, cfg: ToyConfig):
        if not isinstance(cfg, ToyConfig):
            raise InputError(f"Vocab needs a ToyConfig, got {type(cfg).__name__}")
        self.cfg = cfg
        n_numbers = max(cfg.frames - 1, cfg.count_range[1]) + 1
        words = [*SPECIAL_TOKENS, *QUESTION_WORDS, *cfg.colours, *(str(n) for n in range(n_numbers))]
        words += [cell_word(r, c) for r in range(cfg.rows) for c in range(cfg.cols)]
        words += [bin_word(k) for k in range(cfg.time_bins)] + list(QUADRANTS)
        if set(PAIR_QTYPES) & set(cfg.qtypes):  # appended only here: a config without them keeps its old words
            words += ORDER_WORDS
        if "first" in cfg.qtypes:  # after ORDER_WORDS, so a model trained with `order` grows to `first`
            words += FIRST_WORDS
        self.words: list[str] = words
        self._ids = {w: i for i, w in enumerate(words)}
        if len(self._ids) != len(words):  # a guard on the word lists above
            raise AssertionError("duplicate vocabulary words")
        self.pad_id, self.bos_id, self.video_id, self.frame_id, self.answer_marker_id = range(5)

    @property
    def size(self) -> int:
        """Number of words (the embedding table size)."""
        return len(self.words)

    def __len__(self) -> int:
        return len(self.words)

    def token_id(self, word: str) -> int:
        """The id of one word. Raises InputError for a word outside the vocabulary."""
        try:
            return self._ids[word]
        except (KeyError, TypeError):
            raise InputError(f"{word!r} is not in the toy vocabulary ({self.size} words)") from None

    def encode(self, words: Sequence[str]) -> list[int]:
        """Ids of a list of words."""
        if isinstance(words, str):
            raise InputError("encode takes a list of words, not a string; split it first (text.split())")
        return [self.token_id(w) for w in words]

    def decode(self, ids) -> list[str]:
        """Words of a list (or 1-D tensor / array) of ids."""
        if isinstance(ids, (torch.Tensor, np.ndarray)):
            ids = ids.tolist()
        out = []
        for i in ids:
            if isinstance(i, bool) or not isinstance(i, numbers.Integral) or not 0 <= int(i) < self.size:
                raise InputError(f"id {i!r} is not in the toy vocabulary (ids 0..{self.size - 1})")
            out.append(self.words[int(i)])
        return out

    def answer_words(self, qtype: str) -> list[str]:
        """Candidate answers of a question type (see :func:`~hybridreduce.toy.questions.answer_words`)."""
        return answer_words(self.cfg, qtype)

    def answer_ids(self, qtype: str) -> list[int]:
        """Ids of the candidate answers of a question type, for multiple-choice scoring."""
        return self.encode(answer_words(self.cfg, qtype))


def shared_vocab(cfgs: Sequence[ToyConfig]) -> Vocab:
    """The vocabulary of a model trained on several configs: the longest of theirs, when it extends every other.

    A mix of ``static`` and ``clutter`` (same frames, colours, grid, time bins, count range and ``where_answer``)
    gets the ``clutter`` vocabulary, whose first words are exactly the ``static`` one; pass it as
    ``ToyDataset(..., vocab=...)`` for every config of the mix. Its ``answer_ids(q)`` are then the candidates of
    every config that asks ``q``.

    Raises:
        InputError: an empty list, a non-config, two configs whose vocabularies disagree on an id (they differ
            in frames, colours, grid, time_bins or count_range), or a question type whose candidate answers differ
            between a config and the returned vocabulary's (e.g. ``where_answer`` ``"cell"`` and ``"quadrant"``).
    """
    if isinstance(cfgs, ToyConfig) or not isinstance(cfgs, Sequence) or len(cfgs) == 0:
        raise InputError("shared_vocab takes a non-empty list of ToyConfigs")
    bad = [type(c).__name__ for c in cfgs if not isinstance(c, ToyConfig)]
    if bad:
        raise InputError(f"shared_vocab takes ToyConfigs, got {bad}")
    vocabs = [Vocab(c) for c in cfgs]
    longest = max(vocabs, key=len)
    for k, v in enumerate(vocabs):
        if longest.words[: len(v)] != v.words:
            i = next(i for i, (a, b) in enumerate(zip(v.words, longest.words, strict=False)) if a != b)
            raise InputError(
                f"shared_vocab: config {k}'s vocabulary gives id {i} to {v.words[i]!r}, another config gives it to "
                f"{longest.words[i]!r}; configs of one model need equal frames, colours, grid (height, width, "
                "patch), time_bins and count_range"
            )
        for q in cfgs[k].qtypes:  # the shared vocabulary's answer_ids(q) must be every config's candidates
            mine, shared = answer_words(cfgs[k], q), answer_words(longest.cfg, q)
            if mine != shared:
                raise InputError(
                    f"shared_vocab: config {k}'s {q!r} answers {mine[:5]} differ from {shared[:5]} of the "
                    "longest vocabulary's config; a model scores one candidate list per question type, so give the "
                    "configs equal where_answer, colours, time_bins and count_range"
                )
    return longest


def visual_grid(cfg: ToyConfig) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(frame_index, row_index, col_index)``, each ``(V,)`` long, of the visual tokens in sequence order."""
    t, r, c = np.meshgrid(np.arange(cfg.frames), np.arange(cfg.rows), np.arange(cfg.cols), indexing="ij")
    return tuple(torch.from_numpy(x.reshape(-1).astype(np.int64)) for x in (t, r, c))


def encode_sample(sample: Sample, vocab: Vocab, cfg: ToyConfig) -> dict:
    """The language-model inputs of one sample (layout in the module docstring; ``T = cfg.seq_len``).

    Returns:
        dict with
            ``input_ids``: ``(T,)`` long; ``attention_mask``: ``(T,)`` long, 0 on the left padding;
            ``visual_mask``: ``(T,)`` bool, True at the ``V`` ``<video>`` positions;
            ``relevant_mask``: ``(T,)`` bool, True at the ``<video>`` positions of ``sample.relevant``
            (a subset of ``visual_mask``); ``relevant_visual``: ``(V,)`` bool, the same over the visual tokens;
            ``frame_index``, ``row_index``, ``col_index``: ``(V,)`` long, each visual token's ``(frame, row, column)``;
            ``pixels``: ``(F, 3, H·P, W·P)`` float32 in ``[0, 1]``;
            ``answer_id``: int, the answer's vocabulary id (the target at position ``T − 1``);
            ``answer_index``: int, its index in ``vocab.answer_ids(qtype)``;
            ``qtype``: str; ``id``: str.
    Raises:
        InputError: a sample whose video does not match ``cfg``, or a question longer than ``cfg.max_question_len``.
    """
    F, height, width = cfg.frames, cfg.height, cfg.width
    if not isinstance(sample, Sample) or sample.video.shape != (F, height, width, 3) or sample.video.dtype != np.uint8:
        shape = sample.video.shape if isinstance(sample, Sample) else type(sample).__name__
        raise InputError(
            f"sample must be a Sample with a (frames, height, width, 3) = {(F, height, width, 3)} uint8 video, "
            f"got {shape}"
        )
    q_ids = vocab.encode(sample.question)
    pad = cfg.max_question_len - len(q_ids)
    if pad < 0:
        raise InputError(
            f"question of {len(q_ids)} words is longer than cfg.max_question_len = {cfg.max_question_len}; "
            f"was the sample made with another config? (qtype {sample.qtype!r})"
        )
    tpf, T = cfg.tokens_per_frame, cfg.seq_len
    frames = torch.full((F, 1 + tpf), vocab.video_id, dtype=torch.long)
    frames[:, 0] = vocab.frame_id
    input_ids = torch.cat(
        [
            torch.full((pad,), vocab.pad_id, dtype=torch.long),
            torch.tensor([vocab.bos_id]),
            frames.reshape(-1),
            torch.tensor(q_ids + [vocab.answer_marker_id], dtype=torch.long),
        ]
    )
    attention_mask = torch.ones(T, dtype=torch.long)
    attention_mask[:pad] = 0
    visual_pos = (pad + 2 + torch.arange(F)[:, None] * (1 + tpf) + torch.arange(tpf)[None]).reshape(-1)  # (V,)
    visual_mask = torch.zeros(T, dtype=torch.bool)
    visual_mask[visual_pos] = True
    relevant_visual = torch.zeros(cfg.n_visual, dtype=torch.bool)
    if sample.relevant:
        flat = torch.tensor([t * tpf + r * cfg.cols + c for t, r, c in sample.relevant], dtype=torch.long)
        relevant_visual[flat] = True
    relevant_mask = torch.zeros(T, dtype=torch.bool)
    relevant_mask[visual_pos[relevant_visual]] = True
    frame_index, row_index, col_index = visual_grid(cfg)
    # In numpy (single-threaded): torch's parallel elementwise kernels crawl on a busy 2-core machine.
    pixels = np.ascontiguousarray(sample.video.transpose(0, 3, 1, 2), dtype=np.float32)
    pixels /= 255.0
    return {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "visual_mask": visual_mask,
        "relevant_mask": relevant_mask,
        "relevant_visual": relevant_visual,
        "frame_index": frame_index,
        "row_index": row_index,
        "col_index": col_index,
        "pixels": torch.from_numpy(pixels),
        "answer_id": vocab.token_id(sample.answer),
        "answer_index": answer_words(cfg, sample.qtype).index(sample.answer),
        "qtype": sample.qtype,
        "id": sample.id,
    }


def collate(batch: Sequence[dict]) -> dict:
    """Stack encoded samples of one config into a batch.

    Tensors are stacked to ``(b, ...)``, ints become a ``(b,)`` long tensor, anything else (``qtype``,
    ``id``) a list. Samples of one config have the same length, so no padding happens here.

    Raises:
        InputError: an empty batch, different keys, or tensors of different shapes (mixed configs).
    """
    if isinstance(batch, dict) or not isinstance(batch, Sequence) or len(batch) == 0:
        raise InputError("collate needs a non-empty list of encode_sample dicts")
    keys = list(batch[0])
    for item in batch:
        if list(item) != keys:
            raise InputError(f"collate got dicts with different keys: {keys} and {list(item)}")
    out = {}
    for key in keys:
        values = [item[key] for item in batch]
        if isinstance(values[0], torch.Tensor):
            shapes = {tuple(v.shape) for v in values}
            if len(shapes) != 1:
                raise InputError(
                    f"collate: {key!r} has different shapes {sorted(shapes)}; batch samples of one ToyConfig only"
                )
            if all(v.device.type == "cpu" and not v.requires_grad for v in values):  # numpy: see encode_sample
                out[key] = torch.from_numpy(np.stack([v.numpy() for v in values]))
            else:
                out[key] = torch.stack(values)
        elif isinstance(values[0], numbers.Integral) and not isinstance(values[0], bool):
            out[key] = torch.tensor(values, dtype=torch.long)
        else:
            out[key] = list(values)
    return out


def patchify(pixels, patch: int) -> torch.Tensor:
    """Cut frames into flattened ``P × P`` patches, in the visual-token order of the sequence.

    Args:
        pixels: ``(F, 3, H·P, W·P)`` or ``(b, F, 3, H·P, W·P)`` tensor (or numpy array): a frame size in pixels
            that is a multiple of ``P``.
        patch: ``P``.
    Returns:
        ``(F·H·W, 3·P·P)`` (or ``(b, F·H·W, 3·P·P)``): row ``frame·H·W + row·W + column`` is the patch of that
        frame, row and column (frame-major, then row, then column); its features are in ``(channel, dy, dx)``
        order, the order of ``nn.Conv2d(3, d, P, stride=P).weight.reshape(d, -1)``, so a linear layer on
        the patches equals that convolution.
    Raises:
        InputError: wrong rank, not 3 channels, or a size not divisible by ``P``.
    """
    if isinstance(pixels, np.ndarray):
        pixels = torch.from_numpy(pixels)
    if isinstance(patch, bool) or not isinstance(patch, numbers.Integral) or patch < 1:
        raise InputError(f"patch must be a positive integer, got {patch!r}")
    if not isinstance(pixels, torch.Tensor) or pixels.dim() not in (4, 5) or pixels.shape[-3] != 3:
        shape = tuple(pixels.shape) if isinstance(pixels, torch.Tensor) else type(pixels).__name__
        raise InputError(
            f"pixels must be (F, 3, height, width) or (b, F, 3, height, width), got {shape}; permute a "
            "channels-last (F, height, width, 3) video with .permute(0, 3, 1, 2)"
        )
    *lead, F, ch, height, width = pixels.shape
    P = int(patch)
    if height % P or width % P:
        raise InputError(f"frame size {height}x{width} is not divisible by patch {P}")
    H, W = height // P, width // P
    x = pixels.reshape(*lead, F, ch, H, P, W, P)
    x = x.permute(
        *range(len(lead)), len(lead), len(lead) + 2, len(lead) + 4, len(lead) + 1, len(lead) + 3, len(lead) + 5
    )
    return x.reshape(*lead, F * H * W, ch * P * P)
