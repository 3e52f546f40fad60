"""`hybridreduce finetune`: the loss under reduction, the training features a user turns on, the command and its
refusals, on a tiny saved Omni checkpoint and a tiny manifest (the videos of tests/test_run.py)."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from hybridreduce.cli import main
from hybridreduce.engine import reduce
from hybridreduce.finetune.loss import Example, answer_loss, build_sequence, prompt_query_mask, right_pad
from hybridreduce.manifest import prompt_text, read_manifest, write_manifest
from hybridreduce.schedule import Schedule
from hybridreduce.video import read_video
from hybridreduce.vlm import LoadOptions, load

from .test_run import make_run_files

pytestmark = pytest.mark.usefixtures("one_thread")

FRAMES = 8
PROGRESSIVE = Schedule.load("progressive")


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """The tiny Omni checkpoint, and a clean manifest of 4 answered items on the good videos."""
    root = tmp_path_factory.mktemp("finetune")
    made = make_run_files(root)
    rows = [
        {"id": "c1", "video": "videos/a.mp4", "question": "what colour ?", "options": ["red", "green", "blue"],
         "answer": "B", "type": "colour"},
        {"id": "n1", "video": "videos/b.webm", "question": "how many ?", "options": ["1", "2", "3", "4"],
         "answer": "D", "type": "count"},
        {"id": "c2", "video": "videos/b.webm", "question": "what colour ?", "options": ["red", "green", "blue"],
         "answer": "A", "type": "colour"},
        {"id": "n2", "video": "videos/a.mp4", "question": "how many ?", "options": ["1", "2", "3", "4"],
         "answer": "C", "type": "count"},
    ]  # fmt: skip
    write_manifest(root / "train.jsonl", rows)
    return {**made, "data": root / "train.jsonl"}


def _example(vlm, video: str, question: str, answer: str) -> Example:
    ids = vlm.tokenizer(answer, add_special_tokens=False)["input_ids"] + [vlm.tokenizer.eos_token_id]
    prompt = vlm.prompt(read_video(video, num_frames=FRAMES), question)
    return Example(question, prompt, torch.tensor(ids))


@pytest.fixture(scope="module")
def examples(files):
    vlm, videos = files["vlm"], files["root"] / "videos"
    return [
        _example(vlm, videos / "a.mp4", "what colour ?", "B"),
        _example(vlm, videos / "b.webm", "what colour ?", "A B C"),  # same question, longer answer: padding
    ]


def _grads(vlm, examples, schedule, **kw) -> tuple[float, dict]:
    vlm.model.zero_grad()
    out = answer_loss(vlm, examples, schedule, **kw)
    out.loss.backward()
    return out.loss.item(), {n: p.grad.clone() for n, p in vlm.model.named_parameters() if p.grad is not None}


@pytest.fixture
def trainable(files):
    """The checkpoint loaded afresh, in train mode, every weight trainable."""
    vlm = load(files["model"])
    vlm.model.train()
    for p in vlm.model.parameters():
        p.requires_grad_(True)
    return vlm


def _max_diff(a: dict, b: dict) -> float:
    assert set(a) == set(b) and a
    return max(float((a[k] - b[k]).abs().max()) for k in a)


# --- the loss ---------------------------------------------------------------------------------------------------


def test_training_makes_the_cuts_run_makes(files, examples):
    """The kept positions of a training forward (prompt + answer) equal those of run's prefill of the prompt."""
    vlm = files["vlm"]
    for example in examples:
        embeds = vlm.embed(example.prompt)
        x, am = embeds["inputs_embeds"], embeds["attention_mask"]
        positions = torch.arange(x.shape[1])[None]
        with torch.no_grad(), reduce(vlm.model, PROGRESSIVE, visual_mask=example.prompt.visual_mask) as red:
            vlm.model(inputs_embeds=x, attention_mask=am, position_ids=positions, use_cache=True, logits_to_keep=1)
            run_kept = {k: v.clone() for k, v in red.kept_positions.items()}
        batch = right_pad([build_sequence(vlm, example)])
        query = prompt_query_mask(batch, PROGRESSIVE.query)
        with torch.no_grad(), reduce(vlm.model, PROGRESSIVE, visual_mask=batch.visual_mask, query_mask=query) as red:
            vlm.model(inputs_embeds=batch.embeds, attention_mask=batch.attention_mask,
                      position_ids=batch.position_ids, use_cache=False)  # fmt: skip
            train_kept = red.kept_positions
        assert run_kept and set(run_kept) == set(train_kept)
        for point in run_kept:
            assert torch.equal(run_kept[point], train_kept[point]), point


