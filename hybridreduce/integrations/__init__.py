"""Bridges from hybridreduce to other tools, each imported only by the tool that uses it.

:mod:`hybridreduce.integrations.lmms_eval`
    lmms-eval models (``lmms-eval --model hybridreduce ...``): any checkpoint :func:`hybridreduce.load` reads,
    answered with EVS and a reduction schedule exactly as ``hybridreduce run`` answers a manifest. lmms-eval
    finds them through its ``lmms_eval.models`` entry point; importing the module needs lmms-eval installed.

Nothing in the core package imports this package, and this file imports none of its modules: ``import
hybridreduce`` works without any of the tools they bridge to.
"""
