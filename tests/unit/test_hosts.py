"""Multi-host DSNs: every way of listing hosts is read, or refused with a clear error."""

from __future__ import annotations

from typing import Any

import pytest

from notifelect import ConfigurationError, Settings
from notifelect.transport.base import TransportError
from notifelect.transport.connect import connect_bound, connector_for
from notifelect.transport.hosts import Address, Budgets, HostOrder, split_dsn, target_of

A, B = Address("a.example", 5432), Address("b.example", 5433)


@pytest.mark.parametrize(
    "dsn",
    [
        "postgresql://app@a.example:5432,b.example:5433/db",
        "postgresql+asyncpg://app@/db?host=a.example:5432&host=b.example:5433",
        "postgresql://app@/db?host=a.example,b.example&port=5432,5433",
        "postgres://app@/db?host=a.example:5432,b.example:5433",
    ],
)
def test_every_way_of_listing_hosts_keeps_all_of_them(dsn: str) -> None:
    split = split_dsn(dsn)
    assert split.hosts == [A, B]
    assert split.rest == "postgresql://app@/db"


def test_one_port_applies_to_every_host_without_one() -> None:
    split = split_dsn("postgresql://app@/db?host=a.example,b.example:6000&port=5432")
    assert split.hosts == [Address("a.example", 5432), Address("b.example", 6000)]


def test_ipv6_and_socket_directories() -> None:
    split = split_dsn("postgresql://app@[::1]:5432,%2Ftmp%2Fpg/db")
    assert split.hosts == [Address("::1", 5432), Address("/tmp/pg", None)]
    assert str(split.hosts[0]) == "[::1]:5432"


def test_other_parameters_stay_and_target_is_taken_out() -> None:
    split = split_dsn(
        "postgresql://app:s%40cret@a.example/db?sslmode=require&target_session_attrs=primary"
        "&application_name=billing"
    )
    assert split.hosts == [Address("a.example", None)]
    assert split.target == "primary"
    assert split.rest == "postgresql://app:s%40cret@/db?sslmode=require&application_name=billing"
    assert split.query["application_name"] == "billing"


def test_no_host_falls_back_to_pghost(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PGHOST", "a.example,b.example")
    monkeypatch.setenv("PGPORT", "5432,5433")
    assert split_dsn("postgresql://app@/db").hosts == [A, B]
    monkeypatch.delenv("PGHOST")
    assert split_dsn("postgresql://app@/db").hosts == []


@pytest.mark.parametrize(
    ("dsn", "says"),
    [
        ("postgresql://app@a.example/db?host=b.example", "both before the path"),
        ("postgresql://app@/db?host=a,b,c&port=1,2", "3 host(s) but 2 ports"),
        ("postgresql://app@a.example:http/db", "port 'http' in the DSN is not a number"),
        ("postgresql://app@a.example:70000/db", "out of range"),
        ("postgresql://app@[::1/db", "invalid IPv6 address"),
    ],
)
def test_hosts_that_cannot_be_read_are_refused(dsn: str, says: str) -> None:
    with pytest.raises(ConfigurationError, match=says.replace("(", r"\(").replace(")", r"\)")):
        connector_for(dsn)


@pytest.mark.parametrize("target", ["standby", "read-only", "prefer-standby"])
def test_a_target_that_sends_the_election_to_a_standby_is_refused(target: str) -> None:
    with pytest.raises(ConfigurationError, match=f"target_session_attrs={target} sends"):
        connector_for(f"postgresql://app@a,b/db?target_session_attrs={target}")


def test_targets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PGTARGETSESSIONATTRS", raising=False)
    assert target_of(None) == "read-write"
    assert target_of("any") == "read-write"  # the election writes: any read-write host
    monkeypatch.setenv("PGTARGETSESSIONATTRS", "primary")
    assert target_of(None) == "primary"
    with pytest.raises(ConfigurationError, match="unknown target_session_attrs 'rw'"):
        target_of("rw")


def test_the_host_that_accepted_last_goes_first() -> None:
    order = HostOrder(Budgets(1.0), "read-write")
    assert order.order([A, B]) == [A, B]
    order._good = B
    assert order.order([A, B]) == [B, A]
    assert order.order([A]) == [A]  # a host no longer listed is forgotten


async def test_each_host_gets_the_budget_of_a_call_with_that_many_hosts() -> None:
    # Decided per call, from the hosts the call has: an engine's connect_args or $PGHOST
    # may list several where its URL shows one.
    order = HostOrder(Budgets(1.0, 2.0), "read-write")
    given: list[tuple[Address | None, float]] = []

    async def refuse(address: Address | None, budget: float) -> Any:
        given.append((address, budget))
        raise ConnectionRefusedError

    with pytest.raises(TransportError, match=r"1s each"):
        await order.connect([A, B], refuse)
    assert given == [(A, 1.0), (B, 1.0)]
    given.clear()
    with pytest.raises(ConnectionRefusedError):
        await order.connect([A], refuse)
    assert given == [(A, 2.0)]
    assert order.bound(1) == 2.0
    assert order.bound(3) == 3.0


def test_the_per_host_budget_follows_the_settings() -> None:
    assert Settings().host_timeout == 1.0  # half of io_timeout (2 s)
    assert Settings(election_interval=0.1, lease=0.5, leader_timeout=0.5).host_timeout == 0.25
    assert Settings(connect_timeout=3).host_timeout == 3
    with pytest.raises(ConfigurationError, match="connect_timeout must be > 0"):
        Settings(connect_timeout=0)


def test_a_lone_host_gets_the_whole_io_timeout() -> None:
    # With nothing else to try, a server slow to let a session in (many processes
    # starting at once) is waited for as long as any call of the election.
    assert Settings().lone_host_timeout == 2.0
    assert Settings(connect_timeout=3).lone_host_timeout == 3
    settings = Settings()
    lone, _ = connector_for(
        "postgresql://app@a.example/db",
        host_timeout=settings.host_timeout,
        lone_host_timeout=settings.lone_host_timeout,
    )
    several, _ = connector_for(
        "postgresql://app@/db?host=a.example,b.example,c.example",
        host_timeout=settings.host_timeout,
        lone_host_timeout=settings.lone_host_timeout,
    )
    assert connect_bound(lone) == 2.0
    assert connect_bound(several) == 3 * 1.0


@pytest.mark.parametrize(
    ("cparams", "env"),
    [
        ({"service": "rv"}, {}),
        ({"host": "db", "hostaddr": "10.0.0.5"}, {}),
        ({"host": "db"}, {"PGSERVICE": "rv"}),
        ({"host": "db"}, {"PGOPTIONS": "-c search_path=elsewhere"}),
    ],
)
def test_settings_the_election_cannot_read_are_refused(
    cparams: dict[str, str], env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from notifelect.transport.connect import libpq_to_dsn

    for var in ("PGSERVICE", "PGSERVICEFILE", "PGOPTIONS", "PGHOSTADDR"):
        monkeypatch.delenv(var, raising=False)
    for var, value in env.items():
        monkeypatch.setenv(var, value)
    with pytest.raises(ConfigurationError, match="cannot read"):
        libpq_to_dsn(cparams)