def test_keep_one_is_the_full_token_loss(files, examples):
    vlm = files["vlm"]
    with torch.no_grad():
        full = answer_loss(vlm, examples, None)
        kept = answer_loss(vlm, examples, Schedule.from_dict({**PROGRESSIVE.to_dict(), "keep": 1.0}))
        cut = answer_loss(vlm, examples, PROGRESSIVE)
    assert torch.equal(full.per_sample, kept.per_sample) and kept.visual_kept == kept.visual_in
    assert not torch.equal(full.per_sample, cut.per_sample) and cut.visual_kept < 0.5 * cut.visual_in
    assert full.tokens == 2 + 4  # "B" + end, "A B C" + end: answer tokens only


def test_padded_batch_equals_its_samples(files, examples):
    vlm = files["vlm"]
    with torch.no_grad():
        batched = answer_loss(vlm, examples, PROGRESSIVE)
        alone = torch.cat([answer_loss(vlm, [e], PROGRESSIVE).per_sample for e in examples])
    err = float((batched.per_sample - alone).abs().max())
    print(f"max error {err:.2e}")
    assert err < 1e-5


def test_padded_batch_of_different_questions_equals_its_samples(files):
    """Prompts of different lengths (different numbers of query rows) in one batch: each sample's query rows are
    its own (a sample with fewer repeats its last one in the padding slots, which must not unmark it)."""
    vlm, videos = files["vlm"], files["root"] / "videos"
    pair = [_example(vlm, videos / "a.mp4", "what colour ?", "B"),
            _example(vlm, videos / "a.mp4", "what shape is the video ?", "A")]  # fmt: skip
    batch = right_pad([build_sequence(vlm, e) for e in pair])
    query = prompt_query_mask(batch, PROGRESSIVE.query)
    for k, e in enumerate(pair):
        alone = prompt_query_mask(right_pad([build_sequence(vlm, e)]), PROGRESSIVE.query)[0]
        assert torch.equal(query[k, : alone.shape[0]], alone) and not query[k, alone.shape[0] :].any()
    with torch.no_grad():
        batched = answer_loss(vlm, pair, PROGRESSIVE).per_sample
        alone = torch.cat([answer_loss(vlm, [e], PROGRESSIVE).per_sample for e in pair])
    assert float((batched - alone).abs().max()) < 1e-5


# --- training features --------------------------------------------------------------------------------------------


def test_gradient_checkpointing_recomputes_with_the_same_cuts(trainable, examples):
    loss, reference = _grads(trainable, examples, PROGRESSIVE)
    calls = []
    mixer = trainable.adapted.blocks[-1].module.mixer  # inside the checkpointed forward of the last block
    handle = mixer.register_forward_pre_hook(
        lambda module, args, kwargs: calls.append((args[0] if args else kwargs["hidden_states"]).shape[1]),
        with_kwargs=True,
    )
    trainable.model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    try:
        again, grads = _grads(trainable, examples, PROGRESSIVE)
    finally:
        handle.remove()
        trainable.model.activation_checkpointing_disable()
    assert len(calls) == 2 and calls[0] == calls[1]  # recomputed in the backward, on the reduced sequence
    err = _max_diff(reference, grads)
    print(f"max gradient error {err:.2e}")
    assert again == loss and err < 1e-6


