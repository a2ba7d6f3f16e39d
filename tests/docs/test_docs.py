"""The documentation's code: every Python sample runs, includes exist, events are listed.

Each ```python block of README.md and docs/ is either an include of a file under
``examples/`` (compiled here, and run by the example tests or the migration tests) or a
block executed here as a module; blocks that define ``test_*`` coroutines also have them
run, on the in-memory bus.
"""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PAGES = sorted([ROOT / "README.md", *(ROOT / "docs").rglob("*.md")])
BLOCK = re.compile(r"^```python\n(.*?)^```", re.MULTILINE | re.DOTALL)
INCLUDE = re.compile(r'^--8<-- "([^"]+)"\s*$', re.MULTILINE)


def _blocks() -> list[tuple[str, str]]:
    found = []
    for page in PAGES:
        text = page.read_text()
        for number, match in enumerate(BLOCK.finditer(text), 1):
            found.append((f"{page.relative_to(ROOT)}#{number}", match.group(1)))
    return found


BLOCKS = _blocks()
INLINE = [(name, code) for name, code in BLOCKS if not INCLUDE.search(code)]
INCLUDED = sorted(
    {path for _, code in BLOCKS for path in INCLUDE.findall(code)}
    | {path for page in PAGES for path in INCLUDE.findall(page.read_text())}
)


def test_samples_were_found() -> None:
    assert len(INLINE) >= 8
    assert "examples/fastapi_app.py" in INCLUDED
    assert "benchmarks/results/results.md" in INCLUDED


@pytest.mark.parametrize("path", INCLUDED)
def test_every_included_file_exists_and_python_ones_compile(path: str) -> None:
    path, _, section = path.partition(":")  # "file:name" includes a marked section
    source = ROOT / path
    assert source.is_file(), path
    if section:
        assert f"--8<-- [start:{section}]" in source.read_text(), f"{path} has no {section}"
    if source.suffix == ".py":
        assert path.startswith("examples/"), "included code lives under examples/"
        compile(source.read_text(), str(source), "exec")


@pytest.mark.timeout(30)
@pytest.mark.parametrize(("name", "code"), INLINE, ids=[name for name, _ in INLINE])
def test_every_inline_sample_runs(name: str, code: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NOTIFELECT_SECRET", "0123456789abcdef0123456789abcdef")
    namespace: dict[str, object] = {"__name__": "docs_sample"}
    exec(compile(code, name, "exec"), namespace)
    tests = [f for key, f in namespace.items() if key.startswith("test_") and callable(f)]
    for test in tests:
        asyncio.run(asyncio.wait_for(test(), timeout=10))


def test_every_logged_event_is_documented() -> None:
    emitted = set()
    for source in (ROOT / "notifelect").rglob("*.py"):
        emitted |= set(re.findall(r'_extra\(\s*"([a-z_]+)"', source.read_text()))
        emitted |= set(re.findall(r'"notifelect_event": "([a-z_]+)"', source.read_text()))
    documented = (ROOT / "docs" / "reference" / "log-events.md").read_text()
    assert emitted
    assert {event for event in emitted if f"`{event}`" not in documented} == set()


def test_the_readme_is_a_front_page() -> None:
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 300
    for link in re.findall(r"\]\((docs/[^)#]+)", readme):
        assert (ROOT / link).is_file(), link
