"""The dimension letters of the package: one letter, one meaning, in every docstring, shape comment and error.

Shapes are written ``(b, T, d)``: the letters below, ``|1`` for an axis that may broadcast (``(b|1, h|1, T, T)``),
products with ``·`` (``V = F·H·W``) and a prime for the same quantity after a reduction (``T'``). A quantity the
table does not name is spelled out (``(b, n_frames)``) rather than given a new letter. :data:`LETTERS` is the table
itself; ``tests/test_glossary.py`` checks that docstrings use no other single-letter axis.

Sequences and reduction
    ``b``   batch (samples of one forward)
    ``T``   tokens one forward of the language model receives (the prompt, at a prefill)
    ``T'``  tokens a block carries after the cuts before it: ``T' = T − V + k``
    ``V``   visual tokens of the prompt (after any pre-LLM pruning such as EVS)
    ``k``   visual tokens a cut keeps
    ``R``   visual tokens a cut removes (dropped, or merged into kept ones: ``R = V − k`` at the first cut)
    ``Q``   query rows: the text tokens whose attention (or hidden attention) scores the visual tokens
    ``S``   keys of an attention row: ``T`` in a prefill, the tokens in the cache in a decode step
    ``q``   new tokens of one decode step
    ``L``   blocks (layers) of the language model, or the scored blocks of a stack of scores
    ``N``   samples of a run (prompts of a calibration, items of an analysis)

Mixers
    ``h``   heads (attention, Mamba-2)          ``g``   SSM groups (Mamba-2 ``B``/``C``)
    ``n``   SSM state size                      ``p``   head dimension (Mamba-2 ``x``, attention)
    ``c``   channels (Mamba-1)                  ``d``   hidden width (``d_v`` of a vision encoder)

Video
    ``F``   frames of a video (sampled frames)  ``U``   temporal units of a visual grid (tubelets or frames)
    ``H``   rows of the patch grid              ``W``   columns of the patch grid (after any spatial merge)
    ``C``   channels of a vision embedding      ``P``   patch side in pixels
    ``s``   spatial merge size                  (tokens per frame: ``H·W``)

Not dimensions: the Mamba parameters keep their papers' names (``A``, ``B``, ``C``, ``D``, ``Δ``/``dt``, ``z``),
written with the tensor's name before its shape (``B (b, T, g, n)``), and the EVS pruning rate is ``rate``
(``q`` in the EVS paper and in transformers' ``compute_retention_mask``, whose argument name the compat layer keeps).
"""

from __future__ import annotations

#: letter → meaning, the table above.
LETTERS: dict[str, str] = {
    "b": "batch (samples of one forward)",
    "T": "tokens one forward of the language model receives (the prompt, at a prefill)",
    "T'": "tokens a block carries after the cuts before it (T - V + k)",
    "V": "visual tokens of the prompt",
    "k": "visual tokens a cut keeps",
    "R": "visual tokens a cut removes (dropped or merged)",
    "Q": "query rows",
    "S": "keys of an attention row",
    "q": "new tokens of one decode step",
    "L": "blocks (layers) of the language model, or scored blocks of a stack",
    "N": "samples of a run",
    "h": "heads",
    "g": "SSM groups",
    "n": "SSM state size",
    "p": "head dimension",
    "c": "channels (Mamba-1)",
    "d": "hidden width",
    "F": "frames of a video",
    "U": "temporal units of a visual grid",
    "H": "rows of the patch grid",
    "W": "columns of the patch grid",
    "C": "channels of a vision embedding",
    "P": "patch side in pixels",
    "s": "spatial merge size",
}
