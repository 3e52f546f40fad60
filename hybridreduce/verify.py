"""``hybridreduce verify``: the invariants of DESIGN.md, run on tiny models or a checkpoint.

Each check returns :class:`CheckResult` rows ``{"arch", "check", "passed", "max_err"}`` (plus a
human-readable ``detail``). Checks of this module:

``roundtrip``            a tiny random model saved with ``save_pretrained`` and loaded back gives the
                         same logits (every tiny model is then used in its reloaded form).
``keep1_exact``          logits under ``capture`` (both Mamba scorers) are bit-identical to the
                         untouched model's.
``attention_rows``       the tapped attention rows and importance equal those computed from the eager
                         attention weights of the same checkpoint (float64 aggregation).
``mamba_reconstruction`` exact hidden attention rebuilt from ``in_proj`` reproduces the scan output
                         captured inside the mixer (``Σ_j α[i,j] x_j + D x_i`` at the gated norm's
                         input, or gated at ``out_proj``'s input); the fast α and both importance
                         modes equal the float64 loop references.
``hooks_removed``        no hook and no AttentionInterface override survives a capture, also when
                         the forward raises inside it.
``batch_equivalence``    a left-padded batch of two prompts of different lengths gives the same
                         scores as each prompt alone.

The reduction engine's checks (``reduce_keep1_exact``, ``prune_reference``, ``generate_reference``,
``batch_reduce``) live in :mod:`hybridreduce.verify_reduce` and run after these.
"""

from __future__ import annotations

import inspect
import tempfile
from contextlib import contextmanager
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
import torch.nn.functional as F

from . import compat, validate
from .adapters import AdaptedModel, get_adapter
from .errors import HybridReduceError, InputError
from .scoring.config import ScorerConfig
from .scoring.mamba import (
    mamba1_hidden_attention,
    mamba1_importance,
    mamba1_primitives,
    mamba2_hidden_attention,
    mamba2_importance,
    mamba2_primitives,
)
from .scoring.reference import (
    importance_ref,
    mamba1_hidden_attention_ref,
    mamba1_scan_ref,
    mamba2_hidden_attention_ref,
    mamba2_scan_ref,
)
from .taps import ATTENTION_DISPATCH, capture
from .tiny import (
    TINY_CONFIGS,
    SyntheticPrompt,
    build_tiny_model,
    left_pad,
    make_prompt,
    reference_rows,
    two_sample_batch,
)

CHECKS = (
    "roundtrip",
    "keep1_exact",
    "attention_rows",
    "mamba_reconstruction",
    "hooks_removed",
    "batch_equivalence",
    "reduce_keep1_exact",
    "prune_reference",
    "generate_reference",
    "batch_reduce",
)

# float32 tolerances; errors are printed so that a drift shows before it fails.
ATOL_SCORES = 2e-5  # importance vectors and attention probabilities (values in [0, 1])
RTOL_SCAN = 1e-4  # scan reconstruction, relative to the largest |y|
ATOL_LOGITS = 1e-5  # logits of tiny models (|logit| ≲ 1), same ops in another order (verify_reduce)
TIE = 1e-5  # a greedy step whose top-2 logits are this close is a tie, not a divergence (verify_reduce)

#: Tolerances by the dtype the models run in (``hybridreduce verify --dtype``). In bfloat16 and float16 the
#: activations are rounded to 8 and 11 mantissa bits, so one value computed along two paths (tapped vs eager
#: attention, the scan vs its reconstruction from ``in_proj``, a cached decode step vs a no-cache forward)
#: differs by a few such roundings. The half-precision values are about 4x the largest errors measured on CPU
#: over every tiny architecture (bfloat16: scores 1.4e-4, scan 7.4e-3, logits 2.3e-2; float16: 5.0e-5, 6.7e-4,
#: 2.9e-3; transformers 5.24, torch 2.13). Scorer-vs-reference comparisons on the same float32 primitives keep
#: the float32 tolerance, and the bit-identity checks stay bit-identical, in every dtype. ``tie``: a greedy step
#: whose top-2 logits are this close is a tie, not a divergence (the logits' own tolerance).
TOLERANCES = {
    torch.float32: {"scores": ATOL_SCORES, "scan": RTOL_SCAN, "logits": ATOL_LOGITS, "tie": TIE},
    torch.bfloat16: {"scores": 1e-3, "scan": 3e-2, "logits": 1e-1, "tie": 1e-1},
    torch.float16: {"scores": 4e-4, "scan": 3e-3, "logits": 1.5e-2, "tie": 1.5e-2},
}
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class Target:
    """Where the checks run: models are moved to ``device`` in ``dtype``, prompts are built on ``device``.

    The float64 references loop on the CPU; what runs on the device is compared with them there.
    """

    device: torch.device = torch.device("cpu")
    dtype: torch.dtype = torch.float32

    def tol(self, name: str) -> float:
        """The tolerance ``name`` (a key of :data:`TOLERANCES`) for this dtype."""
        return TOLERANCES[self.dtype][name]


