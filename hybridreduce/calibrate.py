"""Calibrate a schedule from unlabeled prompts: where to cut and how much (DESIGN decision 13).

Presets place the first cut at a fixed fraction of the depth; every published method sets its layers by hand
per model. :func:`calibrate` derives the layout for a given model from a few prompts without answers:

1. **Score once at full tokens** (:func:`score_prompts`): one forward per prompt under
   :func:`~hybridreduce.taps.capture`, every scoring block tapped, giving ``s_ℓ`` — block ℓ's unified importance
   over the visual tokens (a probability vector, as the engine uses it).
2. **Simulate each candidate layout** on those scores (:func:`retained_mass`): at each cut the engine keeps
   the top ``k`` visual tokens by the most recent scoring block before the cut, among those the previous cut
   kept; so every block ℓ carries a set ``K_ℓ``.
3. **Objective: retained importance mass**, label-free::

       J(layout) = mean over prompts p and scoring blocks ℓ of   Σ_{j ∈ K_ℓ(p)} s_ℓ^p(j)

   the share of each block's own importance that the tokens it still carries hold. It is the
   survival recall of :mod:`analysis.stability` weighted by importance: a sparse block loses little to a
   cut that keeps its few important tokens; a cut chosen by a block whose ranking disagrees with later
   blocks (low stability across depth) loses the later blocks' mass. Blocks before the first cut carry
   every token (mass 1), so the budget, not the objective, keeps the first cut from drifting late.
   ``objective="reference"`` measures instead what the *deepest attention block* (the last scoring block on a
   model without attention; :func:`reference_block`) needs, at the end of the model::

       J_ref(layout) = mean over prompts p of   Σ_{j ∈ K_last(p)} s_ref^p(j)

   the share of the reference block's full-token importance that the tokens carried by the last block hold.
   Mamba blocks whose decay-free importance is nearly flat score every layout alike under ``J`` (a cut keeping
   a quarter of the tokens keeps about a quarter of their mass whatever it keeps); ``J_ref`` asks whether the
   tokens the question's deepest attention looks at survive every cut, which is what a block that ranks them
   last before a cut destroys. ``reference`` is the default (:func:`search`, :func:`calibrate`, the command),
   chosen on val with merging on every embedded checkpoint and variant: its layouts answered 93.8–95.3% at keep
   0.5 where the own-mass objective's answered 48.4–81.3% (``experiments/merging/objectives.py``;
   docs/guides/calibrating.md has the table).
4. **Search** (:func:`search`): exhaustive over ``first_prune ∈ [1, num_blocks − 1]`` (with a scoring block before it),
   ``stages ∈ 1..max_stages`` (spread evenly from the first cut to the end, as the progressive schedule does)
   and ``shape ∈ {geometric, linear}``, the ratios of each solved by the budget; the best ``J`` wins.
   ``placement="free"`` tries every increasing list of up to :data:`MAX_FREE_STAGES` prune points instead, so
   that each cut can follow the block that should score it. Cost: ``O(candidates · prompts · scoring blocks ·
   V log V)`` — under a second for 64 toy prompts with spread cuts, seconds with free ones, after one scoring
   forward per prompt.

Approximation: ``s_ℓ`` is measured with every token present. Under reduction a later block sees only the kept
tokens and renormalises its importance over them; the simulation keeps the full-token ranking. The held-out
evaluation (``hybridreduce demo``'s ``progressive-calibrated`` row) measures what that costs.

Shapes use the letters of :mod:`hybridreduce.glossary`; a stack of scores is ``(L, N, V)``: ``L`` scored blocks,
``N`` prompts, ``V`` visual tokens of a prompt.
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from .adapters import AdaptedModel, get_adapter
from .errors import InputError
from .rundir import atomic_path, write_text
from .schedule import BUDGETS, Plan, Schedule
from .taps import capture

#: The schedule shapes (:data:`hybridreduce.schedule.SHAPES`) a search tries: explicit ratios are what it chooses.
CALIBRATION_SHAPES = ("geometric", "linear")
#: What a layout is scored by: every scored block's own retained mass, or the deepest attention block's at the end.
OBJECTIVES = ("own", "reference")
#: Where a search may put a layout's cuts: spread evenly after the first (as presets do), or any increasing list
#: (not a schedule's ``placement``, :data:`hybridreduce.schedule.PLACEMENTS`).
CALIBRATION_PLACEMENTS = ("spread", "free")
#: Most cuts of a ``free`` layout: the candidates grow as ``C(depth, stages)``.
MAX_FREE_STAGES = 3
#: Fewest prompts a calibration accepts: the objective is a mean over prompts, and a handful gives a noisy choice.
MIN_PROMPTS = 4


@dataclass
class CalibrationScores:
    """Full-token importance of every scoring block, per prompt (what :func:`score_prompts` collects).

    Attributes:
        blocks: the scored block indices, in order (``L`` of them).
        num_blocks: the model's depth (its blocks, scored or not).
        groups: prompts grouped by their number of visual tokens: each ``(L, N_g, V_g)`` float64.
        model_type: the language model's ``model_type`` (provenance).
        kinds: the kind of every block of the model (``'attn'``, ``'ssm'``, ``'parallel'``, ...; empty when
            unknown, e.g. scores saved by an earlier version): where :func:`reference_block` looks for attention.
    """

    blocks: list[int]
    num_blocks: int
    groups: list[torch.Tensor] = field(default_factory=list)
    model_type: str = ""
    kinds: list[str] = field(default_factory=list)

    @property
    def n_prompts(self) -> int:
        return sum(g.shape[1] for g in self.groups)

    @property
    def n_visual(self) -> list[int]:
        """Visual tokens of each group's prompts."""
        return [int(g.shape[2]) for g in self.groups]

    @classmethod
    def empty(cls, model: nn.Module) -> CalibrationScores:
        """No scores yet, for ``model`` (its depth and ``model_type``)."""
        adapted = get_adapter(model)
        return cls([], adapted.num_blocks, model_type=adapted.model_type, kinds=list(adapted.kinds))

    def add(self, scores: torch.Tensor) -> None:
        """Append ``(L, b, V)`` scores of a batch, into the group of its ``V``."""
        scores = scores.detach().double().cpu()
        for i, g in enumerate(self.groups):
            if g.shape[2] == scores.shape[2]:
                self.groups[i] = torch.cat([g, scores], dim=1)
                return
        self.groups.append(scores)

    def save(self, path: str | Path) -> Path:
        """Write the scores (``torch.save``): what a failed calibration keeps of the forwards already run."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save({"blocks": self.blocks, "num_blocks": self.num_blocks, "groups": self.groups,
                    "model_type": self.model_type, "kinds": self.kinds}, path)  # fmt: skip
        return path

    @classmethod
    def load(cls, path: str | Path) -> CalibrationScores:
        data = torch.load(Path(path), weights_only=True)
        return cls(data["blocks"], data["num_blocks"], data["groups"], data["model_type"], data.get("kinds", []))


def score_prompts(
    model: nn.Module,
    batches: Iterable[dict],
    scorer=None,
    progress: Callable[[int], None] | None = None,
    keep: CalibrationScores | None = None,
) -> CalibrationScores:
    """One full-token scoring forward per batch, every scoring block tapped.

    Args:
        model: a supported model (a VLM wrapper or a language model).
        batches: dicts with ``visual_mask`` ``(b, T)`` and the model's forward arguments (``input_ids`` with
            ``pixel_values``, or ``inputs_embeds``; ``attention_mask``). The samples of one batch must share their
            number of visual tokens (capture's rule); prompts of different lengths go in different batches.
        scorer: Mamba scorer settings (default decay-free, as the progressive schedule uses).
        progress: called with the batch size after each batch.
        keep: a :class:`CalibrationScores` to fill (so the caller holds what was scored if a batch fails).
    Raises:
        InputError: a batch without ``visual_mask`` or with mixed visual-token counts (the scores of the
            batches before it are in ``keep``).
    """
    out = keep if keep is not None else CalibrationScores.empty(model)
    if out.num_blocks != get_adapter(model).num_blocks:
        raise InputError(f"the scores to fill are of a {out.num_blocks}-block model; make them with empty(model)")
    for i, batch in enumerate(batches):
        if not isinstance(batch, dict) or "visual_mask" not in batch:
            raise InputError(f"calibration batch {i} must be a dict with a visual_mask and the forward's inputs")
        inputs = {k: v for k, v in batch.items() if k != "visual_mask"}
        with capture(model, batch["visual_mask"], scorer=scorer) as cache, torch.no_grad():
            model(**inputs, use_cache=False, logits_to_keep=1)
        if not out.blocks:
            out.blocks = cache.layers
        elif cache.layers != out.blocks:
            raise InputError(f"batch {i} scored blocks {cache.layers}, the first batch {out.blocks}")
        out.add(cache.stack())  # (L, b, V)
        if progress is not None:
            progress(int(batch["visual_mask"].shape[0]))
    return out


def manifest_batches(vlm, items: Iterable, frames: int) -> Iterator[dict]:
    """The prompts of a manifest's items (answers unused) as :func:`score_prompts` takes them, one video at a time.

    Args:
        vlm: a loaded :class:`hybridreduce.VLM`.
        items: :class:`hybridreduce.manifest.Item` records.
        frames: ``F``, frames sampled uniformly from each video.
    Yields:
        The language model's input embeddings, attention mask and ``visual_mask`` ``(1, T)`` of each item.
    """
    from .manifest import prompt_text
    from .video import read_video

    for item in items:
        prompt = vlm.prompt(read_video(item.video, num_frames=frames), prompt_text(item))
        yield {**vlm.embed(prompt), "visual_mask": prompt.visual_mask}


def reference_block(blocks: list[int], kinds: list[str]) -> int:
    """Index into ``blocks`` of the reference of ``objective="reference"``: the deepest scored block with attention
    (``'attn'`` or ``'parallel'`` in ``kinds``, the kind of every block of the model), else the deepest scored
    block."""
    if not blocks:
        raise InputError("no block of the model scored the visual tokens: nothing to calibrate a schedule from")
    with_attention = [i for i, b in enumerate(blocks) if b < len(kinds) and kinds[b] in ("attn", "parallel")]
    return with_attention[-1] if with_attention else len(blocks) - 1


def retained_mass(
    scores: torch.Tensor, blocks: list[int], plan: Plan, reference: int | None = None, ema: float | None = None
) -> torch.Tensor:
    """``(N,)`` per prompt: the mean over scored blocks of the importance mass on the tokens each carries, or with
    ``reference`` (an index into ``blocks``) that block's full-token importance on the tokens the last block carries.

    Each cut keeps the top ``k`` of the tokens still carried by the scores of the block the engine would use
    (:meth:`Plan.choosers <hybridreduce.schedule.Plan.choosers>`): the most recent scoring block before it, or with
    ``ema`` the exponential average of the blocks since the previous cut, each renormalised over the carried
    tokens as the engine's blocks see them.

    Args:
        scores: ``(L, N, V)`` importance of the scored ``blocks`` (each row sums to 1 over ``V``).
        blocks: the ``L`` scored block indices.
        plan: the layout (prune points and the share of the original tokens kept from each).
        reference: see :func:`reference_block`; None for the module docstring's ``J``.
        ema: the schedule's ``ema`` (the weight of the newest block), or None.
    """
    L, N, V = scores.shape
    carried = torch.ones(N, V, dtype=torch.bool)  # stage 0: every token
    stages = [carried]
    row = {b: i for i, b in enumerate(blocks)}
    for chooser, k in zip(plan.choosers(blocks, ema is not None), plan.stage_counts(V), strict=True):
        if len(chooser) == 1:
            ranking = scores[row[chooser[0]]]
        else:  # the engine's running average over the blocks since the last cut, on the carried tokens
            ranking = None
            for b in chooser:
                s = scores[row[b]] * carried
                s = s / s.sum(dim=1, keepdim=True).clamp_min(torch.finfo(s.dtype).tiny)
                ranking = s if ranking is None else ema * s + (1 - ema) * ranking
        ranked = ranking.masked_fill(~carried, -math.inf)  # (N, V): only tokens still carried compete
        top = ranked.topk(k, dim=1).indices  # (N, k)
        carried = torch.zeros(N, V, dtype=torch.bool).scatter(1, top, True)
        stages.append(carried)
    if reference is not None:
        return (scores[reference] * carried).sum(dim=1)
    mass = torch.stack([(scores[i] * stages[plan.stage_of(b)]).sum(dim=1) for i, b in enumerate(blocks)])  # (L, N)
    return mass.mean(dim=0)


def objective(
    scores: CalibrationScores, plan: Plan, target: str = "reference", ema: float | None = None
) -> tuple[float, float]:
    """``(J, standard error)`` of a layout: :func:`retained_mass` averaged over every prompt (``target``: one of
    :data:`OBJECTIVES`, as :func:`search` takes it; ``ema``: the schedule's, see :func:`retained_mass`)."""
    if target not in OBJECTIVES:
        raise InputError(f"objective must be one of {OBJECTIVES}, got {target!r}")
    reference = reference_block(scores.blocks, scores.kinds) if target == "reference" else None
    per_prompt = torch.cat([retained_mass(g, scores.blocks, plan, reference, ema) for g in scores.groups])
    N = per_prompt.numel()
    se = float(per_prompt.std() / math.sqrt(N)) if N > 1 else float("nan")
    return float(per_prompt.mean()), se


@dataclass
class Calibration:
    """What :func:`search` found.

    Attributes:
        schedule: the chosen schedule (``progressive`` with the best layout; ``name`` ``progressive-calibrated``).
        objective, objective_se: its ``J`` and standard error over prompts.
        candidates: every feasible layout with its ``first_prune``, ``stages``, ``shape``, ``prune_points``,
            ``ratios``, ``objective`` and ``objective_se``, best first.
        presets: preset name → ``J`` of its layout (None where the budget cannot be met), for comparison; every
            preset is simulated with unified scores (FastV and PyramidDrop score by attention in the engine).
        keep, budget, n_prompts, n_visual, blocks, num_blocks, model_type, seconds: provenance.
        target: the objective, one of :data:`OBJECTIVES`; reference: the block ``"reference"`` measures (None for
            ``"own"``).
        placement: the candidate cuts, one of :data:`CALIBRATION_PLACEMENTS`.
    """

    schedule: Schedule
    objective: float
    objective_se: float
    candidates: list[dict]
    presets: dict[str, float | None]
    keep: float
    budget: str
    n_prompts: int
    n_visual: list[int]
    blocks: list[int]
    num_blocks: int
    model_type: str
    seconds: float
    target: str = "own"
    reference: int | None = None
    placement: str = "spread"

    def to_dict(self) -> dict:
        out = {k: v for k, v in self.__dict__.items() if k != "schedule"}
        out["schedule"] = self.schedule.to_dict()
        return out


def candidate_schedules(
    num_blocks: int,
    blocks: list[int],
    keep: float,
    budget: str = "average",
    max_stages: int = 4,
    placement: str = "spread",
) -> list[Schedule]:
    """Every progressive layout the search tries whose budget can be met (see the module docstring): spread cuts,
    or with ``placement="free"`` every increasing list of at most ``min(max_stages, MAX_FREE_STAGES)`` prune
    points after the first scoring block."""
    if placement not in CALIBRATION_PLACEMENTS:
        raise InputError(f"placement must be one of {CALIBRATION_PLACEMENTS}, got {placement!r}")
    points = range(min(blocks) + 1 if blocks else num_blocks, num_blocks)  # cuts with a scoring block before them
    if placement == "free":
        layouts = [(cuts[0], cuts) for n in range(1, min(max_stages, MAX_FREE_STAGES) + 1)
                   for cuts in itertools.combinations(points, n)]  # fmt: skip
    else:
        layouts = [(first, n) for first in points for n in range(1, min(max_stages, num_blocks - first) + 1)]
    out = []
    for first, stages in layouts:
        n_cuts = stages if isinstance(stages, int) else len(stages)
        # one cut: both shapes give the same ratio
        for shape in CALIBRATION_SHAPES[:1] if n_cuts == 1 else CALIBRATION_SHAPES:
            sched = Schedule(keep=keep, budget=budget, first_prune=first, stages=stages, shape=shape)
            try:
                sched.resolve(num_blocks)
            except InputError:
                continue  # the budget cannot be met with this layout
            out.append(sched)
    return out


def check_budget(
    adapted: AdaptedModel, keep: float, budget: str = "average", max_stages: int = 4, placement: str = "spread"
) -> None:
    """Refuse a budget no candidate layout (:func:`candidate_schedules`) can meet on this model, from its blocks
    alone: before any prompt is scored, and for a checkpoint before its weights load (``adapted`` from
    :func:`hybridreduce.vlm.layout`, which reads config.json).

    Raises:
        InputError: ``keep`` is too small for the depth and the first scoring block (the fix: a larger keep, or
            ``budget="final"``).
    """
    scoring = [b.index for b in adapted.scoring_blocks]
    if not candidate_schedules(adapted.num_blocks, scoring, keep, budget, max_stages, placement):
        raise InputError(
            f"keep (--keep) {keep:g}: no layout of at most {max_stages} cuts on this {adapted.num_blocks}-block "
            f"model carries {budget} keep {keep:g} with a scoring block before its first cut; raise --keep, or try "
            "--budget final"
        )


def search(
    scores: CalibrationScores,
    keep: float = 0.25,
    budget: str = "average",
    max_stages: int = 4,
    target: str = "reference",
    placement: str = "spread",
) -> Calibration:
    """Choose the layout of :func:`candidate_schedules` with the largest retained importance mass (``target``: the
    :func:`objective`, one of :data:`OBJECTIVES`; ``placement``: one of :data:`CALIBRATION_PLACEMENTS`).

    Raises:
        InputError: fewer than :data:`MIN_PROMPTS` prompts, no scoring block, a bad keep or budget, or a budget
            no layout can meet on this depth.
    """
    start = time.perf_counter()
    if scores.n_prompts < MIN_PROMPTS:
        raise InputError(
            f"calibration needs at least {MIN_PROMPTS} prompts (got {scores.n_prompts}): the objective is a mean "
            "over prompts; 64 is a good number"
        )
    if not scores.blocks:
        raise InputError("no block of the model scored the visual tokens: nothing to calibrate a schedule from")
    if isinstance(keep, bool) or not isinstance(keep, (int, float)) or not 0 < keep < 1:
        raise InputError(f"keep must be a fraction in (0, 1), got {keep!r}")
    if budget not in BUDGETS:
        raise InputError(f"budget must be one of {BUDGETS}, got {budget!r}")
    if target not in OBJECTIVES:
        raise InputError(f"the objective must be one of {OBJECTIVES}, got {target!r}")
    L = scores.num_blocks
    rows = []
    for sched in candidate_schedules(L, scores.blocks, keep, budget, max_stages, placement):
        plan = sched.resolve(L)
        j, se = objective(scores, plan, target)
        n_stages = sched.stages if isinstance(sched.stages, int) else len(sched.stages)
        rows.append({"first_prune": plan.prune_points[0], "stages": n_stages, "shape": sched.shape,
                     "prune_points": list(plan.prune_points), "ratios": [round(r, 6) for r in plan.ratios],
                     "objective": j, "objective_se": se})  # fmt: skip
    if not rows:
        raise InputError(
            f"no layout can carry an average keep of {keep} on {L} blocks with a scoring block (first: "
            f"{min(scores.blocks)}) before its first cut; raise keep or use budget='final'"
        )
    rows.sort(key=lambda r: (-r["objective"], r["first_prune"], r["stages"], r["shape"]))
    best = rows[0]
    stages = best["stages"] if placement == "spread" else tuple(best["prune_points"])
    schedule = Schedule(
        keep=keep, budget=budget, first_prune=best["first_prune"], stages=stages, shape=best["shape"],
        name="progressive-calibrated",
    )  # fmt: skip
    presets = {}
    for name in ("progressive", "fastv", "pyramiddrop"):
        try:
            plan = Schedule.preset(name, keep=keep, budget=budget).resolve(L)
            presets[name] = objective(scores, plan, target)[0]
        except InputError:
            presets[name] = None
    return Calibration(
        schedule=schedule, objective=best["objective"], objective_se=best["objective_se"], candidates=rows,
        presets=presets, keep=float(keep), budget=budget, n_prompts=scores.n_prompts, n_visual=scores.n_visual,
        blocks=list(scores.blocks), num_blocks=L, model_type=scores.model_type,
        seconds=round(time.perf_counter() - start, 3), target=target, placement=placement,
        reference=scores.blocks[reference_block(scores.blocks, scores.kinds)] if target == "reference" else None,
    )  # fmt: skip


def calibrate(
    model: nn.Module,
    prompts: Iterable[dict],
    keep: float = 0.25,
    budget: str = "average",
    max_stages: int = 4,
    scorer=None,
    target: str = "reference",
    placement: str = "spread",
) -> Schedule:
    """The progressive schedule whose layout keeps the most importance for ``model`` on ``prompts``.

    Args:
        model: a supported model.
        prompts: batches as :func:`score_prompts` takes them (no answers needed).
        keep, budget: the budget to meet (see :class:`~hybridreduce.schedule.Schedule`).
        max_stages: most cuts a candidate layout has.
        scorer: Mamba scorer settings of the scoring forwards.
        target, placement: the objective and the candidate cuts (:func:`search`).
    Returns:
        The chosen :class:`~hybridreduce.schedule.Schedule`; :func:`search` on :func:`score_prompts` gives the
        whole :class:`Calibration` (every candidate and the presets' objectives).
    """
    check_budget(get_adapter(model), keep, budget, max_stages, placement)  # before the first prompt is scored
    return search(score_prompts(model, prompts, scorer=scorer), keep, budget, max_stages, target, placement).schedule


# --- files ----------------------------------------------------------------------------------------------------


def write_calibration(cal: Calibration, schedule_path: str | Path, command: str = "") -> list[Path]:
    """The schedule YAML (provenance in comments), ``calibration.json`` and the objective plot beside it."""
    import json

    import yaml

    path = Path(schedule_path)
    if path.suffix not in (".yaml", ".yml"):
        raise InputError(f"the schedule file must end in .yaml, got {path}")
    path.parent.mkdir(parents=True, exist_ok=True)
    best = cal.candidates[0]
    presets = ", ".join(f"{k} {v:.4f}" if v is not None else f"{k} infeasible" for k, v in cal.presets.items())
    measured = (
        f"the reference block {cal.reference}'s importance carried to the last block (J_ref)"
        if cal.target == "reference"
        else "retained importance mass J"
    )
    header = [
        "# Calibrated by hybridreduce calibrate (hybridreduce/calibrate.py): the progressive layout with the largest",
        f"# {measured} on unlabeled prompts (label-free; see the module docstring); {cal.placement} cuts.",
        f"# model_type {cal.model_type}, {cal.num_blocks} blocks, scored blocks {cal.blocks}",
        f"# {cal.n_prompts} prompts of {sorted(set(cal.n_visual))} visual tokens; {len(cal.candidates)} layouts",
        f"# J = {cal.objective:.4f} ± {cal.objective_se:.4f}; presets: {presets}",
        f"# prune points {best['prune_points']}, ratios {best['ratios']}",
    ]
    if command:
        header.append(f"# command: {command}")
    body = yaml.safe_dump({"schedule": {k: v for k, v in cal.schedule.to_dict().items() if v is not None}},
                          sort_keys=False)  # fmt: skip
    write_text(path, "\n".join(header) + "\n" + body)  # atomic: a kill leaves the old file or the new
    json_path = write_text(path.with_name("calibration.json"), json.dumps(cal.to_dict(), indent=2) + "\n")
    return [path, json_path, *plot_calibration(cal, path.with_name("calibration"))]


def calibration_files(schedule_path: str | Path) -> list[str]:
    """The names of the files :func:`write_calibration` writes for ``schedule_path`` (all in its folder)."""
    return [Path(schedule_path).name, "calibration.json", "calibration.png", "calibration.pdf"]


#: Colour and line style of each preset's reference line in the calibration plot (distinct from one another and
#: from the candidates' lines, which take tab10 colours by number of cuts).
PRESET_STYLES = (("black", (0, (6, 2))), ("dimgrey", (0, (1, 1.5))), ("darkgoldenrod", (0, (4, 1.5, 1, 1.5))))


#: The candidates' markers by number of cuts (1, 2, ...): layouts with as many cuts share a colour, those with
#: another number of cuts that carry the same importance would hide them if colour alone told them apart.
CUT_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "h")


def plot_calibration(cal: Calibration, stem: Path) -> list[Path]:
    """The objective of every candidate against its first cut, one line per (stages, shape); the chosen layout
    starred, the presets as horizontal lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.2))
    series: dict[tuple, dict] = {}  # (stages, shape) -> first cut -> best objective (free cuts: many per first cut)
    for r in cal.candidates:
        line = series.setdefault((r["stages"], r["shape"]), {})
        line[r["first_prune"]] = max(line.get(r["first_prune"], -math.inf), r["objective"])
    for (stages, shape), best_at in sorted(series.items()):
        pts = sorted(best_at.items())
        ax.plot(*zip(*pts, strict=True), marker=CUT_MARKERS[(stages - 1) % len(CUT_MARKERS)], ms=4,
                ls="-" if shape == "geometric" else "--", color=plt.cm.tab10(stages % 10),
                label=f"{stages} cut{'s' if stages > 1 else ''}, {shape}")  # fmt: skip
    best = cal.candidates[0]
    ax.plot(best["first_prune"], best["objective"], marker="*", ms=16, color="black", ls="none",
            label=f"chosen: first cut {best['first_prune']}, {best['stages']} cuts, {best['shape']}")  # fmt: skip
    for i, (name, value) in enumerate(cal.presets.items()):
        if value is not None:  # each preset its own colour and dash, apart from the candidates' tab10 colours
            color, ls = PRESET_STYLES[i % len(PRESET_STYLES)]
            ax.axhline(value, color=color, ls=ls, lw=1.2, label=f"preset {name}: {value:.4f}")
    ax.set_xlabel("first cut (block index)")
    ax.set_ylabel("reference importance carried, J_ref" if cal.target == "reference" else "retained importance mass J")
    ax.set_title(f"Calibration at {cal.budget} keep {cal.keep:g}: {cal.n_prompts} prompts, {cal.model_type}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    paths = [stem.with_suffix(".png"), stem.with_suffix(".pdf")]
    for path in paths:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=130)
    plt.close(fig)
    return paths
