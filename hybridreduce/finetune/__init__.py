"""Light finetuning under reduction (``hybridreduce finetune``; DESIGN decisions 11 and 15).

A video VLM is finetuned on the manifests ``hybridreduce run`` answers, on the answer tokens only, inside the same
``reduce()`` context ``run`` uses, so that training and evaluation make the same cuts. The pieces:

:mod:`~hybridreduce.finetune.loss`
    the loss of a batch of examples under a schedule (prompt embeddings, EVS, answer tokens, one forward).
:mod:`~hybridreduce.finetune.data`
    manifests to examples (frames sampled as ``run`` samples them), answer tokens, batches.
:mod:`~hybridreduce.finetune.lora`
    LoRA targets inside the language model (peft) and loading a saved adapter (``--adapter``).
:mod:`~hybridreduce.finetune.train`
    :func:`finetune`: transformers' ``Trainer`` around the loss (optimiser, accumulation, mixed precision,
    checkpoints, resume, DDP).
:mod:`~hybridreduce.finetune.cli`
    the ``finetune`` subcommand.
"""

from .train import FinetuneConfig, finetune

__all__ = ["FinetuneConfig", "finetune"]
