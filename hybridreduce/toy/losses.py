"""What one training step of the toy VLM computes: its batch, the forward, the auxiliary heads and the losses.

The objective is cross-entropy on answer words: every training video is followed by ``1 + follow_ups``
questions, each answer after its ``<answer>`` marker (:func:`training_batch`), plus, with
``content_weight``, an auxiliary cross-entropy that reads each visual token's content (its shape's colour,
or background) from the logits at that token; with ``position_weight`` and ``order_hint_weight``, training-only
heads (:class:`PositionHeads`, :class:`OrderHintHeads`) read where and when a token was
(:func:`training_losses`). A batch may run after EVS or under in-LM reduction
(:func:`random_training_schedule`). The settings are :class:`~hybridreduce.toy.train_config.TrainConfig`'s.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from ..engine import reduce
from ..errors import InputError
from ..schedule import Schedule
from .dataset import ToyDataset
from .encoding import encode_sample
from .evaluate import evs_inputs
from .model import ToyVLM, ToyVLMConfig
from .questions import QUESTIONS, follow_up_questions, order_starts
from .train_config import TrainConfig

#: The target of a question without an order hint (cross-entropy's default ``ignore_index``).
IGNORE = -100


def _lm_forward(
    model: ToyVLM,
    batch: dict,
    evs_rate: float,
    logits_to_keep: int = 0,
    hidden_states: bool = False,
    schedule: Schedule | None = None,
):
    """``(output, input ids of the rows the model returned, positions of those rows in the prompt or None)``.

    After EVS when ``evs_rate > 0``; under in-LM reduction with ``schedule`` (scores from ``batch["query_mask"]``),
    whose output covers only the tokens the last block carried.
    """
    kw = {"logits_to_keep": logits_to_keep, "use_cache": False, "output_hidden_states": hidden_states}
    if evs_rate > 0:
        r = evs_inputs(model, batch, evs_rate)
        out = model(inputs_embeds=r.inputs, attention_mask=r.attention_mask, **kw)
        return out, batch["input_ids"].gather(1, r.kept_index), r.kept_index
    inputs = {"pixel_values": batch["pixels"], "attention_mask": batch["attention_mask"], **kw}
    if schedule is not None:
        with reduce(model, schedule, query_mask=batch["query_mask"]) as red:
            out = model(batch["input_ids"], **inputs)
        rows = red.output_positions
        return out, batch["input_ids"].gather(1, rows), rows
    return model(batch["input_ids"], **inputs), batch["input_ids"], None


def random_training_schedule(rng: np.random.Generator, cfg: TrainConfig, num_blocks: int) -> Schedule:
    """The in-LM reduction of one training batch (see ``TrainConfig.reduce_prob``).

    An average keep ``k`` uniform in ``reduce_keep``; 1 to 3 geometric stages whose first cut lies uniformly
    in the blocks that an average of ``k`` can afford (a first cut after ``f`` of the depth keeps every token
    there, so ``f < k``); top-k of the unified scores, or a seeded random keep set with probability
    ``reduce_random``. The first block always carries every token, so ``k`` is raised to just above
    ``1 / num_blocks`` on a model too shallow for it.
    """
    keep = max(float(rng.uniform(*cfg.reduce_keep)), 1.1 / num_blocks)
    stages = int(rng.integers(1, 4))
    latest = max(1, min(num_blocks - stages, int(0.9 * keep * num_blocks)))
    first = int(rng.integers(1, latest + 1))
    method = "random" if rng.random() < cfg.reduce_random else "progressive"
    seed = int(rng.integers(2**31))
    for first_prune in (first, 1):  # the solver may find no ratios for a late first cut; cut after block 0 then
        sched = Schedule(method=method, keep=keep, first_prune=first_prune, stages=stages, seed=seed)
        try:
            sched.resolve(num_blocks)
            return sched
        except InputError:
            continue
    return Schedule(method=method, keep=keep, first_prune=1, stages=1, seed=seed)  # feasible for any keep > 1/depth


def training_batch(dataset: ToyDataset | VariantMix, indices, follow_ups: int, rng: np.random.Generator) -> dict:
    """A training batch whose every video is followed by ``1 + follow_ups`` questions and answers.

    Each sample is ``<bos> video q1 <answer> a1 q2 <answer> a2 … qK <answer>`` (q1 the dataset's own
    balanced question, the others from :func:`~hybridreduce.toy.questions.follow_up_questions`), left-padded to
    the longest sample of the batch. The answer after each ``<answer>`` is its target.

    Returns:
        ``input_ids``, ``attention_mask`` ``(b, T)``, ``pixels`` ``(b, F, 3, H·P, W·P)``, ``visual_mask``
        ``(b, T)``, ``targets`` ``(b, 1 + follow_ups)`` — the answer ids in marker order — and ``hints``
        ``(b, 1 + follow_ups, 2)``: for an ``order`` question the first frames of the two shapes it names
        (:func:`~hybridreduce.toy.questions.order_starts`), :data:`IGNORE` for every other question.
    """
    vocab = dataset.vocab
    rows, targets, pixels, contents, hints = [], [], [], [], []
    for i in indices:
        source, j = dataset_entry(dataset, int(i))
        cfg = source.cfg
        tpf = cfg.tokens_per_frame
        sample = source[j]
        enc = encode_sample(sample, vocab, cfg)
        content = torch.full((cfg.n_visual,), vocab.video_id, dtype=torch.long)  # background: "<video>"
        for event in sample.events:
            for t, r, c in event.tokens:
                content[t * tpf + r * cfg.cols + c] = vocab.token_id(event.colour)
        contents.append(content)
        ids = enc["input_ids"][enc["attention_mask"].bool()].tolist()  # without the left padding
        answers = [enc["answer_id"]]
        questions = [(sample.question, sample.qtype)]
        for words, qtype, answer in follow_up_questions(sample, cfg, rng, follow_ups):
            ids += [answers[-1], *vocab.encode(words), vocab.answer_marker_id]
            answers.append(vocab.token_id(answer))
            questions.append((words, qtype))
        rows.append(ids)
        targets.append(answers)
        hints.append([order_starts(w, sample.events) if q == "order" else (IGNORE, IGNORE) for w, q in questions])
        pixels.append(enc["pixels"])
    width = max(len(r) for r in rows)
    input_ids = torch.full((len(rows), width), vocab.pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
    for k, r in enumerate(rows):
        input_ids[k, width - len(r) :] = torch.tensor(r)
        attention_mask[k, width - len(r) :] = 1
    visual_mask = input_ids == vocab.video_id
    return {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "pixels": torch.stack(pixels),
        "visual_mask": visual_mask,
        "query_mask": _question_mask(input_ids, attention_mask, visual_mask, vocab.answer_marker_id),
        "targets": torch.tensor(targets, dtype=torch.long),
        "contents": torch.stack(contents),
        "hints": torch.tensor(hints, dtype=torch.long),
    }


def _question_mask(ids: torch.Tensor, attention_mask: torch.Tensor, visual_mask: torch.Tensor, marker: int):
    """``(b, T)`` bool: the question words and markers after the video, not the answers that follow markers.

    The query rows of in-LM reduction while training: scoring from the answer words would choose keep sets
    with knowledge no question at test time has.
    """
    pos = torch.arange(ids.shape[1]).expand_as(ids)
    after_video = pos > torch.where(visual_mask, pos, -1).amax(dim=1, keepdim=True)
    follows_marker = torch.zeros_like(visual_mask)
    follows_marker[:, 1:] = ids[:, :-1] == marker
    return after_video & attention_mask.bool() & ~follows_marker


class VariantMix:
    """Training items of several benchmark variants of one video geometry, interleaved in equal shares.

    Item ``i`` is item ``i // n`` of ``datasets[i % n]`` (``n`` datasets), so any run of ``n`` consecutive
    items holds one of each variant. All datasets share one vocabulary
    (:func:`~hybridreduce.toy.encoding.shared_vocab`).
    """

    def __init__(self, datasets: list[ToyDataset]):
        if not datasets or len({d.vocab.size for d in datasets}) != 1:
            raise InputError("VariantMix needs datasets that share one vocabulary (ToyDataset(..., vocab=shared))")
        self.datasets, self.vocab = datasets, datasets[0].vocab

    def __len__(self) -> int:
        return min(len(d) for d in self.datasets) * len(self.datasets)

    def entry(self, i: int) -> tuple[ToyDataset, int]:
        """``(dataset, index in it)`` of item ``i``."""
        n = len(self.datasets)
        return self.datasets[i % n], i // n


def dataset_entry(dataset: ToyDataset | VariantMix, i: int) -> tuple[ToyDataset, int]:
    """``(dataset, index in it)`` of item ``i`` of a dataset or a :class:`VariantMix`."""
    return dataset.entry(i) if isinstance(dataset, VariantMix) else (dataset, i)


class PositionHeads(nn.Module):
    """Training-only linear read-outs of a visual token's frame and cell from its final hidden state."""

    def __init__(self, config: ToyVLMConfig) -> None:
        super().__init__()
        d = config.text_config.hidden_size
        self.frame = nn.Linear(d, config.frames)
        self.cell = nn.Linear(d, config.rows * config.cols)

    def loss(self, hidden: torch.Tensor, visual_index: torch.Tensor, tokens_per_frame: int) -> torch.Tensor:
        """Mean cross-entropy of frame and cell. hidden: ``(n_rows, d)``; visual_index: ``(n_rows,)`` index in
        ``0..V-1``."""
        frame, cell = visual_index // tokens_per_frame, visual_index % tokens_per_frame
        return F.cross_entropy(self.frame(hidden).float(), frame) + F.cross_entropy(self.cell(hidden).float(), cell)


