"""The two ways to start the command line each name themselves in usage and help."""

from __future__ import annotations

import subprocess
import sys
import tomllib

import pytest

from tests.cli.running import ROOT, clean_env

pytestmark = pytest.mark.timeout(60)


def console_script() -> tuple[str, str]:
    """The console script pyproject.toml declares: (its name, the Python code it runs).

    The code is what an installer's wrapper runs: import the entry point, exit with its
    result. It is run with ``python -c`` from the checkout, so it uses this tree's code.
    """
    with (ROOT / "pyproject.toml").open("rb") as f:
        scripts = tomllib.load(f)["project"]["scripts"]
    ((name, target),) = scripts.items()
    module, function = target.split(":")
    return name, f"import sys; from {module} import {function}; sys.exit({function}())"


def run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        argv, capture_output=True, text=True, timeout=30, cwd=ROOT, env=clean_env()
    )


def test_the_console_script_names_itself() -> None:
    name, code = console_script()
    assert name == "notifelect"
    done = run(sys.executable, "-c", code, "--help")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("usage: notifelect [-h] COMMAND ...\n")
    done = run(sys.executable, "-c", code, "status", "--help")
    assert done.stdout.startswith("usage: notifelect status [-h]")
    done = run(sys.executable, "-c", code)
    assert done.returncode == 2
    assert done.stderr.startswith("usage: notifelect [-h] COMMAND ...\n")
    assert "notifelect: error: the following arguments are required: COMMAND" in done.stderr


def test_python_m_names_itself() -> None:
    done = run(sys.executable, "-m", "notifelect", "--help")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("usage: python -m notifelect [-h] COMMAND ...\n")
    done = run(sys.executable, "-m", "notifelect", "demo", "--help")
    assert done.stdout.startswith("usage: python -m notifelect demo [-h]")
    done = run(sys.executable, "-m", "notifelect", "status", "--interval", "0")
    assert done.returncode == 2
    assert done.stderr.startswith("usage: python -m notifelect status [-h]")
    assert "python -m notifelect status: error: argument --interval: must be > 0" in done.stderr
