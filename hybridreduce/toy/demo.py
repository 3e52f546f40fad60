"""``hybridreduce demo``: every reduction method on the embedded toy video VLM, at several budgets.

The shipped checkpoint (:data:`CHECKPOINT`) answers the held-out questions of its synthetic benchmark at
full tokens and under each method at each average keep fraction ``k``:

    method                  visual tokens chosen by                                         where          budget split
    full                    —                                                               —              —
    progressive             unified scores (attention rows + decay-free Mamba proxy),       in the LM      LM k
                            low-to-high cuts
    progressive-exact       unified scores, exact Mamba hidden attention; the same cuts     in the LM      LM k
    progressive-attn-only   attention rows only; the same shape, first cut after the first  in the LM      LM k
                            attention block
    progressive-depth       unified scores, low-to-high cuts, the first a quarter down      in the LM      LM k
    progressive-calibrated  unified scores, the layout hybridreduce.calibrate chooses from  in the LM      LM k
                            CALIBRATION_PROMPTS unlabeled val prompts of the variant (cuts
                            anywhere, keeping what the deepest attention block attends to)
    fastv                   last token's attention at the first attention block, one cut    in the LM      LM k
                            right after it
    pyramiddrop             attention rows, cuts at 1/4, 1/2, 3/4 of the depth              in the LM      LM k
    random                  seeded uniform draws, progressive cuts                          in the LM      LM k
    evs                     temporal change of each patch (pixels), rate 1 − k_evs          before the LM  EVS k
    evs+progressive         EVS, then progressive on the tokens EVS kept                    both           EVS √k, LM √k
    progressive+merge       as progressive, each removed token merged into its most similar in the LM      LM k
                            kept one, the later blocks size-aware (DESIGN decision 14)
    progressive-calibrated+merge     as progressive-calibrated, merging                    in the LM      LM k
    random+merge            as random, merging                                              in the LM      LM k
    evs+progressive+merge   as evs+progressive, merging in the LM                           both           EVS √k, LM √k
    progressive+merge-nosize             as progressive+merge, the blocks not size-aware (the ablation)
    progressive-calibrated+merge-nosize  as progressive-calibrated+merge, not size-aware
    random+merge-nosize                  as random+merge, not size-aware
    evs+progressive+merge-nosize         as evs+progressive+merge, not size-aware

Each method is a :class:`DemoMethod` record (:data:`DEMO_METHODS`): the schedule preset it runs in the language
model (and its settings), its Mamba scorer, whether EVS runs before the LM, and how it splits the average keep
``k`` between EVS and the in-LM schedule (:meth:`DemoMethod.split_budget`: EVS keeps ``k_evs`` of the visual
tokens, the schedule is solved for an average keep ``k_lm`` of what EVS passed on, and ``k_evs · k_lm = k``).

Every in-LM method is solved to the same *average* budget (mean share of visual tokens carried per block,
see :mod:`hybridreduce.schedule`); EVS carries ``k`` of the tokens through every block, so its average is
``k`` too. A method whose layout keeps every token up to a late first cut cannot carry so few on average:
FastV (cut right after the first attention block, block 4 of the shipped 24-block model), attention-only
progressive (first cut after the first attention block), depth-placed progressive and PyramidDrop (first
quarter of the depth) at ``k ≤ 0.25``. Those rows run at *final* keep ``k`` instead (the share kept after the
last cut), are marked ``final`` in the table, and carry more tokens on average than ``k``; the ``avg keep``
column says how many.
That early cuts need Mamba-derived scores is the point of the hybrid method: a hybrid model has few
attention blocks, and the first one may sit a quarter of the way down.

A checkpoint trained on several benchmark variants (``static`` and ``clutter``, see
:mod:`hybridreduce.toy.config`) is measured on each; every row names its ``variant``.

Reported per (variant, method, k): multiple-choice accuracy (overall and per question type), prefill speed-up
(wall time of the same forwards at full tokens over this method's, scoring and EVS selection included;
CPU timings of a 0.8 M-parameter model, so read them as relative), the average number of visual tokens
a block carries, and the share of each question's ground-truth relevant tokens still present in the
last block (``relevant_kept``).
"""

from __future__ import annotations

import csv
import json
import math
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from .. import validate
from ..adapters import get_adapter
from ..engine import reduce
from ..errors import InputError
from ..schedule import Schedule
from ..yamlio import read_yaml
from .config import ToyConfig
from .dataset import ToyDataset
from .evaluate import AnswerSheet, accuracy_table, evs_inputs
from .model import ToyVLM
from .questions import chance_level
from .train_config import ToySpec, spec_from_dict

#: The embedded checkpoint: the 24-block model trained on ``static`` and ``clutter`` (``configs/toy24*.yaml``, four
#: stages; its README has the commands, its folder the configs, logs and evaluations of every stage).
CHECKPOINT = Path(__file__).parent / "checkpoint"
#: The 12-block model the 24-block one was grown from (``configs/toy.yaml``, then ``configs/toy_continue.yaml``;
#: ``static`` only), kept as the depth up-scaling source and for the diagnostics measured on it.
CHECKPOINT12 = Path(__file__).parent / "checkpoint12"

