"""What the toy-checkpoint diagnostics share (answer_confusion.py, order_probe.py, step_sizes.py): loading a
``train-toy`` run with one of its benchmark variants, and writing a result as JSON."""

from __future__ import annotations

import json
from pathlib import Path

from hybridreduce.errors import InputError
from hybridreduce.toy.demo import load_toy_spec


def load_variant(checkpoint: str | Path, variant: str | None = None):
    """``(model, spec, config)`` of a train-toy run and one of its variants (default: the last it was trained on).

    Raises:
        InputError: the run was not trained on ``variant``.
    """
    model, spec = load_toy_spec(Path(checkpoint))
    configs = {c.variant: c for c in spec.configs}
    name = variant or list(configs)[-1]
    if name not in configs:
        raise InputError(f"{checkpoint} was trained on the variants {list(configs)}, not {name!r}; pick one of them")
    return model, spec, configs[name]


def write_result(out: str | Path | None, name: str, result: dict) -> None:
    """Write ``result`` as ``out/name`` (indented JSON), creating ``out``; nothing when ``out`` is None."""
    if out is None:
        return
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text(json.dumps(result, indent=2) + "\n")
