"""Training examples from the manifests ``run`` answers: the same prompts, the same frames, answer tokens as targets.

An item's target is what ``run`` grades: the option's letter of a multiple-choice item (``parse_choice`` reads the
first standalone letter of the reply), the expected text of an open-ended one; then the end-of-sequence token, so
the model learns to stop. :func:`answer_tokens` checks every item before a model loads (an item without an answer,
an answer longer than ``max_answer_tokens``), reading only the checkpoint's tokenizer.

:class:`ManifestExamples` reads each video when the data loader asks for it, sampled exactly as ``run`` samples it
(``frames`` uniform, or ``fps`` capped by ``max_frames``: :func:`hybridreduce.video.read_video`), and builds the
prompt with :meth:`hybridreduce.vlm.VLM.prompt`. :func:`collate` keeps a batch as a list of examples (the loss pads
them, :func:`hybridreduce.finetune.loss.right_pad`) plus ``labels``, the answer tokens, which transformers'
``Trainer`` counts (``num_items_in_batch``: it counts only a batch key named ``labels``) to normalise the loss over
gradient accumulation and processes.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch

from ..errors import InputError
from .loss import IGNORE, Example


def answer_text(item) -> str:
    """The text an item's answer is trained as: its letter (multiple choice) or its expected text."""
    return item.answer


def answer_tokens(items, tokenizer, max_answer_tokens: int, where: str = "data (--data)") -> list[torch.Tensor]:
    """``(n_answer_tokens,)`` long answer tokens of every item, the end-of-sequence token last.

    Raises:
        InputError: items without an answer, answers longer than ``max_answer_tokens`` tokens (with the
            end-of-sequence token), or a tokenizer without an end-of-sequence token — the first few ids named.
    """
    missing = [item.id for item in items if item.answer is None]
    if missing:
        raise InputError(
            f"{where}: {len(missing)} of {len(items)} items have no answer ({', '.join(missing[:5])}"
            f"{', ...' if len(missing) > 5 else ''}); training needs an 'answer' on every line (a letter, an "
            "option's text or its 0-based index for multiple choice, the expected text otherwise)"
        )
    eos = tokenizer.eos_token_id
    if eos is None:
        raise InputError("the checkpoint's tokenizer has no end-of-sequence token; the answers could not end")
    out, long = [], []
    for item in items:
        ids = tokenizer(answer_text(item), add_special_tokens=False)["input_ids"] + [int(eos)]
        if len(ids) > max_answer_tokens:
            long.append(f"{item.id} ({len(ids)})")
        out.append(torch.tensor(ids, dtype=torch.long))
    if long:
        raise InputError(
            f"{where}: {len(long)} answers are longer than --max-answer-tokens {max_answer_tokens} tokens with the "
            f"end-of-sequence token: {', '.join(long[:5])}{', ...' if len(long) > 5 else ''}; raise "
            "--max-answer-tokens, or shorten those answers"
        )
    return out


def check_videos(items, where: str = "data (--data)") -> None:
    """Every item's video exists (decoding errors surface when the loader reads it)."""
    missing = [f"{item.id} ({item.video})" for item in items if not Path(item.video).exists()]
    if missing:
        raise InputError(
            f"{where}: {len(missing)} videos not found: {', '.join(missing[:3])}{', ...' if len(missing) > 3 else ''}; "
            "fix the paths (relative paths are read from the manifest's folder) or drop those lines"
        )


def file_hash(path) -> str:
    """``sha256:…`` of a file's bytes (what ``hybridreduce_finetune.json`` records of the data)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return "sha256:" + digest.hexdigest()


class ManifestExamples(torch.utils.data.Dataset):
    """The items of a manifest as :class:`~hybridreduce.finetune.loss.Example` s, each video read when asked for.

    Args:
        vlm: the loaded :class:`~hybridreduce.vlm.VLM` (its prompts).
        items: manifest items.
        answers: their :func:`answer_tokens`.
        frames, fps, max_frames: frame sampling, as ``run`` takes it.
    """

    def __init__(self, vlm, items, answers, frames: int | None = 32, fps=None, max_frames=None) -> None:
        self.vlm, self.items, self.answers = vlm, list(items), list(answers)
        self.sampling = {"num_frames": frames, "fps": fps, "max_frames": max_frames}

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> Example:
        from ..manifest import prompt_text
        from ..video import read_video

        item = self.items[i]
        video = read_video(item.video, **self.sampling)
        return Example(item.id, self.vlm.prompt(video, prompt_text(item)), self.answers[i], item.qtype)


def collate(examples: list[Example]) -> dict:
    """A batch: ``examples`` as they are and ``labels`` ``(b, A_max)`` (answer tokens, :data:`IGNORE` after)."""
    A = max(e.answer_ids.shape[0] for e in examples)
    labels = torch.full((len(examples), A), IGNORE, dtype=torch.long)
    for k, e in enumerate(examples):
        labels[k, : e.answer_ids.shape[0]] = e.answer_ids
    return {"examples": list(examples), "labels": labels}
