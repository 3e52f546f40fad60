"""Schedules: the solver meets the budget, presets load, and bad schedules are named."""

from __future__ import annotations

import copy
import pickle
from dataclasses import replace
from pathlib import Path

import pytest

from hybridreduce import InputError
from hybridreduce.registry import frozen_registry
from hybridreduce.schedule import (
    COMBINE_SETTINGS,
    LAYOUT_SETTINGS,
    METHOD_SPECS,
    METHODS,
    SELECTOR_SETTINGS,
    Combine,
    Layout,
    MethodSpec,
    Plan,
    Schedule,
    Selector,
)


@pytest.mark.parametrize("shape", ["geometric", "linear"])
@pytest.mark.parametrize("keep", [0.125, 0.25, 0.5, 0.9])
@pytest.mark.parametrize("depth", [12, 24, 52])
def test_solver_meets_the_average_budget(shape, keep, depth):
    if shape == "linear" and keep < 0.4:
        # A linear decay over 3 stages carries at least ~1/3 on average: the solver must refuse.
        with pytest.raises(InputError, match="cannot be met"):
            Schedule(keep=keep, shape=shape, first_prune=1, stages=3).resolve(depth)
        return
    plan = Schedule(keep=keep, shape=shape, first_prune=1, stages=3).resolve(depth)
    assert plan.average_keep() == pytest.approx(keep, abs=1e-9)
    # Rounding to whole tokens moves the achieved budget by at most one token per block.
    assert abs(plan.average_keep(4096) - keep) <= 1 / 4096
    assert list(plan.ratios) == sorted(plan.ratios, reverse=True), "low-to-high: ratios never grow"
    assert all(0 < r <= 1 for r in plan.ratios)


def test_progressive_is_low_to_high():
    plan = Schedule(keep=0.3, first_prune=4, stages=4).resolve(24)
    assert plan.prune_points == (4, 9, 14, 19)
    counts = plan.block_counts(1000)
    assert counts[:4] == [1000] * 4
    assert counts == sorted(counts, reverse=True)
    drops = [a - b for a, b in zip([1000, *plan.stage_counts(1000)], plan.stage_counts(1000), strict=False)]
    assert all(d > 0 for d in drops)


def test_final_budget_targets_the_last_stage():
    for shape in ("geometric", "linear"):
        plan = Schedule(keep=0.2, budget="final", shape=shape, first_prune=2, stages=4).resolve(16)
        assert plan.ratios[-1] == pytest.approx(0.2)
        assert plan.average_keep() > 0.2


def test_explicit_ratios_and_points():
    s = Schedule(keep=None, shape="explicit", ratios=[0.8, 0.5, 0.2], stages=[2, 5, 9])
    plan = s.resolve(12)
    assert plan == Plan(12, (2, 5, 9), (0.8, 0.5, 0.2))
    assert plan.block_counts(10) == [10, 10, 8, 8, 8, 5, 5, 5, 5, 2, 2, 2]
    assert plan.average_keep(10) == pytest.approx(sum(plan.block_counts(10)) / 120)


def test_baselines_meet_the_same_budget_as_progressive():
    depth, keep = 24, 0.3
    for method in ("progressive", "fastv", "pyramiddrop", "random", "uniform"):
        plan = Schedule.preset(method, keep=keep).resolve(depth)
        assert plan.average_keep() == pytest.approx(keep, abs=1e-9), method
    assert Schedule.preset("fastv", keep=keep).resolve(depth).prune_points == (3,)
    assert Schedule.preset("pyramiddrop", keep=keep).resolve(depth).prune_points == (6, 12, 18)
    assert Schedule.preset("random", keep=keep).resolve(depth) == Schedule.preset("progressive", keep=keep).resolve(
        depth
    )
    fastv = Schedule.preset("fastv")
    assert (fastv.score, fastv.query) == ("attention", "last")
    assert Schedule.preset("pyramiddrop").score == "attention"


CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "schedules"


def test_a_setting_that_contradicts_a_method_raises():
    """Issue 15: presets never override the user silently."""
    with pytest.raises(InputError, match="fastv is defined by"):
        Schedule.preset("fastv", stages=2)
    with pytest.raises(InputError, match="contradicts it"):
        Schedule.from_dict({"method": "fastv", "score": "unified"})
    with pytest.raises(InputError, match="pyramiddrop is defined by"):
        Schedule.preset("pyramiddrop", query="after_visual")
    with pytest.raises(InputError, match=r"fastv is defined by .*\{'score': 'unified'\} contradicts it.*progressive"):
        Schedule.preset("fastv", score="unified")
    assert Schedule.preset("fastv", stages=1, score="attention").stages == 1  # agreeing is fine
    assert Schedule.preset("pyramiddrop", keep=0.3).keep == 0.3  # a preset setting, not a definition
    # The constructor and dataclasses.replace hold the definition too: a method's settings are never overwritten.
    with pytest.raises(InputError, match="fastv is defined by") as info:
        Schedule(method="fastv", stages=2)
    assert info.value.field == "stages"
    with pytest.raises(InputError, match="random is defined by"):
        Schedule(method="random", score="unified")
    with pytest.raises(InputError, match="fastv is defined by"):
        replace(Schedule.preset("fastv"), query="all_text")
    assert replace(Schedule.preset("fastv"), keep=0.3).keep == 0.3