KEEPS = (0.5, 0.25, 0.125)
#: ``progressive-depth``'s first cut, as a fraction of the depth (where PyramidDrop makes its first cut). Fixed,
#: not tuned on the test split; ``hybridreduce calibrate`` is the way to choose it per model.
DEPTH_FIRST_PRUNE = 0.25
#: Unlabeled prompts of the val split ``progressive-calibrated`` calibrates on (never the test split it is measured on).
CALIBRATION_PROMPTS = 64
#: ``progressive-calibrated``'s objective and cut placement (:func:`hybridreduce.calibrate.search`), chosen on val
#: (``experiments/block_scores/val_layouts.py``): the own-mass objective with spread cuts picked layouts scored by
#: blocks that rank the relevant tokens last (39% / 48% on 128 `static` / `clutter` val questions at keep 0.5, the
#: reference objective 82% / 87%).
CALIBRATION_TARGET, CALIBRATION_PLACEMENT = "reference", "free"

#: How a method splits the average keep ``k`` into ``(k_evs, k_lm)`` (:meth:`DemoMethod.split_budget`): ``none``
#: no reduction, ``(1, 1)``; ``lm`` all of it in the LM, ``(1, k)``; ``evs`` all of it before the LM, ``(k, 1)``;
#: ``sqrt`` half of it on a log scale each, ``(√k, √k)``.
BUDGET_SPLITS = ("none", "lm", "evs", "sqrt")


@dataclass(frozen=True)
class DemoMethod:
    """One method of the demo: what chooses its visual tokens, where, and how it spends the budget.

    Attributes:
        name: the method's name in the table, ``summary.json`` and the plots.
        preset: the :meth:`~hybridreduce.schedule.Schedule.preset` its in-LM schedule starts from (None: no in-LM
            reduction).
        settings: further :class:`~hybridreduce.schedule.Schedule` settings of that schedule (e.g. ``first_prune``).
        first_cut_after_attention: cut first right after the model's first attention block (``first_prune`` =
            its index + 1): attention scores exist only from there on.
        calibrated: the layout comes from :func:`calibrate_schedules` (the preset names the method it calibrates).
        scorer: the Mamba scorer ``reduce`` uses for its keep sets (``"exact"``; None: the decay-free proxy).
        evs: EVS (pixel mode, :func:`~hybridreduce.toy.evaluate.evs_inputs`) runs before the language model.
        budget_split: one of :data:`BUDGET_SPLITS`, how the average keep ``k`` divides between EVS and the
            in-LM schedule (:meth:`split_budget`).
    """

    name: str
    preset: str | None = None
    settings: dict = field(default_factory=dict, hash=False)
    first_cut_after_attention: bool = False
    calibrated: bool = False
    scorer: str | None = None
    evs: bool = False
    budget_split: str = "lm"

    def __post_init__(self):  # a guard on the records below
        if self.budget_split not in BUDGET_SPLITS or (self.preset is None) != (self.budget_split in ("none", "evs")):
            raise AssertionError(f"demo method {self.name!r}: its preset and budget split disagree")
        if self.evs != (self.budget_split in ("evs", "sqrt")):
            raise AssertionError(f"demo method {self.name!r}: evs and budget split disagree")

    @property
    def in_lm(self) -> bool:
        """Whether it reduces inside the language model."""
        return self.preset is not None

    def split_budget(self, keep: float) -> tuple[float, float]:
        """``(k_evs, k_lm)`` of average keep ``k``: EVS keeps ``k_evs`` of the visual tokens (pruning rate
        ``1 − k_evs``), the in-LM schedule is solved for average keep ``k_lm`` of those; ``k_evs · k_lm = k``
        (up to rounding for ``sqrt``: ``√k · √k``)."""
        if self.budget_split == "none":
            return 1.0, 1.0
        if self.budget_split == "lm":
            return 1.0, keep
        if self.budget_split == "evs":
            return keep, 1.0
        root = math.sqrt(keep)
        return root, root

    def schedule(self, keep: float, model: ToyVLM, budget: str = "average") -> Schedule:
        """Its in-LM schedule at keep ``keep`` (an average or a final budget; ``keep`` is ``k_lm``).

        Raises:
            InputError: a method without an in-LM schedule, or a calibrated one (:func:`calibrate_schedules`).
        """
        if self.calibrated:
            raise InputError(f"{self.name}'s schedule comes from calibrate_schedules(), not from a preset")
        if not self.in_lm:
            raise InputError(f"{self.name!r} has no in-LM schedule; methods: {tuple(DEMO_METHODS)}")
        settings = dict(self.settings)
        if self.first_cut_after_attention:
            settings["first_prune"] = get_adapter(model).kinds.index("attn") + 1
        return Schedule.preset(self.preset, keep=keep, budget=budget, **settings)


