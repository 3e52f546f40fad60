"""Which ranking of the visual tokens survives a cut? A diagnostic of the demo's claim on the embedded model.

Measured on the 12-block model (``hybridreduce/toy/checkpoint12``, the default ``--checkpoint``), whose demo
``progressive`` schedule must make its first cut before block 1 (an average keep of 0.25 on 12 blocks allows no
later one), so block 0's scores choose what the rest of the model sees. This script holds
the mechanism and the budget fixed and varies only the ranking. For every held-out question it keeps the
top ``keep`` share of the visual tokens *before* the language model — the cut EVS makes, which the model
was uptrained on — ranked by

    block B      the importance block B gives each visual token in a full-token pass (``capture``, decay-free
                 Mamba proxy for Mamba blocks, attention rows for attention blocks), for each B in --blocks;
    evs          the temporal change of each patch (the demo's ``evs``);
    random       a seeded random order;

and answers from the kept tokens at every block (average keep = ``keep`` exactly). It prints one line per
ranking: accuracy, share of full-token accuracy, the share of each question's ground-truth tokens kept, and
accuracy per question type.

    python scripts/ranking_before_llm.py [--checkpoint DIR] [--size 1024] [--keep 0.25] [--blocks 0 2 3 7 10]

A block ranking is an oracle for a cut at block 0 (it looks ahead at block B): it says what the cut could
keep with block-B-quality scores, not what a one-pass method can do.
"""

from __future__ import annotations

import argparse

import torch

from hybridreduce import capture, get_adapter
from hybridreduce.evs import apply_retention
from hybridreduce.toy import ToyDataset
from hybridreduce.toy.demo import CHECKPOINT12, load_toy
from hybridreduce.toy.evaluate import AnswerSheet, evs_inputs


def top_share(scores: torch.Tensor, keep: float) -> torch.Tensor:
    """``(b, V)`` bool: the ``round(keep · V)`` highest-scoring tokens of each row (ties: the earlier token)."""
    b, V = scores.shape
    k = max(1, round(keep * V))
    order = torch.sort(scores, dim=1, descending=True, stable=True).indices[:, :k]
    return torch.zeros(b, V, dtype=torch.bool).scatter(1, order, True)


@torch.no_grad()
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--checkpoint", default=str(CHECKPOINT12), help="a train-toy output directory (default: the 12-block model)"
    )
    parser.add_argument("--size", type=int, default=1024, help="held-out questions (default 1024)")
    parser.add_argument("--keep", type=float, default=0.25, help="share of visual tokens kept (default 0.25)")
    parser.add_argument("--blocks", type=int, nargs="+", default=[0, 2, 3, 7, 10], help="blocks whose scores rank")
    args = parser.parse_args()

    model, data = load_toy(args.checkpoint)
    kinds = get_adapter(model).kinds
    bad = [b for b in args.blocks if not 0 <= b < len(kinds) or kinds[b] in ("mlp", "moe")]
    if bad:
        scoring = [i for i, k in enumerate(kinds) if k in ("attn", "ssm")]
        parser.error(f"blocks {bad} do not score; scoring blocks: {scoring}")
    dataset = ToyDataset(data, "test", args.size)
    sheet = AnswerSheet(dataset.vocab)
    rankings = ["full", *(f"block {b} ({kinds[b]})" for b in args.blocks), "evs", "random"]
    correct = {name: [] for name in rankings}
    qtypes: list[str] = []
    relevant_kept = {name: [] for name in rankings}
    generator = torch.Generator().manual_seed(0)
    for start in range(0, args.size, 64):
        batch = dataset.batch(range(start, min(start + 64, args.size)))
        ids, pixels, am, vm = batch["input_ids"], batch["pixels"], batch["attention_mask"], batch["visual_mask"]
        relevant = batch["relevant_mask"][vm].view(len(ids), -1)  # (b, V) ground truth among the visual tokens
        with capture(model, vm, scorer="decay_free", attention_mask=am) as cache:
            full = model(ids, pixel_values=pixels, attention_mask=am, logits_to_keep=1).logits[:, -1]
        embeds = model.embed(ids, pixels)
        keeps = {f"block {b} ({kinds[b]})": top_share(cache.scores[b], args.keep) for b in args.blocks}
        keeps["random"] = top_share(torch.rand(relevant.shape, generator=generator), args.keep)
        keeps["evs"] = _evs_mask(vm, evs_inputs(model, batch, 1.0 - args.keep))
        qtypes += batch["qtype"]
        for name in rankings:
            if name == "full":
                logits, kept = full, torch.ones_like(relevant)
            else:
                kept = keeps[name]
                r = apply_retention(embeds, vm, kept, am)
                logits = model(inputs_embeds=r.inputs, attention_mask=r.attention_mask, logits_to_keep=1).logits[:, -1]
            chosen = sheet.choose(logits.float(), batch["qtype"])
            correct[name] += (chosen == batch["answer_index"]).tolist()
            share = (kept & relevant).sum(1).float() / relevant.sum(1).clamp(min=1).float()
            relevant_kept[name] += share.tolist()
    base = sum(correct["full"]) / len(correct["full"])
    print(f"{args.size} held-out questions, keep {args.keep} of the visual tokens before the language model")
    types = sorted(set(qtypes), key=qtypes.index)
    print(
        f"{'ranking':<20} {'accuracy':>9} {'of full':>8} {'relevant kept':>14}  " + " ".join(f"{t:>7}" for t in types)
    )
    for name in rankings:
        acc = sum(correct[name]) / len(correct[name])
        rel = sum(relevant_kept[name]) / len(relevant_kept[name])
        per = [[c for c, q in zip(correct[name], qtypes, strict=True) if q == t] for t in types]
        cells = " ".join(f"{100 * sum(p) / len(p):>6.1f}%" for p in per)
        print(f"{name:<20} {100 * acc:>8.1f}% {100 * acc / base:>7.0f}% {100 * rel:>13.1f}%  {cells}")


def _evs_mask(visual_mask: torch.Tensor, evs) -> torch.Tensor:
    """``(b, V)`` bool over the visual tokens: those EVS kept (``evs.kept_index`` holds prompt positions)."""
    b = visual_mask.shape[0]
    rank = visual_mask.long().cumsum(1) - 1  # visual index of each visual position
    kept_positions = evs.kept_index[evs.visual_mask].view(b, -1)
    out = torch.zeros(b, int(visual_mask[0].sum()), dtype=torch.bool)
    return out.scatter(1, rank.gather(1, kept_positions), True)


if __name__ == "__main__":
    main()
