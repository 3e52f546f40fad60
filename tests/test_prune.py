"""The pure pruning functions against hand-built cases."""

from __future__ import annotations

import pytest
import torch

from hybridreduce import InputError
from hybridreduce.prune import keep_index, prune, select_visual


def test_select_topk_ties_go_to_the_earlier_token():
    scores = torch.tensor([[0.1, 0.3, 0.3, 0.2, 0.1], [0.5, 0.1, 0.1, 0.1, 0.2]])
    assert select_visual(scores, 2).tolist() == [[1, 2], [0, 4]]
    assert select_visual(scores, 3).tolist() == [[1, 2, 3], [0, 1, 4]]


def test_select_random_is_seeded_and_uniform_is_an_even_stride():
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    a = select_visual(None, 4, "random", n_visual=10, batch=2, generator=g1)
    b = select_visual(None, 4, "random", n_visual=10, batch=2, generator=g2)
    assert torch.equal(a, b) and a.shape == (2, 4)
    assert all(len(set(row)) == 4 for row in a.tolist())
    assert select_visual(None, 4, "uniform", n_visual=10, batch=1).tolist() == [[1, 3, 6, 8]]
    assert select_visual(None, 10, "uniform", n_visual=10, batch=1).tolist() == [list(range(10))]
    with pytest.raises(InputError, match="cannot keep 0 of 10"):
        select_visual(None, 0, "uniform", n_visual=10, batch=1)


def test_keep_index_keeps_all_text_tokens():
    vm = torch.tensor([[False, True, True, True, False, False], [False, False, True, True, True, False]])
    chosen = torch.tensor([[0, 2], [1, 2]])
    assert keep_index(vm, chosen).tolist() == [[0, 1, 3, 4, 5], [0, 1, 3, 4, 5]]
    chosen = torch.tensor([[1, 2], [0, 1]])
    assert keep_index(vm, chosen).tolist() == [[0, 2, 3, 4, 5], [0, 1, 2, 3, 5]]
    with pytest.raises(InputError, match="must lie in"):
        keep_index(vm, torch.tensor([[0, 3], [0, 1]]))


def test_prune_gathers_hidden_positions_and_masks():
    b, T, d = 2, 6, 3
    hidden = torch.arange(b * T * d, dtype=torch.float32).reshape(b, T, d)
    positions = torch.tensor([[0, 1, 2, 3, 4, 5], [0, 0, 0, 1, 2, 3]])  # sample 1 left-padded by 2
    pad = torch.tensor([[1, 1, 1, 1, 1, 1], [0, 0, 1, 1, 1, 1]])
    causal = torch.tril(torch.ones(T, T, dtype=torch.bool))[None, None] & pad[:, None, None, :].bool()
    keep = torch.tensor([[0, 2, 4, 5], [1, 2, 3, 5]])
    h, pos, masks = prune(hidden, positions, {"pad": pad, "causal": causal, "none": None}, keep)
    assert torch.equal(h[0], hidden[0, [0, 2, 4, 5]]) and torch.equal(h[1], hidden[1, [1, 2, 3, 5]])
    assert pos.tolist() == [[0, 2, 4, 5], [0, 0, 1, 3]]
    assert masks["pad"].tolist() == [[1, 1, 1, 1], [0, 1, 1, 1]]
    assert masks["none"] is None
    # Slicing a causal+padding mask equals building it for the kept tokens directly.
    expected = torch.tril(torch.ones(4, 4, dtype=torch.bool))[None, None] & masks["pad"][:, None, None, :].bool()
    assert torch.equal(masks["causal"], expected)


def test_prune_broadcast_mask_and_bad_shapes():
    hidden = torch.randn(2, 5, 4)
    positions = torch.arange(5)[None]
    additive = torch.zeros(1, 1, 5, 5).masked_fill(~torch.tril(torch.ones(5, 5, dtype=torch.bool)), -1e9)
    keep = torch.tensor([[0, 3, 4], [1, 2, 4]])
    _, pos, masks = prune(hidden, positions, {"m": additive}, keep)
    assert masks["m"].shape == (2, 1, 3, 3)
    assert pos.tolist() == [[0, 3, 4], [1, 2, 4]]
    upper = torch.triu(torch.ones(3, 3, dtype=torch.bool), 1)
    assert bool((masks["m"][:, 0][:, upper] == -1e9).all()) and bool((masks["m"][:, 0][:, ~upper] == 0).all())
    with pytest.raises(InputError, match="2-D"):
        prune(hidden, positions, {"m": torch.zeros(2, 5, 5)}, keep)
    with pytest.raises(InputError, match="keep_idx"):
        prune(hidden, positions, {}, keep[:1])
