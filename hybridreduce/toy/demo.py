"""``hybridreduce demo``: every reduction method on the embedded toy video VLM, at several budgets.

The shipped checkpoint (:data:`CHECKPOINT`) answers the held-out questions of its synthetic benchmark at
full tokens and under each method at each average keep fraction ``k``:

    method                  visual tokens chosen by                                     where
    full                    —                                                            —
    progressive             unified scores (attention rows + decay-free Mamba proxy)     low-to-high cuts in the LM
    progressive-exact       unified scores, exact Mamba hidden attention                  same cuts
    progressive-attn-only   attention rows only (first cut after the first attention)    same shape
    progressive-depth       unified scores, first cut a quarter of the way down          low-to-high cuts in the LM
    progressive-calibrated  unified scores, the layout hybridreduce.calibrate chooses     low-to-high cuts in the LM
                            from CALIBRATION_PROMPTS unlabeled val prompts of the variant
    fastv                   attention rows of the last token at block 2, one cut after    in the LM
    pyramiddrop             attention rows, cuts at 1/4, 1/2, 3/4 of the depth           in the LM
    random                  seeded uniform draws, progressive cuts                        in the LM
    evs                     temporal change of each patch (pixels), rate 1 − k            before the LM
    evs+progressive         EVS at keep √k, then progressive at average keep √k           both

Every in-LM method is solved to the same *average* budget (mean share of visual tokens carried per block,
see :mod:`hybridreduce.schedule`); EVS carries ``k`` of the tokens through every block, so its average is
``k`` too. A method whose layout keeps every token up to a late first cut cannot carry so few on average:
FastV (cut after block 2, the first attention block), attention-only progressive (first cut after the
first attention block) and PyramidDrop (first quarter of the depth) at ``k ≤ 0.25`` on the 12-block toy
model. Those rows run at *final* keep ``k`` instead (the share kept after the last cut), are marked
``final`` in the table, and carry more tokens on average than ``k``; the ``avg keep`` column says how many.
That early cuts need Mamba-derived scores is the point of the hybrid method: a hybrid model has few
attention blocks, and the first one may sit a quarter of the way down.

A checkpoint trained on several benchmark variants (``static`` and ``clutter``, see
:mod:`hybridreduce.toy.data`) is measured on each; every row names its ``variant``.

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
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..adapters import get_adapter
from ..engine import reduce
from ..errors import InputError
from ..schedule import Schedule
from ..yamlio import read_yaml
from .data import ToyConfig, ToyDataset, chance_level
from .model import ToyVLM
from .train import AnswerSheet, ToySpec, accuracy_table, evs_inputs, spec_from_dict

#: The embedded checkpoint (``configs/toy.yaml``, then its warm restart ``configs/toy_continue.yaml``; see its README).
CHECKPOINT = Path(__file__).parent / "checkpoint"

METHODS = (
    "progressive",
    "progressive-exact",
    "progressive-attn-only",
    "progressive-depth",
    "progressive-calibrated",
    "fastv",
    "pyramiddrop",
    "random",
    "evs",
    "evs+progressive",
)
KEEPS = (0.5, 0.25, 0.125)
#: ``progressive-depth``'s first cut, as a fraction of the depth (where PyramidDrop makes its first cut). Fixed,
#: not tuned on the test split; ``hybridreduce calibrate`` is the way to choose it per model.
DEPTH_FIRST_PRUNE = 0.25
#: Unlabeled prompts of the val split ``progressive-calibrated`` calibrates on (never the test split it is measured on).
CALIBRATION_PROMPTS = 64


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
    model = ToyVLM.from_pretrained(path).eval()
    return model, spec


def calibration_batches(dataset: ToyDataset, batch_size: int = 32):
    """The dataset's prompts as :func:`hybridreduce.calibrate.score_prompts` takes them (answers unused)."""
    for start in range(0, len(dataset), batch_size):
        b = dataset.batch(range(start, min(start + batch_size, len(dataset))))
        yield {"input_ids": b["input_ids"], "pixel_values": b["pixels"], "attention_mask": b["attention_mask"],
               "visual_mask": b["visual_mask"]}  # fmt: skip


def schedule_for(method: str, keep: float, model: ToyVLM, budget: str = "average") -> Schedule:
    """The in-LM schedule of a method at keep ``keep`` (an average or a final budget)."""
    if method in ("progressive", "progressive-exact"):
        return Schedule.preset("progressive", keep=keep, budget=budget)
    if method == "progressive-attn-only":
        first_attn = get_adapter(model).kinds.index("attn")  # attention scores exist only from here on
        return Schedule.preset("progressive", keep=keep, budget=budget, score="attention", first_prune=first_attn + 1)
    if method == "progressive-depth":
        return Schedule.preset("progressive", keep=keep, budget=budget, first_prune=DEPTH_FIRST_PRUNE)
    if method in ("fastv", "pyramiddrop", "random"):
        return Schedule.preset(method, keep=keep, budget=budget)
    if method == "progressive-calibrated":
        raise InputError("progressive-calibrated's schedule comes from calibrate_schedules(), not from a preset")
    raise InputError(f"{method!r} has no in-LM schedule; methods: {METHODS}")


