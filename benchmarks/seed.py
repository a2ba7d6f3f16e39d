"""The seed's package, ``notifelect==0.0.3``, in a virtual environment of its own.

Its import name is ``notifelect`` as well, so it never shares an interpreter with this
checkout: its nodes run on the environment's own Python (see ``node.py``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

SEED_REQUIREMENT = "notifelect==0.0.3"
SEED_VENV = Path(__file__).with_name(".venv-seed")

_PROBE = """
import dataclasses, json, notifelect
from importlib.metadata import version
from notifelect.election_manager import Coordinator
fields = {f.name: f.default for f in dataclasses.fields(Coordinator)}
print(json.dumps({
    "module": notifelect.__file__,
    "version": version("notifelect"),
    "election_interval": fields["election_interval"].total_seconds(),
    "election_timeout": fields["election_timeout"].total_seconds(),
}))
"""


def seed_python(venv: Path = SEED_VENV) -> Path:
    return venv / "bin" / "python"


def ensure_seed(venv: Path = SEED_VENV, *, install: bool = True) -> Path | None:
    """The seed environment's Python, created on first use; None if absent and not installed."""
    python = seed_python(venv)
    if not python.exists():
        if not install:
            return None
        print(f"creating {venv} with {SEED_REQUIREMENT} ...", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run(
            [str(python), "-m", "pip", "install", "--quiet", SEED_REQUIREMENT],
            check=True,
        )
    return python


def seed_facts(python: Path) -> dict[str, object]:
    """Version, module path and Coordinator defaults, read from the installed package."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # the seed's own
    with tempfile.TemporaryDirectory() as cwd:  # never the checkout: it has a notifelect/
        out = subprocess.run(
            [str(python), "-c", _PROBE], check=True, capture_output=True, text=True, cwd=cwd,
            env=env,
        )  # fmt: skip
    facts: dict[str, object] = json.loads(out.stdout)
    if "site-packages" not in str(facts["module"]):
        raise RuntimeError(f"the seed environment imports notifelect from {facts['module']}")
    return facts