#: Full tokens: the reference every variant's speed-ups divide.
FULL = DemoMethod("full", budget_split="none")
#: The schedule settings of the demo's merging methods (``name+merge``).
MERGE = {"combine": "merge"}
#: The demo's methods, name → record, in the table's order (iterating gives the names).
DEMO_METHODS: dict[str, DemoMethod] = {
    m.name: m
    for m in (
        DemoMethod("progressive", preset="progressive"),
        DemoMethod("progressive-exact", preset="progressive", scorer="exact"),
        DemoMethod(
            "progressive-attn-only",
            preset="progressive",
            settings={"score": "attention"},
            first_cut_after_attention=True,
        ),
        DemoMethod("progressive-depth", preset="progressive", settings={"first_prune": DEPTH_FIRST_PRUNE}),
        DemoMethod("progressive-calibrated", preset="progressive", calibrated=True),
        # FastV cuts after its K = 2nd block by attention; on a hybrid whose first attention block comes later, right
        # after that block (on the 12-block model block 2 is attention: the preset's first_prune = 3 either way).
        DemoMethod("fastv", preset="fastv", first_cut_after_attention=True),
        DemoMethod("pyramiddrop", preset="pyramiddrop"),
        DemoMethod("random", preset="random"),
        DemoMethod("evs", evs=True, budget_split="evs"),
        DemoMethod("evs+progressive", preset="progressive", evs=True, budget_split="sqrt"),
        # Merging (DESIGN decision 14): the same methods, each removed token added into its most similar kept one,
        # and the blocks after a cut size-aware; "-nosize" merges the hidden states only (the ablation).
        *(
            DemoMethod(
                f"{base.name}+merge{tag}",
                base.preset,
                {**base.settings, **MERGE, "size_aware": aware},
                base.first_cut_after_attention,
                base.calibrated,
                base.scorer,
                base.evs,
                base.budget_split,
            )
            for tag, aware in (("", True), ("-nosize", False))
            for base in (
                DemoMethod("progressive", preset="progressive"),
                DemoMethod("progressive-calibrated", preset="progressive", calibrated=True),
                DemoMethod("random", preset="random"),
                DemoMethod("evs+progressive", preset="progressive", evs=True, budget_split="sqrt"),
            )
        ),  # fmt: skip
    )
}


#: What ``hybridreduce demo`` runs unless asked otherwise: every method but the size-unaware merge ablations
#: (``-nosize``), which ``--full`` and ``--methods`` add.
DEFAULT_METHODS = tuple(m for m in DEMO_METHODS if not m.endswith("-nosize"))


def demo_method(method: str | DemoMethod, schedule: Schedule | None = None) -> DemoMethod:
    """The record of a method name (``full`` or one of :data:`DEMO_METHODS`); with ``schedule`` given, any other
    name is an in-LM method that runs that schedule with the default scorer."""
    if isinstance(method, DemoMethod):
        return method
    if method == "full":
        return FULL
    if method in DEMO_METHODS:
        return DEMO_METHODS[method]
    if schedule is not None and isinstance(method, str):
        return DemoMethod(method, preset=schedule.method)
    raise InputError(f"{method!r} has no in-LM schedule; methods: {tuple(DEMO_METHODS)}")


def load_toy(path: str | Path | None = None) -> tuple[ToyVLM, ToyConfig]:
    """The toy VLM of a ``train-toy`` output directory (default: the shipped one) and its benchmark config
    (the first variant's, for a checkpoint trained on several: :func:`load_toy_spec` has them all)."""
    model, spec = load_toy_spec(path)
    return model, spec.configs[0]


def load_toy_spec(path: str | Path | None = None) -> tuple[ToyVLM, ToySpec]:
    """The toy VLM of a ``train-toy`` output directory (default: the shipped one) and its training spec."""
    path = Path(path) if path is not None else CHECKPOINT
    if not (path / "config.json").is_file() or not (path / "train_config.yaml").is_file():
        raise InputError(
            f"{path} is not a train-toy checkpoint (needs config.json, model.safetensors and train_config.yaml); "
            "make one with `hybridreduce train-toy --config configs/toy.yaml --out DIR`"
        )
    config = path / "train_config.yaml"
    spec = spec_from_dict(read_yaml(config, "training config"), str(config))
    validate.checkpoint_dir(path, "the toy checkpoint")  # its config.json and the weights' header
    try:
        model = ToyVLM.from_pretrained(path).eval()
    except Exception as exc:  # a config.json of another model, weights of other shapes: the library's own error
        raise InputError(
            f"the toy checkpoint {path} cannot be loaded ({type(exc).__name__}: {str(exc)[:300]}); give a folder "
            "that train-toy wrote"
        ) from None
    return model, spec


def calibration_batches(dataset: ToyDataset, batch_size: int = 32):
    """The dataset's prompts as :func:`hybridreduce.calibrate.score_prompts` takes them (answers unused)."""
    for start in range(0, len(dataset), batch_size):
        b = dataset.batch(range(start, min(start + batch_size, len(dataset))))
        yield {"input_ids": b["input_ids"], "pixel_values": b["pixels"], "attention_mask": b["attention_mask"],
               "visual_mask": b["visual_mask"]}  # fmt: skip


