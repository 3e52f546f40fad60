"""hybridreduce: query-conditioned visual-token reduction for hybrid attention/Mamba video VLMs.

Entry points:
    :func:`capture` — record per-block importance of the visual tokens (a context manager).
    :func:`get_adapter` — how a model's blocks are laid out (kinds, mixers, RoPE).
    :class:`ScoreCache`, :class:`ScorerConfig`.
"""

from .adapters import get_adapter, supported_model_types
from .cache import ScoreCache
from .errors import HybridReduceError, InputError, ScoreError, UnsupportedModelError
from .scoring.config import ScorerConfig
from .taps import capture

__version__ = "0.1.0"

__all__ = [
    "HybridReduceError",
    "InputError",
    "ScoreCache",
    "ScoreError",
    "ScorerConfig",
    "UnsupportedModelError",
    "__version__",
    "capture",
    "get_adapter",
    "supported_model_types",
]