class OrderHintHeads(nn.Module):
    """Training-only linear read-outs of the first frames of the two shapes an ``order`` question names: the one
    named first (``first``) and second (``second``), from the final hidden state at its ``<answer>`` or at each
    shape's colour word (``at``; see ``TrainConfig.order_hint_weight``).
    """

    def __init__(self, config: ToyVLMConfig, at: str = "answer") -> None:
        super().__init__()
        d = config.text_config.hidden_size
        self.first = nn.Linear(d, config.frames)
        self.second = nn.Linear(d, config.frames)
        template = QUESTIONS["order"].template
        slots = [i - len(template) for i, w in enumerate(template) if w in ("{colour}", "{later}")]
        #: offsets from the ``<answer>`` marker of the rows each head reads
        self.offsets = (0, 0) if at == "answer" else tuple(slots)

    def loss(self, hidden: torch.Tensor, markers: tuple[torch.Tensor, torch.Tensor], hints: torch.Tensor):
        """Cross-entropy of both frames, averaged over the order questions (0 when there are none).

        hidden: ``(b, T', d)`` final states; markers: ``(rows, positions)`` of the ``n`` ``<answer>`` markers, in
        question order; hints: ``(n, 2)`` their targets, :data:`IGNORE` for questions of other types."""
        asked = hints[:, 0] != IGNORE
        if not asked.any():
            return hidden.sum() * 0.0  # keeps the graph (and every parameter's grad) defined
        rows, positions = markers[0][asked], markers[1][asked]
        t = hints[asked]
        total = hidden.new_zeros((), dtype=torch.promote_types(hidden.dtype, torch.float32))
        for head, offset, target in ((self.first, self.offsets[0], t[:, 0]), (self.second, self.offsets[1], t[:, 1])):
            logits = head(hidden[rows, positions + offset])
            total = total + F.cross_entropy(logits.to(total.dtype), target)  # bfloat16 logits in float32
        return total