def calibrate_schedules(model: ToyVLM, data: ToyConfig, vocab, keeps) -> dict[float, Schedule]:
    """``progressive-calibrated``'s schedule at each keep: :func:`hybridreduce.calibrate.search` on the scores of
    :data:`CALIBRATION_PROMPTS` unlabeled val prompts (one scoring forward each, shared by every keep)."""
    from ..calibrate import score_prompts, search

    scores = score_prompts(model, calibration_batches(ToyDataset(data, "val", CALIBRATION_PROMPTS, vocab=vocab)))
    return {k: search(scores, k, target=CALIBRATION_TARGET, placement=CALIBRATION_PLACEMENT).schedule for k in keeps}


def feasible_schedule(method: str | DemoMethod, keep: float, model: ToyVLM) -> tuple[Schedule, str]:
    """The in-LM schedule the method runs at average keep ``keep``, and a note: at average keep ``keep`` or, where
    its layout cannot carry so few tokens on average (every token passes the blocks before its first cut), at final
    keep ``keep``. A method with EVS first runs its in-LM share of the budget (:meth:`DemoMethod.split_budget`).
    """
    record = demo_method(method)
    if record.evs:
        return record.schedule(record.split_budget(keep)[1], model), ""
    blocks = get_adapter(model).num_blocks
    try:
        sched = record.schedule(keep, model)
        sched.resolve(blocks)
        return sched, ""
    except InputError as exc:
        sched = record.schedule(keep, model, budget="final")
        sched.resolve(blocks)
        return sched, f"average budget infeasible ({exc}); run with final keep {keep:g}"


def check_methods(model: ToyVLM, methods, keeps) -> None:
    """Resolve every in-LM schedule the demo will run on ``model`` (each method at each keep, EVS's share split
    off), and check that a block can score each cut, before any question is asked.

    Raises:
        InputError: naming the method, the keep and what cannot run.
    """
    from ..calibrate import candidate_schedules
    from ..engine import scoring_blocks

    adapted = get_adapter(model)
    for name in methods:
        record = demo_method(name)
        if record.calibrated:  # calibrate() searches among the feasible layouts: there must be one
            scoring = [i for i, kind in enumerate(adapted.kinds) if kind not in ("mlp", "moe")]  # blocks that score
            for keep in keeps:
                if not candidate_schedules(adapted.num_blocks, scoring, keep, placement=CALIBRATION_PLACEMENT):
                    raise InputError(
                        f"demo method {record.name!r} at keep {keep:g} cannot run on this model: no layout of "
                        f"{adapted.num_blocks} blocks carries an average keep of {keep:g} with a scoring block before "
                        "its first cut; raise the keep"
                    )
        if not record.in_lm or record.calibrated:
            continue  # no in-LM schedule, or a calibrated one (checked above)
        for keep in keeps:
            try:
                sched = feasible_schedule(record, keep, model)[0]
                scoring_blocks(adapted, sched, sched.resolve(adapted.num_blocks))
            except InputError as exc:
                raise InputError(
                    f"demo method {record.name!r} at keep {keep:g} cannot run on this model: {exc}"
                ) from None


@dataclass
class MethodResult:
    """One row of the demo table."""

    variant: str
    method: str
    keep: float
    accuracy: float | None
    per_type: dict = field(default_factory=dict)
    speedup: float | None = None
    seconds: float | None = None
    visual_tokens: float | None = None  # visual tokens a block carries, averaged over blocks and samples
    achieved_keep: float | None = None
    relevant_kept: float | None = None
    block_visual: list[float] | None = None
    n: int = 0
    note: str = ""

    def to_dict(self) -> dict:
        return {k: v for k, v in self.__dict__.items()}


def _forward_logits(
    model: ToyVLM, batch: dict, method: DemoMethod, keep: float, schedule: Schedule | None, n_blocks: int
):
    """``(logits (b, vocab), block_visual (L,), relevant_kept (b,))`` of one batch under one method.

    ``keep`` is the method's average keep ``k`` (split by :meth:`DemoMethod.split_budget` when EVS runs first);
    ``schedule`` the method's in-LM schedule (:func:`feasible_schedule`; None for full tokens and EVS alone).
    """
    relevant = batch["relevant_mask"]
    if method.evs:
        evs_keep = method.split_budget(keep)[0]
        r = evs_inputs(model, batch, 1.0 - evs_keep)
        rel = relevant.gather(1, r.kept_index)  # (b, T') relevant flags of the kept rows
        if not method.in_lm:
            out = model(inputs_embeds=r.inputs, attention_mask=r.attention_mask)
            V = int(r.visual_mask[0].sum())
            return out.logits[:, -1], [V] * n_blocks, _share(rel, relevant)
        with reduce(
            model, schedule, visual_mask=r.visual_mask, scorer=method.scorer, attention_mask=r.attention_mask
        ) as red:
            out = model(inputs_embeds=r.inputs, attention_mask=r.attention_mask)
        last = red.kept_positions[max(red.kept_positions)]  # (b, k) positions in the EVS-reduced sequence
        return out.logits[:, -1], red.block_visual, _share(rel.gather(1, last), relevant)
    if not method.in_lm:
        out = model(batch["input_ids"], pixel_values=batch["pixels"], attention_mask=batch["attention_mask"])
        V = int(batch["visual_mask"][0].sum())
        return out.logits[:, -1], [V] * n_blocks, torch.ones(relevant.shape[0])
    with reduce(model, schedule, scorer=method.scorer) as red:
        out = model(batch["input_ids"], pixel_values=batch["pixels"], attention_mask=batch["attention_mask"])
    last = red.kept_positions[max(red.kept_positions)]
    return out.logits[:, -1], red.block_visual, _share(relevant.gather(1, last), relevant)


