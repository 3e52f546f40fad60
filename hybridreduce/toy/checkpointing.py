"""A toy run's saved state, and new runs that start from one.

:func:`save_checkpoint` writes the weights and (at every evaluation) ``trainer_state.pt`` atomically;
:func:`branch_run` continues another run's saved state into a new folder under settings that change only how
batches are treated (``--branch-from``); :func:`warm_start` loads a previous run's weights into a fresh run
(``train.init_from``), growing its vocabulary or its depth (``train.init_layers``).
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import torch

from .. import rundir
from ..errors import InputError
from ..yamlio import read_yaml
from .losses import OrderHintHeads, PositionHeads
from .model import ToyVLM
from .train_config import ToySpec, TrainConfig


def save_checkpoint(model: ToyVLM, out: Path, state: dict | None = None) -> None:
    """``save_pretrained`` and (given) ``trainer_state.pt`` into a staging folder, then each moved into ``out`` by
    an atomic rename: a kill or a full disk leaves the previous checkpoint, never a truncated one."""

    def write(staging: Path) -> list[Path]:
        model.save_pretrained(staging)
        if state is not None:
            torch.save(state, staging / "trainer_state.pt")
        return sorted(staging.iterdir())

    rundir.stage(out, write)


#: The train settings a branch (:func:`branch_run`) may change: what a batch is treated with, and what is evaluated
#: and logged. Everything else (model, data, optimiser, schedule, curriculum, seed) fixes which items each step draws
#: and how the weights move, so changing it would not continue the same run.
BRANCH_SETTINGS = (
    "evs_prob", "evs_max_rate", "reduce_prob", "reduce_keep", "reduce_random", "content_weight",
    "log_every", "eval_every", "eval_size", "test_size", "threads",
)  # fmt: skip

#: Files of a run that a branch copies (the log is copied up to the saved step).
_RUN_FILES = ("model.safetensors", "config.json", "generation_config.json", "trainer_state.pt")


def branch_run(spec: ToySpec, source: str | Path, out: Path) -> dict:
    """Copy the state that the run in ``source`` saved at its last evaluation into ``out``, to continue under ``spec``.

    ``spec`` may differ from the source's ``train_config.yaml`` only in :data:`BRANCH_SETTINGS`; ``out`` must not
    hold a run. The source's log is copied up to the saved step (records of steps it trained past the checkpoint are
    dropped: the branch never took them), and ``out/train_config.yaml`` is ``spec``. Returns the changed settings,
    ``{name: [source's, spec's]}``.
    """
    import shutil

    import yaml

    src = Path(source)
    if not (src / "trainer_state.pt").is_file() or not (src / "train_config.yaml").is_file():
        raise InputError(
            f"branch from {src}: not a train-toy run with saved state (no trainer_state.pt and train_config.yaml; "
            "a run saves them at every evaluation)"
        )
    if src.resolve() == out.resolve():
        raise InputError(f"branch from {src} into itself; choose another --out (or continue the run with --resume)")
    held = [n for n in (*_RUN_FILES, "train_config.yaml", "train_log.jsonl") if (out / n).exists()]
    if held:
        raise InputError(f"{out} already holds a train-toy run ({', '.join(held)}); branch into an empty --out")
    saved = read_yaml(src / "train_config.yaml", "the source run's training config")
    mine = yaml.safe_load(yaml.safe_dump(spec.to_dict(), sort_keys=False))
    mine = as_saved_by(saved, mine)
    fixed = {k: v for k, v in mine.items() if k != "train"}
    if fixed != {k: v for k, v in saved.items() if k != "train"}:
        differ = sorted(k for k in {*fixed, *saved} - {"train"} if fixed.get(k) != saved.get(k))
        raise InputError(f"branch from {src}: the config changes {', '.join(differ)}; a branch may change only "
                         f"train settings among {', '.join(BRANCH_SETTINGS)}")  # fmt: skip
    theirs, ours = saved.get("train", {}), mine.get("train", {})
    changed = {k: [theirs.get(k), ours.get(k)] for k in sorted({*theirs, *ours}) if theirs.get(k) != ours.get(k)}
    refused = [k for k in changed if k not in BRANCH_SETTINGS]
    if refused:
        raise InputError(
            f"branch from {src}: the config changes train.{', train.'.join(refused)}, which decide the items each step "
            f"draws or how the weights move; a branch may change only {', '.join(BRANCH_SETTINGS)}"
        )
    step = torch.load(src / "trainer_state.pt", weights_only=False)["step"]
    if step >= spec.train.steps:  # the branch would train no step: its "arm" would be the source's weights
        raise InputError(
            f"branch from {src}: it saved its state at step {step}, and this config trains to step "
            f"{spec.train.steps}, so the branch would train 0 steps; set train.steps (or --steps) above {step}"
        )
    history = []
    for line in (src / "train_log.jsonl").read_text().splitlines() if (src / "train_log.jsonl").is_file() else []:
        if json.loads(line).get("step", 0) <= step:
            history.append(line)

    def copy(staging: Path) -> list[Path]:
        copied = [Path(shutil.copy2(src / name, staging / name)) for name in _RUN_FILES if (src / name).is_file()]
        (staging / "train_log.jsonl").write_text("".join(f"{line}\n" for line in history))
        (staging / "train_config.yaml").write_text(yaml.safe_dump(spec.to_dict(), sort_keys=False))
        return [*copied, staging / "train_log.jsonl", staging / "train_config.yaml"]

    rundir.stage(out, copy)
    return changed


def as_saved_by(saved: dict, current: dict) -> dict:
    """``current`` without the train settings a run saved by an earlier version did not know, when they are at their
    defaults: such a run trained exactly as with them, so it resumes (a new setting that is on does not)."""
    defaults = asdict(TrainConfig())
    train = {k: v for k, v in current.get("train", {}).items() if k in saved.get("train", {}) or v != defaults.get(k)}
    return {**current, "train": train}


def _architecture(config: dict) -> dict:
    """A config dict without the entries that say how it was saved rather than what the model is."""
    drop = ("transformers_version", "architectures", "dtype", "torch_dtype", "_name_or_path")
    return {k: _architecture(v) if isinstance(v, dict) else v for k, v in config.items() if k not in drop}


#: The parameter that ends each Nemotron-H mixer's residual branch: zero it and the block is the identity.
_OUTPUT_PROJECTIONS = ("mixer.out_proj.weight", "mixer.o_proj.weight", "mixer.down_proj.weight")


def warm_start(
    model: ToyVLM,
    heads: PositionHeads | None,
    source: str,
    layers: list | None = None,
    hint_heads: OrderHintHeads | None = None,
) -> None:
    """Load the weights (and position and order-hint heads, when saved) of the train-toy run in ``source``.

    Args:
        layers: depth up-scaling (``train.init_layers``): block ``i`` of ``model`` starts from block ``layers[i]`` of
            the source, or as the identity when ``None``. Without it the two models must be the same, except that
            the vocabulary may grow (words appended, as :class:`~hybridreduce.toy.encoding.Vocab` does): the
            source's rows are copied and the new rows keep their fresh initialisation.
    """
    src = Path(source)
    if not (src / "config.json").is_file() or not (src / "model.safetensors").is_file():
        raise InputError(f"train.init_from: {src} is not a train-toy output directory (no model.safetensors)")
    previous = ToyVLM.from_pretrained(src)
    if layers is None:
        mine, theirs = _architecture(model.config.to_dict()), _architecture(previous.config.to_dict())
        words, their_words = mine["text_config"].pop("vocab_size"), theirs["text_config"].pop("vocab_size")
        if mine != theirs or words < their_words:
            differ = sorted(k for k in set(mine) | set(theirs) if mine.get(k) != theirs.get(k))
            differ += [f"vocabulary ({their_words} words there, {words} here)"] if words < their_words else []
            raise InputError(
                f"train.init_from: the model in {src} differs from this config's in {differ}; a warm restart needs "
                "the same data geometry and model sections (or train.init_layers to grow it); only the vocabulary "
                "may grow (appended words)"
            )
        if words == their_words:
            model.load_state_dict(previous.state_dict())
        else:  # new question words (e.g. a new question type): every block from itself, new rows stay fresh
            _grow(model, previous, list(range(len(model.config.text_config.layers_block_type))), src)
    else:
        _grow(model, previous, layers, src)
    state_path = src / "trainer_state.pt"
    if (heads is not None or hint_heads is not None) and state_path.is_file():
        state = torch.load(state_path, weights_only=False)
        for module, key in ((heads, "position_heads"), (hint_heads, "order_hint_heads")):
            if module is not None and state.get(key) is not None:
                module.load_state_dict(state[key])


def _grow(model: ToyVLM, previous: ToyVLM, layers: list, src: Path) -> None:
    """Depth up-scaling: copy ``previous`` into the deeper ``model`` block by block (see :func:`warm_start`)."""
    ours = model.config.text_config.layers_block_type
    theirs = previous.config.text_config.layers_block_type
    if len(layers) != len(ours):
        raise InputError(
            f"train.init_layers has {len(layers)} entries for a model of {len(ours)} blocks; give one each"
        )
    for i, j in enumerate(layers):
        if j is not None and (j >= len(theirs) or theirs[j] != ours[i]):
            what = f"is a {theirs[j]} block" if j < len(theirs) else f"is out of range ({len(theirs)} source blocks)"
            raise InputError(f"train.init_layers[{i}] = {j}: block {i} is a {ours[i]} block, source block {j} {what}")
    prefix = "language_model.model.layers."
    source = previous.state_dict()
    target = model.state_dict()
    with torch.no_grad():
        for name, value in target.items():
            if name.startswith(prefix):
                index, rest = name[len(prefix) :].split(".", 1)
                j = layers[int(index)]
                if j is None:
                    if rest in _OUTPUT_PROJECTIONS:
                        value.zero_()  # a new block adds nothing to the residual stream until it learns to
                    continue
                name_src = f"{prefix}{j}.{rest}"
            else:
                name_src = name
            old = source.get(name_src)
            if old is None or old.shape[1:] != value.shape[1:] or old.shape[0] > value.shape[0]:
                raise InputError(
                    f"train.init_from: {src} has {name_src} of shape "
                    f"{None if old is None else tuple(old.shape)}, this model needs {tuple(value.shape)}; only the "
                    "depth (train.init_layers) and the vocabulary (appended words) may grow"
                )
            value[: old.shape[0]] = old  # vocabulary rows beyond the source's keep their fresh values
