"""``hybridreduce finetune --model toy --data toy``: the embedded toy VLM finetuned under a demo method's schedule.

The paper's claim — light finetuning under reduction improves the reduced model — tested as the paper states it:
the shipped checkpoint (or a ``train-toy`` directory) is finetuned under the schedule it is then evaluated with,
on the toy benchmark's ``train`` split, and the ablation is the same steps, data and learning rate at full tokens
(``--schedule none``). The schedule is a method of ``hybridreduce demo`` (``progressive-calibrated``, ``random``,
``progressive``, ...) at ``--keep``, solved exactly as the demo solves it
(:func:`hybridreduce.toy.demo.feasible_schedule`; ``progressive-calibrated`` by
:func:`~hybridreduce.toy.demo.calibrate_schedules` on unlabeled ``val`` prompts).

The loss is the cross-entropy of the answer word at the ``<answer>`` marker — the logits the demo's multiple-choice
evaluation reads — computed by the demo's own forward (:func:`hybridreduce.toy.demo._forward_logits`), so training
and evaluation make the same cuts. Items of the checkpoint's variants are mixed (one variant per example: with
several variants ``--batch-size`` must be 1; use ``--grad-accum`` for larger steps).

``progressive-calibrated`` is calibrated per variant on the base model (its record lists each variant's schedule);
the demo calibrates again on the model it evaluates, so a finetuned model is evaluated under its own calibration,
the method's rule (the record shows whether the layout moved).

Besides the adapter, the run writes ``merged/``: the finetuned weights with the base checkpoint's
``train_config.yaml``, a ``train-toy`` checkpoint that ``hybridreduce demo --checkpoint OUT/merged --split val``
evaluates per question type (choose steps and learning rate on ``val``, report ``test`` once).
"""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from ..errors import InputError
from .loss import IGNORE

#: Training items per variant when ``--steps`` does not say how many are seen (an epoch of this many).
DEFAULT_ITEMS = 4096
#: ``val`` items per variant whose loss (under the schedule) is logged every ``--eval-steps``: a curve to choose steps
#: and learning rate on; the accuracy per question type comes from ``hybridreduce demo --checkpoint OUT/merged``.
EVAL_ITEMS = 32


class ToyExamples(torch.utils.data.Dataset):
    """Encoded toy items of several variants, concatenated (item ``i`` of variant ``v`` is regenerated on access)."""

    def __init__(self, datasets) -> None:
        self.datasets = list(datasets)
        self.offsets = [0]
        for d in self.datasets:
            self.offsets.append(self.offsets[-1] + len(d))

    def __len__(self) -> int:
        return self.offsets[-1]

    def __getitem__(self, i: int) -> dict:
        for k, d in enumerate(self.datasets):
            if i < self.offsets[k + 1]:
                return {**d.encoded(i - self.offsets[k]), "variant": d.cfg.variant}
        raise IndexError(i)


class ToyCollate:
    """A toy batch (:func:`hybridreduce.toy.encoding.collate`) and ``labels`` ``(b, 1)``: the answer word's id."""

    def __init__(self, sheet) -> None:
        self.sheet = sheet

    def __call__(self, samples: list[dict]) -> dict:
        from ..toy.encoding import collate

        batch = collate(samples)
        targets = torch.stack([self.sheet.candidates[q][int(a)] for q, a in zip(batch["qtype"], batch["answer_index"],
                                                                                 strict=True)])  # fmt: skip
        return {"batch": batch, "labels": targets[:, None]}


class ToyReducedLoss(nn.Module):
    """The loss module the Trainer trains on the toy: the answer word's cross-entropy under the demo's forward."""

    accepts_loss_kwargs = True

    def __init__(self, toy, model: nn.Module, method, keep: float, schedules: dict) -> None:
        super().__init__()
        from ..adapters import get_adapter

        self.toy, self.model, self.method, self.keep, self.schedules = toy, model, method, keep, schedules
        self.n_blocks = get_adapter(toy).num_blocks
        self.last: dict = {}

    def forward(self, batch, labels, num_items_in_batch=None):
        import time

        from ..toy.demo import _forward_logits

        start = time.perf_counter()
        schedule = self.schedules[batch["variant"][0]]  # a batch holds one variant (ToyCollate)
        logits, block_visual, _ = _forward_logits(self.toy, batch, self.method, self.keep, schedule, self.n_blocks)
        targets = labels[:, 0].to(logits.device)
        loss_sum = F.cross_entropy(logits.float(), targets, ignore_index=IGNORE, reduction="sum")
        loss = loss_sum / (num_items_in_batch if num_items_in_batch is not None else targets.numel())
        V = int(batch["visual_mask"][0].sum())
        self.last = {"visual_kept": float(sum(block_visual)) / len(block_visual) / V,
                     "forward_s": time.perf_counter() - start}  # fmt: skip
        return {"loss": loss}

    def activation_checkpointing_enable(self, **kwargs):
        from .train import enable_checkpointing

        return enable_checkpointing(self.toy, **kwargs)

    gradient_checkpointing_enable = activation_checkpointing_enable


