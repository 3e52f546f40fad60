"""The training loss under reduction: cross-entropy on the answer tokens, with the cuts ``run`` makes.

One training example is a :class:`~hybridreduce.vlm.Prompt` (the video and question exactly as ``run`` builds
them) followed by its answer's tokens and the end-of-sequence token. :func:`answer_loss` runs a batch of examples
through the language model inside the same ``reduce()`` context :meth:`hybridreduce.vlm.VLM.answer` uses:

1. *embed*: each prompt through the wrapper's own pieces (:meth:`~hybridreduce.vlm.VideoFamily.embed`), with
   gradients wherever a trainable parameter sits (none in a frozen vision tower);
2. *EVS* at rate ``evs`` (optional), the same keep set ``run`` makes (original position ids kept);
3. the answer's token embeddings appended after the prompt at positions ``last + 1, last + 2, ...`` (what greedy
   decoding gives them), samples right-padded to one length;
4. one forward without a cache under ``reduce(model, schedule, visual_mask, query_mask, attention_mask)``.

Why the cuts are the ones ``run`` makes: the query rows that score the visual tokens are those of the *prompt*
(``schedule.query`` applied to the prompt alone, passed as an explicit ``query_mask``), and both scorers are
causal, so the answer tokens after them change no score; text tokens (the answer among them) are never dropped.
``tests/test_finetune.py`` holds the kept positions of a training forward equal to those of ``run``'s prefill.

The loss reads the model's output rows through :attr:`~hybridreduce.engine.Reduction.output_positions`: the row of
original position ``p`` predicts the token at ``p + 1`` when that token is an answer token (``targets``), and
nothing otherwise, so a dropped visual token never shifts a label. Padding is on the right, after every real
token, so no real token sees it (attention is causal, the Mamba scan runs left to right): a padded batch gives
each sample the loss it has alone.

Shapes use the letters of :mod:`hybridreduce.glossary`; ``A`` counts an example's answer tokens (with the
end-of-sequence token).
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass

import torch
from torch.nn import functional as F

from ..engine import reduce
from ..schedule import Schedule
from ..taps import resolve_positions

#: The target of a row that predicts no answer token (cross-entropy's default ``ignore_index``).
IGNORE = -100


@dataclass
class Example:
    """One training example.

    Attributes:
        id: the manifest item's id.
        prompt: the :class:`~hybridreduce.vlm.Prompt` ``run`` answers.
        answer_ids: ``(n_answer_tokens,)`` long, the answer's tokens then the end-of-sequence token.
        qtype: the item's question type.
    """

    id: str
    prompt: object
    answer_ids: torch.Tensor
    qtype: str = "all"


@dataclass
class Sequence:
    """One example as the language model receives it (before padding); every field ``(1, L)`` but ``embeds``.

    Attributes:
        embeds: ``(1, L, d)`` prompt (after EVS) then answer embeddings.
        attention_mask: ones.
        position_ids: original position ids (EVS keeps them), the answer's after the prompt's last.
        visual_mask: bool, the visual tokens.
        prompt_mask: bool, the prompt's tokens (not the answer's).
        targets: the token row ``i`` predicts (an answer token), :data:`IGNORE` elsewhere.
    """

    embeds: torch.Tensor
    attention_mask: torch.Tensor
    position_ids: torch.Tensor
    visual_mask: torch.Tensor
    prompt_mask: torch.Tensor
    targets: torch.Tensor


@dataclass
class LossOutput:
    """What :func:`answer_loss` computed.

    Attributes:
        loss_sum: scalar, the summed cross-entropy of every answer token of the batch (divide by ``tokens``).
        tokens: answer tokens scored.
        per_sample: ``(b,)`` each sample's summed cross-entropy (detached).
        sample_tokens: ``(b,)`` each sample's answer tokens.
        visual_in, visual_kept: visual tokens entering the language model per sample, and their mean over blocks.
    """

    loss_sum: torch.Tensor
    tokens: int
    per_sample: torch.Tensor
    sample_tokens: torch.Tensor
    visual_in: int
    visual_kept: float

    @property
    def loss(self) -> torch.Tensor:
        """The mean cross-entropy per answer token."""
        return self.loss_sum / max(self.tokens, 1)


def build_sequence(vlm, example: Example, evs: float = 0.0) -> Sequence:
    """``example`` as the language model receives it: prompt embeddings (after EVS) and the answer's."""
    model, prompt = vlm.model, example.prompt
    device = model.get_input_embeddings().weight.device
    inputs = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in prompt.inputs.items()}
    x = vlm.family.embed(model, vlm.adapted.decoder, inputs)  # (1, T, d); a graph only where parameters train
    am = inputs["attention_mask"].to(device)
    vm = prompt.visual_mask.to(device)
    positions = torch.arange(x.shape[1], device=device)[None]
    if evs:
        kept = vlm.evs(prompt, {"inputs_embeds": x, "attention_mask": am}, evs)
        x, am, vm, positions = kept.inputs, kept.attention_mask, kept.visual_mask, kept.kept_index
    answer = example.answer_ids.to(device)
    A, T = answer.shape[0], x.shape[1]
    a_embeds = model.get_input_embeddings()(answer)[None].to(x.dtype)  # (1, A, d)
    targets = torch.full((1, T + A), IGNORE, dtype=torch.long, device=device)
    targets[0, T - 1 : T + A - 1] = answer  # the prompt's last row predicts the first answer token, and so on
    last = int(positions[0, -1])
    return Sequence(
        embeds=torch.cat([x, a_embeds], dim=1),
        attention_mask=torch.cat([am.to(torch.long), am.new_ones((1, A), dtype=torch.long)], dim=1),
        position_ids=torch.cat([positions, torch.arange(last + 1, last + 1 + A, device=device)[None]], dim=1),
        visual_mask=torch.cat([vm, vm.new_zeros((1, A))], dim=1),
        prompt_mask=torch.cat([am.bool(), am.new_zeros((1, A), dtype=torch.bool)], dim=1),
        targets=targets,
    )


