"""Griffe extension: the docstrings' Sphinx roles as Markdown code spans, for the API reference.

The docstrings are Google style with Sphinx cross-reference roles (``:class:`ScoreCache```,
``:func:`~hybridreduce.calibrate.search```, ``:attr:`title <target>```), which Markdown would show raw, and whose
``role:`` colon griffe would read as the name of a Returns or Yields item. Each role becomes the code span a reader
of the source sees: the target's last component for ``~``, the title when one is given, else the target.
"""

from __future__ import annotations

import re

import griffe

ROLE = re.compile(r":(?:py:)?(?:class|func|meth|attr|data|mod|exc|obj|const|type):`(~?)([^`<]*?)\s*(?:<([^`>]+)>)?`")


def plain(text: str) -> str:
    def span(m: re.Match) -> str:
        tilde, title, target = m.group(1), m.group(2), m.group(3)
        if target:  # `title <target>`
            return f"`{title}`"
        return f"`{title.rsplit('.', 1)[-1] if tilde else title}`"

    return ROLE.sub(span, text)


class SphinxRoles(griffe.Extension):
    def on_instance(self, *, obj: griffe.Object, **kwargs) -> None:
        if obj.docstring is not None:
            obj.docstring.value = plain(obj.docstring.value)
