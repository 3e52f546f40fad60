"""Figures of an analysis run directory (``metrics.json`` of :func:`analysis.run.collect`).

Shapes use the dimension letters of :mod:`hybridreduce.glossary`; its scored blocks ``L`` are the heatmaps' rows and
columns and the ``block`` x axes.

:func:`plot_run` draws, each as PNG and PDF into ``<run>/plots`` (or ``out_dir``):

    sparsity          k@p vs depth, one panel per scorer, block kinds by marker and colour
    stability         Spearman ρ, Kendall τ-b and top-k IoU heatmaps (rows: scorers)
    survival          survival recall heatmaps, keep sets from the schedule (rows: scorers)
    relevance         recall@k and relevant mass vs depth: attention, Mamba exact, Mamba decay-free, random
    schedule          visual tokens kept per block under the run's schedule
    overlay_<i>       toy model only: frames of sample i, the kept tokens of a few blocks bright, the rest
                      dimmed, ground-truth relevant tokens outlined
    share_bias        diagnostics (optional section): kept share vs true share of the labelled class per sample
    query_specificity diagnostics: per block, Spearman ρ of one video's importance under different questions
    step_correlation  diagnostics: per Mamba block, Spearman ρ of the importance with the step size Δ

A missing section skips its figure with a :class:`PlotSkipped` warning (one line), never an error; the optional
``diagnostics`` figures (:data:`OPTIONAL_FIGURES`) are skipped silently. The
figure files an earlier plot left in the folder are deleted first, so none of them stays beside the new ones.
A partial run (``"partial": true`` in metrics.json: analyze was interrupted) gets a :class:`PartialRun` warning,
and every figure a red line above its title with the samples scored of those planned.
"""

from __future__ import annotations

import itertools
import re
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hybridreduce.errors import InputError
from hybridreduce.rundir import atomic_path

from .rundir import read_metrics
from .sparsity import ceil_count
from .stability import topk_mask

__all__ = [
    "FIGURES",
    "OPTIONAL_FIGURES",
    "PartialRun",
    "PlotSkipped",
    "plot_query_specificity",
    "plot_run",
    "plot_share_bias",
    "plot_step_correlation",
]

#: kind → (marker, colour, legend label)
KIND_STYLE: dict[str, tuple[str, str, str]] = {
    "attn": ("o", "tab:red", "attention block"),
    "ssm": ("s", "tab:blue", "Mamba block"),
    "parallel": ("D", "tab:purple", "parallel attention+Mamba block"),
}
SERIES_STYLE: dict[str, dict[str, Any]] = {
    "attention": {"color": "tab:red", "marker": "o", "ls": "-", "label": "attention"},
    "mamba_exact": {"color": "tab:blue", "marker": "s", "ls": "-", "label": "Mamba, exact hidden attention"},
    "mamba_decay_free": {"color": "tab:green", "marker": "^", "ls": "--", "label": "Mamba, decay-free proxy"},
    # a block's own score where the cache has no per-mixer parts (e.g. a parallel attention+Mamba block)
    "unified_exact": {"color": "tab:purple", "marker": "D", "ls": "-.", "label": "block score, exact Mamba"},
    "unified_decay_free": {"color": "tab:brown", "marker": "v", "ls": ":", "label": "block score, decay-free Mamba"},
}
#: Line styles cycled over the k@p curves of one panel: two p whose curves coincide stay apart (greys alone would not).
LINESTYLES = ("-", "--", ":", "-.")
MAX_OVERLAY_FRAMES = 8


class PlotSkipped(UserWarning):
    """A figure was not drawn because its section of metrics.json is missing or unusable."""


class PartialRun(UserWarning):
    """The run was interrupted (metrics.json says ``"partial": true``): its figures cover only the samples scored."""


def _style(kind: str) -> tuple[str, str, str]:
    return KIND_STYLE.get(kind, ("x", "tab:gray", f"{kind} block"))


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def partial_note(metrics: dict) -> str | None:
    """The line every figure of a partial run carries above its title (None for a complete run)."""
    if not metrics.get("partial"):
        return None
    scored, planned = metrics.get("model", {}).get("samples"), metrics.get("samples_planned")
    return f"PARTIAL RUN: {scored} of {planned} samples scored (analyze was interrupted)"


