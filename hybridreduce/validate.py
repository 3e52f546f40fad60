"""Checks of values a user gives (command-line flags and their Python arguments), one function per kind of value.

Each check returns the value in its plain Python type or raises :class:`~hybridreduce.errors.InputError` with one
line that names the value, the allowed range and the fix. Names are written as ``"frames (--frames)"``: the
Python argument, then the flag, so that one message serves both the API and the command line.

The command line calls these before any model loads or any file is written; the library functions call them again
on entry, so a bad value never turns into an error line per item or a traceback deep inside torch.
"""

from __future__ import annotations

import math
import numbers
import os
from pathlib import Path

from .errors import InputError

#: Files one of which a ``save_pretrained`` directory holds (a single file or the index of a sharded one).
WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)


def _fix(fix: str) -> str:
    return f"; {fix}" if fix else ""


def integer(value, name: str, low: int = 1, high: int | None = None, fix: str = "") -> int:
    """``value`` as an int in ``[low, high]`` (no upper bound when ``high`` is None); bool and 2.5 are refused."""
    span = f"in [{low}, {high}]" if high is not None else f">= {low}"
    ok = isinstance(value, numbers.Integral) and not isinstance(value, bool)
    if not ok or value < low or (high is not None and value > high):
        raise InputError(f"{name} must be an integer {span}, got {value!r}{_fix(fix)}")
    return int(value)


def number(
    value,
    name: str,
    low: float,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
    fix: str = "",
) -> float:
    """``value`` as a finite float in the interval from ``low`` to ``high`` (None: no upper bound).

    ``low_open`` / ``high_open`` leave the ends out: ``number(q, "q", 0, 1, high_open=True)`` is ``0 <= q < 1``.
    NaN, infinities, bools and strings are refused.
    """
    if high is None:
        span = f"> {low:g}" if low_open else f">= {low:g}"
    else:
        span = f"in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
    if ok:
        above = value > low if low_open else value >= low
        below = high is None or (value < high if high_open else value <= high)
        ok = above and below
    if not ok:
        raise InputError(f"{name} must be a finite number {span}, got {value!r}{_fix(fix)}")
    return float(value)


def choice(value, name: str, allowed: tuple[str, ...], fix: str = "") -> str:
    """``value`` when it is one of ``allowed``."""
    if value not in allowed:
        raise InputError(f"{name} must be one of {', '.join(allowed)}, got {value!r}{_fix(fix)}")
    return value


def device(spec: str | None) -> str | None:
    """A torch device string this machine has: ``cpu``, ``cuda``, ``cuda:N`` (N below the GPU count) or ``mps``."""
    import torch

    if spec is None:
        return None
    try:
        dev = torch.device(spec)
    except (RuntimeError, TypeError):
        raise InputError(
            f"device (--device) {spec!r} is not a torch device; use cpu, cuda, cuda:N (N a GPU index) or mps"
        ) from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise InputError(
                f"device (--device) {spec!r}: this torch ({torch.__version__}) sees no CUDA GPU "
                "(a CPU-only build, or no driver); use --device cpu, or install a CUDA build of torch"
            )
        count = torch.cuda.device_count()
        if dev.index is not None and dev.index >= count:
            raise InputError(
                f"device (--device) {spec!r}: only {count} GPU(s) visible, indices 0 to {count - 1}; "
                "use one of those (CUDA_VISIBLE_DEVICES renumbers them)"
            )
    elif dev.type == "mps" and not torch.backends.mps.is_available():
        raise InputError(f"device (--device) {spec!r}: MPS is not available on this machine; use --device cpu")
    elif dev.type not in ("cpu", "cuda", "mps"):
        raise InputError(f"device (--device) {spec!r}: hybridreduce runs on cpu, cuda or mps; use one of those")
    return spec


def checkpoint_dir(path, name: str = "model (--model)") -> Path:
    """A local checkpoint directory with ``config.json`` (a JSON object) and weights (:data:`WEIGHT_FILES`, or
    ``*.safetensors``)."""
    import json

    root = Path(path)
    if not root.is_dir():
        raise InputError(f"{name} {str(root)!r} is not a directory; give the directory save_pretrained wrote")
    if not (root / "config.json").is_file():
        raise InputError(f"{name} {str(root)!r} has no config.json; give the directory save_pretrained wrote")
    try:
        config = json.loads((root / "config.json").read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        where = f" ({exc.msg} at line {exc.lineno})" if isinstance(exc, json.JSONDecodeError) else ""
        raise InputError(
            f"{name} {str(root)!r}: config.json is not valid JSON{where}; restore it from where the checkpoint came "
            "from, or save the model again with save_pretrained"
        ) from None
    if not isinstance(config, dict):
        raise InputError(
            f"{name} {str(root)!r}: config.json holds a {type(config).__name__}, not a model config (a JSON object "
            "with model_type); restore it from where the checkpoint came from"
        )
    if not any((root / f).is_file() for f in WEIGHT_FILES) and not any(root.glob("*.safetensors")):
        raise InputError(
            f"{name} {str(root)!r} has config.json but no weights ({', '.join(WEIGHT_FILES)}); "
            "copy the weight files in (a download that stopped early?) or give the directory save_pretrained wrote"
        )
    for weights in sorted(root.glob("*.safetensors")):
        safetensors_header(weights, name)
    return root


def safetensors_header(path: Path, name: str = "model (--model)") -> None:
    """Refuse a ``.safetensors`` file whose header cannot be read or whose tensors run past its end (a truncated or
    corrupted download); only the header is read, not the weights."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            f.keys()
    except Exception as exc:  # safetensors raises its own SafetensorError, or OSError, or ValueError
        raise InputError(
            f"{name} {str(path.parent)!r}: cannot load it: {path.name!r} is not a readable safetensors file "
            f"({type(exc).__name__}: {exc}); the weight files are corrupt or truncated: copy them again, or save the "
            "model again with save_pretrained"
        ) from None


def writable_dir(path, name: str = "out (--out)") -> Path:
    """``path`` as an output directory that exists and is writable, or that can be created.

    Refused: ``path`` is a file, lies under a file, or its nearest existing folder is not writable.
    Nothing is created here.
    """
    out = Path(path)
    if out.exists() and not out.is_dir():
        raise InputError(f"{name} {str(out)!r} is a file, not a directory; give a directory (it is created if missing)")
    existing = out
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise InputError(
            f"{name} {str(out)!r} lies under the file {str(existing)!r}, so it cannot be created; give another path"
        )
    if not os.access(existing, os.W_OK | os.X_OK):
        raise InputError(
            f"{name} {str(out)!r}: {str(existing)!r} is not writable (permissions or a read-only file system); "
            "give a directory you can write to"
        )
    return out
