"""The scoring invariants of DESIGN.md: capture leaves the model alone and its scores equal the references.

Each check is registered with :func:`~hybridreduce.checks.common.invariant` and says in its docstring what it
asserts; ``hybridreduce verify`` runs them in the order of this file (``roundtrip`` first, so that every tiny
model is checked in its reloaded form), before those of :mod:`hybridreduce.checks.reduction`.
"""

from __future__ import annotations

from dataclasses import fields

import torch
import torch.nn.functional as F

from .. import compat
from ..adapters import get_adapter
from ..errors import InputError
from ..scoring.config import ScorerConfig
from ..scoring.mamba import (
    mamba1_hidden_attention,
    mamba1_importance,
    mamba1_primitives,
    mamba2_hidden_attention,
    mamba2_importance,
    mamba2_primitives,
)
from ..scoring.reference import (
    importance_ref,
    mamba1_hidden_attention_ref,
    mamba1_scan_ref,
    mamba2_hidden_attention_ref,
    mamba2_scan_ref,
)
from ..taps import ATTENTION_DISPATCH, capture
from ..tiny_models import SyntheticPrompt, left_pad, make_prompt, reference_rows, two_sample_batch
from .common import ATOL_SCORES, RTOL_SCAN, TARGET, CheckResult, _forward, _vocab, invariant


@invariant("roundtrip", needs=("built", "loaded"))
def check_roundtrip(arch: str, built, loaded) -> CheckResult:
    """A tiny random model saved with ``save_pretrained`` and loaded back gives the same logits.

    Every tiny model is then checked in its reloaded form. Save and load run on the CPU in float32.
    """
    ids = make_prompt(_vocab(built), 4, 24, 8, seed=0).input_ids  # save and load: CPU, float32
    a, b = _forward(built, ids), _forward(loaded, ids)
    return CheckResult(
        arch, "roundtrip", torch.equal(a, b), float((a - b).abs().max()), "save_pretrained → from_pretrained"
    )


def _hook_state(model) -> tuple:
    counts = tuple(
        (name, len(m._forward_hooks), len(m._forward_pre_hooks), len(m._backward_hooks))
        for name, m in model.named_modules()
    )
    return counts, compat.local_attention_registrations(), len(ATTENTION_DISPATCH.callbacks)


# --------------------------------------------------------------------------------------------------
# Checks
# --------------------------------------------------------------------------------------------------
@invariant("keep1_exact", needs=("model", "prompt"))
def check_keep1_exact(arch: str, model, prompt: SyntheticPrompt) -> CheckResult:
    """Logits under ``capture`` (both Mamba scorers) are bit-identical to the untouched model's."""
    ids = prompt.input_ids.repeat(2, 1)
    vm = prompt.visual_mask.repeat(2, 1)
    ref = _forward(model, ids)
    worst, ok = 0.0, True
    for mode in ("decay_free", "exact"):
        with capture(model, vm, scorer=mode) as cache:
            out = _forward(model, ids)
        ok &= torch.equal(ref, out) and len(cache) > 0
        worst = max(worst, float((ref - out).abs().max()))
    return CheckResult(arch, "keep1_exact", ok, worst, "logits bit-identical under capture (both Mamba scorers)")


@invariant("attention_rows", needs=("model", "prompt", "eager"))
def check_attention_rows(arch: str, model, prompt: SyntheticPrompt, eager) -> CheckResult:
    """The tapped attention rows and importance equal those computed from the eager attention weights of the
    same checkpoint (float64 aggregation).
    """
    adapted = get_adapter(model)
    attn_blocks = [b for b in adapted.blocks if b.attn is not None]
    if not attn_blocks:
        return CheckResult(arch, "attention_rows", True, None, "skipped: no attention blocks")
    ids, vm = two_sample_batch(prompt)
    eager_adapted = get_adapter(eager)
    weights: dict[int, torch.Tensor] = {}
    handles = [
        spec.attn.register_forward_hook(lambda m, a, out, i=spec.index: weights.__setitem__(i, out[1].detach()))
        for spec in eager_adapted.blocks
        if spec.attn is not None
    ]
    try:
        _forward(eager, ids)
    finally:
        for h in handles:
            h.remove()
    cfg = ScorerConfig(record_rows=True)
    with capture(model, vm, scorer=cfg) as cache:
        _forward(model, ids)
    with capture(model, vm, scorer=ScorerConfig(head_reduce="max")) as cache_max:
        _forward(model, ids)
    T = ids.shape[1]
    q_rows, v_cols = reference_rows(vm)
    worst = 0.0
    for spec in attn_blocks:
        w = weights[spec.index].float().cpu()  # [b, h, T, T] eager softmax
        q_index = torch.tensor(q_rows)
        eager_rows = w.gather(2, q_index[:, None, :, None].expand(2, w.shape[1], len(q_rows[0]), T))
        worst = max(worst, float((cache.rows[spec.index].cpu() - eager_rows).abs().max()))
        for head_reduce, scored in (("mean", cache), ("max", cache_max)):
            ref = importance_ref(w, q_rows, v_cols, head_reduce=head_reduce).float()
            worst = max(worst, float((scored.parts[spec.index]["attn"].cpu() - ref).abs().max()))
    return CheckResult(
        arch,
        "attention_rows",
        worst <= TARGET.tol("scores"),
        worst,
        f"{len(attn_blocks)} attention blocks ({adapted.attn_implementation}) vs eager weights",
    )


