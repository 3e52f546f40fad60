"""hybridreduce: query-conditioned visual-token reduction for hybrid attention/Mamba video VLMs.

Entry points:
    :func:`capture` — record per-block importance of the visual tokens (a context manager).
    :func:`reduce` — drop visual tokens between blocks under a :class:`Schedule` (a context manager).
    :func:`get_adapter` — how a model's blocks are laid out (kinds, mixers, RoPE).
    :func:`load` — a video VLM checkpoint directory with its tokenizer and prompts (:class:`VLM`).
    :func:`finetune` — LoRA finetuning under the schedule the model is evaluated with.
    :class:`ScoreCache`, :class:`ScorerConfig`.
"""

from . import compat
from .adapters import get_adapter, supported_model_types
from .cache import ScoreCache
from .engine import Reduction, cache_nbytes, reduce
from .errors import HybridReduceError, InputError, ScoreError, UnsupportedModelError
from .finetune import finetune
from .schedule import Plan, Schedule
from .scoring.config import ScorerConfig
from .taps import capture
from .vlm import VLM, load

__version__ = "0.1.0"

# The hooks read transformers' internal call signatures: say so once if the installed release is untested.
compat.warn_if_untested()

__all__ = [
    "HybridReduceError",
    "InputError",
    "Plan",
    "Reduction",
    "ScoreCache",
    "ScoreError",
    "Schedule",
    "ScorerConfig",
    "UnsupportedModelError",
    "VLM",
    "__version__",
    "cache_nbytes",
    "capture",
    "finetune",
    "get_adapter",
    "load",
    "reduce",
    "supported_model_types",
]
