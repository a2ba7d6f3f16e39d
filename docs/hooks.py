"""mkdocs hook: publish generated files that live outside docs/ (the benchmark chart)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mkdocs.structure.files import File, Files

ROOT = Path(__file__).resolve().parents[1]

#: Site path -> file in the repository, as `python -m benchmarks` writes it.
GENERATED = {"benchmarks/chart.png": ROOT / "benchmarks" / "results" / "chart.png"}


def on_files(files: Files, config: Any) -> Files:
    for uri, source in GENERATED.items():
        files.append(File.generated(config, uri, abs_src_path=str(source)))
    return files
