"""The papers' five claims about reduction in hybrid models, measured on a toy checkpoint (issue 14, item 5).

    python scripts/paper_claims.py [--checkpoint DIR] [--variant static clutter] [--size 256] [--split test]
                                   [--claims a b c d e] [--combine drop|merge]
                                   [--out runs/paper_claims] [--overwrite] [--batch-size 32] [--no-progress]

Run it from the repository root. It measures each claim on ``--size`` questions of ``--split`` of every
benchmark variant the checkpoint knows (or those ``--variant`` names), and writes ``claims.json`` and
``claims.md``: one row per (variant, claim) with the measurement, the numbers, the criterion, the verdict
(``holds`` / ``fails`` / ``mixed``) and the exact command. The claims (Jiang et al., 2026, and its revised
abstract; DESIGN.md, "What the two papers say"):

    (a) sparsity      within one block, few visual tokens carry the query-relevant importance
    (b) stability     the set of important tokens changes across depth, so aggressive early pruning is unreliable
    (c) decay-free    for Mamba blocks, the decay-free implicit attention selects better than the exact one
    (d) late cuts     hybrids tolerate reduction late in the depth
    (e) retention     a Mamba state has absorbed the tokens a later cut drops: a probe recovers information on them

``--claims`` measures a subset (the analysis pass runs only for (a)–(c), the retention probe only for (e)).
``--combine merge`` runs the schedules of the accuracy measurements, (c)'s and (d)'s, with merging (DESIGN
decision 14: every visual token a cut removes is added into its most similar kept token, and the blocks after the
cut see the sizes); the scores, and so (a), (b) and (c)'s recall, do not depend on it, and (e)'s probe keeps its
dropping cut (it asks what the state holds of tokens that are gone).

How each is measured, and when it holds, is in :data:`CLAIMS`. The criteria were fixed before anything was
measured; the script writes them to ``OUT/criteria.json`` before its first forward, and reports the numbers
whichever way they go. "Beyond its standard error" means by more than :data:`Z` standard errors.

Nothing here re-implements a metric: the scores come from the analysis runner (:func:`analysis.run.collect`,
one pass per Mamba scorer, decay-free and exact), the metrics from :mod:`analysis.sparsity`,
:mod:`analysis.stability`, :mod:`analysis.relevance` and :mod:`analysis.retention`, the accuracies from the
demo's methods and schedules (:func:`hybridreduce.toy.demo.answers_correct`).

Outputs in ``OUT``::

    criteria.json             the claims and criteria, written before the first forward
    <variant>/analysis/       the analysis run directory (scores, metrics.json, CSVs; `hybridreduce plot` draws it)
    <variant>/accuracy.json   every accuracy run: its schedule and each question's outcome
    <variant>/retention.json  the retention probe's report (RetentionReport.to_dict)
    claims.json, claims.md    the table

Glossary of dimension letters: ``b`` questions, ``V`` visual tokens, ``L`` scored blocks, ``B`` blocks of the model.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import shlex
import sys
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch

from analysis.config import AnalysisConfig
from analysis.relevance import relevance_report, summarise
from analysis.retention import MIN_TEST, MIN_TRAIN, retention_probe
from analysis.retention_report import RetentionReport
from analysis.run import collect
from analysis.rundir import load_run
from analysis.sparsity import ceil_count, layer_sparsity
from analysis.stability import layer_stability
from hybridreduce import Schedule, get_adapter
from hybridreduce.cache import ScoreCache
from hybridreduce.errors import HybridReduceError, InputError
from hybridreduce.toy import ToyDataset
from hybridreduce.toy.config import SPLITS, VARIANTS
from hybridreduce.toy.demo import CHECKPOINT, answers_correct, feasible_schedule, load_toy_spec
from hybridreduce.toy.evaluate import AnswerSheet, accuracy_table
from hybridreduce.toy.train_config import load_spec

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = "scripts/paper_claims.py"
SCHEMA = 1
VERDICTS = ("holds", "fails", "mixed", "undetermined")  # undetermined: no number could be computed

# The criteria's settings, fixed before measuring ----------------------------------------------------------------
#: A difference counts only beyond Z standard errors (two: a 1-SE rule would pass a null difference 16% of the time).
Z = 2.0
MASS_P = 0.8  # (a) k@0.8: smallest share of the visual tokens that holds 80% of a block's importance
SPARSE_K = 0.2  # (a) a block is sparse when its median k@0.8 is below this (uniform importance gives 0.8)
STABLE_TAU = 0.5  # (b) rankings persist when Kendall τ(early, late) reaches this (75% of token pairs agree)
EARLY_KEEP = 0.25  # (b) the early cut keeps the top quarter of an early block's ranking (the paper's budget)
LATE_TOP = 0.1  # (b) ... and is judged on the top 10% of a late block's ranking
RELIABLE_SURVIVAL = 0.8  # (b) an early cut is reliable when it keeps this share of a late block's top tokens
RECALL_FRACTIONS = (0.05, 0.1, 0.25)  # (c) recall@k of the ground-truth relevant tokens, averaged over these k
AVERAGE_KEEP = 0.25  # (c) accuracy at this average keep (the paper's "retaining 25%")
LATE_START = (2, 3)  # (d) every cut at or after block ceil(2·B/3): the last third of the depth
LATE_KEEPS = (0.25, 0.125)  # (d) final keeps of the late schedule
LATE_SHARE = 0.95  # (d) "tolerates" = at least 95% of the full-token accuracy
RETENTION_KEEP = 0.25  # (e) the probed cut keeps a random quarter of the visual tokens
SCORERS = ("decay_free", "exact")  # the method's Mamba scorer first
SETTINGS = {
    "Z": Z,
    "MASS_P": MASS_P,
    "SPARSE_K": SPARSE_K,
    "STABLE_TAU": STABLE_TAU,
    "EARLY_KEEP": EARLY_KEEP,
    "LATE_TOP": LATE_TOP,
    "RELIABLE_SURVIVAL": RELIABLE_SURVIVAL,
    "RECALL_FRACTIONS": RECALL_FRACTIONS,
    "AVERAGE_KEEP": AVERAGE_KEEP,
    "LATE_START": LATE_START,
    "LATE_KEEPS": LATE_KEEPS,
    "LATE_SHARE": LATE_SHARE,
    "RETENTION_KEEP": RETENTION_KEEP,
}


@dataclass(frozen=True)
class Claim:
    """One claim: what the paper says, what is measured here, and when it holds (fixed before measuring)."""

    id: str
    claim: str
    measurement: str
    criterion: str


CLAIMS = (
    Claim(
        "a",
        "Sparsity within a block: in each block few visual tokens carry the query-relevant importance.",
        f"k@{MASS_P:g} (smallest share of the visual tokens holding {MASS_P:.0%} of a block's importance) per scored "
        "block, over the questions; the scores the method prunes with (attention rows, decay-free Mamba proxy; the "
        "exact Mamba score is in claims.json).",
        f"Holds if the median k@{MASS_P:g} is below {SPARSE_K:g} in more than half of the blocks of each kind "
        f"(attention and Mamba); fails if in no kind; mixed otherwise. Uniform importance gives {MASS_P:g}.",
    ),
    Claim(
        "b",
        "Stability across depth: the set of important tokens changes across blocks, so aggressive early pruning is "
        "unreliable.",
        "Kendall τ-b between the rankings of every early block (first third of the depth) and every late block (last "
        f"third), and survival recall: the share of a late block's top {LATE_TOP:.0%} that a cut keeping an early "
        f"block's top {EARLY_KEEP:.0%} keeps (a random cut keeps {EARLY_KEEP:.0%}); means over block pairs and "
        "questions, decay-free Mamba scores.",
        f"Holds if τ(early, late) < {STABLE_TAU:g} and survival recall < {RELIABLE_SURVIVAL:g}; fails if neither; "
        "mixed if one.",
    ),
    Claim(
        "c",
        "For Mamba blocks, the decay-free implicit attention is a stronger selection signal than the exact hidden "
        "attention.",
        "Per Mamba block, recall@k of the ground-truth relevant tokens (mean over k = "
        + ", ".join(f"{f:.0%}" for f in RECALL_FRACTIONS)
        + ") for both scorers; and accuracy of `progressive` (decay-free) vs `progressive-exact` at average keep "
        f"{AVERAGE_KEEP:g}. Differences are paired over questions.",
        "Holds if something favours decay-free and nothing favours exact; mixed if both are favoured; fails "
        f"otherwise. A Mamba block favours the scorer whose recall is higher by more than {Z:g} SE; the blocks "
        "together favour the scorer that wins more of them; the accuracy favours a scorer ahead by more than "
        f"{Z:g} SE.",
    ),
    Claim(
        "d",
        "Hybrids tolerate late reduction.",
        "Accuracy with every cut in the last third of the depth (progressive schedule, 3 cuts from block "
        f"ceil(2B/3) on, unified scores) at final keeps {' and '.join(f'{k:g}' for k in LATE_KEEPS)}, vs full tokens.",
        f"Holds if the accuracy is at least {LATE_SHARE:.0%} of full at every final keep; fails if at none; "
        "mixed otherwise.",
    ),
    Claim(
        "e",
        "Stateful retention: the Mamba state keeps information from tokens a later cut discards.",
        f"analysis.retention: one cut before block ceil(2B/3) keeping a random {RETENTION_KEEP:.0%} of the visual "
        "tokens; ridge probes on the final hidden states (answer position, kept-visual mean) for the dropped event "
        "tokens (R²) and the colours only the dropped tokens show (AUC), under the cut vs the control that never saw "
        "the dropped tokens (input drop). Standard errors: bootstrap over the probes' test questions.",
        f"Holds if the cut beats the control by more than {Z:g} SE in more than half of the 4 probes and falls behind "
        f"by more than {Z:g} SE in none; fails if it beats it in none; mixed otherwise.",
    ),
)

CLAIM_IDS = tuple(c.id for c in CLAIMS)
NEEDS_ANALYSIS = ("a", "b", "c")  # the claims read from the analysis pass's scores


# Arguments ---------------------------------------------------------------------------------------------------------
class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit status 2
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="paper_claims", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", type=Path, default=None, help="a train-toy output directory (default: the shipped)")
    p.add_argument("--variant", nargs="+", choices=VARIANTS, help="benchmark variants (default: all it knows)")
    p.add_argument("--size", type=int, default=256, help="questions per variant (default 256)")
    p.add_argument("--split", choices=tuple(SPLITS), default="test", help="benchmark split (default test)")
    p.add_argument("--out", type=Path, default=Path("runs/paper_claims"), help="output directory")
    p.add_argument("--overwrite", action="store_true", help="write into a non-empty --out, replacing its files")
    p.add_argument("--batch-size", type=int, default=32, help="questions per forward (default 32)")
    p.add_argument(
        "--claims", nargs="+", choices=CLAIM_IDS, default=list(CLAIM_IDS), help="claims to measure (default all)"
    )
    p.add_argument(
        "--combine",
        choices=("drop", "merge"),
        default="drop",
        help="what the cuts of (c)'s and (d)'s accuracy runs do with the tokens they remove (default drop)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p


def retention_split(size: int) -> tuple[int, int]:
    """``(n_train, n_test)`` of the retention probe over ``size`` questions: a quarter tests."""
    n_test = max(MIN_TEST, size // 4)
    return size - n_test, n_test


def check_args(args: argparse.Namespace) -> list[str]:
    """Validate everything before a model is loaded; returns the variants to measure.

    Raises:
        InputError: a bad size, batch size, checkpoint, variant or output directory.
    """
    if "e" in args.claims and args.size < MIN_TRAIN + MIN_TEST:
        raise InputError(
            f"--size must be at least {MIN_TRAIN + MIN_TEST} (the retention probe fits on {MIN_TRAIN} questions and "
            f"tests on {MIN_TEST}), got {args.size}"
        )
    if args.batch_size < 1:
        raise InputError(f"--batch-size must be at least 1, got {args.batch_size}")
    ckpt = args.checkpoint or CHECKPOINT
    missing = [f for f in ("config.json", "model.safetensors", "train_config.yaml") if not (ckpt / f).is_file()]
    if missing:
        raise InputError(
            f"--checkpoint {ckpt} is not a train-toy output directory (no {', '.join(missing)}); "
            "make one with `hybridreduce train-toy --config configs/toy.yaml --out DIR`"
        )
    known = [c.variant for c in load_spec(ckpt / "train_config.yaml").configs]
    if len(set(args.claims)) != len(args.claims):
        raise InputError(f"--claims names a claim twice: {args.claims}; name each once")
    variants = list(dict.fromkeys(args.variant or known))
    unknown = [v for v in variants if v not in known]
    if unknown:
        raise InputError(f"the checkpoint was not trained on the variant(s) {unknown}; it knows {known}")
    if args.out.exists() and not args.out.is_dir():
        raise InputError(f"--out {args.out} exists and is not a directory")
    if args.out.is_dir() and any(args.out.iterdir()) and not args.overwrite:
        raise InputError(f"--out {args.out} is not empty; pass --overwrite to write into it, or choose another DIR")
    return variants


# Statistics ---------------------------------------------------------------------------------------------------------
def paired(a: torch.Tensor, b: torch.Tensor) -> dict[str, Any]:
    """Mean and standard error of the per-question difference ``a − b`` of ``(b,)`` values (NaNs left out)."""
    return summarise(a.double() - b.double())


def side(diff: dict[str, Any]) -> int:
    """+1 / −1 when the paired difference is beyond :data:`Z` standard errors above / below zero, else 0."""
    if diff["mean"] is None or diff["n"] < 2:
        return 0
    if abs(diff["mean"]) <= Z * diff["sem"]:
        return 0
    return 1 if diff["mean"] > 0 else -1


def tally(passed: list[bool | None]) -> str:
    """``holds`` if every defined condition passed, ``fails`` if none did, ``mixed`` otherwise."""
    defined = [p for p in passed if p is not None]
    if not defined:
        return "undetermined"
    return "holds" if all(defined) else "fails" if not any(defined) else "mixed"


def accuracy(correct: torch.Tensor, qtypes: list[str]) -> dict[str, Any]:
    """``{"accuracy", "sem", "n", "per_type": {qtype: accuracy}}`` of ``(b,)`` bool outcomes."""
    s = summarise(correct.double())
    per_type = accuracy_table(correct.tolist(), qtypes)["per_type"]
    return {
        "accuracy": s["mean"],
        "sem": s["sem"],
        "n": s["n"],
        "per_type": {q: t["accuracy"] for q, t in per_type.items()},
    }


def _types(row: dict[str, Any]) -> str:
    """Per-type accuracy as ``colour 100 / when 97 / ...`` (percent)."""
    return " / ".join(f"{q} {100 * a:.0f}" for q, a in row["per_type"].items())


def _pct(x: float | None, digits: int = 1) -> str:
    return "n/a" if x is None else f"{100 * x:.{digits}f}%"


def _num(x: float | None, digits: int = 2, sign: bool = False) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:{'+' if sign else ''}.{digits}f}"


# The claims -------------------------------------------------------------------------------------------------------
@dataclass
class Measured:
    """One claim measured on one variant: numbers for claims.json, a one-paragraph summary for the table."""

    numbers: dict[str, Any]
    summary: str
    verdict: str


def sparsity_numbers(cache: ScoreCache) -> dict[str, Any]:
    """Per block and per kind: k@0.8 (mean and median over questions) and whether the block is sparse."""
    report = layer_sparsity(cache, ps=(MASS_P,), topk=())
    blocks, kinds = [], {}
    for blk in report.blocks:
        k = blk.per_sample[f"k@{MASS_P:g}"]  # (b,)
        row = {"block": blk.block, "kind": blk.kind, "mean": k.mean().item(), "median": k.median().item()}
        row["sparse"] = row["median"] < SPARSE_K
        blocks.append(row)
        kinds.setdefault(blk.kind, []).append(row)
    by_kind = {
        kind: {
            "blocks": len(rows),
            "sparse_blocks": sum(r["sparse"] for r in rows),
            "mean": sum(r["mean"] for r in rows) / len(rows),
            "sparse": 2 * sum(r["sparse"] for r in rows) > len(rows),
        }
        for kind, rows in kinds.items()
    }
    return {"blocks": blocks, "kinds": by_kind, "uniform": ceil_count(MASS_P, cache.n_visual) / cache.n_visual}


def claim_sparsity(caches: dict[str, ScoreCache]) -> Measured:
    """(a) k@0.8 per block and kind, for each Mamba scorer; the verdict from the decay-free one (the method's)."""
    numbers = {scorer: sparsity_numbers(caches[scorer]) for scorer in SCORERS}
    main = numbers[SCORERS[0]]
    parts = [
        f"{kind}: median k@{MASS_P:g} < {SPARSE_K:g} in {k['sparse_blocks']}/{k['blocks']} blocks, mean k@{MASS_P:g} "
        f"{k['mean']:.3f}"
        for kind, k in main["kinds"].items()
    ]
    exact = numbers["exact"]["kinds"].get("ssm")
    if exact:
        parts.append(f"exact Mamba score: {exact['sparse_blocks']}/{exact['blocks']}, mean {exact['mean']:.3f}")
    summary = "; ".join(parts) + f" (uniform: {main['uniform']:.2f})"
    return Measured(numbers, summary, tally([k["sparse"] for k in main["kinds"].values()]))


def claim_stability(cache: ScoreCache, num_blocks: int) -> Measured:
    """(b) Kendall τ and survival recall between the early (first third) and late (last third) scored blocks."""
    early = [i for i in cache.layers if 3 * i < num_blocks]
    late = [i for i in cache.layers if 3 * i >= 2 * num_blocks]
    numbers: dict[str, Any] = {"early_blocks": early, "late_blocks": late, "early_keep": EARLY_KEEP}
    numbers["late_top"] = LATE_TOP
    if not early or not late:
        return Measured(numbers, "no scored block in the first or the last third of the depth", "undetermined")
    layers = early + late
    report = layer_stability(
        cache.stack(layers),  # (L, b, V)
        topk=(LATE_TOP,),
        blocks=layers,
        kinds=[cache.block_kinds[i] for i in layers],
        keep_ratios=[EARLY_KEEP] * len(layers),
    )
    e, l_ = slice(0, len(early)), slice(len(early), len(layers))
    tau = report.per_sample["kendall"][:, e, l_]  # (b, early, late)
    survival = report.per_sample[f"survival@{LATE_TOP:g}"][:, e, l_]  # (b, early, late): rows choose, columns judge
    numbers["kendall"] = summarise(tau.nanmean(dim=(1, 2)))
    numbers["survival"] = summarise(survival.mean(dim=(1, 2)))
    means = report.to_dict()  # (L, L) means over questions as lists, NaN → None
    numbers["kendall_pairs"] = [row[l_] for row in means["kendall"][e]]  # [early][late]
    numbers["survival_pairs"] = [row[l_] for row in means["survival"][f"{LATE_TOP:g}"][e]]
    numbers["random_survival"] = EARLY_KEEP
    t, s = numbers["kendall"], numbers["survival"]
    summary = (
        f"τ(early {early}, late {late}) = {_num(t['mean'], 3)} ± {_num(t['sem'], 3)}; survival of a late block's top "
        f"{LATE_TOP:.0%} under an early top-{EARLY_KEEP:.0%} cut = {_num(s['mean'], 3)} ± {_num(s['sem'], 3)} "
        f"(random cut: {EARLY_KEEP:g}; per early block: "
        + ", ".join(f"{b}: {_num(survival[:, i].mean().item())}" for i, b in enumerate(early))
        + ")"
    )
    verdict = tally(
        [
            None if t["mean"] is None else t["mean"] < STABLE_TAU,
            None if s["mean"] is None else s["mean"] < RELIABLE_SURVIVAL,
        ]
    )
    return Measured(numbers, summary, verdict)


def claim_decay_free(
    caches: dict[str, ScoreCache], relevant: torch.Tensor, correct: dict[str, torch.Tensor], qtypes: list[str]
) -> Measured:
    """(c) Recall of the relevant tokens per Mamba block for both scorers, and accuracy at average keep 0.25.

    Args:
        caches: scorer → the ``(b, V)`` scores of every block; relevant: ``(b, V)`` bool ground truth.
        correct: run name → ``(b,)`` bool outcomes (``progressive``, ``progressive-exact``); qtypes: the b types.
    """
    cache = caches[SCORERS[0]]
    mamba = [i for i in cache.layers if cache.block_kinds[i] == "ssm"]
    report = relevance_report(caches, relevant, RECALL_FRACTIONS, blocks=mamba)
    by = {(e.block, e.series): e for e in report.entries}
    blocks, wins = [], {1: 0, -1: 0, 0: 0}
    for block in mamba:
        recall = {  # (b,) per question: recall@k averaged over the fractions, NaN without relevant tokens
            s: torch.stack(list(by[(block, f"mamba_{s}")].recall.values())).mean(dim=0) for s in SCORERS
        }
        diff = paired(recall["decay_free"], recall["exact"])
        winner = side(diff)
        wins[winner] += 1
        blocks.append(
            {
                "block": block,
                **{s: summarise(recall[s])["mean"] for s in SCORERS},
                **{
                    f"{s}_recall@{f:g}": by[(block, f"mamba_{s}")].stats[f"recall@{f:g}"]["mean"]
                    for s in SCORERS
                    for f in RECALL_FRACTIONS
                },
                "difference": diff,
                "winner": {1: "decay_free", -1: "exact", 0: "tie"}[winner],
            }
        )
    block_side = (wins[1] > wins[-1]) - (wins[1] < wins[-1])
    acc = {s: accuracy(correct[m], qtypes) for s, m in zip(SCORERS, ("progressive", "progressive-exact"), strict=True)}
    acc_diff = paired(correct["progressive"], correct["progressive-exact"])
    acc_side = side(acc_diff)
    numbers = {
        "fractions": list(RECALL_FRACTIONS),
        "random_recall": {f"{f:g}": report.baseline[f"recall@{f:g}"] for f in RECALL_FRACTIONS},
        "blocks": blocks,
        "block_wins": {"decay_free": wins[1], "exact": wins[-1], "tie": wins[0]},
        "accuracy": acc,
        "accuracy_difference": acc_diff,
    }
    sides = {block_side, acc_side}
    verdict = "mixed" if {1, -1} <= sides else "holds" if 1 in sides else "fails"
    summary = (
        "recall (decay-free / exact) per Mamba block: "
        + ", ".join(f"{r['block']}: {_num(r['decay_free'])} / {_num(r['exact'])}" for r in blocks)
        + f" — blocks won: decay-free {wins[1]}, exact {wins[-1]}, tie {wins[0]}; accuracy at average keep "
        f"{AVERAGE_KEEP:g}: {_pct(acc['decay_free']['accuracy'])} vs {_pct(acc['exact']['accuracy'])} (difference "
        f"{_num(100 * acc_diff['mean'], 1, sign=True)} ± {_num(100 * acc_diff['sem'], 1)} points)"
    )
    return Measured(numbers, summary, verdict)


def late_schedule(keep: float, num_blocks: int) -> Schedule:
    """The progressive schedule with every cut in the last third: first cut before block ``ceil(2B/3)``, final keep."""
    first = -(-LATE_START[0] * num_blocks // LATE_START[1])  # ceil(2B/3) in integers
    stages = min(3, num_blocks - first)
    return Schedule.preset("progressive", keep=keep, budget="final", first_prune=first, stages=stages)


def claim_late(
    correct: dict[str, torch.Tensor], qtypes: list[str], schedules: dict[str, Schedule], num_blocks: int, n_visual: int
) -> Measured:
    """(d) Accuracy under :func:`late_schedule` at each final keep vs full tokens (``correct``: run → ``(b,)`` bool)."""
    full = accuracy(correct["full"], qtypes)
    numbers: dict[str, Any] = {"full": full, "late": []}
    passed, parts = [], []
    for keep in LATE_KEEPS:
        name = f"late@{keep:g}"
        plan = schedules[name].resolve(num_blocks)
        row = accuracy(correct[name], qtypes)
        share = row["accuracy"] / full["accuracy"] if full["accuracy"] else None
        row.update(
            final_keep=keep,
            prune_points=list(plan.prune_points),
            average_keep=plan.average_keep(n_visual),
            share_of_full=share,
            difference=paired(correct[name], correct["full"]),
        )
        numbers["late"].append(row)
        passed.append(None if share is None else share >= LATE_SHARE)
        parts.append(
            f"final keep {keep:g} (average keep carried {row['average_keep']:.2f}): {_pct(row['accuracy'])} "
            f"({_pct(share, 0)} of full; {_types(row)})"
        )
    cuts = numbers["late"][0]["prune_points"]
    summary = f"full {_pct(full['accuracy'])} ({_types(full)}); cuts before blocks {cuts} of {num_blocks}: "
    summary += "; ".join(parts)
    return Measured(numbers, summary, tally(passed))


def claim_retention(report: RetentionReport) -> Measured:
    """(e) The probes of the one retention configuration: cut vs input-drop control, beyond Z standard errors."""
    rows = report.summary()  # one configuration: per (feature, target)
    probes, sides = [], []
    for r in rows:
        se = r["retained_stderr"]
        s = 0 if r["retained"] is None or se is None else side({"mean": r["retained"], "sem": se, "n": report.n_test})
        sides.append(s)
        probes.append({k: r[k] for k in r if k not in ("block", "kind", "keep", "n_kept", "selector")} | {"side": s})
    none = next(t for t in report.task if t.group == "none")
    numbers = {
        "block": report.blocks[0],
        "keep": report.keeps[0],
        "selector": report.selectors[0],
        "n_train": report.n_train,
        "n_test": report.n_test,
        "probes": probes,
        "all_relevant_dropped": {
            "n": none.n,
            "cut_accuracy": none.accuracy,
            "control_accuracy": none.input_drop_accuracy,
            "full_accuracy": none.full_accuracy,
        },
    }
    beats = sum(s == 1 for s in sides)
    if all(r["retained"] is None for r in rows):
        verdict = "undetermined"
    elif 2 * beats > len(rows) and -1 not in sides:
        verdict = "holds"
    else:
        verdict = "fails" if beats == 0 else "mixed"
    summary = (
        f"cut before block {numbers['block']} keeping {report.keeps[0]:.0%} ({report.selectors[0]}), "
        f"{report.n_train}/{report.n_test} probe train/test questions; cut − control: "
        + "; ".join(
            f"{p['feature']}→{p['target']} ({p['metric']}) {_num(p['score_cut'])} − {_num(p['score_input_drop'])} = "
            f"{_num(p['retained'], sign=True)} ± {_num(p['retained_stderr'])}"
            for p in probes
        )
        + f" — {beats}/{len(rows)} beyond {Z:g} SE; questions with every relevant token dropped (n = {none.n}): "
        f"accuracy {_pct(none.accuracy)} under the cut vs {_pct(none.input_drop_accuracy)} in the control"
    )
    return Measured(numbers, summary, verdict)


# Running ----------------------------------------------------------------------------------------------------------
def measure_variant(
    args: argparse.Namespace, variant: str, ckpt: Path, out: Path, progress: bool
) -> tuple[dict[str, Measured], list[str]]:
    """The claims ``args.claims`` on one benchmark variant; writes ``out/<variant>/`` (analysis run, accuracy,
    retention: each only where a requested claim needs it). Returns claim id → its measurement, and the model's block
    kinds."""
    from tqdm.auto import tqdm

    wanted = set(args.claims)
    folder = out / variant
    folder.mkdir(parents=True, exist_ok=True)
    config = AnalysisConfig(
        name=f"paper_claims_{variant}",
        model={"checkpoint": str(ckpt)},
        variant=variant,
        samples=args.size,
        batch_size=args.batch_size,
        split=args.split,
        scorers=SCORERS,
        topk=RECALL_FRACTIONS,
        mass_p=(0.5, MASS_P, 0.9),
        schedule="progressive",
        keep=AVERAGE_KEEP,
    )
    caches = relevant = None
    if wanted & set(NEEDS_ANALYSIS):
        for err in collect(config, folder / "analysis", progress=progress)["errors"]:  # the run still has the rest
            print(
                f"paper_claims: warning: analysis {err['stage']} failed: {err['type']}: {err['message']}",
                file=sys.stderr,
            )
        _, caches, relevant = load_run(folder / "analysis")

    model, spec = load_toy_spec(ckpt)
    data = next(c for c in spec.configs if c.variant == variant)
    dataset = ToyDataset(data, args.split, args.size, vocab=spec.vocab)
    sheet = AnswerSheet(dataset.vocab)
    num_blocks = get_adapter(model).num_blocks
    bs = args.batch_size
    batches = [dataset.batch(range(s, min(s + bs, args.size))) for s in range(0, args.size, bs)]
    runs: dict[str, tuple[str, float, Schedule | None]] = {}
    if "d" in wanted:
        runs["full"] = ("full", 1.0, None)
    if "c" in wanted:
        for method in ("progressive", "progressive-exact"):
            schedule = replace(feasible_schedule(method, AVERAGE_KEEP, model)[0], combine=args.combine)
            runs[method] = (method, AVERAGE_KEEP, schedule)
    if "d" in wanted:
        for keep in LATE_KEEPS:
            runs[f"late@{keep:g}"] = (
                "progressive",
                keep,
                replace(late_schedule(keep, num_blocks), combine=args.combine),
            )
    correct = {}
    with tqdm(total=len(runs) * args.size, desc=f"accuracy {variant}", unit="q", disable=not progress) as bar:
        for name, (method, keep, schedule) in runs.items():
            correct[name] = answers_correct(model, batches, method, keep, sheet, schedule, progress=bar.update)
    qtypes = [q for b in batches for q in b["qtype"]]
    record = {
        "combine": args.combine,
        "questions": args.size,
        "qtype": qtypes,
        "runs": {
            name: {
                "method": method,
                "keep": keep,
                "schedule": None if s is None else s.to_dict(),
                "accuracy": accuracy(correct[name], qtypes)["accuracy"],
                "correct": correct[name].int().tolist(),
            }
            for name, (method, keep, s) in runs.items()
        },
    }
    if runs:
        (folder / "accuracy.json").write_text(json.dumps(record) + "\n")

    measured: dict[str, Measured] = {}
    if "e" in wanted:
        n_train, n_test = retention_split(args.size)
        cut = late_schedule(LATE_KEEPS[0], num_blocks).resolve(num_blocks).prune_points[0]
        retention = retention_probe(
            model, dataset, [cut], [RETENTION_KEEP], ["random"], n_train, n_test, batch_size=bs, progress=progress
        )
        (folder / "retention.json").write_text(json.dumps(retention.to_dict(), indent=1) + "\n")
        measured["e"] = claim_retention(retention)

    schedules = {name: s for name, (_, _, s) in runs.items()}
    if "a" in wanted:
        measured["a"] = claim_sparsity(caches)
    if "b" in wanted:
        measured["b"] = claim_stability(caches[SCORERS[0]], num_blocks)
    if "c" in wanted:
        measured["c"] = claim_decay_free(caches, relevant, correct, qtypes)
    if "d" in wanted:
        measured["d"] = claim_late(correct, qtypes, schedules, num_blocks, dataset.cfg.n_visual)
    return measured, list(get_adapter(model).kinds)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _cell(text: str) -> str:
    """Text safe inside a markdown table cell."""
    return text.replace("|", "\\|").replace("\n", " ")


def write_markdown(result: dict[str, Any], path: Path) -> None:
    lines = [
        "# The papers' claims, measured",
        "",
        f"Checkpoint `{result['checkpoint']}` (model.safetensors sha256 `{result['checkpoint_sha256'][:16]}…`), "
        f"{result['size']} `{result['split']}` questions per variant, blocks {result['block_kinds']}. "
        f"The accuracy runs' cuts {'merge' if result['combine'] == 'merge' else 'drop'} the tokens they remove. "
        "Criteria fixed before measuring (`criteria.json`); ± is one standard error.",
        "",
        "| variant | claim | measurement | criterion | number(s) | verdict | command |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in result["claims"]:
        cells = [row["variant"], f"({row['id']}) {row['claim']}", row["measurement"], row["criterion"]]
        cells += [row["summary"], f"**{row['verdict']}**", f"`{row['command']}`"]
        lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    path.write_text("\n".join(lines) + "\n")


def run(args: argparse.Namespace, argv: list[str]) -> dict[str, Any]:
    variants = check_args(args)
    ckpt = args.checkpoint or CHECKPOINT
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    command = shlex.join(["python", SCRIPT, *argv])
    claims = [c for c in CLAIMS if c.id in args.claims]
    criteria = {
        "command": command,
        "settings": SETTINGS,
        "combine": args.combine,
        "claims": [asdict(c) for c in claims],
    }
    (out / "criteria.json").write_text(json.dumps(criteria, indent=1) + "\n")  # before the first forward

    measured, kinds = {}, []
    for v in variants:
        measured[v], kinds = measure_variant(args, v, ckpt, out, not args.no_progress)
    try:
        shown = str(ckpt.resolve().relative_to(ROOT))
    except ValueError:
        shown = str(ckpt)
    result = {
        "schema": SCHEMA,
        "command": command,
        "checkpoint": shown,
        "checkpoint_sha256": _sha256(ckpt / "model.safetensors"),
        "split": args.split,
        "size": args.size,
        "variants": variants,
        "block_kinds": kinds,
        "settings": SETTINGS,
        "combine": args.combine,
        "claims": [
            asdict(c) | {"variant": v, "command": command} | asdict(measured[v][c.id]) for v in variants for c in claims
        ],
    }
    (out / "claims.json").write_text(json.dumps(result, indent=1, allow_nan=False) + "\n")
    write_markdown(result, out / "claims.md")
    return result


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    from hybridreduce.vlm import quiet_transformers

    quiet_transformers()
    try:
        result = run(args, argv)
    except HybridReduceError as exc:
        print(f"paper_claims: error: {exc}", file=sys.stderr)
        return 2
    for row in result["claims"]:
        print(f"[{row['variant']}] ({row['id']}) {row['verdict']:<6} {row['summary']}")
    print(f"wrote {args.out / 'claims.json'} and {args.out / 'claims.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
