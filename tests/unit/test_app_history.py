"""Reading the schema version an application's revision applies, and the bodies' arguments.

The revisions themselves are written and run in tests/cli/test_alembic_revision.py and
tests/migration/test_schema_bump.py; here, the rules for reading a revision's source.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from notifelect.errors import ConfigurationError
from notifelect.migrations import downgrade_schema, upgrade_schema
from notifelect.migrations.history import Refused, upgrade_versions
from notifelect.schema import SCHEMA_VERSION

ROWS = [
    # (the revision's source, the versions it upgrades to)
    ("def upgrade():\n    upgrade_schema(1)\n", [1]),
    ("def upgrade():\n    notifelect.migrations.upgrade_schema(2)\n", [2]),
    ("def upgrade():\n    upgrade_schema(version=3)\n", [3]),
    ("schema_version = 2\n\ndef upgrade():\n    upgrade_schema(schema_version)\n", [2]),
    ("V: int = 3\n\ndef upgrade() -> None:\n    upgrade_schema(V)\n", [3]),
    ("def upgrade():\n    upgrade_schema(1)\n\ndef downgrade():\n    upgrade_schema(9)\n", [1]),
    ("def upgrade():\n    op.create_table('t')\n\ndef downgrade():\n    downgrade_schema(1)\n", []),
    ("def upgrade():\n    upgrade_schema(1)\n    upgrade_schema(3)\n", [1, 3]),
]


@pytest.mark.parametrize(("source", "versions"), ROWS)
def test_the_versions_a_revision_upgrades_to(source: str, versions: list[int]) -> None:
    assert upgrade_versions(source) == versions


@pytest.mark.parametrize(
    "call", ["upgrade_schema(SCHEMA_VERSION)", "upgrade_schema()", "upgrade_schema(1 + 2)"]
)
def test_a_version_that_is_not_a_number_is_refused(call: str) -> None:
    with pytest.raises(Refused, match=r"calls upgrade_schema\(.*\): cannot tell") as refused:
        upgrade_versions(f"def upgrade():\n    {call}\n", "versions/app_0001.py")
    assert str(refused.value).startswith("versions/app_0001.py calls ")
    assert not refused.value.up_to_date


@pytest.mark.parametrize(
    ("call", "rule"),
    [
        (lambda: upgrade_schema(0), "knows schema versions 1 to"),
        (lambda: upgrade_schema(SCHEMA_VERSION + 1), "needs that release installed"),
        (lambda: downgrade_schema(SCHEMA_VERSION + 1), "knows schema versions 1 to"),
        (lambda: downgrade_schema(3, to=3), "'to' is the schema version to go back to"),
        (lambda: downgrade_schema(3, to=-1), "from 0 \\(nothing\\) to 2"),
    ],
)
def test_bodies_refuse_versions_this_release_does_not_know(
    call: Callable[[], None], rule: str
) -> None:
    with pytest.raises(ConfigurationError, match=rule):
        call()