def right_pad(sequences: list[Sequence]) -> Sequence:
    """``(b, L_max)`` batch of ``sequences``, padded on the right (zero embeddings, mask 0, :data:`IGNORE`)."""
    L = max(s.embeds.shape[1] for s in sequences)

    def pad(t: torch.Tensor, value) -> torch.Tensor:
        extra = L - t.shape[1]
        if extra == 0:
            return t
        filler = t.new_full((1, extra, *t.shape[2:]), value)
        return torch.cat([t, filler], dim=1)

    def stack(name: str, value) -> torch.Tensor:
        return torch.cat([pad(getattr(s, name), value) for s in sequences], dim=0)

    # Padding rows continue the sample's positions (any value works: no real token sees them).
    positions = torch.cat(
        [torch.cat([s.position_ids, s.position_ids[:, -1:] + torch.arange(1, 1 + L - s.position_ids.shape[1],
                                                                           device=s.position_ids.device)[None]], 1)
         for s in sequences]
    )  # fmt: skip
    return Sequence(
        embeds=stack("embeds", 0.0),
        attention_mask=stack("attention_mask", 0),
        position_ids=positions,
        visual_mask=stack("visual_mask", False),
        prompt_mask=stack("prompt_mask", False),
        targets=stack("targets", IGNORE),
    )


def prompt_query_mask(batch: Sequence, query: str) -> torch.Tensor:
    """``(b, L)`` bool: the query rows ``schedule.query`` picks in the prompt alone (never an answer token)."""
    pos = resolve_positions(batch.visual_mask, batch.prompt_mask, None, query)
    mask = torch.zeros_like(batch.visual_mask)
    rows = torch.arange(mask.shape[0], device=mask.device)[:, None].expand_as(pos.q_index)
    # Only the valid slots: a sample with fewer query rows repeats its last one in the padding slots.
    mask[rows[pos.q_valid], pos.q_index[pos.q_valid]] = True
    return mask


def answer_loss(vlm, examples: list[Example], schedule: Schedule | None, evs: float = 0.0, scorer=None) -> LossOutput:
    """The summed answer-token cross-entropy of ``examples`` under ``schedule`` (see the module docstring).

    Args:
        vlm: a :class:`~hybridreduce.vlm.VLM` (its ``model`` may carry peft's LoRA layers).
        examples: the batch.
        schedule: a :class:`~hybridreduce.schedule.Schedule`, or None for every token.
        evs: EVS pruning rate before the language model (0: off).
        scorer: Mamba scorer settings (default decay-free), as ``run`` takes them.
    """
    batch = right_pad([build_sequence(vlm, e, evs) for e in examples])
    b = batch.embeds.shape[0]
    context = nullcontext()
    if schedule is not None:
        context = reduce(
            vlm.model, schedule, visual_mask=batch.visual_mask, scorer=scorer,
            query_mask=prompt_query_mask(batch, schedule.query), attention_mask=batch.attention_mask,
        )  # fmt: skip
    with context as red:
        out = vlm.model(
            inputs_embeds=batch.embeds, attention_mask=batch.attention_mask, position_ids=batch.position_ids,
            use_cache=False,
        )  # fmt: skip
        rows = red.output_positions if red is not None else None
        n_in = int(batch.visual_mask[0].sum())
        kept = sum(red.block_visual) / len(red.block_visual) if red is not None else float(n_in)
    logits = out.logits  # (b, L', vocab): the rows the last block carried
    targets = batch.targets if rows is None else batch.targets.gather(1, rows.to(batch.targets.device))
    nll = F.cross_entropy(
        logits.float().flatten(0, 1), targets.to(logits.device).flatten(), ignore_index=IGNORE, reduction="none"
    ).view(b, -1)  # float32 whatever the model's dtype
    counts = (targets != IGNORE).sum(dim=1)
    return LossOutput(
        loss_sum=nll.sum(),
        tokens=int(counts.sum()),
        per_sample=nll.detach().sum(dim=1),
        sample_tokens=counts,
        visual_in=n_in,
        visual_kept=float(kept),
    )
