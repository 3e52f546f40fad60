"""Issue 26, class 8: every figure the project draws keeps its series apart when they overlap.

Each figure is drawn from inputs whose series coincide (the same values for two scorers, methods, metrics or
layouts) and checked the way a reader would look at it (:func:`check_figure`):

- every legend entry is one series: labels unique, one handle each, and no two handles drawn alike (colour, marker
  and line style; colour and hatch for bars);
- every labelled series has its entry in a legend of the figure;
- two lines drawn on exactly the same points differ in marker or line style, not only in colour (the one on top
  would hide the other's colour entirely);
- no line leaves the axes' limits, and no marker sits on or past them (it would be cut in half, or hidden).

:func:`test_every_figure_is_covered` fails when a function that saves a figure is added without a case here.
"""

from __future__ import annotations

import ast
import itertools
import math
import re
from pathlib import Path

import matplotlib
import pytest

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.collections import PathCollection  # noqa: E402
from matplotlib.colors import to_rgba  # noqa: E402
from matplotlib.container import BarContainer, ErrorbarContainer  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


# The checks -------------------------------------------------------------------------------------------------------
def _style(handle) -> tuple:
    """How a legend handle looks: colour, marker and line style of a line; colour and hatch of a patch."""
    if isinstance(handle, ErrorbarContainer):
        handle = handle.lines[0]  # the series' own line (the bars and caps are drawn in its colour)
    if isinstance(handle, BarContainer):
        handle = handle.patches[0]
    if isinstance(handle, Line2D):
        marker = handle.get_marker() if handle.get_marker() not in (None, "", " ", "None") else "none"
        ls = handle.get_linestyle() if handle.get_linestyle() not in (None, "", " ", "None") else "none"
        dashes = tuple(handle._unscaled_dash_pattern[1] or ()) if ls != "none" else ()
        return ("line", to_rgba(handle.get_color()), marker, ls, dashes)
    if isinstance(handle, Patch):
        return ("patch", to_rgba(handle.get_facecolor()), handle.get_hatch())
    if isinstance(handle, PathCollection):
        return ("points", tuple(map(tuple, handle.get_facecolor())), len(handle.get_paths()))
    raise AssertionError(f"a legend handle of an unexpected type: {type(handle).__name__}")


def _caplines(ax) -> set[int]:
    """The error bars' cap markers (not series of their own)."""
    return {id(c) for cont in ax.containers if isinstance(cont, ErrorbarContainer) for c in cont.lines[1]}


def _data_lines(ax) -> list[Line2D]:
    return [line for line in ax.get_lines() if line.get_transform() == ax.transData and id(line) not in _caplines(ax)]


def _inside(value: float, low: float, high: float, strict: bool) -> bool:
    low, high = min(low, high), max(low, high)
    slack = 1e-9 * max(1.0, abs(low), abs(high))
    return low < value < high if strict else low - slack <= value <= high + slack


def check_figure(fig) -> None:
    legends = [ax.get_legend() for ax in fig.axes if ax.get_legend() is not None] + list(fig.legends)
    assert legends, "a figure of several series needs a legend"
    series = {label: h for ax in fig.axes for h, label in zip(*ax.get_legend_handles_labels(), strict=True)}
    entries = []
    for legend in legends:
        texts = [t.get_text() for t in legend.get_texts()]
        handles = legend.legend_handles  # copies drawn in the legend; the series itself where the axes has it
        assert len(texts) == len(handles) == len(set(texts)), texts
        styles = {text: _style(series.get(text, h)) for text, h in zip(texts, handles, strict=True)}
        alike = [(a, b) for a, b in itertools.combinations(texts, 2) if styles[a] == styles[b]]
        assert not alike, f"legend entries drawn alike: {alike}"
        entries += texts
    for ax in fig.axes:
        for label in ax.get_legend_handles_labels()[1]:
            assert label in entries, f"series {label!r} has no legend entry"
        lines = _data_lines(ax)
        for a, b in itertools.combinations(lines, 2):
            same_points = len(a.get_xdata()) > 1 and list(a.get_xydata().ravel()) == list(b.get_xydata().ravel())
            if same_points:
                assert _style(a)[2:] != _style(b)[2:], (
                    f"{a.get_label()!r} and {b.get_label()!r} lie on the same points and differ only in colour"
                )
        (x0, x1), (y0, y1) = ax.get_xlim(), ax.get_ylim()
        for line in lines:
            has_marker = _style(line)[2] != "none"
            for x, y in line.get_xydata():
                if math.isfinite(x) and math.isfinite(y):
                    where = f"{line.get_label()!r} at ({x:g}, {y:g}), limits ({x0:g}, {x1:g}) × ({y0:g}, {y1:g})"
                    assert _inside(x, x0, x1, has_marker) and _inside(y, y0, y1, has_marker), where
        for points in ax.collections:
            if isinstance(points, PathCollection) and points.get_offset_transform() == ax.transData:
                for x, y in points.get_offsets():
                    assert _inside(x, x0, x1, True) and _inside(y, y0, y1, True), (x, y, (x0, x1), (y0, y1))