def calibrate_schedules(model: ToyVLM, data: ToyConfig, vocab, keeps) -> dict[float, Schedule]:
    """``progressive-calibrated``'s schedule at each keep: :func:`hybridreduce.calibrate.search` on the scores of
    :data:`CALIBRATION_PROMPTS` unlabeled val prompts (one scoring forward each, shared by every keep)."""
    from ..calibrate import score_prompts, search

    scores = score_prompts(model, calibration_batches(ToyDataset(data, "val", CALIBRATION_PROMPTS, vocab=vocab)))
    return {k: search(scores, k).schedule for k in keeps}


def feasible_schedule(method: str, keep: float, model: ToyVLM) -> tuple[Schedule, str]:
    """The method's schedule at average keep ``keep`` or, where its layout cannot carry so few tokens on
    average (every token passes the blocks before its first cut), at final keep ``keep``; and a note."""
    blocks = get_adapter(model).num_blocks
    try:
        sched = schedule_for(method, keep, model)
        sched.resolve(blocks)
        return sched, ""
    except InputError as exc:
        sched = schedule_for(method, keep, model, budget="final")
        sched.resolve(blocks)
        return sched, f"average budget infeasible ({exc}); run with final keep {keep:g}"


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
    model: ToyVLM, batch: dict, method: str, keep: float, schedule: Schedule | None, scorer: str | None, n_blocks: int
):
    """``(logits (b, vocab), block_visual (blocks,), relevant_kept (b,))`` of one batch under one method.

    ``schedule`` is the in-LM schedule of the method (:func:`feasible_schedule`; None for full and EVS).
    """
    relevant = batch["relevant_mask"]
    if method == "full":
        out = model(batch["input_ids"], pixel_values=batch["pixels"], attention_mask=batch["attention_mask"])
        V = int(batch["visual_mask"][0].sum())
        return out.logits[:, -1], [V] * n_blocks, torch.ones(relevant.shape[0])
    if method in ("evs", "evs+progressive"):
        stage_keep = keep if method == "evs" else math.sqrt(keep)
        r = evs_inputs(model, batch, 1.0 - stage_keep)
        rel = relevant.gather(1, r.kept_index)  # (b, L') relevant flags of the kept rows
        if method == "evs":
            out = model(inputs_embeds=r.inputs, attention_mask=r.attention_mask)
            V = int(r.visual_mask[0].sum())
            return out.logits[:, -1], [V] * n_blocks, _share(rel, relevant)
        sched = Schedule.preset("progressive", keep=stage_keep)
        with reduce(model, sched, visual_mask=r.visual_mask, attention_mask=r.attention_mask) as red:
            out = model(inputs_embeds=r.inputs, attention_mask=r.attention_mask)
        last = red.kept_positions[max(red.kept_positions)]  # (b, k) positions in the EVS-reduced sequence
        return out.logits[:, -1], red.block_visual, _share(rel.gather(1, last), relevant)
    with reduce(model, schedule, scorer=scorer) as red:
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
    method: str,
    keep: float,
    sheet: AnswerSheet,
    progress=None,
    variant: str = "static",
    schedule: Schedule | None = None,
) -> MethodResult:
    """Accuracy, time and kept tokens of one method at one budget over pre-built batches.

    ``schedule``: the in-LM schedule to use instead of the method's own (``progressive-calibrated``'s).
    """
    scorer = "exact" if method == "progressive-exact" else None
    note = ""
    if schedule is None and method not in ("full", "evs", "evs+progressive"):
        schedule, note = feasible_schedule(method, keep, model)
    n_blocks = get_adapter(model).num_blocks
    correct, qtypes, blocks, rel, seconds = [], [], [], [], 0.0
    for batch in batches:
        start = time.perf_counter()
        logits, block_visual, relevant_kept = _forward_logits(model, batch, method, keep, schedule, scorer, n_blocks)
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
        method=method,
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
    method: str,
    keep: float,
    sheet: AnswerSheet,
    schedule: Schedule | None = None,
    progress=None,
) -> torch.Tensor:
    """Whether each question is answered right under one method at one budget: the per-question outcomes
    behind :func:`evaluate_method`'s accuracy, for paired comparisons of methods on the same questions.

    Args:
        batches: pre-built batches (``ToyDataset.batch``) of ``n`` questions in all.
        method: ``full``, one of :data:`METHODS`, or any name of an in-LM method when ``schedule`` is given.
        keep: the budget (:func:`feasible_schedule` solves the method's schedule for it).
        schedule: an in-LM schedule to run instead of the method's own (e.g. one with a late first cut);
            its keep sets use the method's Mamba scorer (exact for ``progressive-exact``, else decay-free).
        progress: called with the number of questions of each batch done.

    Returns:
        ``(n,)`` bool, in the order of the batches' questions.
    """
    scorer = "exact" if method == "progressive-exact" else None
    if schedule is None and method not in ("full", "evs", "evs+progressive"):
        schedule, _ = feasible_schedule(method, keep, model)
    n_blocks = get_adapter(model).num_blocks
    correct = []
    for batch in batches:
        logits, _, _ = _forward_logits(model, batch, method, keep, schedule, scorer, n_blocks)
        correct.append((sheet.choose(logits.float(), batch["qtype"]) == batch["answer_index"]).cpu())
        if progress is not None:
            progress(len(batch["qtype"]))
    return torch.cat(correct)


