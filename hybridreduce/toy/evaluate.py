"""Scoring the toy VLM: multiple-choice answers, EVS inputs, accuracy tables and held-out evaluation.

Accuracy is multiple choice: the arg-max of the ``<answer>`` logits restricted to the question type's candidate
words (:class:`AnswerSheet`), so a model is never marked wrong for naming a word that is not an option.
:func:`evs_inputs` applies Efficient Video Sampling before the language model (training, the demo, the
analysis and the scripts share it); :func:`accuracy_table` summarises per-question outcomes overall and per type.

Shapes use the dimension letters of :mod:`hybridreduce.glossary`; ``T'`` is the sequence length after EVS.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from ..evs import apply_retention, evs_retention_mask
from .dataset import ToyDataset
from .encoding import Vocab
from .model import ToyVLM
from .questions import ALL_QTYPES


class AnswerSheet:
    """The candidate answer ids of every question type, to score logits as multiple choice.

    ``candidates[q]`` is the ``(n_q,)`` long tensor of the vocabulary ids of ``answer_words(cfg, q)``, so a
    sample's ``answer_index`` indexes it.
    """

    def __init__(self, vocab: Vocab):
        self.candidates = {q: torch.tensor(vocab.answer_ids(q), dtype=torch.long) for q in vocab.cfg.qtypes}

    def choose(self, logits: torch.Tensor, qtypes: list[str]) -> torch.Tensor:
        """``(b,)`` long: the index of the best candidate of each sample's question type.

        Args:
            logits: ``(b, vocab)`` next-token logits at the ``<answer>`` marker.
            qtypes: the ``b`` question types.
        """
        return torch.stack(
            [logits[i, self.candidates[q].to(logits.device)].argmax() for i, q in enumerate(qtypes)]
        ).cpu()


def evs_inputs(model: ToyVLM, batch: dict, rate: float):
    """The batch's language-model inputs with EVS applied before the language model.

    Each video's retention mask comes from its pixels (mean absolute RGB change of every patch against the
    previous frame; the first frame is always kept), at pruning rate ``rate``; the visual tokens keep the
    frame / row / column embeddings of their original place, so nothing else needs renumbering.

    Returns:
        :class:`hybridreduce.evs.EVSResult` whose ``inputs`` are ``(b, T', d)`` embeddings.
    """
    cfg = model.config
    embeds = model.embed(batch["input_ids"], batch["pixels"])
    retention = torch.stack(
        [evs_retention_mask(video, rate, mode="pixel", patch_size=cfg.patch) for video in batch["pixels"]]
    )
    return apply_retention(embeds, batch["visual_mask"], retention, batch["attention_mask"])


def answer_logits(model: ToyVLM, batch: dict, evs_rate: float = 0.0) -> torch.Tensor:
    """``(b, vocab)`` logits at the last position (the ``<answer>`` marker), after EVS at rate ``evs_rate`` if > 0."""
    kw = {"logits_to_keep": 1, "use_cache": False, "output_hidden_states": False}
    if evs_rate > 0:
        r = evs_inputs(model, batch, evs_rate)
        out = model(inputs_embeds=r.inputs, attention_mask=r.attention_mask, **kw)
    else:
        out = model(batch["input_ids"], pixel_values=batch["pixels"], attention_mask=batch["attention_mask"], **kw)
    return out.logits[:, -1].float()


def accuracy_table(correct: list[bool], qtypes: list[str]) -> dict:
    """``{"accuracy", "n", "per_type": {qtype: {"accuracy", "n"}}}`` of per-sample outcomes."""
    per = {}
    for q in ALL_QTYPES:
        hits = [c for c, t in zip(correct, qtypes, strict=True) if t == q]
        if hits:
            per[q] = {"accuracy": sum(hits) / len(hits), "n": len(hits)}
    n = len(correct)
    return {"accuracy": sum(correct) / n if n else float("nan"), "n": n, "per_type": per}


@torch.no_grad()
def evaluate(
    model: ToyVLM,
    dataset: ToyDataset,
    batch_size: int = 64,
    progress: Callable[[int], None] | None = None,
) -> dict:
    """Multiple-choice accuracy of ``model`` at full tokens on every item of ``dataset`` (see accuracy_table)."""
    sheet = AnswerSheet(dataset.vocab)
    was_training = model.training
    model.eval()
    correct, qtypes = [], []
    for start in range(0, len(dataset), batch_size):
        batch = dataset.batch(range(start, min(start + batch_size, len(dataset))))
        chosen = sheet.choose(answer_logits(model, batch), batch["qtype"])
        correct += (chosen == batch["answer_index"]).tolist()
        qtypes += batch["qtype"]
        if progress is not None:
            progress(len(batch["qtype"]))
    model.train(was_training)
    return accuracy_table(correct, qtypes)


def evaluate_variants(model: ToyVLM, datasets: list[ToyDataset]) -> dict:
    """:func:`evaluate` of one dataset, or of several variants: their mean accuracy, each under ``variants``."""
    if len(datasets) == 1:
        return evaluate(model, datasets[0])
    each = {d.cfg.variant: evaluate(model, d) for d in datasets}
    return {
        "accuracy": float(np.mean([r["accuracy"] for r in each.values()])),
        "n": sum(r["n"] for r in each.values()),
        "variants": each,
    }


def accuracy_line(prefix: str, result: dict) -> str:
    """One line per variant: ``"{prefix}: accuracy 0.938 on 128 (colour 1.000 when ...)"`` of an :func:`evaluate` or
    :func:`evaluate_variants` result."""
    if "variants" in result:
        return "\n".join(accuracy_line(f"{prefix} {name}", r) for name, r in result["variants"].items())
    per = " ".join(f"{q} {r['accuracy']:.3f}" for q, r in result["per_type"].items())
    return f"{prefix}: accuracy {result['accuracy']:.3f} on {result['n']} ({per})"