def _save(fig, stem: Path, formats: Sequence[str], metrics: dict) -> list[Path]:
    note = partial_note(metrics)
    if note:  # above everything (bbox_inches="tight" makes room), so that no copy of the figure loses it
        fig.text(0.5, 1.0, note, ha="center", va="bottom", color="tab:red", fontsize=11, fontweight="bold")
    paths = []
    for fmt in formats:
        path = stem.with_suffix(f".{fmt}")
        with atomic_path(path) as tmp:  # Ctrl-C or a full disk mid-save: no half figure
            fig.savefig(tmp, dpi=120 if fmt == "png" else None, bbox_inches="tight")
        paths.append(path)
    _pyplot().close(fig)
    return paths


def _block_ticks(ax, blocks: Sequence[int], kinds: Sequence[str], axis: str = "x", fontsize: int = 7) -> None:
    labels = [f"{b}\n{k}" if axis == "x" else f"{b} {k}" for b, k in zip(blocks, kinds, strict=True)]
    if axis == "x":
        ax.set_xticks(list(blocks), labels, fontsize=fontsize)
    else:
        ax.set_yticks(list(blocks), labels, fontsize=fontsize)


def _scorer_label(name: str) -> str:
    return {"decay_free": "Mamba scorer: decay-free", "exact": "Mamba scorer: exact"}.get(name, name)


# Sparsity -------------------------------------------------------------------------------------------
def plot_sparsity(metrics: dict, out: Path, formats: Sequence[str]) -> list[Path]:
    """k@p (share of tokens holding share p of the mass) per block, one panel per scorer."""
    plt = _pyplot()
    from matplotlib.lines import Line2D

    reports = metrics["sparsity"]
    fig, axes = plt.subplots(1, len(reports), figsize=(5.5 * len(reports), 4), squeeze=False, sharey=True)
    for ax, (scorer, rep) in zip(axes[0], reports.items(), strict=True):
        blocks = [b["block"] for b in rep["blocks"]]
        kinds = [b["kind"] for b in rep["blocks"]]
        metrics_kp = [m for m in rep["metrics"] if m.startswith("k@")]
        shades = plt.cm.Greys(np.linspace(0.4, 0.9, len(metrics_kp)))
        line_handles = []
        for shade, ls, m in zip(shades, itertools.cycle(LINESTYLES), metrics_kp, strict=False):
            mean = [b["stats"][m]["mean"] for b in rep["blocks"]]
            std = [b["stats"][m]["std"] for b in rep["blocks"]]
            ax.errorbar(blocks, mean, yerr=std, color=shade, ls=ls, lw=1.2, capsize=2, zorder=1)
            line_handles.append(Line2D([], [], color=shade, ls=ls, label=m.replace("k@", "k@p, p = ")))
            for b, y, kind in zip(blocks, mean, kinds, strict=True):
                marker, colour, _ = _style(kind)
                ax.scatter([b], [y], marker=marker, color=colour, s=30, zorder=2, edgecolors="black", linewidths=0.4)
        kind_handles = [
            Line2D([], [], marker=_style(k)[0], color=_style(k)[1], ls="", label=_style(k)[2])
            for k in dict.fromkeys(kinds)
        ]
        _block_ticks(ax, blocks, kinds)
        ax.set_xlabel("block (index, kind)")
        ax.set_title(_scorer_label(scorer))
        ax.grid(alpha=0.3)
        ax.legend(handles=line_handles + kind_handles, fontsize=7, loc="best")
    axes[0][0].set_ylabel("k@p: share of visual tokens holding\nshare p of the importance")
    n = metrics["model"].get("samples")
    fig.suptitle(f"Layerwise sparsity (mean ± std over {n} samples; small = sparse)")
    fig.tight_layout()
    return _save(fig, out / "sparsity", formats, metrics)


# Stability and survival -----------------------------------------------------------------------------
def _heatmap(fig, ax, mat: list, rep: dict, title: str, vmin: float, vmax: float, cmap: str, cbar: str) -> None:
    data = np.array([[np.nan if v is None else v for v in row] for row in mat], dtype=float)
    im = ax.imshow(data, vmin=vmin, vmax=vmax, cmap=cmap)
    idx = list(range(len(rep["blocks"])))
    labels = [f"{b} {k}" for b, k in zip(rep["blocks"], rep["kinds"], strict=True)]
    fontsize = 7 if len(idx) <= 16 else 5
    ax.set_xticks(idx, labels, rotation=90, fontsize=fontsize)
    ax.set_yticks(idx, labels, fontsize=fontsize)
    ax.set_title(title, fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label=cbar)