def toy_schedules(model, spec, method_name: str | None, keep: float | None, variants) -> tuple:
    """``(method record, keep, {variant: in-LM schedule or None})`` of a demo method at ``keep`` (``none``: full
    tokens): ``progressive-calibrated`` calibrates on each variant's unlabeled ``val`` prompts, as the demo does."""
    from ..toy.demo import DEMO_METHODS, FULL, calibrate_schedules, demo_method, feasible_schedule

    if method_name in (None, "none", "full"):
        if keep is not None:
            raise InputError(f"--keep {keep:g} with --schedule none: there is nothing to cut; drop --keep")
        return FULL, 1.0, dict.fromkeys(variants)
    if method_name not in DEMO_METHODS:
        raise InputError(
            f"--schedule {method_name!r}: with --model toy the schedule is a demo method: {', '.join(DEMO_METHODS)}, "
            "or none (full tokens, the ablation)"
        )
    keep = 0.25 if keep is None else keep
    record = demo_method(method_name)
    configs = {c.variant: c for c in spec.configs}
    if record.calibrated:  # the calibrated layout with the method's own settings (merging), as the demo runs it
        own = {v: calibrate_schedules(model, configs[v], spec.vocab, [keep])[keep] for v in variants}
        return record, keep, {v: replace(schedule, **record.settings) for v, schedule in own.items()}
    schedule, note = feasible_schedule(record, keep, model)
    if note:
        print(f"--schedule {method_name}: {note}")
    return record, keep, dict.fromkeys(variants, schedule)


def finetune_toy(model: str, out: Path, cfg, variant: str | None, items: int | None, resume, max_minutes, progress,
                 record_base: dict) -> dict:  # fmt: skip
    """Finetune the embedded toy VLM (module docstring); the arguments as :func:`hybridreduce.finetune.finetune`'s."""
    from ..adapters import get_adapter
    from ..toy import ToyDataset
    from ..toy.demo import CHECKPOINT, load_toy_spec
    from ..toy.evaluate import AnswerSheet
    from .lora import resolve_targets
    from .train import run_trainer, trainable

    base = CHECKPOINT if model == "toy" else Path(model)
    toy, spec = load_toy_spec(base)
    configs = {c.variant: c for c in spec.configs}
    chosen = list(configs) if variant in (None, "all") else [variant]
    unknown = [v for v in chosen if v not in configs]
    if unknown:
        raise InputError(f"--variant {variant}: the checkpoint knows {sorted(configs)} (or all)")
    if len(chosen) > 1 and cfg.batch_size > 1:
        raise InputError(
            f"--batch-size {cfg.batch_size} with {len(chosen)} variants: a toy batch holds one variant's videos; give "
            "--batch-size 1 and --grad-accum N (N examples a step), or one --variant"
        )
    method, keep, schedules = toy_schedules(toy, spec, cfg.schedule, cfg.keep, chosen)
    adapted = get_adapter(toy)
    targets = None if cfg.full else resolve_targets(toy, adapted, cfg.target_modules)
    n = items or (cfg.steps * cfg.batch_size * cfg.grad_accum if cfg.steps else DEFAULT_ITEMS)
    per_variant = max(1, -(-n // len(chosen)))
    train_set = ToyExamples(ToyDataset(configs[v], "train", per_variant, vocab=spec.vocab) for v in chosen)
    eval_set = ToyExamples(ToyDataset(configs[v], "val", EVAL_ITEMS, vocab=spec.vocab) for v in chosen)
    resolved = {v: None if s is None else s.to_dict() for v, s in schedules.items()}
    record = {**record_base, "schedule": resolved, "keep": keep,
              "toy": {"base": str(base), "method": method.name, "variants": chosen, "items_per_variant": per_variant},
              "lora_targets": targets}  # fmt: skip
    trained = trainable(toy, adapted, cfg, targets)
    module = ToyReducedLoss(toy, trained, method, keep, schedules)
    result = run_trainer(module, train_set, eval_set, ToyCollate(AnswerSheet(spec.vocab)), out, cfg, record, resume,
                         max_minutes, progress, None)  # fmt: skip
    if not result["stopped_early"]:
        save_demo_checkpoint(trained.merge_and_unload() if not cfg.full else toy, base, out / "merged")
    return result


def save_demo_checkpoint(model: nn.Module, base: Path, target: Path) -> Path:
    """``model``'s weights as a ``train-toy`` checkpoint in ``target``, which ``hybridreduce demo --checkpoint``
    loads: the weights, and the ``train_config.yaml`` of the checkpoint ``base`` it was finetuned from."""
    model.save_pretrained(target)
    shutil.copy2(Path(base) / "train_config.yaml", Path(target) / "train_config.yaml")
    return Path(target)