def _share(kept: torch.Tensor, relevant: torch.Tensor) -> torch.Tensor:
    """``(b,)`` relevant tokens kept over relevant tokens in the prompt."""
    return kept.sum(1).float() / relevant.sum(1).clamp(min=1).float()


@torch.no_grad()
def evaluate_method(
    model: ToyVLM,
    batches: list[dict],
    method: str | DemoMethod,
    keep: float,
    sheet: AnswerSheet,
    progress=None,
    variant: str = "static",
    schedule: Schedule | None = None,
) -> MethodResult:
    """Accuracy, time and kept tokens of one method at one budget over pre-built batches.

    ``method``: ``full``, a name of :data:`DEMO_METHODS` or a :class:`DemoMethod`. ``schedule``: the in-LM schedule
    to use instead of the method's own (``progressive-calibrated``'s).
    """
    record = demo_method(method, schedule)
    note = ""
    if schedule is None and record.in_lm:
        schedule, note = feasible_schedule(record, keep, model)
    n_blocks = get_adapter(model).num_blocks
    correct, qtypes, blocks, rel, seconds = [], [], [], [], 0.0
    for batch in batches:
        start = time.perf_counter()
        logits, block_visual, relevant_kept = _forward_logits(model, batch, record, keep, schedule, n_blocks)
        seconds += time.perf_counter() - start
        chosen = sheet.choose(logits.float(), batch["qtype"])
        correct += (chosen == batch["answer_index"]).tolist()
        qtypes += batch["qtype"]
        blocks.append(torch.tensor(block_visual, dtype=torch.float64) * len(batch["qtype"]))
        rel.append(relevant_kept)
        if progress is not None:
            progress(len(batch["qtype"]))
    n = len(correct)
    table = accuracy_table(correct, qtypes)
    block_visual = (torch.stack(blocks).sum(0) / n).tolist()
    V = int(batches[0]["visual_mask"][0].sum())
    mean_visual = sum(block_visual) / len(block_visual)
    return MethodResult(
        variant=variant,
        method=record.name,
        keep=keep,
        accuracy=table["accuracy"],
        per_type={q: r["accuracy"] for q, r in table["per_type"].items()},
        seconds=seconds,
        visual_tokens=mean_visual,
        achieved_keep=mean_visual / V,
        relevant_kept=float(torch.cat(rel).mean()),
        block_visual=block_visual,
        n=n,
        note=note,
    )


@torch.no_grad()
def answers_correct(
    model: ToyVLM,
    batches: list[dict],
    method: str | DemoMethod,
    keep: float,
    sheet: AnswerSheet,
    schedule: Schedule | None = None,
    progress=None,
) -> torch.Tensor:
    """Whether each question is answered right under one method at one budget: the per-question outcomes
    behind :func:`evaluate_method`'s accuracy, for paired comparisons of methods on the same questions.

    Args:
        batches: pre-built batches (``ToyDataset.batch``) of ``n`` questions in all.
        method: ``full``, one of :data:`DEMO_METHODS` (or its record), or any name of an in-LM method when
            ``schedule`` is given.
        keep: the budget (:func:`feasible_schedule` solves the method's schedule for it).
        schedule: an in-LM schedule to run instead of the method's own (e.g. one with a late first cut);
            its keep sets use the method's Mamba scorer (exact for ``progressive-exact``, else decay-free).
        progress: called with the number of questions of each batch done.

    Returns:
        ``(N,)`` bool, in the order of the batches' questions.
    """
    record = demo_method(method, schedule)
    if schedule is None and record.in_lm:
        schedule, _ = feasible_schedule(record, keep, model)
    n_blocks = get_adapter(model).num_blocks
    correct = []
    for batch in batches:
        logits, _, _ = _forward_logits(model, batch, record, keep, schedule, n_blocks)
        correct.append((sheet.choose(logits.float(), batch["qtype"]) == batch["answer_index"]).cpu())
        if progress is not None:
            progress(len(batch["qtype"]))
    return torch.cat(correct)


