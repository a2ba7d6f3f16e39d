"""Every decorator form, type-checked by mypy --strict (CI) and exercised at run time."""

from __future__ import annotations

from collections.abc import Coroutine
from datetime import timedelta
from typing import Any, assert_type

from notifelect import (
    ElectionGroup,
    Leadership,
    MemoryBus,
    Periodic,
    current_leadership,
    every,
    leader_only,
    on_deposed,
    on_elected,
)
from notifelect.testing import solo_leader


def decorate(group: ElectionGroup) -> None:
    @group.leader_only
    async def method_form(x: int, *, label: str = "") -> str:
        return f"{label}{x}"

    @group.leader_only(raise_if_not_leader=True, finish_on_loss=True)
    async def method_with_options(x: int) -> int:
        return x

    @leader_only(group)
    async def function_form(items: list[str]) -> int:
        return len(items)

    @leader_only(group, raise_if_not_leader=True)
    def sync_form(a: float, b: float) -> float:
        return a + b

    @group.on_elected
    async def elected(leadership: Leadership) -> None:
        assert_type(leadership.term, int)

    @on_elected(group, resign_on_error=False)
    async def elected_fn(leadership: Leadership) -> None:
        return None

    @group.on_deposed
    async def deposed(leadership: Leadership) -> None:
        return None

    @on_deposed(group)
    async def deposed_fn(leadership: Leadership) -> None:
        return None

    @group.every(timedelta(seconds=30))
    async def periodic() -> int:
        return 1

    @every(group, 5.0, initial_delay=timedelta(seconds=1))
    async def periodic_fn() -> None:
        return None

    def returns_optional_str(coro: Coroutine[Any, Any, str | None]) -> None:
        coro.close()  # only the type matters here; the call is never awaited

    returns_optional_str(method_form(1, label="n"))
    assert_type(periodic, Periodic[int])
    assert_type(sync_form(1.0, 2.0), float | None)


async def test_every_form_keeps_signatures_and_runs() -> None:
    async with solo_leader("typed") as group:
        decorate(group)

        @group.leader_only
        async def double(x: int) -> int:
            assert current_leadership() is group.leadership
            return 2 * x

        result = await double(4)
        assert_type(result, int | None)
        assert result == 8
        assert double.__name__ == "double"


def test_memory_bus_is_exported() -> None:
    assert isinstance(MemoryBus(), MemoryBus)
