"""LoRA on the language model of a video VLM, by peft, and loading a finetuned adapter back.

:func:`resolve_targets` turns ``--target-modules`` into the full names of ``nn.Linear`` modules *inside the language
model* (the vision tower has ``q_proj`` layers too, and stays frozen). The default is the projections of every
attention and Mamba mixer the hybridreduce adapter finds (:data:`DEFAULT_TARGETS`): ``q_proj``, ``k_proj``,
``v_proj``, ``o_proj`` and Mamba's ``in_proj`` / ``out_proj`` on Nemotron-H. peft wraps each in a ``LoraLayer`` in
place (the parent's attribute becomes the wrapper), so the hooks ``reduce()`` installs afterwards — on the mixer's
``in_proj`` for the Mamba scorer, through ``AttentionInterface`` for q/k — see the adapted outputs.

:func:`merge_adapter` loads a saved adapter onto a loaded base model and merges it into the weights
(``merge_and_unload``): inference then runs plain modules at the base model's speed.
"""

from __future__ import annotations

import json
from pathlib import Path

from torch import nn

from ..errors import InputError

#: Files of a saved peft adapter.
ADAPTER_FILES = ("adapter_config.json",)
#: The record ``hybridreduce finetune`` writes beside the adapter or the full weights.
RECORD = "hybridreduce_finetune.json"


def mixer_linears(model: nn.Module, adapted) -> dict[str, nn.Module]:
    """Full name → ``nn.Linear`` of every linear layer inside an attention or Mamba mixer of the language model."""
    names = {id(m): n for n, m in model.named_modules()}
    found = {}
    for spec in adapted.blocks:
        for mixer in (spec.attn, spec.ssm):
            if mixer is None:
                continue
            for sub in mixer.modules():
                if isinstance(sub, nn.Linear) and id(sub) in names:
                    found[names[id(sub)]] = sub
    return found


def language_linears(model: nn.Module, adapted) -> dict[str, nn.Module]:
    """Full name → ``nn.Linear`` of every linear layer inside the language model's decoder."""
    names = {id(m): n for n, m in model.named_modules()}
    prefix = names[id(adapted.decoder)]
    return {n: m for n, m in model.named_modules() if isinstance(m, nn.Linear) and n.startswith(prefix + ".")}


def resolve_targets(model: nn.Module, adapted, targets: list[str] | None) -> list[str]:
    """The full module names LoRA wraps: the mixers' linear layers by default, else the language model's linear
    layers whose last name part (``in_proj``) or dotted tail (``mixer.in_proj``) is in ``targets``.

    Raises:
        InputError: no linear layer of the language model matches ``targets`` (the message lists the names there
            are), or the model has no attention or Mamba projection to adapt.
    """
    if targets is None:
        found = sorted(mixer_linears(model, adapted))
        if not found:
            raise InputError(
                f"{adapted.model_type}: no linear layer inside its attention or Mamba mixers to put LoRA on; name them "
                "with --target-modules, or train every weight with --full"
            )
        return found
    linears = language_linears(model, adapted)
    wanted = [t.strip() for t in targets if t.strip()]
    found = sorted(n for n in linears if any(n == t or n.endswith("." + t) for t in wanted))
    missing = [t for t in wanted if not any(n == t or n.endswith("." + t) for n in linears)]
    if missing or not found:
        leaves = sorted({n.rsplit(".", 1)[-1] for n in linears})
        raise InputError(
            f"--target-modules {','.join(missing or wanted)} match no linear layer of the language model; it has "
            f"{', '.join(leaves)} (e.g. --target-modules {','.join(leaves[:2])})"
        )
    return found


def check_adapter_dir(path) -> Path:
    """``path`` as a directory with a peft adapter (``adapter_config.json``); a full finetune is refused with the
    fix (it is a checkpoint: pass it as ``--model``)."""
    root = Path(path)
    if not root.is_dir():
        raise InputError(f"adapter (--adapter) {str(root)!r} is not a directory; give a hybridreduce finetune --out")
    if not all((root / f).is_file() for f in ADAPTER_FILES):
        if (root / "config.json").is_file():
            raise InputError(
                f"adapter (--adapter) {str(root)!r} holds full weights (a --full finetune), not a LoRA adapter; "
                "load it as the checkpoint itself: --model " + str(root)
            )
        raise InputError(
            f"adapter (--adapter) {str(root)!r} has no adapter_config.json; give the --out of a hybridreduce "
            "finetune run (or a checkpoint-N folder inside it)"
        )
    return root


def read_record(path) -> dict | None:
    """The ``hybridreduce_finetune.json`` of a finetune output (None where there is none)."""
    file = Path(path) / RECORD
    if not file.is_file():
        return None
    try:
        return json.loads(file.read_text())
    except json.JSONDecodeError as exc:
        raise InputError(f"{file}: not valid JSON ({exc.msg}); the finetune run that wrote it was cut off") from None


def merge_adapter(model: nn.Module, adapter) -> nn.Module:
    """``model`` with the LoRA adapter saved in ``adapter`` merged into its weights (peft)."""
    from peft import PeftModel

    root = check_adapter_dir(adapter)
    try:
        wrapped = PeftModel.from_pretrained(model, str(root))
    except (ValueError, KeyError, RuntimeError) as exc:
        raise InputError(
            f"adapter (--adapter) {str(root)!r} does not fit this checkpoint ({exc}); load it with the base model it "
            "was trained on (its hybridreduce_finetune.json names it)"
        ) from None
    return wrapped.merge_and_unload()


def add_lora(model: nn.Module, targets: list[str], r: int, alpha: float, dropout: float = 0.0):
    """Wrap ``targets`` (full module names) of ``model`` in LoRA layers of rank ``r`` in place; returns the
    ``PeftModel`` (every other weight frozen)."""
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=targets, bias="none")
    return get_peft_model(model, config)