def run_demo(
    checkpoint: str | Path | None = None,
    size: int = 1024,
    keeps: tuple[float, ...] = KEEPS,
    methods: tuple[str, ...] = tuple(DEMO_METHODS),
    batch_size: int = 64,
    progress: bool = True,
    variants: tuple[str, ...] | None = None,
    split: str = "test",
) -> dict:
    """Evaluate every method at every keep on ``size`` questions of the test split of every variant.

    Args:
        variants: the benchmark variants to measure (default: every variant the checkpoint was trained on).
        split: ``"test"`` (the reported table) or ``"val"``, where schedules and settings are chosen before the
            test split is looked at once. ``progressive-calibrated`` calibrates on unlabeled val prompts either way
            (:data:`CALIBRATION_PROMPTS`), so on ``val`` it has seen the prompts (never the answers) it is measured on.
    Returns:
        ``{"results": [MethodResult.to_dict(), ...], "variants": {variant: {"full_accuracy", "chance",
        "n_visual"}}, "full_accuracy", "chance", "n_visual", ...}``; each variant's results start with
        ``full`` (keep 1.0), whose seconds that variant's speed-ups divide. The top-level ``full_accuracy``,
        ``chance`` and ``n_visual`` are the first variant's.
    """
    from tqdm.auto import tqdm

    unknown = [m for m in methods if m not in DEMO_METHODS]
    if unknown:
        raise InputError(f"unknown demo methods {unknown}; choose from {tuple(DEMO_METHODS)}")
    bad = [k for k in keeps if not (isinstance(k, (int, float)) and 0 < k < 1)]  # NaN fails both comparisons
    if bad:
        raise InputError(f"demo keep fractions must lie in (0, 1), got {bad}")
    for name, values in (("methods", list(methods)), ("keeps", list(keeps))):
        repeated = sorted({v for v in values if values.count(v) > 1})
        if repeated:
            raise InputError(f"demo {name} {repeated} given more than once: each would be a second row of the same "
                             f"(variant, method, keep); give each once")  # fmt: skip
    if split not in ("val", "test"):
        raise InputError(f"demo split must be 'val' (to choose settings) or 'test' (to report them), got {split!r}")
    model, spec = load_toy_spec(checkpoint)
    configs = {c.variant: c for c in spec.configs}
    variants = tuple(configs) if variants is None else tuple(variants)
    missing = [v for v in variants if v not in configs]
    if missing:
        raise InputError(
            f"the checkpoint was not trained on the variant(s) {missing}; it knows {sorted(configs)} "
            "(its vocabulary and question types come from them)"
        )
    check_methods(model, methods, keeps)
    runs = [("full", 1.0)] + [(m, k) for k in keeps for m in methods]
    bar = tqdm(total=len(variants) * len(runs) * size, desc="demo", unit="q", disable=not progress, dynamic_ncols=True)
    results: list[MethodResult] = []
    per_variant = {}
    for variant in variants:
        data = configs[variant]
        dataset = ToyDataset(data, split, size, vocab=spec.vocab)
        sheet = AnswerSheet(dataset.vocab)
        batches = [dataset.batch(range(s, min(s + batch_size, size))) for s in range(0, size, batch_size)]
        evaluate_method(model, batches[:1], "full", 1.0, sheet)  # warm-up: the first forward pays one-off costs
        calibrate = any(DEMO_METHODS[m].calibrated for m in methods)
        calibrated = calibrate_schedules(model, data, spec.vocab, keeps) if calibrate else {}
        mine: list[MethodResult] = []
        for method, keep in runs:
            bar.set_postfix_str(f"{variant} {method} k={keep}")
            record = demo_method(method)
            own = replace(calibrated[keep], **record.settings) if record.calibrated else None
            mine.append(
                evaluate_method(model, batches, method, keep, sheet, progress=bar.update, variant=variant, schedule=own)
            )
        for r in mine:
            if r.seconds:
                r.speedup = mine[0].seconds / r.seconds
        results += mine
        per_variant[variant] = {
            "full_accuracy": mine[0].accuracy,
            "chance": chance_level(data),
            "n_visual": data.n_visual,
        }
    bar.close()
    first = per_variant[variants[0]]
    return {
        "results": [r.to_dict() for r in results],
        "variants": per_variant,
        "full_accuracy": first["full_accuracy"],
        "chance": first["chance"],
        "n_visual": first["n_visual"],
        "n_questions": size,
        "split": split,
        "block_kinds": get_adapter(model).kinds,
        "checkpoint": str(checkpoint or CHECKPOINT),
    }


# --- reporting ------------------------------------------------------------------------------------------------

COLUMNS = ("variant", "method", "keep", "accuracy", "speedup", "achieved_keep", "visual_tokens", "relevant_kept")


def _budget(row: dict) -> str:
    """``"final"`` for a row run at final keep because its layout cannot carry the average, else ``"average"``."""
    return "final" if row["note"].startswith("average budget infeasible") else "average"


def format_table(summary: dict) -> str:
    """The demo table as aligned text (accuracy in %, relative to the variant's full tokens in brackets)."""
    full = {v: s["full_accuracy"] for v, s in summary.get("variants", {}).items()}
    head = f"{'variant':<8} {'method':<22} {'keep':>6} {'budget':>7} {'accuracy':>14} {'speed-up':>9} {'avg keep':>9}"
    head += f" {'relevant kept':>14}"
    lines = [head, "-" * len(head)]
    for r in summary["results"]:
        variant = r.get("variant", "static")
        reference = full.get(variant, summary["full_accuracy"])
        relative = f"{100 * r['accuracy'] / reference:.0f}%" if reference else "n/a"  # an untrained model may score 0
        acc = f"{100 * r['accuracy']:.1f}% ({relative})"
        lines.append(
            f"{variant:<8} {r['method']:<22} {r['keep']:>6.3f} {_budget(r):>7} {acc:>14} {r['speedup']:>8.2f}x "
            f"{r['achieved_keep']:>9.3f} {100 * r['relevant_kept']:>13.1f}%"
        )
    return "\n".join(lines)


