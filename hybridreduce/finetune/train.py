"""``hybridreduce finetune``: LoRA (or full) finetuning of a video VLM under the reduction it is evaluated with.

The loop is transformers' :class:`~transformers.Trainer` (optimiser, learning-rate schedule, mixed precision,
gradient accumulation, checkpoints, resume, logging, ``accelerate launch`` / ``torchrun`` with DDP), LoRA is peft's
(:mod:`hybridreduce.finetune.lora`), the data are the manifests ``run`` answers (:mod:`hybridreduce.finetune.data`)
and the loss is the answer tokens' cross-entropy inside the ``reduce()`` context ``run`` uses
(:mod:`hybridreduce.finetune.loss`): training and evaluation make the same cuts.

What hybridreduce adds to the Trainer is small: :class:`ReducedLoss` is the module the Trainer trains — its forward
takes a batch of examples and returns the loss (so DDP's gradient hooks see a normal forward) — and
:class:`FinetuneTrainer` saves only what trains (the adapter, or the whole model with ``full``) and loads it back on
``--resume``. The Trainer's own ``trainer_state.json``, optimiser, scheduler and RNG states go into every
``checkpoint-N`` folder, so a resumed run continues with the same data order and random state.

An output directory holds the adapter (``adapter_model.safetensors``, ``adapter_config.json``) or the full weights,
``hybridreduce_finetune.json`` (schedule, keep, EVS, data hashes, versions, hyper-parameters: what ``--resume``
compares), ``train_log.jsonl`` (one line per logged step and evaluation), ``training_curves.png`` and the Trainer's
``checkpoint-N`` folders.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

import torch
from torch import nn

from ..adapters import get_adapter
from ..errors import InputError
from ..rundir import atomic_path
from ..schedule import Schedule
from .data import ManifestExamples, answer_tokens, check_videos, collate, file_hash
from .lora import RECORD, add_lora, resolve_targets
from .loss import answer_loss


@dataclass
class FinetuneConfig:
    """Every setting of a finetune run (recorded in ``hybridreduce_finetune.json``; ``--resume`` must match it).

    Attributes:
        schedule: preset name or YAML file the model is trained (and evaluated) under; ``"none"``: full tokens.
        keep: override of the schedule's keep budget.
        evs: EVS pruning rate before the language model.
        lora_r, lora_alpha, lora_dropout, target_modules: LoRA (peft); ``target_modules`` None: every attention
            and Mamba projection of the language model.
        full: train every weight of the language model (no LoRA).
        steps: optimiser steps (``max_steps``); ``epochs`` when None.
        epochs, batch_size, grad_accum, lr, warmup_steps, weight_decay, seed: the Trainer's settings.
        frames, fps, max_frames: frame sampling, as ``run`` takes it.
        max_answer_tokens: longest answer (with the end-of-sequence token).
        bf16: bfloat16 autocast; gradient_checkpointing: recompute blocks in the backward.
        save_steps, eval_steps, logging_steps: how often to save a checkpoint, evaluate, log.
        variant, toy_items: ``--model toy`` only: the benchmark variant (None: all the checkpoint's, mixed) and the
            training items per step budget (None: ``steps × batch × accumulation``; see :mod:`.toy`).
    """

    schedule: str = "progressive"
    keep: float | None = None
    evs: float = 0.0
    lora_r: int = 16
    lora_alpha: float = 32.0
    lora_dropout: float = 0.0
    target_modules: list[str] | None = None
    full: bool = False
    steps: int | None = None
    epochs: float = 1.0
    batch_size: int = 1
    grad_accum: int = 1
    lr: float = 1e-4
    warmup_steps: int = 0
    weight_decay: float = 0.0
    seed: int = 0
    frames: int | None = 32
    fps: float | None = None
    max_frames: int | None = None
    max_answer_tokens: int = 32
    bf16: bool = False
    gradient_checkpointing: bool = False
    save_steps: int = 50
    eval_steps: int = 50
    logging_steps: int = 1
    variant: str | None = None
    toy_items: int | None = None

    def check(self) -> FinetuneConfig:
        """Every field in range (:class:`~hybridreduce.errors.InputError` names the flag and the fix)."""
        from .. import validate
        from ..runner import check_evs, check_keep, check_sampling

        if self.keep is not None:
            check_keep(self.keep)
        check_evs(self.evs)
        check_sampling(self.frames, self.fps, self.max_frames)
        if not self.full:
            validate.integer(self.lora_r, "lora_r (--lora-r)", 1, fix="the LoRA rank, e.g. 16 (--full: every weight)")
            validate.number(self.lora_alpha, "lora_alpha (--lora-alpha)", 0, low_open=True, fix="e.g. 2 × --lora-r")
            validate.number(self.lora_dropout, "lora_dropout (--lora-dropout)", 0, 1, high_open=True)
        elif self.target_modules is not None:
            raise InputError("--target-modules chooses where LoRA goes; --full trains every weight: give one of them")
        if self.steps is not None:
            validate.integer(self.steps, "steps (--steps)", 1, fix="optimiser steps, e.g. 200")
        validate.number(self.epochs, "epochs (--epochs)", 0, low_open=True)
        validate.integer(self.batch_size, "batch_size (--batch-size)", 1)
        validate.integer(self.grad_accum, "grad_accum (--grad-accum)", 1)
        validate.number(self.lr, "lr (--lr)", 0, low_open=True, fix="e.g. 1e-4 for LoRA, 1e-5 for --full")
        validate.integer(self.warmup_steps, "warmup_steps (--warmup-steps)", 0)
        validate.integer(self.max_answer_tokens, "max_answer_tokens (--max-answer-tokens)", 1, fix="e.g. 32")
        if self.toy_items is not None:
            validate.integer(self.toy_items, "toy_items (--toy-items)", 1, fix="training items of the toy benchmark")
        for name in ("save_steps", "eval_steps", "logging_steps"):
            validate.integer(getattr(self, name), f"{name} (--{name.replace('_', '-')})", 1)
        return self

    def schedule_object(self) -> Schedule | None:
        """The schedule with ``keep`` applied; None for ``"none"`` (every token)."""
        if self.schedule in (None, "none"):
            if self.keep is not None:
                raise InputError(f"--keep {self.keep:g} with --schedule none: there is nothing to cut; drop --keep")
            return None
        sched = Schedule.load(self.schedule)
        if self.keep is not None:
            sched = Schedule.from_dict({**sched.to_dict(), "keep": self.keep})
        return sched


class ReducedLoss(nn.Module):
    """The module the Trainer trains: ``forward(examples, ...)`` returns the answer loss under the schedule.

    ``model`` (the peft model, or the VLM's model with ``full``) is a submodule, so its trainable parameters are
    this module's; the forward calls :func:`~hybridreduce.finetune.loss.answer_loss` on the VLM, whose model
    carries the LoRA layers in place.
    """

    accepts_loss_kwargs = True  # the Trainer passes num_items_in_batch: the loss is normalised over accumulation

    def __init__(self, vlm, model: nn.Module, schedule: Schedule | None, evs: float) -> None:
        super().__init__()
        self.vlm, self.model, self.schedule, self.evs = vlm, model, schedule, evs
        self.last: dict = {}

    def forward(self, examples, labels=None, num_items_in_batch=None):
        start = time.perf_counter()
        out = answer_loss(self.vlm, examples, self.schedule, self.evs)
        # Summed over the answer tokens, divided by those of the whole accumulated (and gathered) batch.
        loss = out.loss if num_items_in_batch is None else out.loss_sum / num_items_in_batch
        self.last = {"visual_kept": out.visual_kept / max(out.visual_in, 1), "forward_s": time.perf_counter() - start}
        return {"loss": loss}

    def activation_checkpointing_enable(self, **kwargs):
        """Recompute the language model's blocks in the backward (the Trainer's ``activation_checkpointing``).

        The blocks' pre-hooks (where ``reduce()`` cuts and slices) run outside the checkpointed ``forward``, so the
        recomputation runs each block on the sequence it carried (``tests/test_finetune.py`` holds the gradients
        equal)."""
        return enable_checkpointing(self.vlm.model, **kwargs)

    gradient_checkpointing_enable = activation_checkpointing_enable  # what transformers 5.23's Trainer calls


def enable_checkpointing(model: nn.Module, **kwargs):
    """``model.activation_checkpointing_enable(**kwargs)`` (transformers 5.24), or its 5.23 name."""
    if hasattr(model, "activation_checkpointing_enable"):
        return model.activation_checkpointing_enable(**kwargs)
    kwargs["gradient_checkpointing_kwargs"] = kwargs.pop("activation_checkpointing_kwargs", None)
    return model.gradient_checkpointing_enable(**kwargs)


def make_trainer_class():
    """:class:`FinetuneTrainer` (built on first use: transformers' Trainer imports accelerate)."""
    from transformers import Trainer, TrainerCallback

    class FinetuneTrainer(Trainer):
        """The Trainer saving only what trains (adapter or full weights) and logging the share of tokens kept."""

        loss_is_scaled_for_ga = True

        def _save(self, output_dir=None, state_dict=None):
            output_dir = output_dir or self.args.output_dir
            if not self.args.should_save:
                return
            Path(output_dir).mkdir(parents=True, exist_ok=True)
            wrapped = self.accelerator.unwrap_model(self.model)
            wrapped.model.save_pretrained(output_dir)  # peft: the adapter only; full: the whole model
            if self.finetune_full and self.finetune_save_extra is not None:
                self.finetune_save_extra(Path(output_dir))  # what loads beside full weights (tokenizer, processor)
            torch.save(self.args, Path(output_dir) / "training_args.bin")

        def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
            wrapped = self.accelerator.unwrap_model(model or self.model)
            root = Path(resume_from_checkpoint)
            if self.finetune_full:
                from safetensors.torch import load_file

                state = {}
                for f in sorted(root.glob("*.safetensors")):
                    state.update(load_file(f))
                wrapped.model.load_state_dict(state, strict=False)
            else:
                from peft import set_peft_model_state_dict
                from safetensors.torch import load_file

                set_peft_model_state_dict(wrapped.model, load_file(root / "adapter_model.safetensors"))

        def log(self, logs, start_time=None):
            wrapped = self.accelerator.unwrap_model(self.model)
            if "loss" in logs and wrapped.last:
                logs = {**logs, "visual_kept": round(wrapped.last["visual_kept"], 4),
                        "step_s": round(wrapped.last["forward_s"], 4)}  # fmt: skip
            super().log(logs, start_time)

    class JsonlLog(TrainerCallback):
        """Appends every log (training steps, evaluations) to ``train_log.jsonl``; stops at ``max_minutes``."""

        def __init__(self, path: Path, max_minutes: float | None) -> None:
            self.path, self.max_minutes, self.start = path, max_minutes, time.monotonic()
            self.stopped_early = False

        def on_log(self, args, state, control, logs=None, **kw):
            if state.is_world_process_zero and logs:
                with self.path.open("a") as f:
                    f.write(json.dumps({"step": state.global_step, **logs}) + "\n")

        def on_step_end(self, args, state, control, **kw):
            if self.max_minutes is not None and (time.monotonic() - self.start) / 60 >= self.max_minutes:
                control.should_training_stop = True
                control.should_save = True
                self.stopped_early = state.global_step < state.max_steps
            return control

    return FinetuneTrainer, JsonlLog


def _copy_processor_files(src: Path, dst: Path) -> None:
    """The checkpoint's processor configs (and chat template) beside full finetuned weights, so they load alone."""
    import shutil

    for f in Path(src).iterdir():
        if f.is_file() and (f.name.endswith(("processor_config.json", "preprocessor_config.json"))
                            or f.name.startswith("chat_template")):  # fmt: skip
            shutil.copy2(f, dst / f.name)


def _versions() -> dict:
    import peft
    import transformers

    from .. import __version__

    return {"hybridreduce": __version__, "torch": torch.__version__, "transformers": transformers.__version__,
            "peft": peft.__version__}  # fmt: skip


def _record(model_dir, data, eval_data, cfg: FinetuneConfig, schedule, targets) -> dict:
    return {
        "base_model": str(Path(model_dir).resolve()),
        "data": {"path": str(Path(data).resolve()), "hash": file_hash(data)},
        "eval_data": None
        if eval_data is None
        else {"path": str(Path(eval_data).resolve()), "hash": file_hash(eval_data)},  # fmt: skip
        "schedule": None if schedule is None else schedule.to_dict(),
        "keep": None if schedule is None else schedule.keep,
        "evs": cfg.evs,
        "config": asdict(cfg),
        "lora_targets": targets,
    }


#: Keys of the record that a resumed run must share with the saved one (versions and paths may change).
RESUME_KEYS = ("schedule", "evs", "config", "lora_targets")


def _rank() -> int:
    """This process's rank under torchrun / accelerate launch (0 alone)."""
    import os

    return int(os.environ.get("RANK", "0"))


def check_out(out: Path, resume: bool) -> None:
    """``out`` as a new run's folder, or (``resume``) one holding a run to continue; refused otherwise."""
    from .. import validate

    validate.writable_dir(out, "out (--out)")
    if not resume and _rank() != 0:
        return  # under torchrun rank 0 checks (and then writes the record, which the other ranks would find)
    has_run = (out / RECORD).is_file() or any(out.glob("checkpoint-*"))
    if has_run and not resume:
        raise InputError(
            f"{out} holds a finetune run ({RECORD}, checkpoints); continue it with --resume, or choose another --out"
        )
    if resume and not any(out.glob("checkpoint-*")):
        what = "does not exist" if not out.exists() else "has no checkpoint-N folder (one is saved every --save-steps)"
        raise InputError(f"--resume: nothing to resume, {out} {what}; start the run without --resume")
    if out.is_dir() and not has_run and any(out.iterdir()):
        raise InputError(f"{out} is not empty and holds no finetune run; give an empty or new --out")


def finetune(
    model: str | Path,
    data: str | Path,
    out: str | Path,
    config: FinetuneConfig | None = None,
    eval_data: str | Path | None = None,
    resume: bool = False,
    max_minutes: float | None = None,
    progress: bool = True,
    device: str | None = None,
    dtype: str = "auto",
    **settings,
) -> dict:
    """Finetune the video VLM in ``model`` on the manifest ``data`` under ``config.schedule``; write into ``out``.

    ``hybridreduce.finetune("ckpt", "train.jsonl", "runs/ft", schedule="progressive", keep=0.25, steps=200)``:
    the settings are :class:`FinetuneConfig`'s fields, given as keywords or as ``config``.

    Every argument, the manifests, the answers' lengths, the schedule against the model's depth and the LoRA
    targets are checked before the model's weights load (:func:`plan`).

    Args:
        model: a video VLM checkpoint directory (as ``run`` takes it).
        data, eval_data: JSONL manifests with answers (``eval_data``: the loss on it at every ``eval_steps``).
        out: the output directory (see the module docstring).
        config: a :class:`FinetuneConfig` (default settings when None); ``settings`` override its fields.
        resume: continue the run in ``out`` from its last checkpoint (same settings and data).
        max_minutes: stop (a checkpoint saved) at the first step after this many minutes; resume later.
        progress: the Trainer's progress bar.
        device, dtype: where and in which dtype the model loads (``--device``, ``--dtype``).
    Returns:
        ``{"out", "steps", "stopped_early", "train_loss", "eval_loss"}``.
    """
    known = {f.name for f in fields(FinetuneConfig)}
    unknown = sorted(set(settings) - known)
    if unknown:
        raise InputError(f"finetune(): unknown setting(s) {unknown}; the settings are {', '.join(sorted(known))}")
    cfg = replace(config or FinetuneConfig(), **settings).check()
    out = Path(out)
    if is_toy(model, data):
        check_sharding()
        check_out(out, resume)
        record = {"base_model": str(model), "data": {"path": "toy", "hash": None}, "evs": cfg.evs,
                  "config": asdict(cfg), "versions": _versions()}  # fmt: skip
        if resume:
            _check_resume(out, record, keys=("evs", "config"))
        from .toy import finetune_toy

        return finetune_toy(model, out, cfg, cfg.variant, cfg.toy_items, resume, max_minutes, progress, record)
    if cfg.variant is not None or cfg.toy_items is not None:
        raise InputError("--variant and --toy-items belong to --model toy --data toy; drop them for a checkpoint")
    setup = plan(model, data, cfg, eval_data)
    check_out(out, resume)
    record = {**_record(model, data, eval_data, cfg, setup["schedule"], setup["targets"]), "versions": _versions()}
    if resume:
        _check_resume(out, record)
    return _train(model, out, cfg, setup, record, resume, max_minutes, progress, device, dtype)


def is_toy(model, data) -> bool:
    """Whether ``model``/``data`` name the embedded toy (``toy`` or a ``train-toy`` directory, and ``toy``).

    Raises:
        InputError: one of them is the toy and the other is not.
    """
    toy = str(model) == "toy" or (Path(model) / "train_config.yaml").is_file()
    if toy != (str(data) == "toy"):
        raise InputError(
            "--model toy (or a train-toy directory) takes --data toy, and a video VLM checkpoint takes a JSONL "
            f"manifest: got --model {model} --data {data}"
        )
    return toy


def _check_resume(out: Path, record: dict, keys=RESUME_KEYS) -> None:
    """Refuse to resume a run saved with other settings or data than ``record``'s."""
    from .lora import read_record

    saved = read_record(out) or {}
    differ = [k for k in keys if saved.get(k) != json.loads(json.dumps(record[k]))]
    if saved and (differ or saved.get("data", {}).get("hash") != record["data"]["hash"]):
        raise InputError(
            f"--resume: {out} was trained with other {', '.join(differ) or 'data'} than this command; give the "
            "same settings and data to continue it, or another --out for a new run"
        )


def check_sharding(env=None) -> None:
    """Refuse DeepSpeed ZeRO-3 (set up by ``accelerate launch`` with a DeepSpeed config).

    ZeRO-3 partitions every parameter and gathers a module's own parameters just before that module runs. The Mamba
    scorer reads the mixer's ``conv1d.weight``, ``dt_bias`` and ``A_log`` from a hook on ``in_proj``, before
    ``conv1d`` runs, so it would read empty partitions. DDP, ZeRO-1/2 (optimizer states and gradients partitioned,
    parameters whole) keep every parameter whole during the forward.
    """
    import os

    env = os.environ if env is None else env
    stage = None
    if str(env.get("ACCELERATE_USE_DEEPSPEED", "")).lower() in ("1", "true"):
        stage = env.get("ACCELERATE_DEEPSPEED_ZERO_STAGE")
        config_file = env.get("ACCELERATE_DEEPSPEED_CONFIG_FILE")
        if config_file and Path(config_file).is_file():
            try:
                stage = json.loads(Path(config_file).read_text()).get("zero_optimization", {}).get("stage", stage)
            except (json.JSONDecodeError, AttributeError):
                pass
    if str(stage) == "3":
        raise InputError(
            "DeepSpeed ZeRO-3 partitions the parameters, and the Mamba scorer reads conv1d.weight, dt_bias and A_log "
            "from a hook on in_proj before they are gathered: reduction under ZeRO-3 is not supported. Use ZeRO-2 "
            "(zero_stage: 2) or plain DDP (accelerate launch / torchrun without DeepSpeed)"
        )


def plan(model, data, cfg: FinetuneConfig, eval_data=None) -> dict:
    """Everything checkable before the weights load: manifests, answers, schedule, LoRA targets.

    The model is built on the ``meta`` device from its config (:func:`hybridreduce.vlm.layout`: no weights, no
    memory) to read its depth and module names through the hybridreduce adapter.
    """
    from transformers import AutoTokenizer

    from .. import validate
    from ..manifest import read_manifest
    from ..vlm import layout

    check_sharding()
    validate.checkpoint_dir(model)
    items = read_manifest(data)
    eval_items = read_manifest(eval_data) if eval_data is not None else None
    check_videos(items, "data (--data)")
    if eval_items is not None:
        check_videos(eval_items, "eval_data (--eval-data)")
    tokenizer = AutoTokenizer.from_pretrained(model)
    answers = answer_tokens(items, tokenizer, cfg.max_answer_tokens, "data (--data)")
    eval_answers = (
        None if eval_items is None else answer_tokens(eval_items, tokenizer, cfg.max_answer_tokens, "--eval-data")
    )
    schedule = cfg.schedule_object()
    adapted = layout(model)  # from config.json, on the meta device: UnsupportedModelError where no adapter fits
    if schedule is not None:
        try:
            schedule.resolve(adapted.num_blocks)
        except InputError as exc:
            raise InputError(f"--schedule {cfg.schedule} on this {adapted.num_blocks}-block model: {exc}") from None
    targets = None if cfg.full else resolve_targets(adapted.model, adapted, cfg.target_modules)
    return {"items": items, "answers": answers, "eval_items": eval_items, "eval_answers": eval_answers,
            "schedule": schedule, "targets": targets}  # fmt: skip


def _train(model_dir, out: Path, cfg, setup, record, resume, max_minutes, progress, device, dtype) -> dict:
    from ..vlm import LoadOptions

    vlm = LoadOptions(model=model_dir, dtype=dtype, device=device).load()
    trained = trainable(vlm.model, vlm.adapted, cfg, setup["targets"])
    vlm.adapted = get_adapter(vlm.model)  # the blocks and mixers as they are now (LoRA layers in place)
    module = ReducedLoss(vlm, trained, setup["schedule"], cfg.evs)
    train_set = ManifestExamples(vlm, setup["items"], setup["answers"], cfg.frames, cfg.fps, cfg.max_frames)
    eval_set = None
    if setup["eval_items"] is not None:
        eval_set = ManifestExamples(vlm, setup["eval_items"], setup["eval_answers"], cfg.frames, cfg.fps,
                                    cfg.max_frames)  # fmt: skip

    def save_extra(folder: Path) -> None:
        vlm.tokenizer.save_pretrained(folder)
        _copy_processor_files(vlm.path, folder)

    return run_trainer(module, train_set, eval_set, collate, out, cfg, record, resume, max_minutes, progress, device,
                       save_extra)  # fmt: skip


def trainable(model: nn.Module, adapted, cfg: FinetuneConfig, targets) -> nn.Module:
    """Freeze ``model``; then LoRA on ``targets`` (returns the peft model) or, with ``cfg.full``, every weight of the
    language model trainable (returns ``model``). The vision tower stays frozen either way."""
    for p in model.parameters():
        p.requires_grad_(False)
    if cfg.full:
        for p in adapted.decoder.parameters():
            p.requires_grad_(True)
        return model
    from transformers import set_seed

    set_seed(cfg.seed)  # LoRA's A is drawn at random: the same run starts from the same adapter
    return add_lora(model, targets, cfg.lora_r, cfg.lora_alpha, cfg.lora_dropout)


def run_trainer(module, train_set, eval_set, collate_fn, out: Path, cfg, record, resume, max_minutes, progress,
                device, save_extra=None) -> dict:  # fmt: skip
    """The Trainer on ``module`` (a loss module: ``forward(**batch)`` returns ``{"loss"}``) with ``cfg``'s settings:
    ``record`` written first, checkpoints, ``train_log.jsonl``, the final save and the plot into ``out``."""
    from transformers import TrainingArguments
    from transformers.trainer_utils import get_last_checkpoint

    out.mkdir(parents=True, exist_ok=True)
    if _rank() == 0:
        (out / RECORD).write_text(json.dumps(record, indent=1) + "\n")
    args = TrainingArguments(
        output_dir=str(out),
        max_steps=cfg.steps if cfg.steps is not None else -1,
        num_train_epochs=cfg.epochs,
        per_device_train_batch_size=cfg.batch_size,
        per_device_eval_batch_size=cfg.batch_size,
        gradient_accumulation_steps=cfg.grad_accum,
        learning_rate=cfg.lr,
        warmup_steps=cfg.warmup_steps,
        weight_decay=cfg.weight_decay,
        seed=cfg.seed,
        data_seed=cfg.seed,
        bf16=cfg.bf16,
        **_checkpointing_args(TrainingArguments, cfg.gradient_checkpointing),
        logging_steps=cfg.logging_steps,
        save_strategy="steps",
        save_steps=cfg.save_steps,
        save_total_limit=2,  # resuming needs the last; the one before covers a kill while the last was written
        eval_strategy="steps" if eval_set is not None else "no",
        eval_steps=cfg.eval_steps,
        report_to=[],
        remove_unused_columns=False,
        label_names=["labels"],
        disable_tqdm=not progress,
        dataloader_num_workers=0,
        use_cpu=device in (None, "cpu") and not torch.cuda.is_available(),
        ddp_find_unused_parameters=False,
    )
    Trainer, JsonlLog = make_trainer_class()
    log = JsonlLog(out / "train_log.jsonl", max_minutes)
    trainer = Trainer(model=module, args=args, train_dataset=train_set, eval_dataset=eval_set,
                      data_collator=collate_fn, callbacks=[log])  # fmt: skip
    trainer.finetune_full, trainer.finetune_save_extra = cfg.full, save_extra
    checkpoint = get_last_checkpoint(str(out)) if resume else None
    result = trainer.train(resume_from_checkpoint=checkpoint)
    trainer.save_model(str(out))
    history = trainer.state.log_history
    if trainer.is_world_process_zero():
        plot_curves(history, out / "training_curves.png")
    evals = [h["eval_loss"] for h in history if "eval_loss" in h]
    return {"out": str(out), "steps": trainer.state.global_step, "stopped_early": log.stopped_early,
            "train_loss": result.training_loss, "eval_loss": evals[-1] if evals else None}  # fmt: skip


def _checkpointing_args(TrainingArguments, on: bool) -> dict:
    """Non-reentrant recomputation, by the name the installed transformers gives it (``activation_checkpointing``
    from 5.24, ``gradient_checkpointing`` before)."""
    from dataclasses import fields

    names = {f.name for f in fields(TrainingArguments)}
    key = "activation_checkpointing" if "activation_checkpointing" in names else "gradient_checkpointing"
    return {key: on, f"{key}_kwargs": {"use_reentrant": False}} if on else {}


def plot_curves(history: list[dict], path: Path) -> Path:
    """Training loss (and evaluation loss) against the step, and the share of visual tokens kept."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = [(h["step"], h["loss"]) for h in history if "loss" in h]
    evals = [(h["step"], h["eval_loss"]) for h in history if "eval_loss" in h]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    if train:
        ax.plot(*zip(*train, strict=True), label="train loss (answer tokens)")
    if evals:
        ax.plot(*zip(*evals, strict=True), "o-", label="eval loss")
    ax.set_xlabel("optimiser step")
    ax.set_ylabel("cross-entropy")
    ax.legend()
    ax.grid(alpha=0.3)
    kept = [h["visual_kept"] for h in history if "visual_kept" in h]
    if kept:
        ax.set_title(f"mean share of visual tokens carried per block: {sum(kept) / len(kept):.3f}")
    fig.tight_layout()
    with atomic_path(path) as tmp:  # Ctrl-C or a full disk mid-save: the previous plot or none, never half of one
        fig.savefig(tmp, dpi=120)
    plt.close(fig)
    return path
