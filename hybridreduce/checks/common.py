"""What every invariant check shares: its result row, where it runs, its tolerances, and the registry.

A check is a function ``check_<name>(arch, <needs>...) -> CheckResult`` registered with
``@invariant("<name>", needs=(...))``. ``needs`` names what it takes, in its parameter order, from
:data:`NEEDS` (the model, a synthetic prompt, the saved checkpoint, an eager copy, ...); a
:class:`Subject` builds each need once, when a check first asks for it. :data:`INVARIANTS` holds the
checks in registration order, which is the order ``hybridreduce verify`` runs and prints them
(``hybridreduce.checks`` imports :mod:`.scoring`, then :mod:`.reduction`).
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from ..adapters import get_adapter
from ..tiny_models import build_tiny_model, make_prompt

# float32 tolerances; errors are printed so that a drift shows before it fails.
ATOL_SCORES = 2e-5  # importance vectors and attention probabilities (values in [0, 1])
RTOL_SCAN = 1e-4  # scan reconstruction, relative to the largest |y|
ATOL_LOGITS = 1e-5  # logits of tiny models (|logit| ≲ 1), same ops in another order (checks.reduction)
TIE = 1e-5  # a greedy step whose top-2 logits are this close is a tie, not a divergence (checks.reduction)

#: Tolerances by the dtype the models run in (``hybridreduce verify --dtype``). In bfloat16 and float16 the
#: activations are rounded to 8 and 11 mantissa bits, so one value computed along two paths (tapped vs eager
#: attention, the scan vs its reconstruction from ``in_proj``, a cached decode step vs a no-cache forward)
#: differs by a few such roundings. The half-precision values are about 4x the largest errors measured on CPU
#: over every tiny architecture (bfloat16: scores 1.4e-4, scan 7.4e-3, logits 2.3e-2; float16: 5.0e-5, 6.7e-4,
#: 2.9e-3; transformers 5.24, torch 2.13). Scorer-vs-reference comparisons on the same float32 primitives keep
#: the float32 tolerance, and the bit-identity checks stay bit-identical, in every dtype. ``tie``: a greedy step
#: whose top-2 logits are this close is a tie, not a divergence (the logits' own tolerance).
TOLERANCES = {
    torch.float32: {"scores": ATOL_SCORES, "scan": RTOL_SCAN, "logits": ATOL_LOGITS, "tie": TIE},
    torch.bfloat16: {"scores": 1e-3, "scan": 3e-2, "logits": 1e-1, "tie": 1e-1},
    torch.float16: {"scores": 4e-4, "scan": 3e-3, "logits": 1.5e-2, "tie": 1.5e-2},
}
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class Target:
    """Where the checks run: models are moved to ``device`` in ``dtype``, prompts are built on ``device``.

    The float64 references loop on the CPU; what runs on the device is compared with them there.
    """

    device: torch.device = torch.device("cpu")
    dtype: torch.dtype = torch.float32

    def tol(self, name: str) -> float:
        """The tolerance ``name`` (a key of :data:`TOLERANCES`) for this dtype."""
        return TOLERANCES[self.dtype][name]


#: The current target; :func:`on` sets it for the checks run inside it (default: cpu, float32).
TARGET = Target()


@contextmanager
def on(device=None, dtype: torch.dtype | str | None = None):
    """Run the checks inside on ``device`` (default cpu) in ``dtype`` (default float32).

    On CUDA, float32 means IEEE float32: TF32 matmuls and convolutions are off inside (and restored after).
    """
    dtype = DTYPES[dtype] if isinstance(dtype, str) else dtype
    saved = (TARGET.device, TARGET.dtype)
    tf32 = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    TARGET.device, TARGET.dtype = torch.device(device or "cpu"), dtype or torch.float32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield TARGET
    finally:
        TARGET.device, TARGET.dtype = saved
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32


def _to_target(model):
    """``model`` on the target device in the target dtype (unchanged on cpu, float32)."""
    return model.to(device=TARGET.device, dtype=TARGET.dtype)


@dataclass
class CheckResult:
    arch: str
    check: str
    passed: bool
    max_err: float | None
    detail: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


def _vocab(model) -> int:
    return int(model.get_input_embeddings().num_embeddings)


def _forward(model, input_ids, attention_mask=None, position_ids=None):
    """First output tensor (logits, or hidden states for a bare decoder) of a no-cache forward.

    With a padding mask, models that take position ids get ones that skip the padding, as
    ``generate`` does, unless ``position_ids`` gives them.
    """
    kwargs = {}
    if attention_mask is not None:
        kwargs["attention_mask"] = attention_mask
        if "position_ids" in inspect.signature(model.forward).parameters:
            if position_ids is None:
                position_ids = (attention_mask.long().cumsum(-1) - 1).clamp_min(0)
            kwargs["position_ids"] = position_ids
    with torch.no_grad():
        out = model(input_ids=input_ids, use_cache=False, **kwargs)
    return out[0]


# --------------------------------------------------------------------------------------------------
# Models
# --------------------------------------------------------------------------------------------------
def load_language_model(path: Path, attn_implementation: str | None = None):
    """Load a checkpoint directory and return its language model (unwrapping a VLM), in float32."""
    from transformers import AutoModelForCausalLM, AutoModelForImageTextToText

    kwargs = {"dtype": torch.float32}
    if attn_implementation is not None:
        kwargs["attn_implementation"] = attn_implementation
    try:
        model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    except ValueError:  # a vision-language checkpoint: no causal-LM mapping for its config
        model = AutoModelForImageTextToText.from_pretrained(path, **kwargs)
    return get_adapter(model).text_model.eval()


def _load_eager(path: Path, model):
    if get_adapter(model).attn_implementation == "eager":
        return model
    return _to_target(load_language_model(path, attn_implementation="eager"))


#: What a check can ask for (``@invariant(name, needs=...)``); a :class:`Subject` builds each once, on demand.
NEEDS = {
    "built": "the tiny random model fresh from build_tiny_model(arch, seed=0), on the CPU in float32 (tiny only)",
    "path": "the checkpoint directory of the model (a tiny model: `built` saved there with save_pretrained)",
    "loaded": "the tiny checkpoint loaded back with from_pretrained, on the CPU in float32 (tiny only)",
    "model": "the model under check, on the target device in the target dtype (a tiny one: `loaded`)",
    "prompt": "the synthetic prompt [4 prefix][24 visual][8 question], seed 0, on the target device",
    "eager": "the model with eager attention, loaded from `path` (the model itself when it is eager already, "
    "has no attention block or no checkpoint)",
}


class Subject:
    """What the checks run on: an architecture name and, built once when a check first asks, its :data:`NEEDS`.

    Build one with :meth:`tiny` (a tiny random model, saved and loaded back) or :meth:`checkpoint` (a loaded
    model and its directory). ``device`` and ``dtype`` are the :class:`Target` its checks run on (default cpu,
    float32); :meth:`Invariant.run` enters it.
    """

    def __init__(self, arch: str, *, folder: Path | None = None, device=None, dtype: torch.dtype | str | None = None):
        self.arch = arch
        self.device = torch.device(device or "cpu")
        self.dtype = (DTYPES[dtype] if isinstance(dtype, str) else dtype) or torch.float32
        self._folder = folder
        self._made: dict[str, object] = {}

    @classmethod
    def tiny(cls, arch: str, folder: Path, device=None, dtype: torch.dtype | str | None = None) -> Subject:
        """The tiny random model of ``arch``; its checkpoint goes into ``folder`` (an empty directory that must
        outlive the subject)."""
        return cls(arch, folder=Path(folder), device=device, dtype=dtype)

    @classmethod
    def checkpoint(cls, arch: str, model, path: Path | None) -> Subject:
        """``model`` as it is (cpu, float32), loaded from ``path`` (``None``: no checkpoint, no eager copy)."""
        subject = cls(arch)
        subject._made["model"] = model
        if path is not None:
            subject._made["path"] = Path(path)
        return subject

    @property
    def is_tiny(self) -> bool:
        return self._folder is not None

    def provides(self, need: str) -> bool:
        """Whether this subject can build ``need`` (``built`` and ``loaded`` exist for tiny models only)."""
        if need not in NEEDS:
            raise KeyError(f"unknown need {need!r}; choose from {', '.join(NEEDS)}")
        if need in self._made:
            return True
        if need in ("prompt", "eager"):  # built from the model
            return self.provides("model")
        return self.is_tiny  # built, path, loaded, model: from the tiny config

    def get(self, need: str):
        """The value of ``need``, built on the first call (under the subject's target) and kept."""
        if need not in self._made:
            if not self.provides(need):
                raise ValueError(f"{self.arch}: no {need!r} here ({NEEDS[need]}); run this check on a tiny model")
            with on(self.device, self.dtype):
                self._made[need] = getattr(self, f"_make_{need}")()
        return self._made[need]

    def _make_built(self):
        return build_tiny_model(self.arch, seed=0)

    def _make_path(self) -> Path:
        self.get("built").save_pretrained(self._folder)
        return self._folder

    def _make_loaded(self):
        from transformers import AutoModelForCausalLM

        return AutoModelForCausalLM.from_pretrained(self.get("path"), dtype=torch.float32).eval()

    def _make_model(self):
        loaded = self.get("loaded")
        if (self.device, self.dtype) == (torch.device("cpu"), torch.float32):
            return loaded
        return _to_target(copy.deepcopy(loaded))  # `loaded` stays on the CPU in float32 (roundtrip compares it)

    def _make_prompt(self):
        return make_prompt(_vocab(self.get("model")), 4, 24, 8, seed=0, device=self.device)

    def _make_eager(self):
        model = self.get("model")
        has_attn = any(b.attn is not None for b in get_adapter(model).blocks)
        return _load_eager(self.get("path"), model) if (has_attn and self.provides("path")) else model


# --------------------------------------------------------------------------------------------------
# The registry
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Invariant:
    """One registered check: ``fn(arch, **{need: subject.get(need) for need in needs})`` returns its row."""

    name: str
    fn: Callable[..., CheckResult]
    needs: tuple[str, ...]

    @property
    def doc(self) -> str:
        """The first paragraph of the check's docstring: what it asserts."""
        return " ".join(inspect.cleandoc(self.fn.__doc__ or "").split("\n\n")[0].split())

    def applies(self, subject: Subject) -> bool:
        """Whether ``subject`` has everything this check needs (``roundtrip`` does not apply to a checkpoint)."""
        return all(subject.provides(n) for n in self.needs)

    def run(self, subject: Subject) -> CheckResult:
        """The check on ``subject``, on the subject's device in its dtype."""
        with on(subject.device, subject.dtype):
            return self.fn(subject.arch, **{n: subject.get(n) for n in self.needs})


#: Every check, by name, in the order ``hybridreduce verify`` runs and prints them.
INVARIANTS: dict[str, Invariant] = {}


def invariant(name: str, needs: tuple[str, ...] = ("model",)):
    """Register ``check_<name>(arch, *needs)`` as the invariant ``name`` (the function is returned unchanged).

    ``needs``: keys of :data:`NEEDS`, in the order of the function's parameters after ``arch``.
    """
    needs = tuple(needs)

    def register(fn: Callable[..., CheckResult]) -> Callable[..., CheckResult]:
        unknown = [n for n in needs if n not in NEEDS]
        if unknown:
            raise ValueError(f"invariant {name!r}: unknown needs {unknown}; choose from {', '.join(NEEDS)}")
        params = list(inspect.signature(fn).parameters)
        if params != ["arch", *needs]:
            raise TypeError(
                f"invariant {name!r}: {fn.__name__} takes {params}; its parameters must be "
                f"{['arch', *needs]} (arch, then needs= in the same order)"
            )
        if name in INVARIANTS:
            raise ValueError(
                f"invariant {name!r} is registered twice ({INVARIANTS[name].fn.__qualname__}, {fn.__qualname__}); "
                "give the new check a name of its own"
            )
        INVARIANTS[name] = Invariant(name, fn, needs)
        return fn

    return register