def plot_stability(metrics: dict, out: Path, formats: Sequence[str]) -> list[Path]:
    """Spearman, Kendall and top-k IoU heatmaps, one row per scorer."""
    plt = _pyplot()
    reports = metrics["stability"]
    first = next(iter(reports.values()))
    panels = ["spearman"] + (["kendall"] if first.get("kendall") is not None else []) + list(first["iou"])
    fig, axes = plt.subplots(len(reports), len(panels), figsize=(3.9 * len(panels), 3.6 * len(reports)), squeeze=False)
    for row, (scorer, rep) in zip(axes, reports.items(), strict=True):
        for ax, panel in zip(row, panels, strict=True):
            if panel in ("spearman", "kendall"):
                name = "Spearman ρ" if panel == "spearman" else "Kendall τ-b"
                _heatmap(fig, ax, rep[panel], rep, f"{name}\n{_scorer_label(scorer)}", -1, 1, "RdBu_r", name)
            else:
                title = f"top-{float(panel):.0%} IoU\n{_scorer_label(scorer)}"
                _heatmap(fig, ax, rep["iou"][panel], rep, title, 0, 1, "viridis", "intersection over union")
            ax.set_xlabel("block")
            ax.set_ylabel("block")
    fig.suptitle(f"Cross-layer stability of token importance (mean over {first['batch']} samples)")
    fig.tight_layout()
    return _save(fig, out / "stability", formats, metrics)


def plot_survival(metrics: dict, out: Path, formats: Sequence[str]) -> list[Path]:
    """Survival recall heatmaps: rows i choose a keep set, columns j judge with their top-k."""
    plt = _pyplot()
    reports = metrics["stability"]
    first = next(iter(reports.values()))
    fracs = list(first["survival"])
    fig, axes = plt.subplots(len(reports), len(fracs), figsize=(4.2 * len(fracs), 3.8 * len(reports)), squeeze=False)
    keep_src = "the schedule's keep ratio at block i" if first.get("keep_ratios") else "keep = k"
    for row, (scorer, rep) in zip(axes, reports.items(), strict=True):
        for ax, frac in zip(row, fracs, strict=True):
            title = f"top-{float(frac):.0%} of block j kept at block i\n{_scorer_label(scorer)}"
            _heatmap(fig, ax, rep["survival"][frac], rep, title, 0, 1, "magma", "survival recall")
            ax.set_xlabel("block j (judges with its top-k)")
            ax.set_ylabel("block i (chooses the keep set)")
    fig.suptitle(f"Survival recall; keep sets: {keep_src} (forward pruning reads j > i)")
    fig.tight_layout()
    return _save(fig, out / "survival", formats, metrics)


# Relevance ------------------------------------------------------------------------------------------
def plot_relevance(metrics: dict, out: Path, formats: Sequence[str]) -> list[Path]:
    """Recall@k per k and relevant mass vs depth, one line per series, with the random baseline."""
    plt = _pyplot()
    rel = metrics["relevance"]
    panels = rel["metrics"]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.6 * len(panels), 4), squeeze=False)
    kinds = {e["block"]: e["kind"] for e in rel["entries"]}
    blocks = sorted(kinds)
    for ax, metric in zip(axes[0], panels, strict=True):
        for series in rel["series"]:
            es = [e for e in rel["entries"] if e["series"] == series and e["stats"][metric]["mean"] is not None]
            style = dict(SERIES_STYLE.get(series, {"marker": "x", "ls": ":", "label": series}))
            xs = [e["block"] for e in es]
            ys = [e["stats"][metric]["mean"] for e in es]
            ci = [1.96 * e["stats"][metric]["sem"] for e in es]
            ax.errorbar(xs, ys, yerr=ci, capsize=3, ms=5, lw=1.4, **style)
        if metric == "mass":
            base, label, ls = rel["baseline"]["mass"]["mean"], "uniform importance (|R|/V)", "-."
        else:
            base, label, ls = rel["baseline"][metric], "random keep set (k/V)", ":"
        if base is not None:
            ax.axhline(base, color="gray", ls=ls, lw=1.2, label=label)
        if metric == "mass":
            title = "importance mass on relevant tokens"
        else:
            title = f"recall of relevant tokens in the top {float(metric.split('@')[1]):.0%}"
        ax.set_title(title, fontsize=10)
        _block_ticks(ax, blocks, [kinds[b] for b in blocks])
        ax.set_xlabel("block (index, kind)")
        ax.set_ylim(*((0, None) if metric == "mass" else (-0.02, 1.02)))  # mass: own scale, it is often small
        ax.set_ylabel("share (mean, 95% CI over samples)")
        ax.grid(alpha=0.3)
    handles, labels = [], []  # the series once, and each panel's baseline (the recall panels' share one label)
    for ax in axes[0]:
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            if label not in labels:
                handles.append(handle)
                labels.append(label)
    axes[0][-1].legend(handles, labels, fontsize=7, loc="best")
    fig.suptitle(f"Ground-truth relevant tokens per block ({rel['n_with_relevant']} samples)")
    fig.tight_layout()
    return _save(fig, out / "relevance", formats, metrics)


