"""``hybridreduce verify``: the runner prints every registered check, and the checks can fail.

That every check passes on every tiny architecture is ``tests/test_invariants.py`` (one test per check).
"""

from __future__ import annotations

import dataclasses
import json

import pytest

from hybridreduce import cli
from hybridreduce.checks import INVARIANTS, CheckResult, Subject, invariant, reduction, scoring
from hybridreduce.tiny_models import make_prompt


def test_registry_refuses_a_bad_registration(monkeypatch):
    monkeypatch.setattr("hybridreduce.checks.common.INVARIANTS", dict(INVARIANTS))
    with pytest.raises(ValueError, match="registered twice"):
        invariant("keep1_exact", needs=("model",))(lambda arch, model: None)
    with pytest.raises(ValueError, match="unknown needs"):
        invariant("new_check", needs=("tokenizer",))(lambda arch, tokenizer: None)
    with pytest.raises(TypeError, match=r"must be \['arch', 'model', 'prompt'\]"):
        invariant("new_check", needs=("model", "prompt"))(lambda arch, prompt, model: None)


def test_subject_builds_each_need_once(tmp_path):
    subject = Subject.tiny("llama", tmp_path)
    assert subject.get("model") is subject.get("loaded") and subject.get("eager") is subject.get("eager")
    assert (tmp_path / "config.json").is_file()
    bare = Subject.checkpoint("llama", subject.get("model"), None)
    assert not INVARIANTS["roundtrip"].applies(bare) and INVARIANTS["attention_rows"].applies(bare)
    assert bare.get("eager") is bare.get("model")  # no checkpoint to load an eager copy from
    with pytest.raises(ValueError, match="run this check on a tiny model"):
        bare.get("built")


def test_reconstruction_check_catches_a_wrong_primitive(monkeypatch, tiny_models):
    """Drop Falcon-H1's muP multipliers from the rebuilt primitives: the check must fail."""
    model = tiny_models("falcon_h1")
    real = scoring.mamba2_primitives

    def without_mup(mixer, projected, mask=None):
        saved = mixer.mup_vector
        try:
            del mixer.mup_vector
            mixer.mup_vector = None
            return real(mixer, projected, mask)
        finally:
            mixer.mup_vector = saved

    monkeypatch.setattr(scoring, "mamba2_primitives", without_mup)
    result = scoring.check_mamba_reconstruction("falcon_h1", model, make_prompt(96, 4, 24, 8, 0))
    assert not result.passed and result.max_err > 1e-2


def test_attention_check_catches_wrong_rows(monkeypatch, tiny_models):
    """Score with a wrong softmax scale: the comparison with eager weights must fail."""
    import hybridreduce.taps as taps

    real = taps.attention_rows
    monkeypatch.setattr(taps, "attention_rows", lambda q, k, m, s, i, c=None: real(q, k, m, s * 3.0, i, c))
    from hybridreduce.tiny_models import build_tiny_model

    model = build_tiny_model("llama")
    model.model.layers[0].self_attn.q_proj.weight.data *= 20  # make attention far from uniform
    eager = build_tiny_model("llama", attn_implementation="eager")
    eager.load_state_dict(model.state_dict())
    result = scoring.check_attention_rows("llama", model, make_prompt(96, 4, 24, 8, 0), eager)
    assert not result.passed


def test_cli_json(capsys):
    """The names ``verify`` prints are the registry's, in its order (scoring checks first, then the engine's)."""
    code = cli.main(["verify", "--arch", "llama", "--json"])
    rows = json.loads(capsys.readouterr().out)
    assert code == 0
    assert [r["check"] for r in rows] == list(INVARIANTS)
    assert all(set(r) == {"arch", "check", "passed", "max_err"} for r in rows)
    assert {inv.fn.__module__ for inv in INVARIANTS.values()} == {scoring.__name__, reduction.__name__}
    assert list(INVARIANTS)[0] == "roundtrip" and list(INVARIANTS)[-1] == "merge_batch_reduce"


def test_cli_exit_status_is_one_on_failure(monkeypatch, capsys):
    failing = dataclasses.replace(
        INVARIANTS["hooks_removed"], fn=lambda arch, model, prompt: CheckResult(arch, "hooks_removed", False, None)
    )
    monkeypatch.setitem(INVARIANTS, "hooks_removed", failing)
    assert cli.main(["verify", "--arch", "llama"]) == 1
    assert "FAIL" in capsys.readouterr().out


def test_cli_model_directory(tmp_path, capsys):
    from hybridreduce.tiny_models import build_tiny_model

    build_tiny_model("jamba").save_pretrained(tmp_path / "ckpt")
    assert cli.main(["verify", "--model", str(tmp_path / "ckpt"), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert {r["arch"] for r in rows} == {"jamba"} and all(r["passed"] for r in rows)
    assert [r["check"] for r in rows] == [n for n in INVARIANTS if n != "roundtrip"]  # no fresh model to compare


def test_cli_vlm_checkpoint_directory(tmp_path, capsys):
    """A NemotronH-Omni checkpoint: the checks run on its language model."""
    from hybridreduce.tiny_models import build_tiny_vlm

    build_tiny_vlm("nemotron_h_omni", "nemotron_h").save_pretrained(tmp_path / "omni")
    assert cli.main(["verify", "--model", str(tmp_path / "omni"), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert {r["arch"] for r in rows} == {"nemotron_h"} and all(r["passed"] for r in rows)


def test_cli_bad_arguments(tmp_path, capsys):
    assert cli.main(["verify", "--arch", "gpt2"]) == 2
    assert "choose from" in capsys.readouterr().err
    assert cli.main(["verify", "--model", str(tmp_path)]) == 2
    assert "no config.json" in capsys.readouterr().err


def test_cli_unsupported_checkpoint(tmp_path, capsys):
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.for_model("gpt2", n_embd=16, n_layer=1, n_head=2, vocab_size=50)
    AutoModelForCausalLM.from_config(config).save_pretrained(tmp_path)
    assert cli.main(["verify", "--model", str(tmp_path)]) == 2
    assert "no adapter for model_type 'gpt2'" in capsys.readouterr().err


def test_demo_runs_on_the_shipped_checkpoint(capsys, tmp_path):
    from hybridreduce.toy.demo import CHECKPOINT
    from hybridreduce.toy.demo import DEFAULT_METHODS as METHODS

    assert (CHECKPOINT / "model.safetensors").stat().st_size < 10 * 2**20  # the size limit
    assert cli.main(["demo", "--quick", "--size", "8", "--out", str(tmp_path), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert all(f"\nstatic   {m} " in out for m in METHODS) and (tmp_path / "summary.json").is_file()


def test_an_unknown_tiny_model_is_an_input_error_naming_the_choices(tmp_path):
    """A Python user's typo in build_tiny_model / build_tiny_vlm is a typed InputError (still a ValueError) that lists
    the architectures, like every other user mistake."""
    from hybridreduce.errors import InputError
    from hybridreduce.tiny_models import build_tiny_model, build_tiny_vlm, save_tiny_vlm

    with pytest.raises(InputError, match="nemotron_h"):
        build_tiny_model("nemotron")
    with pytest.raises(InputError, match="nemotron_h_omni"):
        build_tiny_vlm("omni")
    with pytest.raises(InputError, match="no field"):
        save_tiny_vlm(tmp_path / "omni", not_a_field=1)
