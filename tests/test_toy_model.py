"""The toy video VLM: it wraps a stock NemotronH, round-trips, learns, generates, and reduces."""

from __future__ import annotations

import pytest
import torch
from transformers import NemotronHConfig

from hybridreduce import InputError, get_adapter, reduce
from hybridreduce.toy import ToyConfig, ToyDataset
from hybridreduce.toy.model import ToyVLM, ToyVLMConfig

DATA = ToyConfig(frames=16, height=16, width=16, n_events=(4, 5), event_len=(2, 2))


def _model(ds: ToyDataset, seed: int = 0) -> ToyVLM:
    v = ds.vocab
    text = NemotronHConfig(
        vocab_size=v.size,
        hidden_size=32,
        layers_block_type=["mamba", "mlp", "attention", "mamba", "mlp", "attention"],
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=16,
        intermediate_size=64,
        mamba_num_heads=4,
        mamba_head_dim=16,
        ssm_state_size=8,
        n_groups=1,
        chunk_size=16,
        pad_token_id=v.pad_id,
        bos_token_id=v.bos_id,
        eos_token_id=v.answer_marker_id,
    )
    config = ToyVLMConfig(
        text_config=text,
        frames=DATA.frames,
        rows=DATA.rows,
        cols=DATA.cols,
        patch=DATA.patch,
        vision_hidden=16,
        video_token_id=v.video_id,
    )
    torch.manual_seed(seed)
    return ToyVLM(config).eval()


@pytest.fixture(scope="module")
def ds():
    return ToyDataset(DATA, "train", 64)


def _logits(model, batch):
    return model(batch["input_ids"], pixel_values=batch["pixels"], attention_mask=batch["attention_mask"]).logits


def test_adapter_finds_the_stock_language_model(ds):
    adapted = get_adapter(_model(ds))
    assert adapted.model_type == "nemotron_h" and adapted.wrapper == "hybridreduce_toy_vlm"
    assert adapted.kinds == ["ssm", "mlp", "attn", "ssm", "mlp", "attn"]


def test_save_load_and_visual_tokens_matter(ds, tmp_path):
    model = _model(ds)
    batch = ds.batch(range(2))
    model.save_pretrained(tmp_path)
    loaded = ToyVLM.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        a, b = _logits(model, batch), _logits(loaded, batch)
        blank = model(batch["input_ids"], pixel_values=batch["pixels"] * 0, attention_mask=batch["attention_mask"])
    assert torch.equal(a, b)
    assert not torch.allclose(a[:, -1], blank.logits[:, -1])  # the pixels reach the language model
    assert torch.equal(model.visual_mask(batch["input_ids"]), batch["visual_mask"])


def test_a_few_steps_lower_the_loss(ds):
    model = _model(ds).train()
    batch = ds.batch(range(16))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(8):
        logits = _logits(model, batch)[:, -1]
        loss = torch.nn.functional.cross_entropy(logits, batch["answer_id"])
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert all(b < a for a, b in zip(losses, losses[1:], strict=False)), losses  # fitting one batch: every step helps
    assert losses[-1] < 0.85 * losses[0], losses


def test_generate_under_reduction(ds):
    model = _model(ds)
    batch = ds.batch(range(2))
    with reduce(model, "progressive", visual_mask=batch["visual_mask"]) as red, torch.no_grad():
        out = model.generate(
            batch["input_ids"],
            pixel_values=batch["pixels"],
            attention_mask=batch["attention_mask"],
            max_new_tokens=3,
            do_sample=False,
        )
    assert out.shape[1] >= batch["input_ids"].shape[1] + 1
    assert red.prefills == 1 and red.block_visual[0] == DATA.n_visual > red.block_visual[-1]


def test_wrong_number_of_video_tokens(ds):
    model = _model(ds)
    batch = ds.batch(range(1))
    ids = batch["input_ids"].clone()
    ids[0, ids[0] == ds.vocab.video_id] = ds.vocab.pad_id
    with pytest.raises(InputError, match="<video> tokens"):
        model(ids, pixel_values=batch["pixels"])


def test_the_shipped_checkpoint_loads():
    """The shipped checkpoint loads with its saved class name and model_type (a run in progress, which a training
    process may be rewriting, is not read here)."""
    import json

    from hybridreduce.toy.demo import CHECKPOINT as path

    saved = json.loads((path / "config.json").read_text())
    assert saved["model_type"] == ToyVLMConfig.model_type == "hybridreduce_toy_vlm"
    assert saved["architectures"] == [ToyVLM.__name__]
    model = ToyVLM.from_pretrained(path)
    assert isinstance(model, ToyVLM) and model.config.text_config.num_hidden_layers == 24
