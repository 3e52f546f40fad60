"""Training and evaluating the embedded toy video VLM (``hybridreduce train-toy``).

One YAML file (``configs/toy.yaml``) holds everything a run depends on, in three sections:

    data:   ToyConfig fields (the benchmark)
    model:  vision_hidden, and ``text`` — NemotronHConfig fields of the language model
    train:  TrainConfig fields (steps, batch size, learning rate, ...)

The objective is next-token cross-entropy on the answer word at the last position (the ``<answer>``
marker), over the whole vocabulary. Accuracy is multiple choice: the answer is the arg-max of the
logits restricted to the question type's candidate words (:func:`predict`), so a model can never be
marked wrong for naming a word that is not an option.

Optional EVS uptraining (``train.evs_prob``): that share of the batches is trained with Efficient
Video Sampling applied before the language model at a pruning rate drawn uniformly from
``[0, evs_max_rate]``, as EVS-uptrained models are; it teaches the model to answer from a subset of
the visual tokens.

A run writes, into its output directory: ``model.safetensors`` + ``config.json`` (``from_pretrained``
loads them), ``train_config.yaml`` (the resolved settings), ``train_log.jsonl`` (one JSON object per
logged step and per evaluation) and ``eval.json`` (held-out accuracy at full tokens on the test split).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F
from transformers import NemotronHConfig

from ..errors import InputError
from ..evs import apply_retention, evs_retention_mask
from .data import QTYPES, ToyConfig, ToyDataset, Vocab, encode_sample, follow_up_questions
from .model import ToyVLM, ToyVLMConfig

#: NemotronHConfig fields of the default language model (a 12-block Nemotron-H pattern, width 128).
DEFAULT_TEXT = {
    "hidden_size": 128,
    "layers_block_type": [
        "mamba",
        "mlp",
        "attention",
        "mamba",
        "mlp",
        "mamba",
        "mlp",
        "attention",
        "mamba",
        "mlp",
        "mamba",
        "mlp",
    ],  # fmt: skip
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 32,
    "intermediate_size": 256,
    "mamba_num_heads": 4,
    "mamba_head_dim": 32,
    "ssm_state_size": 16,
    "n_groups": 1,
    "chunk_size": 64,
}


@dataclass
class TrainConfig:
    """Optimisation settings of :func:`train`.

    Attributes:
        steps: optimiser steps.
        batch_size: samples per step.
        lr: peak AdamW learning rate, reached after ``warmup`` linear steps, then cosine decay to
            ``lr · min_lr_ratio`` at ``steps``.
        weight_decay: AdamW decoupled weight decay (not on norms, biases or embeddings).
        grad_clip: global gradient-norm clip (0: none).
        follow_ups: extra questions about each training video, appended after its answer (``video q1
            <answer> a1 q2 <answer> a2 ...``, see :func:`training_batch`); every ``<answer>`` is supervised,
            so a video forward teaches ``1 + follow_ups`` answers. Evaluation always asks one question.
        evs_prob: share of batches trained under EVS (0: never).
        evs_max_rate: the EVS pruning rate of such a batch is uniform in ``[0, evs_max_rate]``.
        log_every: steps between training-loss log lines.
        eval_every: steps between validation evaluations (the checkpoint is saved at each).
        eval_size: validation questions per evaluation (split ``val``).
        test_size: held-out questions of the final evaluation (split ``test``).
        seed: seeds the weights, the order of the training samples and the EVS draws.
        threads: torch CPU threads (None: torch's default).
    """

    steps: int = 2000
    batch_size: int = 32
    lr: float = 3e-3
    warmup: int = 100
    min_lr_ratio: float = 0.05
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    follow_ups: int = 0
    evs_prob: float = 0.0
    evs_max_rate: float = 0.9
    log_every: int = 10
    eval_every: int = 200
    eval_size: int = 256
    test_size: int = 1024
    seed: int = 0
    threads: int | None = None

    def __post_init__(self):
        for name in ("steps", "batch_size", "log_every", "eval_every", "eval_size", "test_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InputError(f"train.{name} must be a positive integer, got {value!r}")
        if isinstance(self.follow_ups, bool) or not isinstance(self.follow_ups, int) or self.follow_ups < 0:
            raise InputError(f"train.follow_ups must be an integer >= 0, got {self.follow_ups!r}")
        if not (isinstance(self.lr, (int, float)) and self.lr > 0):
            raise InputError(f"train.lr must be a positive number, got {self.lr!r}")
        if not 0.0 <= self.evs_prob <= 1.0 or not 0.0 <= self.evs_max_rate < 1.0:
            raise InputError(
                f"train.evs_prob must be in [0, 1] and train.evs_max_rate in [0, 1), got {self.evs_prob!r} "
                f"and {self.evs_max_rate!r}"
            )


@dataclass
class ToySpec:
    """A whole training run: the benchmark, the model and the optimisation."""

    data: ToyConfig
    text: dict
    vision_hidden: int
    train: TrainConfig

    def to_dict(self) -> dict:
        data = {f.name: getattr(self.data, f.name) for f in fields(ToyConfig) if f.init}
        data = {k: list(v) if isinstance(v, tuple) else v for k, v in data.items()}
        return {
            "data": data,
            "model": {"vision_hidden": self.vision_hidden, "text": dict(self.text)},
            "train": asdict(self.train),
        }


def _section(raw: dict, name: str, path) -> dict:
    value = raw.get(name) or {}
    if not isinstance(value, dict):
        raise InputError(f"{path}: section {name!r} must be a mapping of settings, got {type(value).__name__}")
    return value


def _build(cls, kwargs: dict, where: str):
    known = {f.name for f in fields(cls) if f.init}
    unknown = sorted(set(kwargs) - known)
    if unknown:
        raise InputError(f"{where} has unknown settings {unknown}; known: {sorted(known)}")
    return cls(**kwargs)


def spec_from_dict(raw: dict, path: str = "<dict>") -> ToySpec:
    """A :class:`ToySpec` from the three-section mapping of ``configs/toy.yaml``."""
    if not isinstance(raw, dict):
        raise InputError(f"{path} must hold a mapping with sections data, model and train")
    unknown = sorted(set(raw) - {"data", "model", "train"})
    if unknown:
        raise InputError(f"{path} has unknown sections {unknown}; use data, model and train")
    model = dict(_section(raw, "model", path))
    text = {**DEFAULT_TEXT, **_section(model, "text", path)}
    vision_hidden = model.pop("vision_hidden", 64)
    model.pop("text", None)
    if model:
        raise InputError(f"{path}: model has unknown settings {sorted(model)}; known: vision_hidden, text")
    return ToySpec(
        data=_build(ToyConfig, _section(raw, "data", path), f"{path}: data"),
        text=text,
        vision_hidden=int(vision_hidden),
        train=_build(TrainConfig, _section(raw, "train", path), f"{path}: train"),
    )


def load_spec(path: str | Path) -> ToySpec:
    """Read a training config (see the module docstring)."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise InputError(f"training config {path} does not exist; the default is configs/toy.yaml")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise InputError(f"training config {path} is not valid YAML: {exc}") from None
    return spec_from_dict(raw or {}, str(path))


def build_model(spec: ToySpec, seed: int | None = None) -> ToyVLM:
    """A freshly initialised :class:`ToyVLM` for the spec's benchmark (vocabulary and video geometry)."""
    vocab = Vocab(spec.data)
    text = NemotronHConfig(
        vocab_size=vocab.size,
        pad_token_id=vocab.pad_id,
        bos_token_id=vocab.bos_id,
        eos_token_id=vocab.answer_marker_id,
        **spec.text,
    )
    config = ToyVLMConfig(
        text_config=text,
        frames=spec.data.frames,
        rows=spec.data.rows,
        cols=spec.data.cols,
        patch=spec.data.patch,
        vision_hidden=spec.vision_hidden,
        video_token_id=vocab.video_id,
    )
    torch.manual_seed(spec.train.seed if seed is None else seed)
    return ToyVLM(config)


# --- prediction -----------------------------------------------------------------------------------------------


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
        :class:`hybridreduce.evs.EVSResult` whose ``inputs`` are ``(b, L', d)`` embeddings.
    """
    cfg = model.config
    embeds = model.embed(batch["input_ids"], batch["pixels"])
    retention = torch.stack(
        [evs_retention_mask(video, rate, mode="pixel", patch_size=cfg.patch) for video in batch["pixels"]]
    )
    return apply_retention(embeds, batch["visual_mask"], retention, batch["attention_mask"])


def answer_logits(model: ToyVLM, batch: dict, evs_rate: float = 0.0) -> torch.Tensor:
    """``(b, vocab)`` logits at the last position (the ``<answer>`` marker), optionally after EVS."""
    if evs_rate > 0:
        r = evs_inputs(model, batch, evs_rate)
        out = model(inputs_embeds=r.inputs, attention_mask=r.attention_mask, logits_to_keep=1, use_cache=False)
    else:
        out = model(
            batch["input_ids"],
            pixel_values=batch["pixels"],
            attention_mask=batch["attention_mask"],
            logits_to_keep=1,
            use_cache=False,
        )
    return out.logits[:, -1].float()


def accuracy_table(correct: list[bool], qtypes: list[str]) -> dict:
    """``{"accuracy", "n", "per_type": {qtype: {"accuracy", "n"}}}`` of per-sample outcomes."""
    per = {}
    for q in QTYPES:
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


def training_batch(dataset: ToyDataset, indices, follow_ups: int, rng: np.random.Generator) -> dict:
    """A training batch whose every video is followed by ``1 + follow_ups`` questions and answers.

    Each sample is ``<bos> video q1 <answer> a1 q2 <answer> a2 … qK <answer>`` (q1 the dataset's own
    balanced question, the others from :func:`~hybridreduce.toy.data.follow_up_questions`), left-padded to
    the longest sample of the batch. The answer after each ``<answer>`` is its target.

    Returns:
        ``input_ids``, ``attention_mask`` ``(b, L')``, ``pixels`` ``(b, T, 3, H, W)``, ``visual_mask``
        ``(b, L')`` and ``targets`` ``(b, 1 + follow_ups)`` — the answer ids in marker order.
    """
    vocab, cfg = dataset.vocab, dataset.cfg
    rows, targets, pixels = [], [], []
    for i in indices:
        sample = dataset[int(i)]
        enc = encode_sample(sample, vocab, cfg)
        ids = enc["input_ids"][enc["attention_mask"].bool()].tolist()  # without the left padding
        answers = [enc["answer_id"]]
        for words, _, answer in follow_up_questions(sample, cfg, rng, follow_ups):
            ids += [answers[-1], *vocab.encode(words), vocab.answer_marker_id]
            answers.append(vocab.token_id(answer))
        rows.append(ids)
        targets.append(answers)
        pixels.append(enc["pixels"])
    width = max(len(r) for r in rows)
    input_ids = torch.full((len(rows), width), vocab.pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
    for k, r in enumerate(rows):
        input_ids[k, width - len(r) :] = torch.tensor(r)
        attention_mask[k, width - len(r) :] = 1
    return {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "pixels": torch.stack(pixels),
        "visual_mask": input_ids == vocab.video_id,
        "targets": torch.tensor(targets, dtype=torch.long),
    }


def training_loss(model: ToyVLM, batch: dict, evs_rate: float = 0.0) -> torch.Tensor:
    """Mean cross-entropy of every answer of a :func:`training_batch` (after EVS at ``evs_rate`` if > 0)."""
    marker = model.config.text_config.eos_token_id  # <answer>, see build_model
    if evs_rate > 0:
        r = evs_inputs(model, batch, evs_rate)
        ids = batch["input_ids"].gather(1, r.kept_index)
        out = model(inputs_embeds=r.inputs, attention_mask=r.attention_mask, use_cache=False)
    else:
        ids = batch["input_ids"]
        out = model(ids, pixel_values=batch["pixels"], attention_mask=batch["attention_mask"], use_cache=False)
    logits = out.logits[ids == marker]  # (b · n_questions, vocab), sample-major, in sequence order
    return F.cross_entropy(logits.float(), batch["targets"].reshape(-1))


# --- training -------------------------------------------------------------------------------------------------


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
) -> dict:
    """Train a :class:`ToyVLM` on the spec's benchmark and write the run into ``out_dir``.

    Training items are ``ToyDataset(spec.data, "train", steps · batch_size)`` in a seeded random order
    (every question is new); validation uses the ``val`` split, the final held-out evaluation the
    ``test`` split (different seeds, so different videos).

    Args:
        spec: the run (see :func:`load_spec`).
        out_dir: where the checkpoint, config, log and final evaluation go (created if needed).
        progress: show a tqdm bar.
        command: the command line to record in the log (what made the checkpoint).
    Returns:
        The final evaluation (:func:`evaluate` on the test split) with ``steps``, ``seconds`` and
        ``parameters`` added; the same dict is written to ``eval.json``.
    """
    import yaml
    from tqdm.auto import tqdm

    cfg = spec.train
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    (out / "train_config.yaml").write_text(yaml.safe_dump(spec.to_dict(), sort_keys=False))

    model = build_model(spec)
    model.train()
    n_params = sum(p.numel() for p in model.parameters())
    train_set = ToyDataset(spec.data, "train", cfg.steps * cfg.batch_size)
    val_set = ToyDataset(spec.data, "val", cfg.eval_size)
    rng = np.random.default_rng((cfg.seed, 7))
    order = rng.permutation(len(train_set))
    opt = torch.optim.AdamW(_param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=(0.9, 0.95))

    log_path = out / "train_log.jsonl"
    log = log_path.open("w")

    def write(record: dict) -> None:
        log.write(json.dumps(record) + "\n")
        log.flush()

    write({"event": "start", "command": command, "parameters": n_params, "config": spec.to_dict()})
    start = time.perf_counter()
    bar = tqdm(total=cfg.steps, desc="train-toy", disable=not progress, dynamic_ncols=True)
    running = []
    for step in range(cfg.steps):
        lr = lr_at(step, cfg)
        for group in opt.param_groups:
            group["lr"] = lr
        idx = order[step * cfg.batch_size : (step + 1) * cfg.batch_size]
        batch = training_batch(train_set, idx, cfg.follow_ups, rng)
        rate = float(rng.uniform(0, cfg.evs_max_rate)) if rng.random() < cfg.evs_prob else 0.0
        loss = training_loss(model, batch, evs_rate=rate)
        if not torch.isfinite(loss):
            raise RuntimeError(f"training loss became {loss.item()} at step {step}; lower train.lr (now {cfg.lr})")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip or float("inf"))
        opt.step()
        running.append(loss.item())
        bar.update(1)
        bar.set_postfix(loss=f"{np.mean(running[-cfg.log_every :]):.3f}")
        if (step + 1) % cfg.log_every == 0:
            write(
                {
                    "event": "train",
                    "step": step + 1,
                    "loss": float(np.mean(running[-cfg.log_every :])),
                    "lr": lr,
                    "grad_norm": float(grad_norm),
                    "seconds": round(time.perf_counter() - start, 1),
                }
            )
        if (step + 1) % cfg.eval_every == 0 or step + 1 == cfg.steps:
            result = evaluate(model, val_set)
            write({"event": "eval", "split": "val", "step": step + 1, **result})
            bar.write(_eval_line(f"step {step + 1} val", result))
            model.save_pretrained(out)
    bar.close()

    test_set = ToyDataset(spec.data, "test", cfg.test_size)
    final = evaluate(model, test_set)
    final.update(
        {"split": "test", "steps": cfg.steps, "seconds": round(time.perf_counter() - start, 1), "parameters": n_params}
    )
    write({"event": "eval", **final})
    log.close()
    (out / "eval.json").write_text(json.dumps(final, indent=2) + "\n")
    model.save_pretrained(out)
    return final


def _eval_line(prefix: str, result: dict) -> str:
    per = " ".join(f"{q} {r['accuracy']:.3f}" for q, r in result["per_type"].items())
    return f"{prefix}: accuracy {result['accuracy']:.3f} on {result['n']} ({per})"