#: Every file :func:`write_outputs` writes (``hybridreduce demo`` refuses to replace them without ``--overwrite``).
OUTPUT_FILES = ("summary.json", "results.csv", "accuracy_vs_keep.png", "accuracy_vs_keep.pdf", "tokens_per_block.png",
                "tokens_per_block.pdf")  # fmt: skip
#: Seconds per question on an idle 2-core CPU (the shipped checkpoint, batches of 64): at full tokens, and for an
#: in-LM method at keep ``k`` that times ``REDUCED_FIXED + (1 - REDUCED_FIXED) · k`` (scoring and the blocks before
#: the first cut are paid in full), with :data:`SECONDS_START` per variant. Fitted to the two idle timings of the
#: ten-method demo on the shipped checkpoint (2026-12-02, before merging was added): the default, 192 questions per
#: variant at three keeps, 4 min 0 s, and ``--full``, 1,024, 19 min 11 s (``--quick``, 96 at keep 0.25, measured
#: 53 s; the fit says 67 s).
SECONDS_FULL, REDUCED_FIXED = 0.042, 0.15
#: Loading the model, the warm-up forward and progressive-calibrated's scoring of its val prompts, per variant.
SECONDS_START = 15.0
#: A merging method's time per question relative to a dropping one's at the same keep (the all-pairs similarity of a
#: merge is a large share of this small model's forward). Fitted to the idle timing of the default demo with the
#: four merging methods added (2026-12-07): 6 min 8 s, where the constants above alone say 5 min 18 s.
MERGE_COST = 1.65


def expected_seconds(checkpoint: str | Path | None, size: int, keeps, methods) -> float:
    """How long :func:`run_demo` takes on an idle 2-core CPU (from :data:`SECONDS_FULL`; it scales with load and
    with the checkpoint's depth and width, which the constants were measured on the shipped one's)."""
    path = Path(checkpoint) if checkpoint is not None else CHECKPOINT
    try:
        raw = read_yaml(path / "train_config.yaml", "training config")
        variants = max(1, len((raw.get("data") or {}).get("variants") or {}))
    except (InputError, AttributeError, TypeError):
        variants = 1
    weight = sum(MERGE_COST if demo_method(m).settings.get("combine") == "merge" else 1.0 for m in methods)
    per_question = SECONDS_FULL * (1 + weight * sum(REDUCED_FIXED + (1 - REDUCED_FIXED) * k for k in keeps))
    return variants * (SECONDS_START + size * per_question)