#: The current target; :func:`on` sets it for the checks run inside it (default: cpu, float32).
TARGET = Target()


@contextmanager
def on(device=None, dtype: torch.dtype | str | None = None):
    """Run the checks inside on ``device`` (default cpu) in ``dtype`` (default float32).

    On CUDA, float32 means IEEE float32: TF32 matmuls and convolutions are off inside (and restored after).
    """
    dtype = DTYPES[dtype] if isinstance(dtype, str) else dtype
    saved = (TARGET.device, TARGET.dtype)
    tf32 = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    TARGET.device, TARGET.dtype = torch.device(device or "cpu"), dtype or torch.float32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield TARGET
    finally:
        TARGET.device, TARGET.dtype = saved
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32


def _to_target(model):
    """``model`` on the target device in the target dtype (unchanged on cpu, float32)."""
    return model.to(device=TARGET.device, dtype=TARGET.dtype)


@dataclass
class CheckResult:
    arch: str
    check: str
    passed: bool
    max_err: float | None
    detail: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


def _vocab(model) -> int:
    return int(model.get_input_embeddings().num_embeddings)


def _forward(model, input_ids, attention_mask=None, position_ids=None):
    """First output tensor (logits, or hidden states for a bare decoder) of a no-cache forward.

    With a padding mask, models that take position ids get ones that skip the padding, as
    ``generate`` does, unless ``position_ids`` gives them.
    """
    kwargs = {}
    if attention_mask is not None:
        kwargs["attention_mask"] = attention_mask
        if "position_ids" in inspect.signature(model.forward).parameters:
            if position_ids is None:
                position_ids = (attention_mask.long().cumsum(-1) - 1).clamp_min(0)
            kwargs["position_ids"] = position_ids
    with torch.no_grad():
        out = model(input_ids=input_ids, use_cache=False, **kwargs)
    return out[0]


def _hook_state(model) -> tuple:
    counts = tuple(
        (name, len(m._forward_hooks), len(m._forward_pre_hooks), len(m._backward_hooks))
        for name, m in model.named_modules()
    )
    return counts, compat.local_attention_registrations(), len(ATTENTION_DISPATCH.callbacks)


# --------------------------------------------------------------------------------------------------
# Checks
# --------------------------------------------------------------------------------------------------
def check_keep1_exact(arch: str, model, prompt: SyntheticPrompt) -> CheckResult:
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


def check_attention_rows(arch: str, model, prompt: SyntheticPrompt, eager_model) -> CheckResult:
    adapted = get_adapter(model)
    attn_blocks = [b for b in adapted.blocks if b.attn is not None]
    if not attn_blocks:
        return CheckResult(arch, "attention_rows", True, None, "skipped: no attention blocks")
    ids, vm = two_sample_batch(prompt)
    eager_adapted = get_adapter(eager_model)
    weights: dict[int, torch.Tensor] = {}
    handles = [
        spec.attn.register_forward_hook(lambda m, a, out, i=spec.index: weights.__setitem__(i, out[1].detach()))
        for spec in eager_adapted.blocks
        if spec.attn is not None
    ]
    try:
        _forward(eager_model, ids)
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


def check_mamba_reconstruction(arch: str, model, prompt: SyntheticPrompt) -> CheckResult:
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


def check_hooks_removed(arch: str, model, prompt: SyntheticPrompt) -> CheckResult:
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
    from .engine import reduce

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


def check_batch_equivalence(arch: str, model) -> CheckResult:
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


