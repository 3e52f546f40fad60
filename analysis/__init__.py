"""Analysis of recorded importance (layerwise sparsity, cross-layer stability, retention probes).

This package imports :mod:`hybridreduce`; :mod:`hybridreduce` never imports it. Its modules take a
:class:`hybridreduce.ScoreCache` (or a stack of them) as their only input.
"""
