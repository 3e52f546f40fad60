"""``ScoreCache``: the importance vectors recorded by one scoring forward.

Analysis code takes a ScoreCache as its only input: index it by block (``cache[5]`` → ``(b, V)``),
or ``stack()`` the ``L`` scored blocks into ``(L, b, V)``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from pathlib import Path

import torch

from .errors import InputError


class ScoreCache(Mapping):
    """Per-block importance over the visual tokens, each vector summing to one per sample.

    Attributes:
        block_kinds: the kind of every block of the model (``attn``, ``ssm``, ``mlp``, ...), scored or not.
        visual_positions: ``(b, V)`` sequence positions of the visual tokens in the scored forward.
        block_positions: block index → ``(b, V_block)`` original positions of the visual tokens that block carried,
            for the blocks that carried fewer than all ``V`` (a reduction's cache, :attr:`Reduction.scores
            <hybridreduce.engine.Reduction.scores>`); empty when every scored block saw every visual token.
            :meth:`positions` reads either.
        scores: block index → ``(b, V)`` unified importance: float32, float64 for Mamba blocks scored with the
            exact hidden attention (whose long-context probabilities fall below float32's range).
        parts: block index → ``{"attn": (b, V), "ssm": (b, V)}`` the per-mixer vectors of every
            scored block (one entry for single-mixer blocks, two for ``parallel`` ones).
        rows: block index → ``(b, h, Q, S)`` raw attention rows (only with ``record_rows``).
        scorer: the scorer settings as a dict.
    """

    def __init__(
        self,
        block_kinds: list[str],
        visual_positions: torch.Tensor | None = None,
        scorer: dict | None = None,
    ) -> None:
        self.block_kinds = list(block_kinds)
        self.visual_positions = visual_positions
        self.scores: dict[int, torch.Tensor] = {}
        self.block_positions: dict[int, torch.Tensor] = {}
        self.parts: dict[int, dict[str, torch.Tensor]] = {}
        self.rows: dict[int, torch.Tensor] = {}
        self.scorer = dict(scorer or {})

    # Writing (the scoring taps and the reduction engine) ------------------------------------------
    def reset(self, visual_positions: torch.Tensor | None) -> None:
        """Forget every block's record: a new scoring forward over a prompt with these ``(b, V)`` visual positions
        begins."""
        self.visual_positions = visual_positions
        self.scores.clear()
        self.block_positions.clear()
        self.parts.clear()
        self.rows.clear()

    def record(self, block: int, part: str, scores: torch.Tensor) -> None:
        """Record ``(b, V_block)`` importance of one mixer (``part``: ``"attn"`` | ``"ssm"``) of ``block``."""
        self.parts.setdefault(block, {})[part] = scores

    def record_unified(self, block: int, scores: torch.Tensor) -> None:
        """Record the unified ``(b, V_block)`` importance of ``block`` (the mean of its mixers' vectors)."""
        self.scores[block] = scores

    def record_rows(self, block: int, rows: torch.Tensor) -> None:
        """Record ``(b, h, Q, S)`` raw attention rows of ``block`` (``record_rows`` scorers)."""
        self.rows[block] = rows

    def record_positions(self, block: int, positions: torch.Tensor) -> None:
        """Record ``(b, V_block)`` original positions of the visual tokens ``block`` carried (fewer than ``V``)."""
        self.block_positions[block] = positions

    # Mapping interface -------------------------------------------------------------------------
    def __getitem__(self, layer: int) -> torch.Tensor:
        if layer not in self.scores:
            kind = self.block_kinds[layer] if 0 <= layer < len(self.block_kinds) else None
            why = (
                f"block {layer} is of kind {kind!r}, which does not score"
                if kind in ("mlp", "moe")
                else f"block {layer} was not scored"
            )
            raise KeyError(f"{why}; scored blocks: {self.layers}")
        return self.scores[layer]

    def __iter__(self) -> Iterator[int]:
        return iter(self.layers)

    def __len__(self) -> int:
        return len(self.scores)

    def __repr__(self) -> str:
        return (
            f"ScoreCache({len(self)} scored blocks of {len(self.block_kinds)}, batch={self.batch_size}, "
            f"n_visual={self.n_visual})"
        )

    # Views ---------------------------------------------------------------------------------------
    @property
    def layers(self) -> list[int]:
        """Indices of the scored blocks, in order."""
        return sorted(self.scores)

    @property
    def kinds(self) -> list[str]:
        """Kinds of the scored blocks, aligned with :attr:`layers`."""
        return [self.block_kinds[i] for i in self.layers]

    @property
    def n_visual(self) -> int:
        return 0 if self.visual_positions is None else int(self.visual_positions.shape[1])

    @property
    def batch_size(self) -> int:
        return 0 if self.visual_positions is None else int(self.visual_positions.shape[0])

    def positions(self, layer: int) -> torch.Tensor:
        """``(b, V_block)`` original sequence positions of the visual tokens block ``layer`` scored (the columns
        of ``self[layer]``)."""
        self[layer]  # the error of a block that was not scored
        return self.block_positions.get(layer, self.visual_positions)

    def stack(self, layers: list[int] | None = None) -> torch.Tensor:
        """``(L, b, V)`` importance of the ``L`` given (default: all scored) blocks."""
        layers = self.layers if layers is None else list(layers)
        if not layers:
            return torch.zeros(0, self.batch_size, self.n_visual)
        reduced = sorted(set(layers) & set(self.block_positions))
        if reduced:
            raise InputError(
                f"blocks {reduced} scored fewer visual tokens than the prompt has (this cache was recorded under a "
                "reduction), so the blocks do not stack: read them one at a time, cache[block] with "
                "cache.positions(block) for their columns"
            )
        return torch.stack([self[i] for i in layers])

    # Conversions ---------------------------------------------------------------------------------
    def _map(self, fn) -> ScoreCache:
        out = ScoreCache(
            self.block_kinds, None if self.visual_positions is None else fn(self.visual_positions), self.scorer
        )
        out.scores = {k: fn(v) for k, v in self.scores.items()}
        out.block_positions = {k: fn(v) for k, v in self.block_positions.items()}
        out.parts = {k: {n: fn(t) for n, t in d.items()} for k, d in self.parts.items()}
        out.rows = {k: fn(v) for k, v in self.rows.items()}
        return out

    def to(self, device) -> ScoreCache:
        return self._map(lambda t: t.to(device))

    def cpu(self) -> ScoreCache:
        return self.to("cpu")

    def detach(self) -> ScoreCache:
        return self._map(lambda t: t.detach())

    # Files ---------------------------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        """Write the cache to a safetensors file (scores, parts, visual positions; metadata as JSON)."""
        from safetensors.torch import save_file

        path = Path(path)
        # clone(): a single-mixer block's unified vector is the same tensor as its part.
        tensors = {f"scores.{k}": v.detach().cpu().clone() for k, v in self.scores.items()}
        for k, d in self.parts.items():
            tensors.update({f"parts.{k}.{n}": t.detach().cpu().clone() for n, t in d.items()})
        tensors.update({f"block_positions.{k}": v.detach().cpu().contiguous() for k, v in self.block_positions.items()})
        if self.visual_positions is not None:
            tensors["visual_positions"] = self.visual_positions.detach().cpu().contiguous()
        meta = {"block_kinds": json.dumps(self.block_kinds), "scorer": json.dumps(self.scorer)}
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file(tensors, str(path), metadata=meta)
        return path

    @classmethod
    def load(cls, path: str | Path) -> ScoreCache:
        from safetensors import safe_open

        path = Path(path)
        if not path.is_file():
            raise InputError(f"score file {path} does not exist")
        try:
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
                tensors = {k: f.get_tensor(k) for k in f.keys()}
        except Exception as exc:  # safetensors raises its own error types for corrupt files
            raise InputError(f"{path} is not a readable safetensors score file ({exc})") from None
        if "block_kinds" not in meta:
            raise InputError(f"{path} has no block_kinds metadata: it was not written by ScoreCache.save")
        out = cls(
            json.loads(meta["block_kinds"]), tensors.pop("visual_positions", None), json.loads(meta.get("scorer", "{}"))
        )
        for key, t in tensors.items():
            head, _, rest = key.partition(".")
            if head == "scores":
                out.scores[int(rest)] = t
            elif head == "block_positions":
                out.block_positions[int(rest)] = t
            elif head == "parts":
                layer, _, name = rest.partition(".")
                out.parts.setdefault(int(layer), {})[name] = t
        return out