# One case per figure, every series doubled -----------------------------------------------------------------------
KINDS = ["ssm", "attn", "mlp", "ssm", "parallel", "ssm"]


def _analysis_metrics() -> dict:
    """A metrics.json whose scorers, metrics and series coincide."""
    scored = [b for b, k in enumerate(KINDS) if k != "mlp"]
    same = {"mean": 0.0, "std": 0.0, "sem": 0.0}  # every series at 0: on the axis, on top of each other
    sparsity = {
        "blocks": [{"block": b, "kind": KINDS[b], "stats": {"k@0.5": same, "k@0.9": same}} for b in scored],
        "metrics": ["k@0.5", "k@0.9"],
    }
    series = ["attention", "mamba_exact", "mamba_decay_free", "unified_exact", "unified_decay_free"]
    stats = {"recall@0.25": {"mean": 1.0, "sem": 0.0}, "mass": {"mean": 1.0, "sem": 0.0}}
    rows = [{"block": b, "kind": KINDS[b], "mean": 1.0, "sem": 0.0} for b in scored]
    shares = {"true_shares": [0.0, 0.2, 0.2], "kept_shares": [0.0, 0.2, 0.2], "ratio": 1.0, "over_fraction": 0.0}
    return {
        "model": {"samples": 4},
        "block_kinds": KINDS,
        "sparsity": {"decay_free": sparsity, "exact": sparsity},
        "relevance": {
            "metrics": ["recall@0.25", "mass"],
            "series": series,
            "entries": [{"block": b, "kind": KINDS[b], "series": s, "stats": stats} for b in scored for s in series],
            "baseline": {"mass": {"mean": 1.0}, "recall@0.25": 1.0},
            "n_with_relevant": 4,
        },
        "schedule": {
            "visual_tokens": [16, 16, 8, 8, 4, 4],
            "prune_points": [2, 4],
            "n_visual": 16,
            "name": "progressive",
            "settings": {"keep": 0.5, "budget": "average"},
            "average_keep": 0.58,
        },
        "diagnostics": {
            "settings": {"keep": 0.25, "videos": 2, "questions": 3, "scorer": "decay_free"},
            "share_bias": {"oracle_random": {"0": shares}, "progressive": {"2": shares, "4": shares}},
            "query_specificity": rows,
            "step_correlation": rows,
        },
    }


def _analysis(name: str):
    def draw(tmp_path):
        from analysis.plots import FIGURES

        FIGURES[name][1](_analysis_metrics(), tmp_path, ("png",))

    return draw


def _bench_result(**overrides):
    from hybridreduce.bench import BenchResult

    fields = dict(
        arch="nemotron_h", schedule="progressive", keep=0.25, achieved_keep=0.25, visual_tokens=1024, text_tokens=16,
        blocks=8, hidden=64, params_m=1.0, device="cpu", dtype="float32", attn_implementation="sdpa",
        mamba_path="torch", threads=2, repeats=1, full_s=1.0, reduced_s=1.0, speedup=1.0, ideal_speedup=1.0,
        efficiency=1.0, ideal_speedup_timed=1.0, efficiency_timed=1.0, scoring_s=1.0, scoring_overhead_frac=0.1,
        merging_s=0.0, merging_overhead_frac=0.0, hook_s=0.0, peak_bytes_full=2**20, peak_bytes_reduced=2**20,
        memory_source="test", scoring_peak_bytes=2**20,
        kv_bytes_full=1, kv_bytes_reduced=1, state_bytes=1, decode_tok_s_full=1.0, decode_tok_s_reduced=1.0,
        block_visual=[1024] * 8, block_s_full=[0.1] * 8, block_s_reduced=[0.1] * 8, block_hook_s=[0.0] * 8, config={},
    )  # fmt: skip
    return BenchResult(**(fields | overrides))


def _bench_scale(tmp_path):
    """Full, reduced, ideal and scoring at the same times: every series on one line."""
    from hybridreduce.bench import plot_scale

    plot_scale([_bench_result(visual_tokens=v) for v in (1024, 2048, 4096)], tmp_path)


def _bench_sweep(tmp_path):
    from hybridreduce.bench import write_sweep

    write_sweep([_bench_result(keep=k) for k in (0.25, 0.5)], tmp_path)


def _calibration(tmp_path):
    """Every layout, with any number of cuts, carries the same importance (a flat objective), and so do the
    presets."""
    from dataclasses import replace

    import torch

    from hybridreduce.calibrate import CalibrationScores, plot_calibration, search

    g = torch.Generator().manual_seed(0)
    cal = search(CalibrationScores(list(range(12)), 12, [torch.rand(12, 8, 16, generator=g)], "toy"), 0.5)
    common = set.intersection(*({r["first_prune"] for r in cal.candidates if r["stages"] == n} for n in (1, 2)))
    flat = [{**r, "objective": 0.5} for r in cal.candidates if r["stages"] <= 2 and r["first_prune"] in common]
    plot_calibration(replace(cal, candidates=flat, presets=dict.fromkeys(cal.presets, 0.5)), tmp_path / "calibration")


