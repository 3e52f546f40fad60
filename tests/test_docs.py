"""The documentation runs: every ```python block of README.md and docs/**/*.md is executed, and no relative link
of the project's Markdown points at a file that is not there.

A page's blocks run in order in one namespace (a later block may use what an earlier one built), in a temporary
working directory, so an example that writes a file writes it there. Examples use tiny random models
(:mod:`hybridreduce.tiny_models`) or the shipped toy checkpoint, so the whole file runs in well under a minute. A block
that is not meant to run is not a ```python block: write it as ```bash, ```yaml or ```text.

Links: ``mkdocs build --strict`` (in ``.ci/run``) checks every link between the pages of ``docs/``; the Markdown
files outside it (README.md, the checkpoint's and the experiments' READMEs, notebooks/README.md) are read on
GitHub, so :func:`test_relative_links_resolve` checks theirs, and when mkdocs is installed (the ``docs`` extra)
:func:`test_mkdocs_build_strict` builds the site here too.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# An opening fence with its info string, the body, and a closing fence of the same backticks at the same indent.
_FENCE = re.compile(
    r"^(?P<indent>[ \t]*)(?P<ticks>`{3,})(?P<info>[^\n`]*)\n(?P<body>.*?)^(?P=indent)(?P=ticks)[ \t]*$",
    re.MULTILINE | re.DOTALL,
)
# [text](target) and ![alt](target); the target stops at whitespace or ')'.
_LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")


def doc_pages() -> list[Path]:
    """README.md and every Markdown page under docs/, the files whose Python examples must run."""
    return [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


def markdown_files() -> list[Path]:
    """Every Markdown file of the project outside docs/ (read on GitHub, not by mkdocs); hidden folders (.git,
    .venv), build and run outputs are not walked."""
    skip = {"docs", "build", "dist", "runs", "node_modules", "__pycache__"}
    found = []
    for folder, dirs, files in os.walk(ROOT):
        dirs[:] = [d for d in dirs if not d.startswith(".") and d not in skip and not d.endswith(".egg-info")]
        found += [Path(folder) / f for f in files if f.endswith(".md")]
    return sorted(found)


def python_blocks(text: str) -> list[tuple[int, str]]:
    """``(first line number, dedented source)`` of every fenced block whose info string is ``python``."""
    blocks = []
    for m in _FENCE.finditer(text):
        if m.group("info").strip().split(" ")[0].lower() != "python":
            continue
        indent = len(m.group("indent"))
        lines = [line[indent:] if line[:indent].strip() == "" else line for line in m.group("body").splitlines()]
        blocks.append((text.count("\n", 0, m.start("body")) + 1, "\n".join(lines) + "\n"))
    return blocks


def relative_links(text: str) -> list[str]:
    """The link targets of ``text`` that point into the repository (no scheme, no bare anchor), without anchors."""
    text = _FENCE.sub("", text)  # links inside code blocks are code
    text = re.sub(r"`[^`\n]*`", "", text)
    out = []
    for target in _LINK.findall(text):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.IGNORECASE) or target.startswith("#"):
            continue
        out.append(target.split("#", 1)[0])
    return out


def test_python_blocks_finds_the_blocks_and_only_them():
    text = (
        "intro\n\n```python\nx = 1\n```\n\n```bash\nls\n```\n\n- item\n\n  ```python\n  y = x + 1\n  ```\n\n"
        "````markdown\n```python\nnot run\n```\n````\n"
    )
    blocks = python_blocks(text)
    assert [src for _, src in blocks] == ["x = 1\n", "y = x + 1\n"]
    assert [line for line, _ in blocks] == [4, 14]


def test_relative_links_skips_urls_anchors_and_code():
    text = "[a](docs/a.md#x) ![f](fig.png) [u](https://x.org) [h](#top) `[c](no.md)`\n```\n[d](no2.md)\n```\n"
    assert relative_links(text) == ["docs/a.md", "fig.png"]


def test_the_docs_have_python_examples():
    """The collector sees the README's quickstart and the guides' examples (an empty collection would pass)."""
    counts = {p.relative_to(ROOT).as_posix(): len(python_blocks(p.read_text())) for p in doc_pages()}
    assert counts["README.md"] >= 1
    assert sum(counts.values()) >= 8, counts


@pytest.mark.parametrize(
    "page", [p for p in doc_pages() if python_blocks(p.read_text())], ids=lambda p: p.relative_to(ROOT).as_posix()
)
def test_python_examples_run(page, tmp_path, monkeypatch):
    blocks = python_blocks(page.read_text())
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": "__docs__"}
    for line, source in blocks:
        # Padded so that a traceback names the page and the line of the page the failing statement is on.
        exec(compile("\n" * (line - 1) + source, str(page.relative_to(ROOT)), "exec"), namespace)


@pytest.mark.parametrize("page", markdown_files(), ids=lambda p: p.relative_to(ROOT).as_posix())
def test_relative_links_resolve(page):
    missing = [t for t in relative_links(page.read_text()) if t and not (page.parent / t).exists()]
    assert not missing, f"{page.relative_to(ROOT)} links to files that do not exist: {missing}"


def test_mkdocs_build_strict(tmp_path):
    """The site builds with every warning an error (broken links between pages, griffe's docstring warnings)."""
    pytest.importorskip("mkdocs")
    pytest.importorskip("mkdocstrings")
    mkdocs = shutil.which("mkdocs", path=str(Path(sys.executable).parent)) or shutil.which("mkdocs")
    assert mkdocs, "mkdocs is importable but its command is not on PATH"
    done = subprocess.run(
        [mkdocs, "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