def _gated(y: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
    return y * F.silu(gate)


@invariant("mamba_reconstruction", needs=("model", "prompt"))
def check_mamba_reconstruction(arch: str, model, prompt: SyntheticPrompt) -> CheckResult:
    """Exact hidden attention rebuilt from ``in_proj`` reproduces the scan output captured inside the mixer.

    The scan output is ``Σ_j α[i,j] x_j + D x_i`` at the gated norm's input, or gated at ``out_proj``'s input;
    the fast α and both importance modes equal the float64 loop references.
    """
    adapted = get_adapter(model)
    ssm_blocks = [b for b in adapted.blocks if b.ssm is not None]
    if not ssm_blocks:
        return CheckResult(arch, "mamba_reconstruction", True, None, "skipped: no Mamba blocks")
    ids, vm = two_sample_batch(prompt)
    seen: dict[int, dict] = {spec.index: {} for spec in ssm_blocks}
    handles = []
    for spec in ssm_blocks:
        rec = seen[spec.index]
        mixer = spec.ssm
        handles.append(
            mixer.in_proj.register_forward_hook(lambda m, a, out, r=rec: r.__setitem__("proj", out.detach()))
        )
        # Where the scan output is observable: the gated RMSNorm's input (y before gating), or, for
        # mixers that gate without a norm (Jamba; Falcon-H1 with mamba_rms_norm=False), out_proj's
        # input (y · silu(z)).
        norm = getattr(mixer, "norm", None)
        if spec.ssm_type == "mamba2" and norm is not None and getattr(mixer, "mamba_rms_norm", True):
            handles.append(norm.register_forward_pre_hook(lambda m, a, r=rec: r.__setitem__("y", a[0].detach())))
            rec["gated"] = False
        else:
            handles.append(
                mixer.out_proj.register_forward_pre_hook(lambda m, a, r=rec: r.__setitem__("y", a[0].detach()))
            )
            rec["gated"] = True
    try:
        _forward(model, ids)
    finally:
        for h in handles:
            h.remove()
    with torch.no_grad():
        return _compare_reconstruction(arch, ssm_blocks, seen, ids, vm)


def _on_cpu(p):
    """Primitives (a dataclass of tensors) on the CPU, where the float64 references loop."""
    return type(p)(**{f.name: getattr(p, f.name).cpu() for f in fields(p)})


def _compare_reconstruction(arch, ssm_blocks, seen, ids, vm) -> CheckResult:
    worst_scan, worst_alpha, worst_imp = 0.0, 0.0, 0.0
    T = ids.shape[1]
    all_idx = torch.arange(T, device=ids.device).expand(2, T)
    q_rows, v_cols = reference_rows(vm)
    q_index, v_index = torch.tensor(q_rows, device=ids.device), torch.tensor(v_cols, device=ids.device)
    q_valid = torch.ones_like(q_index, dtype=torch.bool)
    for spec in ssm_blocks:
        rec = seen[spec.index]
        # The primitives and the fast paths run where the model runs; the references on their CPU copy.
        if spec.ssm_type == "mamba1":
            p = mamba1_primitives(spec.ssm, rec["proj"])
            alpha = mamba1_hidden_attention(p, all_idx, all_idx)  # [b, c, T, T]
            y = (torch.einsum("bcij,bjc->bic", alpha, p.x) + p.D * p.x).cpu()
            pc = _on_cpu(p)
            alpha_ref = mamba1_hidden_attention_ref(pc)
            y_ref = mamba1_scan_ref(pc)
            free_ref = mamba1_hidden_attention_ref(pc, decay=False)
            importance = mamba1_importance
        else:
            p = mamba2_primitives(spec.ssm, rec["proj"])
            alpha = mamba2_hidden_attention(p, all_idx, all_idx)  # [b, h, T, T]
            y = (torch.einsum("bhij,bjhp->bihp", alpha, p.x) + p.D[:, None] * p.x).flatten(2).cpu()
            pc = _on_cpu(p)
            alpha_ref = mamba2_hidden_attention_ref(pc)
            y_ref = mamba2_scan_ref(pc).flatten(2)
            free_ref = mamba2_hidden_attention_ref(pc, decay=False)
            importance = mamba2_importance
        alpha = alpha.cpu()
        target = rec["y"].float().cpu()
        if rec["gated"]:
            y, y_ref = _gated(y, pc.gate), _gated(y_ref, pc.gate.double())
        scale = float(target.abs().max()) or 1.0
        worst_scan = max(
            worst_scan, float((y - target).abs().max()) / scale, float((y_ref - target).abs().max()) / scale
        )
        worst_alpha = max(
            worst_alpha, float((alpha.double() - alpha_ref).abs().max()) / (float(alpha_ref.abs().max()) or 1.0)
        )
        for mode, ref_w in (("exact", alpha_ref), ("decay_free", free_ref)):
            for hr in ("mean", "max"):
                cfg = ScorerConfig(mamba=mode, head_reduce=hr, query_reduce="max" if hr == "max" else "mean")
                got = importance(p, q_index, q_valid, v_index, cfg).cpu()
                ref = importance_ref(ref_w, q_rows, v_cols, head_reduce=hr, query_reduce=cfg.query_reduce)
                worst_imp = max(worst_imp, float((got.double() - ref).abs().max()))
    passed = worst_scan <= TARGET.tol("scan") and worst_alpha <= RTOL_SCAN and worst_imp <= ATOL_SCORES
    detail = (
        f"{len(ssm_blocks)} {ssm_blocks[0].ssm_type} blocks; scan rel err {worst_scan:.1e}, "
        f"alpha vs float64 ref {worst_alpha:.1e}, importance vs ref {worst_imp:.1e}"
    )
    return CheckResult(arch, "mamba_reconstruction", passed, worst_scan, detail)


@invariant("hooks_removed", needs=("model", "prompt"))
def check_hooks_removed(arch: str, model, prompt: SyntheticPrompt) -> CheckResult:
    """No hook and no AttentionInterface override survives a capture or a reduction, also when the forward
    raises inside it (in the body or in a hook).
    """
    before = _hook_state(model)
    ids, vm = prompt.input_ids, prompt.visual_mask
    with capture(model, vm) as cache:
        _forward(model, ids)
    after_ok = _hook_state(model)
    raised = False
    try:
        with capture(model, vm):
            _forward(model, ids)
            raise RuntimeError("boom")
    except RuntimeError:
        raised = True
    after_exc = _hook_state(model)
    raised_in_hook = False
    try:
        with capture(model, torch.ones(1, ids.shape[1] + 3, dtype=torch.bool)):
            _forward(model, ids)  # the mask's length does not match: the decoder pre-hook raises
    except InputError:
        raised_in_hook = True
    after_hook_exc = _hook_state(model)
    reduced = _reduce_hooks_removed(model, prompt)
    passed = (
        len(cache) > 0
        and raised
        and raised_in_hook
        and reduced
        and before == after_ok == after_exc == after_hook_exc == _hook_state(model)
    )
    return CheckResult(
        arch,
        "hooks_removed",
        passed,
        None,
        "capture and reduce: after a normal exit, an exception in the body and one in a hook",
    )


def _reduce_hooks_removed(model, prompt: SyntheticPrompt) -> bool:
    """The same three exits for a reduction context; ``True`` when each left no hook behind."""
    from ..engine import reduce

    before = _hook_state(model)
    ids, vm = prompt.input_ids, prompt.visual_mask
    sched = {"method": "progressive", "keep": 0.5, "first_prune": 1, "stages": 1}
    with reduce(model, sched, visual_mask=vm) as red:
        _forward(model, ids)
    ok = red.prefills == 1 and _hook_state(model) == before
    try:
        with reduce(model, sched, visual_mask=vm):
            _forward(model, ids)
            raise RuntimeError("boom")
    except RuntimeError:
        ok &= _hook_state(model) == before
    try:
        with reduce(model, sched, visual_mask=vm[:, :-1]):
            _forward(model, ids)
        ok = False
    except InputError:
        ok &= _hook_state(model) == before
    return ok


@invariant("batch_equivalence", needs=("model",))
def check_batch_equivalence(arch: str, model) -> CheckResult:
    """A left-padded batch of two prompts of different lengths gives the same scores as each prompt alone."""
    vocab = _vocab(model)
    prompts = [
        make_prompt(vocab, 3, 24, 9, seed=1, device=TARGET.device),
        make_prompt(vocab, 6, 24, 3, seed=2, device=TARGET.device),
    ]
    ids, am, vm = left_pad(prompts, device=TARGET.device)
    worst = 0.0
    for mode in ("decay_free", "exact"):
        with capture(model, vm, scorer=mode) as batched:
            _forward(model, ids, am)
        for i, p in enumerate(prompts):
            with capture(model, p.visual_mask, scorer=mode) as alone:
                _forward(model, p.input_ids)
            if batched.layers != alone.layers:
                return CheckResult(arch, "batch_equivalence", False, None, "different scored blocks")
            diff = (batched.stack()[:, i] - alone.stack()[:, 0]).abs().max()
            worst = max(worst, float(diff))
    return CheckResult(
        arch,
        "batch_equivalence",
        worst <= TARGET.tol("scores"),
        worst,
        "left-padded batch of 2 vs each alone (both scorers)",
    )