def write_outputs(summary: dict, out_dir: str | Path) -> list[Path]:
    """``summary.json``, ``results.csv`` and the plots (PNG + PDF) into ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / "summary.json", out / "results.csv"]
    paths[0].write_text(json.dumps(summary, indent=2) + "\n")
    qtypes = sorted({q for r in summary["results"] for q in r["per_type"]})
    with paths[1].open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow([*COLUMNS, *(f"accuracy_{q}" for q in qtypes), "note"])
        for r in summary["results"]:
            w.writerow(
                [r[c] for c in COLUMNS] + [r["achieved_keep"], *(r["per_type"].get(q) for q in qtypes), r["note"]]
            )
    paths += plot_summary(summary, out)
    return paths


#: Line styles and markers cycled over methods, so that methods with identical curves stay distinguishable.
_STYLES = ("-", "--", "-.", ":")
_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "h")


def plot_summary(summary: dict, out: Path) -> list[Path]:
    """Accuracy and relevant tokens kept vs the keep each method carried, and visual tokens per block at one
    budget; one row of panels per benchmark variant.

    A row run at *final* keep (its layout cannot carry the average budget) is drawn at the average keep it
    actually carried, with a hollow marker, so that no method is plotted at a cost it did not pay.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in summary["results"] if r["method"] != "full"]
    variants = list(dict.fromkeys(r.get("variant", "static") for r in summary["results"]))
    methods = list(dict.fromkeys(r["method"] for r in rows))
    style = {
        m: {"color": plt.cm.tab10(i % 10), "ls": _STYLES[i % len(_STYLES)], "marker": _MARKERS[i % len(_MARKERS)]}
        for i, m in enumerate(methods)
    }
    info = summary.get("variants") or {"static": summary}
    paths = []

    fig, axes = plt.subplots(len(variants), 2, figsize=(11, 4.2 * len(variants)), squeeze=False)
    for (ax_acc, ax_rel), variant in zip(axes, variants, strict=True):
        mine = [r for r in rows if r.get("variant", "static") == variant]
        for ax, key, label in (
            (ax_acc, "accuracy", "held-out accuracy"),
            (ax_rel, "relevant_kept", "ground-truth relevant tokens kept (last block)"),
        ):
            for m in methods:
                pts = sorted((r["achieved_keep"], r[key], _budget(r) == "final") for r in mine if r["method"] == m)
                if not pts:
                    continue
                pts = [(x * _dodge(methods, m), y, f) for x, y, f in pts]  # coinciding points side by side
                x, y, final = zip(*pts, strict=True)
                ax.plot(x, y, label=m, **style[m])
                hollow = [(xi, yi) for xi, yi, fi in pts if fi]
                if hollow:
                    ax.plot(
                        *zip(*hollow, strict=True),
                        ls="none",
                        marker=style[m]["marker"],
                        mfc="white",
                        color=style[m]["color"],
                    )
            if key == "accuracy":
                ax.axhline(info[variant]["full_accuracy"], color="black", ls="--", lw=1, label="full tokens")
                chance = info[variant]["chance"]
                ax.axhline(sum(chance.values()) / len(chance), color="grey", ls=":", lw=1, label="chance")
            ax.set_xscale("log", base=2)
            ticks = sorted({r["keep"] for r in mine})  # the budgets, labelled; what rows carried, unlabelled ticks
            carried = [r["achieved_keep"] * _dodge(methods, r["method"]) for r in mine]
            if max(carried) > ticks[-1] * 1.05:  # rows carried past the largest budget: a labelled tick out there
                ticks.append(round(max(r["achieved_keep"] for r in mine), 2))
            ax.set_xticks(ticks, [f"{k:g}" for k in ticks], fontsize=7)
            ax.set_xticks(sorted({round(r["achieved_keep"], 3) for r in mine} - set(ticks)), minor=True)
            ax.tick_params(axis="x", which="minor", length=3, labelbottom=False)
            ax.set_xlim(min(carried + ticks) / 1.15, max(carried + ticks) * 1.15)
            ax.set_xlabel("average share of visual tokens carried per block (hollow: at final keep; methods side by "
                          f"side, within ±{100 * (2 ** (DODGE * len(methods) / 2) - 1):.0f}%)", fontsize=8)  # fmt: skip
            ax.set_ylabel(label)
            ax.set_ylim(-0.04, 1.04)  # a method at 0 is drawn above the axis, not on it
            ax.grid(alpha=0.3)
        ax_acc.set_title(f"{variant}: accuracy vs budget")
        ax_rel.set_title(f"{variant}: relevant tokens that survive to the last block")
    handles, labels = axes[0, 0].get_legend_handles_labels()  # one legend for every panel, below them
    fig.legend(handles, labels, loc="lower center", ncol=min(6, len(labels)), fontsize=8, frameon=False)
    n = summary["n_questions"]
    split = summary.get("split", "test")
    fig.suptitle(f"Toy hybrid video VLM, {n} {split} questions per variant, {summary['n_visual']} visual tokens")
    fig.tight_layout(rect=(0, 0.035 * (1 + len(labels) // 6) / len(variants), 1, 1))
    paths += _save(fig, out / "accuracy_vs_keep")
    plt.close(fig)

    keep = 0.25 if any(r["keep"] == 0.25 for r in rows) else sorted({r["keep"] for r in rows})[0]
    fig, axes = plt.subplots(len(variants), 1, figsize=(9, 4.2 * len(variants)), squeeze=False)
    kinds = summary.get("block_kinds")
    for ax, variant in zip(axes[:, 0], variants, strict=True):
        mine = [r for r in rows if r["keep"] == keep and r.get("variant", "static") == variant]
        for i, r in enumerate(mine):
            blocks = [b + 0.06 * (i - len(mine) / 2) for b in range(len(r["block_visual"]))]  # offsets: no overlap
            label = f"{r['method']} (carried {r['achieved_keep']:.2f}{', final keep' if _budget(r) == 'final' else ''})"
            st = style[r["method"]]
            ax.step(blocks, r["block_visual"], where="mid", label=label, color=st["color"], ls=st["ls"])
            ax.plot(blocks, r["block_visual"], ls="none", marker=st["marker"], ms=3, color=st["color"])
        if kinds:
            ax.set_xticks(range(len(kinds)), [f"{i}\n{k}" for i, k in enumerate(kinds)], fontsize=6)
        ax.set_xlabel("block (index and kind)")
        ax.set_ylabel("visual tokens carried")
        ax.set_title(
            f"{variant}: visual tokens per block at budget {keep:g} (each method's carried average in the legend)"
        )
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    paths += _save(fig, out / "tokens_per_block")
    plt.close(fig)
    return paths


#: Horizontal offset between neighbouring methods in the accuracy figure, in octaves of the log2 keep axis: methods
#: with the same (keep carried, accuracy) would hide each other's markers.
DODGE = 0.02


def _dodge(methods: list[str], method: str) -> float:
    """The factor a method's keep is drawn at: methods spread symmetrically around 1 by :data:`DODGE` octaves."""
    return 2 ** (DODGE * (methods.index(method) - (len(methods) - 1) / 2))


def _save(fig, stem: Path) -> list[Path]:
    paths = [stem.with_suffix(".png"), stem.with_suffix(".pdf")]
    fig.savefig(paths[0], dpi=130)
    fig.savefig(paths[1])
    return paths
