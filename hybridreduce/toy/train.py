"""Training the embedded toy video VLM (``hybridreduce train-toy``).

One YAML file (``configs/toy.yaml``, read by :mod:`hybridreduce.toy.train_config`) holds everything a run depends
on. This module is the loop; what one step computes (batches, heads, losses) is :mod:`hybridreduce.toy.losses`,
saving, branching and warm restarts are :mod:`hybridreduce.toy.checkpointing`.

The objective is cross-entropy on answer words: every training video is followed by ``1 + follow_ups``
questions, each answer after its ``<answer>`` marker (:func:`training_batch`), plus, with
``content_weight``, an auxiliary cross-entropy that reads each visual token's content (its shape's colour,
or background) from the logits at that token. A curriculum can start on shorter videos. Validation and the
final test are :func:`~hybridreduce.toy.evaluate.evaluate_variants` (multiple-choice accuracy,
:class:`~hybridreduce.toy.evaluate.AnswerSheet`).

Optional EVS uptraining (``train.evs_prob``): that share of the batches is trained with Efficient
Video Sampling applied before the language model at a pruning rate drawn uniformly from
``[0, evs_max_rate]``, as EVS-uptrained models are; it teaches the model to answer from a subset of
the visual tokens.

A warm restart (``train.init_from`` or ``--init-from DIR``) starts from a previous run's weights and
position heads with a fresh optimiser and learning-rate schedule, on training items from
``train.data_offset`` on (videos the first run did not see); ``configs/toy_continue.yaml`` is the second
stage of the shipped checkpoint.

A run writes, into its output directory: ``model.safetensors`` + ``config.json`` (``from_pretrained``
loads them), ``train_config.yaml`` (the resolved settings), ``train_log.jsonl`` (one JSON object per
logged step and per evaluation), ``trainer_state.pt`` (optimiser and random state, for ``--resume``) and
``eval.json`` (held-out accuracy at full tokens on the test split).
"""

from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from ..errors import InputError
from ..rundir import write_text
from ..schedule import Schedule
from ..yamlio import read_yaml
from .checkpointing import as_saved_by, branch_run, save_checkpoint, warm_start
from .dataset import ToyDataset
from .evaluate import accuracy_line, evaluate_variants
from .losses import (
    OrderHintHeads,
    PositionHeads,
    VariantMix,
    dataset_entry,
    random_training_schedule,
    training_batch,
    training_losses,
)
from .model import ToyVLM
from .train_config import ToySpec, TrainConfig, build_model


