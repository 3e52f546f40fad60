"""The record of a stateful-retention probe (:func:`analysis.retention.retention_probe`) and its tables.

:class:`RetentionReport` holds one :class:`ProbeResult` per (configuration, condition, feature, target) and one
:class:`TaskGroup` per (configuration, group of samples); :meth:`RetentionReport.summary` puts the three
conditions of a probe side by side (``retained = cut − input_drop``, ``lost = full − cut``),
:meth:`RetentionReport.to_rows` gives the CSV tables and :meth:`RetentionReport.to_dict` the JSON. The conditions,
features, targets and groups are those of :mod:`analysis.retention`'s docstring.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

from hybridreduce.errors import InputError

__all__ = ["CONDITIONS", "FEATURES", "GROUPS", "TARGETS", "ProbeResult", "RetentionReport", "TaskGroup"]

#: How each sample is run: every token, the cut, the dropped tokens never entering the model.
CONDITIONS = ("full", "cut", "input_drop")
#: What is read out of the final hidden states.
FEATURES = ("answer", "visual_mean")
#: What the probes predict about the dropped tokens.
TARGETS = ("dropped_event_tokens", "dropped_only_colours")
#: The task-accuracy groups: how many of a sample's relevant tokens the cut kept.
GROUPS = ("all", "some", "none", "total")


@dataclass
class ProbeResult:
    """One probe: a (configuration, condition, feature, target).

    Attributes:
        block, kind: the cut block ℓ and its kind. keep: the requested share; n_kept: ``k``.
        selector: how the keep set was chosen. condition: one of :data:`CONDITIONS`.
        feature: one of :data:`FEATURES`. target: one of :data:`TARGETS`.
        metric: ``r2`` or ``auc``. score: held-out value (None when undefined, see ``note``); stderr: its
            bootstrap standard error (:func:`bootstrap_stderr`).
        baseline: held-out R² of the training mean, or 0.5 (AUC chance).
        accuracy, majority: classification accuracy of the probe and of the majority label (``auc`` only).
        n_labels: outputs the score averages over. target_mean: mean of the target over all samples
            (for colours: the mean positive rate).
    """

    block: int
    kind: str
    keep: float
    n_kept: int
    selector: str
    condition: str
    feature: str
    target: str
    metric: str
    score: float | None
    baseline: float | None
    accuracy: float | None
    majority: float | None
    n_labels: int
    target_mean: float
    note: str | None = None
    stderr: float | None = None


@dataclass
class TaskGroup:
    """Multiple-choice accuracy of one configuration's samples grouped by their surviving relevant tokens.

    Attributes:
        group: ``all`` (no relevant token dropped), ``some``, ``none`` (all dropped) or ``total``.
        n: samples in the group. accuracy, input_drop_accuracy, full_accuracy: accuracy of those samples under
            the cut, with the dropped tokens removed from the input, and at full tokens (None when ``n = 0``).
    """

    block: int
    kind: str
    keep: float
    n_kept: int
    selector: str
    group: str
    n: int
    accuracy: float | None
    input_drop_accuracy: float | None
    full_accuracy: float | None


@dataclass
class RetentionReport:
    """:func:`retention_probe` output.

    Attributes:
        blocks, keeps, selectors: the configurations (every combination is reported).
        block_kinds: kind of every block of the model.
        n_visual: ``V``. n_train, n_test: probe split sizes. colours: the outputs of ``dropped_only_colours``.
        probes: one :class:`ProbeResult` per (block, keep, selector, condition, feature, target).
        task: one :class:`TaskGroup` per (block, keep, selector, group).
        settings: seed, scorer, batch size.
    """

    blocks: list[int]
    keeps: list[float]
    selectors: list[str]
    block_kinds: list[str]
    n_visual: int
    n_train: int
    n_test: int
    colours: list[str]
    probes: list[ProbeResult] = field(default_factory=list)
    task: list[TaskGroup] = field(default_factory=list)
    settings: dict[str, Any] = field(default_factory=dict)

    def probe(self, block: int, keep: float, selector: str, condition: str, feature: str, target: str) -> ProbeResult:
        """The one probe of these coordinates."""
        key = (block, float(keep), selector, condition, feature, target)
        for p in self.probes:
            if (p.block, p.keep, p.selector, p.condition, p.feature, p.target) == key:
                return p
        raise InputError(f"no probe for block {block}, keep {keep}, {selector}, {condition}, {feature}, {target}")

    def summary(self) -> list[dict[str, Any]]:
        """Per (block, keep, selector, feature, target): the three conditions' scores and standard errors side by
        side, with ``retained = cut − input_drop``, its ``retained_stderr`` (``sqrt(se_cut² + se_input_drop²)``:
        the two probes are scored on the same test samples, so this unpaired error is conservative) and
        ``lost = full − cut`` (None where a score is None)."""
        rows: dict[tuple, dict[str, Any]] = {}
        for p in self.probes:
            key = (p.block, p.keep, p.selector, p.feature, p.target)
            row = rows.setdefault(
                key,
                {
                    "block": p.block,
                    "kind": p.kind,
                    "keep": p.keep,
                    "n_kept": p.n_kept,
                    "selector": p.selector,
                    "feature": p.feature,
                    "target": p.target,
                    "metric": p.metric,
                },
            )
            row[f"score_{p.condition}"] = p.score
            row[f"stderr_{p.condition}"] = p.stderr
            row[f"baseline_{p.condition}"] = p.baseline
        out = []
        for row in rows.values():
            full, cut, drop = (row.get(f"score_{c}") for c in ("full", "cut", "input_drop"))
            row["retained"] = cut - drop if cut is not None and drop is not None else None
            se_cut, se_drop = row.get("stderr_cut"), row.get("stderr_input_drop")
            row["retained_stderr"] = math.hypot(se_cut, se_drop) if se_cut is not None and se_drop is not None else None
            row["lost"] = full - cut if full is not None and cut is not None else None
            out.append(row)
        return out

    def to_rows(self, table: str = "probe") -> list[dict[str, Any]]:
        """Flat rows with one set of keys per table, for CSV: ``probe`` (one per :class:`ProbeResult`),
        ``summary`` (:meth:`summary`) or ``task`` (one per :class:`TaskGroup`)."""
        if table == "probe":
            return [asdict(p) for p in self.probes]
        if table == "task":
            return [asdict(t) for t in self.task]
        if table == "summary":
            return self.summary()
        raise InputError(f"table must be 'probe', 'summary' or 'task', got {table!r}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (no NaN: undefined values are None)."""
        return {
            "blocks": list(self.blocks),
            "keeps": list(self.keeps),
            "selectors": list(self.selectors),
            "block_kinds": list(self.block_kinds),
            "n_visual": self.n_visual,
            "n_train": self.n_train,
            "n_test": self.n_test,
            "colours": list(self.colours),
            "conditions": list(CONDITIONS),
            "features": list(FEATURES),
            "targets": list(TARGETS),
            "settings": dict(self.settings),
            "probes": self.to_rows("probe"),
            "summary": self.summary(),
            "task": self.to_rows("task"),
        }