# Schedule -------------------------------------------------------------------------------------------
def plot_schedule(metrics: dict, out: Path, formats: Sequence[str]) -> list[Path]:
    """Visual tokens each block carries under the run's schedule, bars coloured by block kind."""
    plt = _pyplot()
    from matplotlib.patches import Patch

    sched, kinds = metrics["schedule"], metrics["block_kinds"]
    tokens = sched["visual_tokens"]
    blocks = list(range(len(tokens)))
    fig, ax = plt.subplots(figsize=(max(6, 0.45 * len(blocks) + 2), 3.8))
    colours = [_style(k)[1] if k in KIND_STYLE else "lightgray" for k in kinds]
    ax.bar(blocks, tokens, color=colours, edgecolor="black", lw=0.5)
    for p in sched["prune_points"]:
        ax.axvline(p - 0.5, color="black", ls="--", lw=1)
    handles = [Patch(color=_style(k)[1], label=_style(k)[2]) for k in dict.fromkeys(kinds) if k in KIND_STYLE]
    if any(k not in KIND_STYLE for k in kinds):
        handles.append(Patch(color="lightgray", label="MLP/MoE block (no scores)"))
    handles.append(plt.Line2D([], [], color="black", ls="--", label="prune point"))
    ax.legend(handles=handles, fontsize=7, loc="upper right")
    _block_ticks(ax, blocks, kinds)
    ax.set_xlabel("block (index, kind)")
    ax.set_ylabel(f"visual tokens carried (of {sched['n_visual']})")
    ax.set_title(
        f"Schedule {sched['name']}: keep {sched['settings'].get('keep')} ({sched['settings'].get('budget')}), "
        f"achieved average {sched['average_keep']:.3f}"
    )
    ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    return _save(fig, out / "schedule", formats, metrics)


# Overlays -------------------------------------------------------------------------------------------
def _overlay_rows(metrics: dict, example: dict) -> list[tuple[str, np.ndarray]]:
    """``(label, scores (V,))`` per overlay row: attention blocks once, Mamba blocks once per scorer."""
    kinds = metrics["block_kinds"]
    rows = []
    for block in metrics["overlay"]["blocks"]:
        for i, (scorer, per_block) in enumerate(example["scores"].items()):
            if str(block) not in per_block or (kinds[block] == "attn" and i > 0):
                continue
            what = "attention" if kinds[block] == "attn" else _scorer_label(scorer).replace("Mamba scorer: ", "Mamba ")
            rows.append((f"block {block}\n{what}", np.asarray(per_block[str(block)], dtype=float)))
    return rows


def _pick_frames(
    rows: list[tuple[str, np.ndarray]], relevant: np.ndarray, frame_index: np.ndarray, n_frames: int
) -> list[int]:
    """Frames with relevant tokens first, then the frames with the most importance, at most 8, in time order."""
    chosen = list(dict.fromkeys(int(t) for t in frame_index[relevant]))[:MAX_OVERLAY_FRAMES]
    mass = np.zeros(n_frames)
    for _, s in rows:
        np.add.at(mass, frame_index, s / max(s.sum(), 1e-30))
    for t in np.argsort(-mass, kind="stable"):
        if len(chosen) >= min(MAX_OVERLAY_FRAMES, n_frames):
            break
        if int(t) not in chosen:
            chosen.append(int(t))
    return sorted(chosen)


