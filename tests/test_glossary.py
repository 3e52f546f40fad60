"""Every shape written in a docstring of the package uses the letters of :mod:`hybridreduce.glossary`.

A shape is a double-backticked parenthesised tuple (``(b, T, h, p)``, ``(b|1, h|1, T, T)``, ``B (b, T, g, n)``).
Its items are split on commas; broadcast marks (``|1``), products (``·``, ``*``, ``×``), arithmetic
(``T - V + k``, ``H/s``, ``k-1``), digits and primes are stripped, and every single letter left must be a key of
:data:`hybridreduce.glossary.LETTERS`. Longer names (``n_frames``, ``d_v``, ``V_block``, ``Himg``) are free: a
quantity the glossary does not name is spelled out rather than given a letter. No module but the glossary keeps a
letter list of its own.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import inspect
import pkgutil
import re

import pytest

import analysis
import hybridreduce
from hybridreduce.glossary import LETTERS

#: Modules whose optional dependency is not installed here (they are skipped, not failed).
_OPTIONAL = {"hybridreduce.integrations.lmms_eval": "lmms_eval"}


def _module_names() -> list[str]:
    names = []
    for package in (hybridreduce, analysis):
        names.append(package.__name__)
        for info in pkgutil.walk_packages(package.__path__, prefix=package.__name__ + "."):
            names.append(info.name)
    return sorted(names)


MODULES = _module_names()


def _source(name: str) -> str:
    """The module's source, after importing it (a ``__main__`` module runs its program when imported: only read)."""
    dependency = _OPTIONAL.get(name)
    if dependency is not None and importlib.util.find_spec(dependency) is None:
        pytest.skip(f"{name} needs {dependency}, which is not installed")
    if name.rpartition(".")[2] == "__main__":
        with open(importlib.util.find_spec(name).origin, encoding="utf-8") as f:
            return f.read()
    return inspect.getsource(importlib.import_module(name))


def _docstrings(source: str) -> list[tuple[str, str]]:
    """``(owner, docstring)`` of the module and of every class and function defined in its source, nested ones too."""
    tree = ast.parse(source)
    found: list[tuple[str, str]] = []
    doc = ast.get_docstring(tree, clean=False)
    if doc:
        found.append(("<module>", doc))

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                owner = f"{prefix}{child.name}"
                doc = ast.get_docstring(child, clean=False)
                if doc:
                    found.append((owner, doc))
                visit(child, owner + ".")
            else:
                visit(child, prefix)

    visit(tree, "")
    return found


_LITERAL = re.compile(r"``(.+?)``", re.S)
_BROADCAST = re.compile(r"\|\s*1\b")
_QUOTED = re.compile(r"\"[^\"]*\"|'[^']*'")
_WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
#: Two words with only spaces between them: prose (``(J, standard error)``), not a dimension expression.
_PROSE = re.compile(r"[A-Za-z0-9_']\s+[A-Za-z_]")


def _shapes(text: str) -> list[str]:
    """The parenthesised groups of every double-backticked literal whose ``(`` opens it, follows a space or opens a
    group nested right inside another shape.

    ``f(x)``-style calls and ``/(p·s)`` factors are not shapes; a group nested in another is listed after it.
    """
    shapes = []
    for literal in _LITERAL.findall(text):
        opened: list[int | None] = []
        found = []
        for i, ch in enumerate(literal):
            if ch == "(":
                # A nested group starts a shape only inside a shape: ``((b, T), (b, T))``, not ``floor((i + 0.5) · x)``.
                inside = literal[i - 1] == "(" and bool(opened) and opened[-1] is not None
                shape_start = i == 0 or literal[i - 1].isspace() or inside
                opened.append(i if shape_start else None)
            elif ch == ")" and opened:
                start = opened.pop()
                if start is not None:
                    found.append((start, literal[start : i + 1]))
        shapes.extend(shape for _, shape in sorted(found))
    return shapes


def _stray_letters(shape: str) -> list[str]:
    """The single letters of ``shape`` that are not glossary keys; none for prose or quoted values.

    A group with a nested group is judged on its own items, the nested group separately (``_shapes`` lists both).
    """
    inner = shape[1:-1]
    while True:  # blank nested groups: ``(x: (L, b, V), block ids)`` → ``x: __, block ids``
        flat = re.sub(r"\([^()]*\)", "__", inner)
        if flat == inner:
            break
        inner = flat
    inner = _QUOTED.sub("__", _BROADCAST.sub("", inner))
    items = inner.split(",")
    if any(_PROSE.search(item.strip()) for item in items):
        return []
    stray = []
    for item in items:
        for word in _WORD.findall(item.replace("'", "")):
            if len(word) == 1 and word not in LETTERS:
                stray.append(word)
    return stray


def test_shape_extraction():
    text = "x ``(b|1, h|1, T, T)`` and ``B (b, T', g, n)``, not ``max(k, t)``; ``(T - V + k, H/s·W/s, 3*j)``"
    assert _shapes(text) == ["(b|1, h|1, T, T)", "(b, T', g, n)", "(T - V + k, H/s·W/s, 3*j)"]
    assert _shapes("``(x: (L, b, V), ids)`` ``(F * H/(p·s),)``") == [
        "(x: (L, b, V), ids)",
        "(L, b, V)",
        "(F * H/(p·s),)",
    ]
    nested = "``((b, T), (b, k))`` ``floor((i + 0.5) · total / F)``"
    assert _shapes(nested) == ["((b, T), (b, k))", "(b, T)", "(b, k)"]  # a call's argument is not a shape
    assert _stray_letters("(b|1, h|1, T, T)") == []
    assert _stray_letters("(T - V + k, H/s·W/s, 3*j)") == ["j"]
    assert _stray_letters("(n_frames, d_v, V_block, Himg, T', k-1, 2*V)") == []
    assert _stray_letters("(J, standard error)") == []  # prose, not a shape
    assert _stray_letters('("A", "B", ...)') == []  # values, not letters
    assert _stray_letters("(x: (L, b, V), m)") == ["x", "m"]
    assert _stray_letters("(b, K)") == ["K"]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_shapes_use_glossary_letters(name):
    bad = []
    for owner, doc in _docstrings(_source(name)):
        for shape in _shapes(doc):
            stray = _stray_letters(shape)
            if stray:
                bad.append(f"{name}:{owner}: ``{shape}`` uses {sorted(set(stray))}, not in hybridreduce.glossary")
    assert not bad, "shapes with letters the glossary does not define:\n" + "\n".join(bad)


@pytest.mark.parametrize("name", MODULES)
def test_no_local_letter_list(name):
    if name == "hybridreduce.glossary":
        return
    bad = []
    for owner, doc in _docstrings(_source(name)):
        for line in doc.splitlines():
            if line.strip().startswith(("Glossary", "Dimension letters")):
                bad.append(f"{name}:{owner}: {line.strip()!r}")
    assert not bad, "letter lists outside hybridreduce.glossary (point to it instead):\n" + "\n".join(bad)