def test_accumulated_gradients_equal_the_whole_batch(trainable, examples):
    """Two micro-batches, each loss summed and divided by the tokens of both (what the Trainer does with
    num_items_in_batch), give the gradient of the whole batch."""
    _, whole = _grads(trainable, examples, PROGRESSIVE)
    trainable.model.zero_grad()
    total = sum(int(e.answer_ids.shape[0]) - 0 for e in examples)  # targets: every answer token (end included)
    for e in examples:
        out = answer_loss(trainable, [e], PROGRESSIVE)
        (out.loss_sum / total).backward()
    accumulated = {n: p.grad.clone() for n, p in trainable.model.named_parameters() if p.grad is not None}
    err = _max_diff(whole, accumulated)
    print(f"max gradient error {err:.2e}")
    assert err < 1e-6


def test_trainer_accumulation_and_batch_give_one_objective(files, tmp_path):
    """Through the Trainer: 2 examples a step as one batch or as 2 accumulated micro-batches log the same loss and
    gradient norm (answers of 2 and 4 tokens: the loss is the mean over the step's answer tokens)."""
    rows = [json.loads(x) for x in files["data"].read_text().splitlines()][:2]
    rows[1] = {**rows[1], "options": [], "answer": "A B C"}
    for r in rows:
        r["video"] = str(files["root"] / r["video"])
    data = tmp_path / "mixed.jsonl"
    write_manifest(data, rows)
    logs = {}
    for name, flags in (("batch", ["--batch-size", "2"]), ("accum", ["--batch-size", "1", "--grad-accum", "2"])):
        out = tmp_path / name
        argv = ["finetune", "--model", str(files["model"]), "--data", str(data), "--out", str(out), "--frames",
                str(FRAMES), "--steps", "2", "--lr", "0.01", "--lora-r", "4", "--no-progress", *flags]  # fmt: skip
        assert main(argv) == 0
        logs[name] = [json.loads(x) for x in (out / "train_log.jsonl").read_text().splitlines() if '"loss"' in x]
    for key in ("loss", "grad_norm"):
        a, b = [r[key] for r in logs["batch"]], [r[key] for r in logs["accum"]]
        print(key, a, b)
        assert len(a) == 2 and a == pytest.approx(b, rel=1e-5)
    assert logs["batch"][0]["loss"] < 10  # a mean cross-entropy per answer token, not a sum over micro-batches


def test_bf16_autocast_keeps_the_cuts_and_the_gradient(trainable, examples):
    _, reference = _grads(trainable, examples, PROGRESSIVE)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        _, grads = _grads(trainable, examples, PROGRESSIVE)
        _, full = _grads(trainable, examples, None)
        _, kept_all = _grads(trainable, examples, Schedule.from_dict({**PROGRESSIVE.to_dict(), "keep": 1.0}))
    assert _max_diff(full, kept_all) == 0.0  # the hooks change nothing under autocast
    scale = max(float(g.abs().max()) for g in reference.values())
    err = _max_diff(reference, grads) / scale
    print(f"max relative gradient error bf16 vs float32 {err:.2e}")
    assert err < 0.05


def _with_lora(vlm, targets, dropout=0.0):
    """LoRA of rank 4 on ``targets``, its B drawn at random (peft starts at B = 0, where LoRA changes nothing)."""
    from hybridreduce.adapters import get_adapter
    from hybridreduce.finetune.lora import add_lora

    peft_model = add_lora(vlm.model, targets, r=4, alpha=8, dropout=dropout)
    torch.manual_seed(0)
    for name, p in vlm.model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.5)
    vlm.adapted = get_adapter(vlm.model)
    return peft_model