def _finetune(tmp_path):
    from hybridreduce.finetune.train import plot_curves

    plot_curves(
        [{"step": s, "loss": 1.0, "eval_loss": 1.0, "visual_kept": 0.25} for s in (1, 2, 3)], tmp_path / "curves.png"
    )


def _demo_row(method, keep, variant="static"):
    return {"variant": variant, "method": method, "keep": keep, "accuracy": 0.0, "per_type": {}, "speedup": 1.0,
            "seconds": 1.0, "visual_tokens": 10.0, "achieved_keep": keep, "relevant_kept": 0.0,
            "block_visual": [48.0, 24.0, 12.0], "n": 8, "note": ""}  # fmt: skip


def _demo(tmp_path):
    """Twelve methods at the same accuracy, keep and tokens per block (more methods than colours or dashes)."""
    from hybridreduce.toy.demo import plot_summary

    methods = [f"method-{i}" for i in range(12)]
    rows = [{**_demo_row("full", 1.0), "accuracy": 0.9}] + [_demo_row(m, k) for m in methods for k in (0.25, 0.5)]
    info = {"full_accuracy": 0.9, "chance": {"all": 0.25}, "n_visual": 48}
    summary = {"results": rows, "variants": {"static": info}, **info, "n_questions": 8, "split": "test",
               "block_kinds": ["ssm", "attn", "mlp"]}  # fmt: skip
    plot_summary(summary, tmp_path)


#: figure → (how many figures it draws, the function that draws it from coinciding series)
CASES = {
    "analysis sparsity": (1, _analysis("sparsity")),
    "analysis relevance": (1, _analysis("relevance")),
    "analysis schedule": (1, _analysis("schedule")),
    "analysis share_bias": (1, _analysis("share_bias")),
    "analysis query_specificity": (1, _analysis("query_specificity")),
    "analysis step_correlation": (1, _analysis("step_correlation")),
    "bench scale": (1, _bench_scale),
    "bench sweep": (1, _bench_sweep),
    "calibration": (1, _calibration),
    "finetune curves": (1, _finetune),
    "demo (accuracy, tokens per block)": (2, _demo),
}
#: analysis figures without series (heatmaps and video frames): nothing can hide behind another
NO_SERIES = {"stability", "survival", "overlays"}


@pytest.mark.parametrize("name", list(CASES))
def test_coinciding_series_stay_distinguishable(name, tmp_path, figures):
    count, draw = CASES[name]
    draw(tmp_path)
    assert len(figures) == count
    for fig in figures:
        check_figure(fig)


def test_the_checks_catch_series_that_hide_each_other(figures):
    """The checks fail where they should: two lines alike, a line only its colour tells apart from another on the
    same points, a series without a legend entry, a marker on the axis."""
    cases = {
        "drawn alike": lambda ax: [ax.plot([0, 1], [1, 2], "o-", color="C0", label=s) for s in "ab"],
        "differ only in colour": lambda ax: [ax.plot([0, 1], [1, 2], "o-", color=c, label=c) for c in ("C0", "C1")],
        "has no legend entry": lambda ax: ax.plot([0, 1], [1, 2], label="a") and ax.legend(handles=[]),
        "at (0, 1)": lambda ax: ax.plot([0, 1], [1, 2], "o", label="a") and ax.set_xlim(0, 1),
    }
    for message, draw in cases.items():
        fig, ax = plt.subplots()
        draw(ax)
        if ax.get_legend() is None:
            ax.legend()
        with pytest.raises(AssertionError, match=re.escape(message)):
            check_figure(fig)


def _functions_that_save_figures() -> set[str]:
    """``module:function`` of every function in hybridreduce/ and analysis/ that calls ``savefig``."""
    found = set()
    for path in [*ROOT.glob("hybridreduce/**/*.py"), *ROOT.glob("analysis/**/*.py")]:
        tree = ast.parse(path.read_text())
        for fn in ast.walk(tree):
            if isinstance(fn, ast.FunctionDef) and any(
                isinstance(n, ast.Attribute) and n.attr == "savefig" for n in ast.walk(fn)
            ):
                found.add(f"{path.relative_to(ROOT).with_suffix('')}:{fn.name}".replace("/", "."))
    return found


def test_every_figure_is_covered():
    """A new figure needs a case in CASES (or, without series, a place in NO_SERIES)."""
    from analysis.plots import FIGURES

    assert _functions_that_save_figures() == {
        "analysis.plots:_save",  # every analysis figure (FIGURES)
        "hybridreduce.bench:plot_scale",
        "hybridreduce.bench:write_sweep",
        "hybridreduce.calibrate:plot_calibration",
        "hybridreduce.finetune.train:plot_curves",
        "hybridreduce.toy.demo:_save",  # plot_summary's two figures
    }
    covered = {name.removeprefix("analysis ") for name in CASES if name.startswith("analysis ")}
    assert set(FIGURES) == covered | NO_SERIES