def _draw_frame(
    ax, frame: np.ndarray, kept: np.ndarray, relevant: np.ndarray, ri: np.ndarray, ci: np.ndarray, patch: int
):
    """One frame ``(H·P, W·P, 3)`` uint8 (``P = patch``); ``kept``, ``relevant``, ``ri``, ``ci`` over this frame's
    tokens.

    Tokens not kept are dimmed; kept tokens get a yellow inner frame, relevant ones a white outer outline.
    """
    from matplotlib.patches import Rectangle

    img = frame.astype(float) / 255.0
    for k, r, c in zip(kept, ri, ci, strict=True):
        if not k:
            img[r * patch : (r + 1) * patch, c * patch : (c + 1) * patch] *= 0.4
    ax.imshow(img, interpolation="nearest")
    for k, rel, r, c in zip(kept, relevant, ri, ci, strict=True):
        x, y = c * patch - 0.5, r * patch - 0.5
        if k:
            ax.add_patch(Rectangle((x + 0.6, y + 0.6), patch - 1.2, patch - 1.2, fill=False, ec="gold", lw=1.0))
        if rel:
            ax.add_patch(Rectangle((x, y), patch, patch, fill=False, ec="white", lw=2.0))
    ax.set_xticks([])
    ax.set_yticks([])


def plot_overlays(metrics: dict, out: Path, formats: Sequence[str]) -> list[Path]:
    """For each example sample: a row of frames per overlay block, kept tokens bright, relevant outlined."""
    from hybridreduce.toy import ToyConfig, ToyDataset

    plt = _pyplot()
    from matplotlib.patches import Patch

    examples, info = metrics["examples"], metrics["model"]
    data = ToyConfig(**info["data"])
    dataset = ToyDataset(data, info["split"], max(e["index"] for e in examples) + 1)
    keep = metrics["overlay"]["keep"]
    paths = []
    for ex in examples:
        video = dataset[ex["index"]].video  # (F, H·P, W·P, 3) uint8
        fi, ri, ci = (np.asarray(ex[k]) for k in ("frame_index", "row_index", "col_index"))
        relevant = np.zeros(len(fi), dtype=bool)
        relevant[ex["relevant"]] = True
        rows = _overlay_rows(metrics, ex)
        if not rows:
            raise InputError(f"example {ex['index']} has no scores for overlay blocks {metrics['overlay']['blocks']}")
        frames = _pick_frames(rows, relevant, fi, data.frames)
        fig, axes = plt.subplots(
            len(rows), len(frames), figsize=(1.35 * len(frames) + 1.2, 1.45 * len(rows) + 0.9), squeeze=False
        )
        k = ceil_count(keep, len(fi))
        for ax_row, (label, scores) in zip(axes, rows, strict=True):
            kept = topk_mask(torch.from_numpy(scores), k).numpy()
            hit = int((kept & relevant).sum())
            for ax, t in zip(ax_row, frames, strict=True):
                sel = fi == t
                _draw_frame(ax, video[t], kept[sel], relevant[sel], ri[sel], ci[sel], data.patch)
            ax_row[0].set_ylabel(f"{label}\nrecall {hit}/{int(relevant.sum())}", fontsize=7)
        for ax, t in zip(axes[0], frames, strict=True):
            ax.set_title(f"frame {t}", fontsize=7)
        handles = [
            Patch(
                facecolor="none", edgecolor="gold", label=f"kept: top {keep:.0%} of the block's tokens (others dimmed)"
            ),
            Patch(facecolor="dimgray", edgecolor="white", lw=2, label="ground-truth relevant token (white outline)"),
        ]
        fig.legend(handles=handles, loc="lower center", ncol=2, fontsize=7, frameon=False)
        fig.suptitle(f'Sample {ex["id"]}: "{ex["question"]}" → {ex["answer"]}', fontsize=9)
        fig.tight_layout(rect=(0, 0.06, 1, 1))
        paths += _save(fig, out / f"overlay_{ex['index']}", formats, metrics)
    return paths


# Diagnostics (analysis.diagnostics) -----------------------------------------------------------------
def _selector_label(name: str) -> str:
    return {"oracle_labelled_first": "oracle: labelled tokens first", "oracle_random": "oracle: random keep set"}.get(
        name, f"schedule {name}"
    )