def run_demo(
    checkpoint: str | Path | None = None,
    size: int = 1024,
    keeps: tuple[float, ...] = KEEPS,
    methods: tuple[str, ...] = METHODS,
    batch_size: int = 64,
    progress: bool = True,
    variants: tuple[str, ...] | None = None,
) -> dict:
    """Evaluate every method at every keep on ``size`` questions of the test split of every variant.

    Args:
        variants: the benchmark variants to measure (default: every variant the checkpoint was trained on).
    Returns:
        ``{"results": [MethodResult.to_dict(), ...], "variants": {variant: {"full_accuracy", "chance",
        "n_visual"}}, "full_accuracy", "chance", "n_visual", ...}``; each variant's results start with
        ``full`` (keep 1.0), whose seconds that variant's speed-ups divide. The top-level ``full_accuracy``,
        ``chance`` and ``n_visual`` are the first variant's.
    """
    from tqdm.auto import tqdm

    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise InputError(f"unknown demo methods {unknown}; choose from {METHODS}")
    bad = [k for k in keeps if not 0 < k < 1]
    if bad:
        raise InputError(f"demo keep fractions must lie in (0, 1), got {bad}")
    model, spec = load_toy_spec(checkpoint)
    configs = {c.variant: c for c in spec.configs}
    variants = tuple(configs) if variants is None else tuple(variants)
    missing = [v for v in variants if v not in configs]
    if missing:
        raise InputError(
            f"the checkpoint was not trained on the variant(s) {missing}; it knows {sorted(configs)} "
            "(its vocabulary and question types come from them)"
        )
    runs = [("full", 1.0)] + [(m, k) for k in keeps for m in methods]
    bar = tqdm(total=len(variants) * len(runs) * size, desc="demo", unit="q", disable=not progress, dynamic_ncols=True)
    results: list[MethodResult] = []
    per_variant = {}
    for variant in variants:
        data = configs[variant]
        dataset = ToyDataset(data, "test", size, vocab=spec.vocab)
        sheet = AnswerSheet(dataset.vocab)
        batches = [dataset.batch(range(s, min(s + batch_size, size))) for s in range(0, size, batch_size)]
        evaluate_method(model, batches[:1], "full", 1.0, sheet)  # warm-up: the first forward pays one-off costs
        calibrated = calibrate_schedules(model, data, spec.vocab, keeps) if "progressive-calibrated" in methods else {}
        mine: list[MethodResult] = []
        for method, keep in runs:
            bar.set_postfix_str(f"{variant} {method} k={keep}")
            own = calibrated[keep] if method == "progressive-calibrated" else None
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
            ticks = sorted({r["keep"] for r in mine} | {round(r["achieved_keep"], 2) for r in mine})
            ax.set_xticks(ticks, [f"{k:g}" for k in ticks], fontsize=7)
            ax.minorticks_off()
            ax.set_xlabel("average share of visual tokens carried per block (hollow: run at final keep)")
            ax.set_ylabel(label)
            ax.set_ylim(0, 1.02)
            ax.grid(alpha=0.3)
        ax_acc.set_title(f"{variant}: accuracy vs budget")
        ax_rel.set_title(f"{variant}: relevant tokens that survive to the last block")
        ax_acc.legend(fontsize=7, loc="lower right")
    n = summary["n_questions"]
    fig.suptitle(f"Toy hybrid video VLM, {n} held-out questions per variant, {summary['n_visual']} visual tokens")
    fig.tight_layout()
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


def _save(fig, stem: Path) -> list[Path]:
    paths = [stem.with_suffix(".png"), stem.with_suffix(".pdf")]
    fig.savefig(paths[0], dpi=130)
    fig.savefig(paths[1])
    return paths
