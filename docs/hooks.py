"""MkDocs hook: serve the figures of ``notebooks/figures/`` (the README's, made by the commands the pages cite) at
``figures/`` in the site, so the pages show them without a second copy in ``docs/``."""

from __future__ import annotations

from pathlib import Path

from mkdocs.structure.files import File

FIGURES = Path(__file__).resolve().parents[1] / "notebooks"


def on_files(files, config):
    for path in sorted((FIGURES / "figures").glob("*.png")):
        files.append(
            File(
                f"figures/{path.name}",
                src_dir=str(FIGURES),
                dest_dir=config["site_dir"],
                use_directory_urls=config["use_directory_urls"],
            )
        )
    return files