def test_lora_wrappers_are_seen_by_the_taps(files, examples):
    """A LoRA-wrapped model (B ≠ 0) makes the cuts and the loss of the model with the adapter merged, and its
    adapter gradients are the chain rule of the merged weight's gradient."""
    from hybridreduce.finetune.lora import resolve_targets

    vlm, merged = load(files["model"]), load(files["model"])
    targets = resolve_targets(vlm.model, vlm.adapted, None)
    assert any(t.endswith("in_proj") for t in targets) and any(t.endswith("q_proj") for t in targets)
    assert not any("vision" in t for t in targets)
    peft_model = _with_lora(vlm, targets)
    modules = dict(vlm.model.named_modules())
    with torch.no_grad():
        for t in targets:
            layer = modules[t]
            delta = layer.lora_B["default"].weight @ layer.lora_A["default"].weight * layer.scaling["default"]
            dict(merged.model.named_modules())[t].weight += delta
    for p in merged.model.parameters():
        p.requires_grad_(True)
    loss, grads = _grads(vlm, examples, PROGRESSIVE)
    merged_loss, merged_grads = _grads(merged, examples, PROGRESSIVE)
    assert abs(loss - merged_loss) < 1e-5
    worst = 0.0
    for t in targets:
        layer = modules[t]
        A, B, s = layer.lora_A["default"].weight, layer.lora_B["default"].weight, layer.scaling["default"]
        gW = merged_grads[t + ".weight"]
        worst = max(worst, float((grads[f"{t}.lora_B.default.weight"] - s * gW @ A.T).abs().max()))
        worst = max(worst, float((grads[f"{t}.lora_A.default.weight"] - s * B.T @ gW).abs().max()))
    print(f"max adapter gradient error {worst:.2e}")
    assert worst < 1e-5 and peft_model is not None


def test_dropout_in_train_mode_draws_the_same_masks_under_the_hooks(files, examples):
    """With LoRA dropout in train mode, the hooks draw no random numbers: at keep 1 the loss and gradients equal
    those without reduction under the same seed, and a cut run twice under one seed repeats exactly."""
    from hybridreduce.finetune.lora import resolve_targets

    vlm = load(files["model"])
    _with_lora(vlm, resolve_targets(vlm.model, vlm.adapted, None), dropout=0.5)
    vlm.model.train()
    keep_all = Schedule.from_dict({**PROGRESSIVE.to_dict(), "keep": 1.0})
    torch.manual_seed(1)
    a, ga = _grads(vlm, examples, None)
    torch.manual_seed(1)
    b, gb = _grads(vlm, examples, keep_all)
    torch.manual_seed(1)
    c, _ = _grads(vlm, examples, PROGRESSIVE)
    torch.manual_seed(1)
    d, _ = _grads(vlm, examples, PROGRESSIVE)
    torch.manual_seed(2)
    e, _ = _grads(vlm, examples, None)
    assert a == b and _max_diff(ga, gb) == 0.0 and c == d
    assert e != a  # dropout is on


# --- the command ----------------------------------------------------------------------------------------------


def _finetune(files, out, *extra) -> int:
    return main(["finetune", "--model", str(files["model"]), "--data", str(files["data"]), "--out", str(out),
                 "--frames", str(FRAMES), "--lr", "0.01", "--no-progress", "--lora-r", "4", *extra])  # fmt: skip


