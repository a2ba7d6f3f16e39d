"""What a schema check found -> its state and the first words of its message, row by row.

tests/migration/test_startup.py makes each condition in a real database; this table pins
the decision itself, including the rows a database rarely shows (an empty version table).
"""

from __future__ import annotations

import pytest

from notifelect.schema import SCHEMA_VERSION, Names, required_names
from notifelect.schema_check import FoundSchema, SchemaState, schema_problem

NAMES = Names()
EVERYTHING = tuple(required_names(NAMES))
WHERE = "database 'app' (schema 'public' from search_path public; no object prefix)"


def found(missing: tuple[str, ...] = (), version: int | None = SCHEMA_VERSION) -> FoundSchema:
    return FoundSchema(
        database="app", schema="public", search_path="public", missing=missing, version=version
    )


IN = f"the notifelect schema in {WHERE}"
V = SCHEMA_VERSION
ROWS = [
    # (what was found, its state, how the message starts)
    (found(), SchemaState.CURRENT, None),
    (
        found(EVERYTHING, None),
        SchemaState.ABSENT,
        f"the notifelect schema is not installed in {WHERE}",
    ),
    (found(EVERYTHING[1:], None), SchemaState.SEED, f"{WHERE} has only the sequence"),
    (found(("notifelect_session",), 1), SchemaState.OUTDATED, f"{IN} is at version 1; "),
    (found((), V - 1), SchemaState.OUTDATED, f"{IN} is at version {V - 1}; "),
    (found((), V + 1), SchemaState.NEWER, f"{IN} is at version {V + 1}, newer"),
    (
        found(("notifelect_leader",)),
        SchemaState.INCOMPLETE,
        f"{IN} is incomplete: it records version {V} but 'notifelect_leader'",
    ),
    (found((), None), SchemaState.INCOMPLETE, f"{IN} is incomplete: it records no version"),
    (
        found(("notifelect_version",), None),
        SchemaState.INCOMPLETE,
        f"{IN} is incomplete: it records no version but 'notifelect_version'",
    ),
]


@pytest.mark.parametrize(("what", "state", "start"), ROWS)
def test_each_state_has_its_message(
    what: FoundSchema, state: SchemaState, start: str | None
) -> None:
    assert what.state(NAMES) is state
    message = schema_problem(what, NAMES)
    if start is None:
        assert message is None
    else:
        assert message is not None
        assert message.startswith(start), message
        assert ("not installed" in message) == (state is SchemaState.ABSENT)
        steps = state in (SchemaState.ABSENT, SchemaState.SEED, SchemaState.OUTDATED)
        assert ("'python -m notifelect alembic revision'" in message) == steps


def test_no_schema_on_the_search_path_is_said_so() -> None:
    nowhere = FoundSchema("app", None, '"$user", elsewhere', EVERYTHING, None)
    message = schema_problem(nowhere, NAMES)
    assert message is not None
    assert '(no schema: none of search_path "$user", elsewhere exists; no object prefix)' in (
        message
    )