def plot_share_bias(metrics: dict, out: Path, formats: Sequence[str]) -> list[Path]:
    """Kept share against true share of the labelled class, one point a sample; rows: keep-set selectors, columns:
    their cuts in order. The diagonal is a fair keep set; points above it over-represent the class."""
    plt = _pyplot()
    diag = metrics["diagnostics"]
    if not diag.get("share_bias"):
        raise InputError("the diagnostics section has no share bias: it needs labelled tokens (a toy model's)")
    rows = {name: sorted(per.items(), key=lambda kv: int(kv[0])) for name, per in diag["share_bias"].items() if per}
    cols = max(len(cuts) for cuts in rows.values())
    fig, axes = plt.subplots(len(rows), cols, figsize=(3.4 * cols, 3.0 * len(rows)), squeeze=False)
    for ax in axes.flat:
        ax.set_axis_off()
    for r, (name, cuts) in enumerate(rows.items()):
        for c, (point, rep) in enumerate(cuts):
            ax = axes[r][c]
            ax.set_axis_on()
            pts = [(t, k) for t, k in zip(rep["true_shares"], rep["kept_shares"], strict=True) if t is not None]
            top = max(max(max(p) for p in pts), 1e-3) * 1.05
            ax.scatter([t for t, _ in pts], [k for _, k in pts], s=10, alpha=0.5, color="tab:blue", edgecolors="none")
            ax.plot([0, top], [0, top], color="gray", ls="--", lw=1, label="kept share = true share")
            ax.set_xlim(-0.03 * top, top)  # a sample at share 0 is drawn inside the axes, not cut by them
            ax.set_ylim(-0.03 * top, top)
            ratio = "n/a" if rep["ratio"] is None else f"{rep['ratio']:.2f}"
            where = "" if point == "0" else f", cut before block {point}"
            ax.set_title(
                f"{_selector_label(name)}{where}\nkept/true {ratio}, over-represented {rep['over_fraction']:.0%}",
                fontsize=8,
            )
            ax.tick_params(labelsize=7)
            ax.grid(alpha=0.3)
        axes[r][0].set_ylabel("share among the kept tokens", fontsize=8)
    for c in range(cols):
        axes[-1][c].set_xlabel("true share of the class (|Y|/V)", fontsize=8)
    axes[0][0].legend(fontsize=7, loc="upper left")
    fig.suptitle(
        f"Share bias of the labelled class ({diag['settings'].get('keep')} kept by the oracles; one point a sample)",
        fontsize=10,
    )
    fig.tight_layout()
    return _save(fig, out / "share_bias", formats, metrics)


def _block_bars(metrics: dict, key: str, out: Path, formats: Sequence[str], ylabel: str, title: str) -> list[Path]:
    """Per-block bars (mean, 95% CI over the section's items), coloured by block kind, a line at 1."""
    plt = _pyplot()
    from matplotlib.patches import Patch

    rows = [r for r in metrics["diagnostics"][key] if r["mean"] is not None]
    if not rows:
        raise InputError(f"the diagnostics {key} section has no finite value")
    blocks, kinds = [r["block"] for r in rows], [r["kind"] for r in rows]
    fig, ax = plt.subplots(figsize=(max(5, 0.42 * len(rows) + 2), 3.6))
    xs = list(range(len(rows)))
    ax.bar(
        xs,
        [r["mean"] for r in rows],
        yerr=[1.96 * r["sem"] for r in rows],
        capsize=2,
        color=[_style(k)[1] for k in kinds],
        edgecolor="black",
        lw=0.5,
    )
    ax.axhline(1.0, color="black", ls=":", lw=1)
    ax.set_xticks(xs, [f"{b}\n{k}" for b, k in zip(blocks, kinds, strict=True)], fontsize=7)
    ax.set_xlabel("block (index, kind)")
    ax.set_ylabel(ylabel)
    ax.set_ylim(min(0.0, min(r["mean"] for r in rows) - 0.05), 1.05)
    ax.legend(
        handles=[Patch(color=_style(k)[1], label=_style(k)[2]) for k in dict.fromkeys(kinds)],
        fontsize=7,
        loc="lower left",
    )
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    return _save(fig, out / key, formats, metrics)