def test_finetune_saves_an_adapter_that_run_answers_with(files, tmp_path, capsys):
    out = tmp_path / "ft"
    assert _finetune(files, out, "--steps", "3", "--save-steps", "2", "--eval-data", str(files["data"])) == 0
    for name in ("adapter_model.safetensors", "adapter_config.json", "hybridreduce_finetune.json",
                 "train_log.jsonl", "training_curves.png", "checkpoint-2", "checkpoint-3"):  # fmt: skip
        assert (out / name).exists(), name
    record = json.loads((out / "hybridreduce_finetune.json").read_text())
    assert record["schedule"]["keep"] == 0.25 and record["evs"] == 0.0 and record["data"]["hash"].startswith("sha256")
    assert {"torch", "transformers", "peft", "hybridreduce"} <= set(record["versions"])
    logs = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    steps = [r for r in logs if "loss" in r]
    assert [r["step"] for r in steps] == [1, 2, 3] and all(0 < r["visual_kept"] < 0.5 for r in steps)
    assert any("eval_loss" in r for r in logs)
    # The adapter merged into the base: different weights from the base, and run answers with them.
    base, tuned = files["vlm"].model, LoadOptions(model=files["model"], adapter=out).load().model
    name = next(n for n in record["lora_targets"] if n.endswith("in_proj"))
    assert not torch.equal(dict(base.named_modules())[name].weight, dict(tuned.named_modules())[name].weight)
    capsys.readouterr()
    code = main(["run", "--model", str(files["model"]), "--adapter", str(out), "--data", str(files["data"]),
                 "--out", str(tmp_path / "run"), "--frames", str(FRAMES), "--no-progress"])  # fmt: skip
    assert code == 0
    rows = [json.loads(line) for line in (tmp_path / "run" / "predictions.jsonl").read_text().splitlines()]
    assert len(rows) == 8 and not any("error" in r for r in rows)
    video = str(files["root"] / "videos" / "a.mp4")
    generate = ["generate", "--model", str(files["model"]), "--adapter", str(out), "--video", video, "--question",
                "what colour ?", "--frames", str(FRAMES)]  # fmt: skip
    assert main(generate) == 0 and "[progressive@0.25]" in capsys.readouterr().out
    calibrate = ["calibrate", "--model", str(files["model"]), "--adapter", str(out), "--data", str(files["data"]),
                 "--out", str(tmp_path / "cal.yaml"), "--size", "4", "--frames", str(FRAMES),
                 "--no-progress"]  # fmt: skip
    assert main(calibrate) == 0 and (tmp_path / "cal.yaml").is_file()


def test_run_with_an_adapter_does_not_reuse_the_base_models_answers(files, tmp_path):
    from hybridreduce.runner import answer_config, settings_for

    setting = settings_for("none")[0]
    base = answer_config(files["vlm"], setting, FRAMES, None, None, 8)
    adapted = files["vlm"].__class__(**{**files["vlm"].__dict__, "adapter": tmp_path})
    assert answer_config(adapted, setting, FRAMES, None, None, 8) != base
    assert "adapter" not in base  # lines written without an adapter read back the same as before


def test_python_entry_point_takes_settings_as_keywords(files, tmp_path):
    import hybridreduce

    result = hybridreduce.finetune(files["model"], files["data"], tmp_path / "py", schedule="random", keep=0.5,
                                   steps=1, frames=FRAMES, lora_r=2, progress=False)  # fmt: skip
    record = json.loads((tmp_path / "py" / "hybridreduce_finetune.json").read_text())
    assert result["steps"] == 1 and record["schedule"]["method"] == "random" and record["keep"] == 0.5
    with pytest.raises(hybridreduce.InputError, match="unknown setting"):
        hybridreduce.finetune(files["model"], files["data"], tmp_path / "py2", lora_rank=2)


def test_resume_continues_exactly(files, tmp_path):
    """Stopped after its first step (--max-minutes 0) and resumed, a run ends where an uninterrupted one does."""
    from safetensors.torch import load_file

    straight, parts = tmp_path / "straight", tmp_path / "parts"
    assert _finetune(files, straight, "--steps", "3", "--batch-size", "2", "--save-steps", "1") == 0
    assert _finetune(files, parts, "--steps", "3", "--batch-size", "2", "--save-steps", "1", "--max-minutes", "0") == 0
    assert (parts / "checkpoint-1").is_dir() and not (parts / "checkpoint-3").exists()
    assert _finetune(files, parts, "--steps", "3", "--batch-size", "2", "--save-steps", "1", "--resume") == 0
    a, b = load_file(straight / "adapter_model.safetensors"), load_file(parts / "adapter_model.safetensors")
    assert set(a) == set(b) and all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    losses = lambda out: [json.loads(x)["loss"] for x in (out / "train_log.jsonl").read_text().splitlines()  # noqa: E731
                          if "loss" in json.loads(x)]  # fmt: skip
    assert losses(parts) == pytest.approx(losses(straight), abs=1e-6)