def test_a_top_k_pick_needs_a_score():
    with pytest.raises(InputError, match="'none' leaves the top-k of method progressive nothing to rank") as info:
        Schedule(score="none")
    assert info.value.field == "score"
    with pytest.raises(InputError, match="ranks nothing for the random pick"):
        Selector(pick="random")


def test_a_schedule_is_a_layout_and_a_selector():
    """Issue 15: how many (Layout) and which (Selector) are two concepts; a method is a registered pair."""
    assert METHODS == tuple(METHOD_SPECS)
    for name in METHODS:
        s, spec = Schedule.preset(name), METHOD_SPECS[name]
        assert s.spec is spec and Schedule(method=name) == s  # a setting not given takes the method's value
        assert isinstance(s.layout, Layout) and isinstance(s.selector, Selector)
        # The flat settings are the parts' settings.
        assert {k: getattr(s.layout, k) for k in LAYOUT_SETTINGS} == {k: getattr(s, k) for k in LAYOUT_SETTINGS}
        assert {k: getattr(s.selector, k) for k in SELECTOR_SETTINGS} == {k: getattr(s, k) for k in SELECTOR_SETTINGS}
        assert {k: getattr(s.combination, k) for k in COMBINE_SETTINGS} == {k: getattr(s, k) for k in COMBINE_SETTINGS}
        assert s.combination == Combine()  # no method merges unless asked
        assert set(s.to_dict()) == {"method", "name", *LAYOUT_SETTINGS, *SELECTOR_SETTINGS, *COMBINE_SETTINGS}
        for key, value in spec.definition.items():
            assert getattr(s, key) == value, (name, key)
        assert s.resolve(24) == s.layout.resolve(24)
        assert Schedule.from_parts(name, s.layout, s.selector) == s
        for again in (copy.deepcopy(s), pickle.loads(pickle.dumps(s))):
            assert again == s and again.layout == s.layout and again.selector == s.selector
        if s.resolve(24).prune_points:
            # The engine picks by method name today; the selector says the same.
            assert s.selector.pick == {"random": "random", "uniform": "uniform"}.get(name, "topk"), name
    assert Schedule.load("pyramiddrop") == Schedule.preset("pyramiddrop")
    assert Schedule.preset("pyramiddrop").layout.placement == "pyramid"
    assert Schedule.preset("none").layout.placement == "none"
    assert Schedule.preset("random").selector == Selector(score="none", pick="random")
    assert Schedule.preset("fastv").layout == Layout(first_prune=3, stages=1)
    with pytest.raises(InputError, match="pyramiddrop is defined by placement 'pyramid'"):
        Schedule.from_parts("pyramiddrop", Layout(keep=0.4), Selector(score="attention", query="last"))


def test_layout_and_selector_are_validated_on_their_own():
    assert Layout(stages=[2, 5], first_prune=2.0).stages == (2, 5)
    assert Layout(keep=0.3, first_prune=4, stages=4).resolve(24) == Schedule(keep=0.3, first_prune=4, stages=4).resolve(
        24
    )
    for make, match in [
        (lambda: Layout(keep=1.5), r"keep must lie in \(0, 1\]"),
        (lambda: Layout(placement="everywhere"), "placement 'everywhere' is not one of spread, pyramid, none"),
        (lambda: Layout(placement="none", keep=0.5), "must be 1 with method 'none'"),
        (lambda: Selector(pick="best"), "pick 'best' is not one of topk, random, uniform"),
        (lambda: Selector(ema=2), "ema must lie"),
    ]:
        with pytest.raises(InputError, match=match):
            make()


def test_the_method_table_refuses_bad_entries():
    spec = METHOD_SPECS["fastv"]
    with pytest.raises(ValueError, match="method 'fastv' is registered twice"):
        frozen_registry((spec, spec), "method")
    with pytest.raises(ValueError, match="not layout settings"):
        MethodSpec("mine", "x", layout={"score": "attention"})
    with pytest.raises(ValueError, match="a preset sets free settings only"):
        MethodSpec("mine", "x", layout={"stages": 1}, preset={"stages": 2})
    with pytest.raises(TypeError):
        spec.layout["stages"] = 2  # read-only