def plot_query_specificity(metrics: dict, out: Path, formats: Sequence[str]) -> list[Path]:
    """Per scored block, the Spearman ρ between one video's importance under different questions."""
    s = metrics["diagnostics"]["settings"]
    return _block_bars(
        metrics,
        "query_specificity",
        out,
        formats,
        "Spearman ρ across questions\n(1 = ignores the question)",
        f"Query specificity: {s.get('videos')} videos x {s.get('questions')} questions ({s.get('scorer')} scorer)",
    )


def plot_step_correlation(metrics: dict, out: Path, formats: Sequence[str]) -> list[Path]:
    """Per Mamba block, the Spearman ρ between its importance and its step size Δ (mean over heads)."""
    return _block_bars(
        metrics,
        "step_correlation",
        out,
        formats,
        "Spearman ρ(importance, Δ_j)",
        f"Mamba score vs step size Δ ({metrics['diagnostics']['settings'].get('scorer')} scorer)",
    )


# Driver ---------------------------------------------------------------------------------------------
#: figure name → (needed metrics.json sections, function)
FIGURES: dict[str, tuple[tuple[str, ...], Callable[[dict, Path, Sequence[str]], list[Path]]]] = {
    "sparsity": (("sparsity",), plot_sparsity),
    "stability": (("stability",), plot_stability),
    "survival": (("stability",), plot_survival),
    "relevance": (("relevance",), plot_relevance),
    "schedule": (("schedule",), plot_schedule),
    "overlays": (("examples", "overlay"), plot_overlays),
    "share_bias": (("diagnostics",), plot_share_bias),
    "query_specificity": (("diagnostics",), plot_query_specificity),
    "step_correlation": (("diagnostics",), plot_step_correlation),
}
#: Figures of optional sections (the config's ``diagnostics``): a run without the section skips them silently.
OPTIONAL_FIGURES = {"share_bias", "query_specificity", "step_correlation"}


def _figure_files(folder: Path, formats: Sequence[str]) -> list[Path]:
    """The files :func:`plot_run` writes that are in ``folder`` (each figure's stem, in PNG, PDF or ``formats``)."""
    suffixes = {".png", ".pdf", *(f".{f}" for f in formats)}
    stems = {"sparsity", "stability", "survival", "relevance", "schedule", *OPTIONAL_FIGURES}
    return [
        p
        for p in folder.iterdir()
        if p.is_file() and p.suffix in suffixes and (p.stem in stems or re.fullmatch(r"overlay_\d+", p.stem))
    ]


def plot_run(
    run_dir: str | Path, out_dir: str | Path | None = None, formats: Sequence[str] = ("png", "pdf")
) -> list[Path]:
    """Draw every figure whose sections exist in ``run_dir/metrics.json``.

    Args:
        run_dir: an analysis run directory (written by :func:`analysis.run.collect`).
        out_dir: where the figures go (default ``run_dir/plots``).
        formats: file formats, each figure is saved once per format.

    Returns:
        The written paths. A figure whose sections are missing or unusable is skipped with a
        :class:`PlotSkipped` warning.

    Raises:
        InputError: ``run_dir`` is not an analysis run directory (no metrics.json), or the output folder is a file,
            lies under a file or cannot be written (checked before any figure is drawn).
    """
    from hybridreduce import validate

    metrics = read_metrics(run_dir)
    out = Path(run_dir) / "plots" if out_dir is None else Path(out_dir)
    validate.writable_dir(out, "out (--out)" if out_dir is not None else "the plots folder")
    out.mkdir(parents=True, exist_ok=True)
    for old in _figure_files(out, formats):  # figures of an earlier plot (perhaps of another run) never stay beside
        old.unlink()
    note = partial_note(metrics)
    if note:
        warnings.warn(f"{note}: every figure covers only those samples, and says so above its title", PartialRun, 2)
    paths: list[Path] = []
    for name, (sections, fn) in FIGURES.items():
        missing = [s for s in sections if not metrics.get(s)]
        if missing and name in OPTIONAL_FIGURES:
            continue
        if missing:
            warnings.warn(f"skipping the {name} plot: metrics.json has no {', '.join(missing)} section", PlotSkipped, 2)
            continue
        try:
            paths += fn(metrics, out, formats)
        except Exception as exc:  # one bad section must not stop the other figures
            _pyplot().close("all")
            msg = f"skipping the {name} plot: {type(exc).__name__}: {exc}"
            warnings.warn(msg, PlotSkipped, 2)
    return paths