# --- bad input, refused before any model loads ------------------------------------------------------------------


def _refused(capsys, argv) -> str:
    assert main(argv) == 2
    return capsys.readouterr().err


def test_bad_input_is_refused_before_loading(files, tmp_path, capsys, monkeypatch):
    import hybridreduce.vlm as vlm_module

    def no_loading(*a, **k):
        raise AssertionError("the model loaded")

    monkeypatch.setattr(vlm_module, "load", no_loading)
    base = ["finetune", "--model", str(files["model"]), "--out", str(tmp_path / "o"), "--frames", str(FRAMES)]
    data = ["--data", str(files["data"])]
    rows = [json.loads(x) for x in files["data"].read_text().splitlines()]
    for r in rows:
        r["video"] = str(files["root"] / r["video"])
    no_answer = tmp_path / "no_answer.jsonl"
    write_manifest(no_answer, [rows[0], {k: v for k, v in rows[1].items() if k != "answer"}])
    assert "no answer (n1)" in _refused(capsys, [*base, "--data", str(no_answer)])
    long = tmp_path / "long.jsonl"
    write_manifest(long, [{**rows[0], "options": [], "answer": "the colour is a red one"}])
    err = _refused(capsys, [*base, "--data", str(long), "--max-answer-tokens", "4"])
    assert "longer than --max-answer-tokens 4" in err and "c1 (7)" in err
    assert "lora_r (--lora-r)" in _refused(capsys, [*base, *data, "--lora-r", "0"])
    err = _refused(capsys, [*base, *data, "--target-modules", "qkv"])
    assert "qkv match no linear layer" in err and "in_proj" in err and "q_proj" in err
    schedule = tmp_path / "deep.yaml"
    schedule.write_text("method: progressive\nkeep: 0.25\nfirst_prune: 40\n")
    assert "6-block model" in _refused(capsys, [*base, *data, "--schedule", str(schedule)])
    # A checkpoint whose language model no adapter knows.
    odd = tmp_path / "odd"
    shutil.copytree(files["model"], odd)
    config = json.loads((odd / "config.json").read_text())
    config["text_config"] = {"model_type": "gpt2", "n_layer": 2, "n_embd": 32, "n_head": 2, "vocab_size": 64}
    (odd / "config.json").write_text(json.dumps(config))
    err = _refused(capsys, ["finetune", "--model", str(odd), *data, "--out", str(tmp_path / "o2")])
    assert "language model is 'gpt2'" in err and "nemotron_h" in err
    # An --out that holds another run, and --resume with nothing to resume.
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "hybridreduce_finetune.json").write_text("{}")
    assert "holds a finetune run" in _refused(capsys, [*base[:-4], "--out", str(taken), *data])
    assert "nothing to resume" in _refused(capsys, [*base, *data, "--resume"])
    assert "--adapter" in _refused(capsys, ["run", "--model", str(files["model"]), "--adapter", str(files["model"]),
                                            *data, "--out", str(tmp_path / "r")])  # fmt: skip
    # DeepSpeed ZeRO-3 (as accelerate launch sets it up): refused, with the modes that work.
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    monkeypatch.setenv("ACCELERATE_DEEPSPEED_ZERO_STAGE", "3")
    err = _refused(capsys, [*base, *data])
    assert "ZeRO-3" in err and "ZeRO-2" in err
    monkeypatch.setenv("ACCELERATE_DEEPSPEED_ZERO_STAGE", "2")
    from hybridreduce.finetune.train import check_sharding

    check_sharding()  # ZeRO-2 keeps the parameters whole
    assert read_manifest(files["data"])  # the fixture's manifest is untouched
    assert prompt_text  # imported for the examples above