def test_presets_load_and_round_trip(tmp_path):
    """Every method loads by name from the package (no configs/ needed), and configs/schedules writes each out."""
    assert sorted(p.stem for p in CONFIGS.glob("*.yaml")) == sorted(METHODS)
    for name in METHODS:
        s = Schedule.load(name)
        assert s.method == name and s.name == name
        s.resolve(24)
        again = Schedule.from_dict(s.to_dict())
        assert again == s
        assert Schedule.load(CONFIGS / f"{name}.yaml") == s, name  # the written-out preset is the preset
    import yaml

    path = tmp_path / "mine.yaml"
    path.write_text(yaml.safe_dump({"schedule": {"method": "progressive", "keep": 0.4, "stages": [3, 8]}}))
    s = Schedule.load(str(path))
    assert s.stages == (3, 8) and s.name == "mine"


def test_none_keeps_everything():
    plan = Schedule.preset("none").resolve(8)
    assert plan.prune_points == () and plan.block_counts(7) == [7] * 8 and plan.average_keep(7) == 1.0


@pytest.mark.parametrize(
    ("kwargs", "depth", "match"),
    [
        ({"keep": 0.0}, 24, r"keep must lie in \(0, 1\]"),
        ({"keep": 1.5}, 24, r"keep must lie in \(0, 1\]"),
        ({"keep": None, "shape": "explicit", "ratios": [0.5, 0.7]}, 24, "non-increasing"),
        ({"keep": None, "shape": "explicit", "ratios": [0.5, 0.0]}, 24, r"lie in \(0, 1\]"),
        ({"keep": 0.3, "shape": "explicit", "ratios": [0.5]}, 24, "either explicit ratios or a keep"),
        ({"stages": [5, 3]}, 24, "strictly increasing"),
        ({"stages": [3, 30]}, 24, "outside the model"),
        ({"first_prune": 30}, 24, "past the depth"),
        ({"first_prune": 12, "keep": 0.2}, 24, "cannot be met"),
        ({"stages": 0}, 24, "at least 1"),
        ({"method": "magic"}, 24, "not one of"),
        ({"shape": "cosine"}, 24, "not one of"),
        ({"ema": 0.0}, 24, "ema must lie"),
        ({"stages": 9, "first_prune": 20}, 24, "do not fit"),
    ],
)
def test_bad_schedules_are_named(kwargs, depth, match):
    with pytest.raises(InputError, match=match):
        Schedule(**kwargs).resolve(depth)


def test_pyramiddrop_cannot_go_below_its_full_first_quarter():
    with pytest.raises(InputError, match="cannot be met"):
        Schedule.preset("pyramiddrop", keep=0.25).resolve(24)


def test_unknown_names_and_files(tmp_path):
    with pytest.raises(InputError, match="unknown schedule"):
        Schedule.load("fancy")
    with pytest.raises(InputError, match="does not exist"):
        Schedule.load(str(tmp_path / "x.yaml"))
    with pytest.raises(InputError, match="unknown schedule settings"):
        Schedule.from_dict({"method": "progressive", "keeep": 0.2})


def test_combine_settings_are_checked_and_round_trip(tmp_path):
    """DESIGN decision 14: ``combine: merge`` is a setting of any method, checked like the others."""
    s = Schedule.preset("random", keep=0.25, combine="merge", size_aware=False, merge_scope="window", merge_window=2)
    assert s.combination == Combine("merge", False, "window", 2) and s.combination.merges
    assert Schedule.from_dict(s.to_dict()) == s
    path = tmp_path / "m.yaml"
    path.write_text("method: progressive\nkeep: 0.25\ncombine: merge\n")
    assert Schedule.load(path).combination.merges
    for bad, field in (({"combine": "average"}, "combine"), ({"size_aware": "yes"}, "size_aware"),
                       ({"merge_scope": "clip"}, "merge_scope"), ({"merge_window": -1}, "merge_window")):  # fmt: skip
        with pytest.raises(InputError, match=field) as info:
            Schedule.preset("progressive", **bad)
        assert info.value.field == field


def test_plan_answers_stage_and_choosers():
    """DESIGN decision 16: one Plan answers "which stage is block b in" and "which block chooses cut c"."""
    plan = Plan(12, (3, 7, 10), (0.5, 0.25, 0.125))
    assert [plan.stage_of(b) for b in range(12)] == [0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 3, 3]
    assert [plan.keep_fraction(b) for b in (0, 3, 9, 11)] == [1.0, 0.5, 0.25, 0.125]
    able = [0, 2, 4, 5, 8]
    assert plan.choosers(able) == [(2,), (5,), (8,)]
    assert plan.choosers(able, ema=True) == [(0, 2), (4, 5), (8,)]
    assert Plan(12, (3, 4), (0.5, 0.25)).choosers(able, ema=True) == [(0, 2), (2,)]  # none since: the latest
    with pytest.raises(InputError, match="no attention block before it"):
        plan.choosers([5, 8], what="attention block")