class TrainingLosses(NamedTuple):
    """The terms of one training batch's loss (see :func:`training_losses`)."""

    answer: torch.Tensor
    content: torch.Tensor
    position: torch.Tensor
    order_hint: torch.Tensor


def training_losses(
    model: ToyVLM,
    batch: dict,
    evs_rate: float = 0.0,
    with_content: bool = True,
    heads: PositionHeads | None = None,
    schedule: Schedule | None = None,
    hint_heads: OrderHintHeads | None = None,
) -> TrainingLosses:
    """The mean cross-entropies of a :func:`training_batch` (after EVS if ``evs_rate``, under in-LM reduction with
    ``schedule``; the content and position losses then cover the visual tokens the last block carried).

    ``answer``: every answer after its ``<answer>`` marker. ``content``: every visual token's content (its
    shape's colour word or ``<video>``) read from the logits at that token (0 unless ``with_content``).
    ``position``: every visual token's frame and cell read by ``heads`` from its final hidden state (0
    without heads). ``order_hint``: the two named shapes' first frames read by ``hint_heads`` from the final
    hidden state at every ``order`` question's marker (0 without hint heads).
    """
    marker = model.config.text_config.eos_token_id  # <answer>, see build_model
    states = heads is not None or hint_heads is not None
    out, ids, rows = _lm_forward(model, batch, evs_rate, hidden_states=states, schedule=schedule)
    V = batch["contents"].shape[1]
    visual_index = torch.arange(V).expand(len(ids), V)  # (b, V): index of each visual row among the V tokens
    if rows is not None:
        kept_visual = rows[batch["visual_mask"].gather(1, rows)].view(len(ids), -1)  # (b, k) prompt positions
        visual_index = _visual_rank(batch["visual_mask"], kept_visual)
    logits = out.logits[ids == marker]  # (b · n_questions, vocab), sample-major, in sequence order
    answer = F.cross_entropy(logits.float(), batch["targets"].reshape(-1))
    zero = torch.zeros(())
    is_visual = ids == model.config.video_token_id
    content = zero
    if with_content:
        contents = batch["contents"].gather(1, visual_index)
        content = F.cross_entropy(out.logits[is_visual].float(), contents.reshape(-1))
    position = zero
    if heads is not None:
        tpf = model.config.rows * model.config.cols
        position = heads.loss(out.hidden_states[-1][is_visual], visual_index.reshape(-1), tpf)
    order_hint = zero
    if hint_heads is not None:
        markers = (ids == marker).nonzero(as_tuple=True)  # row-major: the order of batch["targets"]
        order_hint = hint_heads.loss(out.hidden_states[-1], markers, batch["hints"].reshape(-1, 2))
    return TrainingLosses(answer, content, position, order_hint)


def _visual_rank(visual_mask: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """``(b, k)`` index among the visual tokens of each of ``positions`` ``(b, k)`` (prompt positions)."""
    rank = visual_mask.long().cumsum(dim=1) - 1  # (b, T): visual index at visual positions
    return rank.gather(1, positions)