# --------------------------------------------------------------------------------------------------
# Runners
# --------------------------------------------------------------------------------------------------
def _roundtrip(arch: str, tmp: Path):
    from transformers import AutoModelForCausalLM

    model = build_tiny_model(arch, seed=0)
    model.save_pretrained(tmp)
    loaded = AutoModelForCausalLM.from_pretrained(tmp, dtype=torch.float32).eval()
    ids = make_prompt(_vocab(model), 4, 24, 8, seed=0).input_ids  # save and load: CPU, float32
    #  # save and load: CPU, float32
    a, b = _forward(model, ids), _forward(loaded, ids)
    result = CheckResult(
        arch, "roundtrip", torch.equal(a, b), float((a - b).abs().max()), "save_pretrained → from_pretrained"
    )
    return loaded, result


def load_language_model(path: Path, attn_implementation: str | None = None):
    """Load a checkpoint directory and return its language model (unwrapping a VLM), in float32."""
    from transformers import AutoModelForCausalLM, AutoModelForImageTextToText

    kwargs = {"dtype": torch.float32}
    if attn_implementation is not None:
        kwargs["attn_implementation"] = attn_implementation
    try:
        model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    except ValueError:  # a vision-language checkpoint: no causal-LM mapping for its config
        model = AutoModelForImageTextToText.from_pretrained(path, **kwargs)
    return get_adapter(model).text_model.eval()


def _load_eager(path: Path, model):
    if get_adapter(model).attn_implementation == "eager":
        return model
    return _to_target(load_language_model(path, attn_implementation="eager"))


def run_checks(arch: str, model, path: Path | None, prompt: SyntheticPrompt) -> list[CheckResult]:
    """Run every check but ``roundtrip`` on a loaded model (``path``: its checkpoint directory)."""
    results = [check_keep1_exact(arch, model, prompt)]
    has_attn = any(b.attn is not None for b in get_adapter(model).blocks)
    eager = _load_eager(path, model) if (has_attn and path is not None) else model
    results.append(check_attention_rows(arch, model, prompt, eager))
    results.append(check_mamba_reconstruction(arch, model, prompt))
    results.append(check_hooks_removed(arch, model, prompt))
    results.append(check_batch_equivalence(arch, model))
    from .verify_reduce import reduction_checks

    results.extend(reduction_checks(arch, model, prompt))
    return results


def verify_arch(arch: str, device=None, dtype: torch.dtype | str | None = None) -> list[CheckResult]:
    """All checks on the tiny random model of ``arch``, on ``device`` in ``dtype`` (default cpu, float32).

    The save/load round trip runs on the CPU in float32; the model it loads is then moved (:func:`on`).
    """
    with on(device, dtype), tempfile.TemporaryDirectory(prefix=f"hybridreduce-{arch}-") as tmp:
        model, rt = _roundtrip(arch, Path(tmp))
        model = _to_target(model)
        prompt = make_prompt(_vocab(model), 4, 24, 8, seed=0, device=TARGET.device)
        return [rt, *_guarded(arch, lambda: run_checks(arch, model, Path(tmp), prompt))]


def verify_model(path: str | Path) -> list[CheckResult]:
    """All checks on a checkpoint directory: its language model (a VLM is unwrapped), synthetic prompt."""
    # A directory, a config.json that is a JSON object, weights: each refused with one line before transformers runs.
    path = validate.checkpoint_dir(path, "model (--model)")
    from safetensors import SafetensorError

    try:
        model = load_language_model(path)
    except HybridReduceError:
        raise
    except (OSError, ValueError, KeyError, SafetensorError) as exc:  # a config or weights transformers cannot read
        import transformers

        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InputError(
            f"model (--model) {str(path)!r}: transformers {transformers.__version__} cannot load it ({first}); check "
            "config.json's model_type and the weight files, or save the model again with save_pretrained"
        ) from None
    adapted: AdaptedModel = get_adapter(model)
    prompt = make_prompt(_vocab(adapted.text_model), 4, 24, 8, seed=0, device=TARGET.device)
    return _guarded(adapted.model_type, lambda: run_checks(adapted.model_type, model, path, prompt))


def _guarded(arch: str, fn) -> list[CheckResult]:
    try:
        return fn()
    except HybridReduceError as exc:
        return [CheckResult(arch, "error", False, None, f"{type(exc).__name__}: {exc}")]


def available_archs() -> list[str]:
    return list(TINY_CONFIGS)