def _treatment(rng: np.random.Generator, cfg: TrainConfig, model: ToyVLM) -> tuple[float, Schedule | None]:
    """``(EVS rate, in-LM schedule)`` of one batch: EVS with ``evs_prob``, in-LM reduction with ``reduce_prob``.

    Without in-LM reduction the draws are exactly those of earlier versions (runs stay reproducible)."""
    u = rng.random()
    if u < cfg.evs_prob:
        return float(rng.uniform(0, cfg.evs_max_rate)), None
    if cfg.reduce_prob and u < cfg.evs_prob + cfg.reduce_prob:
        return 0.0, random_training_schedule(rng, cfg, model.config.text_config.num_hidden_layers)
    return 0.0, None


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Learning rate of optimiser step ``step`` (0-based): linear warm-up, then cosine decay."""
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    done = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    floor = cfg.lr * cfg.min_lr_ratio
    return floor + (cfg.lr - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, done)))


def _param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.dim() < 2 or "embed" in name or "norm" in name else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def train(
    spec: ToySpec,
    out_dir: str | Path,
    progress: bool = True,
    command: str | None = None,
    resume: bool = False,
    max_minutes: float | None = None,
    branch_from: str | Path | None = None,
) -> dict | None:
    """Train a :class:`ToyVLM` on the spec's benchmark and write the run into ``out_dir``.

    Training items are ``ToyDataset(spec.data, "train", steps · batch_size)`` in a seeded random order
    (every question is new; curriculum stages have their own datasets); validation uses the ``val``
    split, the final held-out evaluation the ``test`` split (different seeds, so different videos).

    At every evaluation the model, the optimiser state and the random state are saved
    (``trainer_state.pt``), so a run stopped by ``max_minutes`` (or killed) continues with
    ``resume=True`` exactly where it was saved: resumed and uninterrupted runs give the same weights.

    Args:
        spec: the run (see :func:`load_spec`).
        out_dir: where the checkpoint, config, log and final evaluation go (created if needed).
        progress: show a tqdm bar.
        command: the command line to record in the log (what made the checkpoint).
        resume: continue the run saved in ``out_dir`` (its ``train_config.yaml`` must equal ``spec``).
        max_minutes: stop at the first evaluation after this much wall time (state saved; resume later).
        branch_from: start from the state another run saved at its last evaluation (weights, optimiser, step and
            random state, and its log up to that step, are copied into ``out_dir``), continuing under ``spec``,
            which may change only the settings in :data:`BRANCH_SETTINGS` (:func:`branch_run`). Up to the saved
            step the branch is that run; the two differ only after it, e.g. in in-LM reduction (the ablation).
    Returns:
        The final evaluation (:func:`~hybridreduce.toy.evaluate.evaluate` on the test split) with ``steps``,
        ``seconds`` and ``parameters`` added, also written to ``eval.json``; ``None`` when stopped by ``max_minutes``.
    """
    import yaml
    from tqdm.auto import tqdm

    cfg = spec.train
    if cfg.order_hint_weight > 0 and not any("order" in c.qtypes for c in spec.configs):
        raise InputError(
            "train.order_hint_weight > 0 supervises order questions, and no variant asks them; add clutter to "
            "data.variants or set it to 0"
        )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    state_path = out / "trainer_state.pt"
    if branch_from is not None:
        if resume:
            raise InputError("branch_from starts a new run from another run's state; it cannot also resume one")
        branched = branch_run(spec, branch_from, out)
        resume = True
    if resume:
        if not state_path.is_file():
            raise InputError(f"nothing to resume in {out}: no trainer_state.pt (start the run without --resume)")
        saved = read_yaml(out / "train_config.yaml", "the run's training config")
        if saved != as_saved_by(saved, yaml.safe_load(yaml.safe_dump(spec.to_dict(), sort_keys=False))):
            raise InputError(f"{out}/train_config.yaml differs from the given config; resume with the run's own config")

    model = build_model(spec)
    n_params = sum(p.numel() for p in model.parameters())
    stages = _stages(spec)
    val_sets = [ToyDataset(c, "val", cfg.eval_size, vocab=spec.vocab) for c in spec.configs]
    rng = np.random.default_rng((cfg.seed, 7))
    orders = [rng.permutation(len(ds)) for _, ds in stages[:-1]]
    orders.append(cfg.data_offset + rng.permutation(len(stages[-1][1]) - cfg.data_offset))
    heads = PositionHeads(model.config) if cfg.position_weight > 0 else None  # seeded after build_model's weights
    hint_heads = OrderHintHeads(model.config, cfg.order_hint_at) if cfg.order_hint_weight > 0 else None  # then these
    groups = _param_groups(model, cfg.weight_decay)
    for extra in (heads, hint_heads):
        if extra is not None:
            groups.append({"params": list(extra.parameters()), "weight_decay": 0.0})
    opt = torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.95))
    done = 0
    if cfg.init_from is not None and not resume:
        warm_start(model, heads, cfg.init_from, cfg.init_layers, hint_heads)
    if resume:
        state = torch.load(state_path, weights_only=False)
        model.load_state_dict(ToyVLM.from_pretrained(out).state_dict())
        opt.load_state_dict(state["optimizer"])
        if heads is not None:
            heads.load_state_dict(state["position_heads"])
        if hint_heads is not None:
            hint_heads.load_state_dict(state["order_hint_heads"])
        rng.bit_generator.state = state["rng"]
        torch.set_rng_state(state["torch_rng"])
        done = state["step"]
    model.train()
    if not resume:  # only now, once init_from has loaded: a run that failed to start leaves no run behind
        write_text(out / "train_config.yaml", yaml.safe_dump(spec.to_dict(), sort_keys=False))
    elif done >= cfg.steps:
        print(f"{out}: the run has finished all {cfg.steps} steps; nothing to train, evaluating it again",
              file=sys.stderr)  # fmt: skip

    log = (out / "train_log.jsonl").open("a" if resume else "w")

    def write(record: dict) -> None:
        log.write(json.dumps(record) + "\n")
        log.flush()

    event = "branch" if branch_from is not None else "resume" if resume else "start"
    extra = {"from": str(branch_from), "changed": branched} if branch_from is not None else {}
    write({"event": event, "step": done, "command": command, "parameters": n_params, **extra,
           "config": spec.to_dict()})  # fmt: skip
    start = time.perf_counter()
    bar = tqdm(total=cfg.steps, initial=done, desc="train-toy", disable=not progress, dynamic_ncols=True)
    running: list[tuple[float, float]] = []
    for step in range(done, cfg.steps):
        lr = lr_at(step, cfg)
        for group in opt.param_groups:
            group["lr"] = lr
        k = max(i for i, (begin, _) in enumerate(stages) if step >= begin)
        (first_step, train_set), order = stages[k], orders[k]
        idx = order[(step - first_step) * cfg.batch_size : (step - first_step + 1) * cfg.batch_size]
        batch = training_batch(train_set, idx, cfg.follow_ups, rng)
        rate, schedule = _treatment(rng, cfg, model)
        answer, content, position, order_hint = training_losses(
            model,
            batch,
            evs_rate=rate,
            with_content=cfg.content_weight > 0,
            heads=heads,
            schedule=schedule,
            hint_heads=hint_heads,
        )
        loss = answer + cfg.content_weight * content + cfg.position_weight * position
        loss = loss + cfg.order_hint_weight * order_hint
        if not torch.isfinite(loss):
            raise InputError(  # the settings diverge: a user's config to change, not a fault of the code
                f"training loss became {loss.item()} at step {step}; lower train.lr (now {cfg.lr:g}), or raise "
                "train.warmup or set train.grad_clip"
            )
        opt.zero_grad(set_to_none=True)
        loss.backward()
        params = [*model.parameters(), *(p for m in (heads, hint_heads) if m is not None for p in m.parameters())]
        grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip or float("inf"))
        opt.step()
        running.append((answer.item(), content.item(), position.item(), order_hint.item()))
        bar.update(1)
        recent = np.mean(running[-cfg.log_every :], axis=0)
        bar.set_postfix(answer_loss=f"{recent[0]:.3f}")
        if (step + 1) % cfg.log_every == 0:
            write(
                {
                    "event": "train",
                    "step": step + 1,
                    "answer_loss": float(recent[0]),
                    "content_loss": float(recent[1]),
                    "position_loss": float(recent[2]),
                    **({"order_hint_loss": float(recent[3])} if hint_heads is not None else {}),
                    "lr": lr,
                    "grad_norm": float(grad_norm),
                    "frames": int(dataset_entry(train_set, 0)[0].cfg.frames),
                    "seconds": round(time.perf_counter() - start, 1),
                }
            )
        if (step + 1) % cfg.eval_every == 0 or step + 1 == cfg.steps:
            result = evaluate_variants(model, val_sets)
            write({"event": "eval", "split": "val", "step": step + 1, **result})
            bar.write(accuracy_line(f"step {step + 1} val", result))
            state = {"step": step + 1, "optimizer": opt.state_dict(), "rng": rng.bit_generator.state}
            if heads is not None:
                state["position_heads"] = heads.state_dict()
            if hint_heads is not None:
                state["order_hint_heads"] = hint_heads.state_dict()
            state["torch_rng"] = torch.get_rng_state()
            save_checkpoint(model, out, state)
            if max_minutes is not None and step + 1 < cfg.steps and time.perf_counter() - start > 60 * max_minutes:
                write({"event": "stop", "step": step + 1, "reason": f"max_minutes={max_minutes}"})
                bar.close()
                log.close()
                return None
    bar.close()

    test_sets = [ToyDataset(c, "test", cfg.test_size, vocab=spec.vocab) for c in spec.configs]
    final = evaluate_variants(model, test_sets)
    final.update(
        {"split": "test", "steps": cfg.steps, "seconds": round(time.perf_counter() - start, 1), "parameters": n_params}
    )
    write({"event": "eval", **final})
    log.close()
    write_text(out / "eval.json", json.dumps(final, indent=2) + "\n")
    save_checkpoint(model, out)
    return final


def _stages(spec: ToySpec) -> list[tuple[int, ToyDataset]]:
    """``(first step, training set)`` of every curriculum stage and of the full config, in order.

    The full config's set holds items ``data_offset ..`` of the train split (see :class:`TrainConfig`).
    """
    cfg = spec.train
    vocab = spec.vocab
    stages, first = [], 0
    for k, stage in enumerate(cfg.curriculum or []):
        overrides = dict(stage.get("data", {}))
        if overrides.get("frames", 0) > spec.data.frames:
            raise InputError(f"train.curriculum[{k}] asks for more frames than the benchmark has ({spec.data.frames})")
        chosen = overrides.pop("variants", None)
        configs = spec.configs
        if chosen is not None:
            known = [c.variant for c in configs] if spec.variants else []
            if not isinstance(chosen, list) or not chosen or any(v not in known for v in chosen):
                raise InputError(
                    f"train.curriculum[{k}].data.variants must be a non-empty list of the run's variants {known}, "
                    f"got {chosen!r}"
                )
            configs = [c for c in configs if c.variant in chosen]
        try:
            short = [replace(c, **overrides) for c in configs]
        except TypeError as exc:
            raise InputError(f"train.curriculum[{k}].data: {exc}; use ToyConfig fields") from None
        n = stage["steps"] * cfg.batch_size
        sets = [ToyDataset(c, "train", -(-n // len(short)), vocab=vocab) for c in short]
        stages.append((first, sets[0] if len(sets) == 1 else VariantMix(sets)))
        first += stage["steps"]
    size = cfg.data_offset + (cfg.steps - first) * cfg.batch_size
    sets = [ToyDataset(c, "train", -(-size // len(spec.configs)), vocab=vocab) for c in spec.configs]
    stages.append((first, sets[0] if len(sets) == 1 else VariantMix(sets)))
    return stages
