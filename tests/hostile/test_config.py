"""Misconfiguration is refused at construction with the setting and the rule named."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from notifelect import ConfigurationError, ElectionGroup, Settings
from notifelect.schema import Names
from notifelect.settings import RetryPolicy

HOSTILE_PREFIX = "x'; drop table t; --"


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"election_interval": 0}, "election_interval must be > 0 seconds, got 0"),
        ({"election_interval": -1.0}, "election_interval must be > 0 seconds, got -1.0"),
        ({"election_timeout": 0.0}, "election_timeout must be > 0 seconds, got 0.0"),
        ({"lease": float("nan")}, "lease must be a finite number of seconds, got nan"),
        ({"leader_timeout": float("inf")}, "leader_timeout must be a finite number of seconds"),
        ({"lease": "2"}, "lease must be a finite number of seconds, got '2'"),
        ({"lease": True}, "lease must be a finite number of seconds, got True"),
        ({"lease": 0.5}, "lease (0.5) must be longer than election_interval (0.5)"),
        ({"lease": 0.4}, "lease (0.4) must be longer than election_interval (0.5)"),
        (
            {"leader_timeout": 0.9},
            "leader_timeout (0.9) must be at least twice election_interval (0.5)",
        ),
        (
            {"election_timeout": 2.0},
            "election_timeout (2.0) must be shorter than leader_timeout (2.0)",
        ),
        (
            {"election_timeout": 2.5, "leader_timeout": 3.0},
            "election_timeout (2.5) must be shorter than lease (1.5)",
        ),
        ({"priority": 1.5}, "priority must be an int, got 1.5"),
        ({"priority": 2**31}, "priority must fit in 32 bits"),
        ({"preempt": "no"}, "preempt must be one of 'priority', 'rank', 'never', got 'no'"),
        ({"fence": 0}, "fence must be True or False, got 0"),
        ({"strict_takeover": None}, "strict_takeover must be True or False, got None"),
        ({"retry": 3}, "retry must be a RetryPolicy, got 3"),
        ({"secret": "short"}, "secret must be at least 16 bytes, got 5"),
        ({"secret": b""}, "secret must be at least 16 bytes, got 0"),
        ({"secret": 1234567890123456}, "secret must be bytes or str, got int"),
        ({"namespace": ""}, "invalid namespace: it must be a non-empty string"),
        ({"namespace": None}, "invalid namespace: it must be a non-empty string"),
        ({"namespace": "a\nb"}, "control and non-printable characters are not allowed"),
        ({"namespace": "é" * 101}, "at most 200 bytes of UTF-8"),
        ({"prefix": HOSTILE_PREFIX}, "a prefix is 0-30 characters of lowercase ASCII"),
        ({"prefix": "App_"}, "a prefix is 0-30 characters of lowercase ASCII"),
        ({"prefix": "p" * 31}, "a prefix is 0-30 characters of lowercase ASCII"),
    ],
)
def test_impossible_settings_name_the_setting_and_the_rule(
    changes: dict[str, object], message: str
) -> None:
    with pytest.raises(ConfigurationError, match=re.escape(message)) as info:
        Settings(**changes)  # type: ignore[arg-type]
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"initial": 0}, "retry.initial must be > 0 seconds, got 0"),
        ({"jitter": -1}, "retry.jitter must be >= 0 seconds, got -1"),
        ({"initial": 2.0, "maximum": 1.0}, "retry.maximum (1.0) must be >= retry.initial (2.0)"),
        ({"attempts": 0}, "retry.attempts must be >= 1 or None, got 0"),
    ],
)
def test_impossible_retry_policies_name_the_rule(changes: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigurationError, match=re.escape(message)):
        RetryPolicy(**changes)  # type: ignore[arg-type]


def test_replace_validates_again() -> None:
    with pytest.raises(ConfigurationError, match="lease"):
        Settings().replace(lease=0.1)


def test_a_secret_is_kept_out_of_repr_and_normalised_to_bytes() -> None:
    s = Settings(secret="correct horse battery staple")
    assert "horse" not in repr(s)
    assert s.secret_key == b"correct horse battery staple"
    assert Settings(secret=b"\x00" * 16).secret_key == b"\x00" * 16
    assert Settings().secret_key is None


def test_group_name_is_validated_like_a_namespace() -> None:
    with pytest.raises(ConfigurationError, match="non-printable"):
        ElectionGroup("postgresql://u@h/db", name="bad\x00name")


@pytest.mark.parametrize(
    "namespace",
    [
        HOSTILE_PREFIX,
        'quote"d',
        "back\\slash",
        "$1 and $$dollar$$",
        "ünïcödé 选举 🗳",
        "n" * 200,
        "é" * 100,
    ],
)
def test_any_printable_namespace_up_to_200_bytes_is_accepted(namespace: str) -> None:
    assert Settings(namespace=namespace).namespace == namespace


def test_object_names_stay_within_postgres_identifier_limit() -> None:
    names = Names("p" * 30)
    for name in (names.sequence, names.channel, *names.tables(), *names.views()):
        assert len(name.encode()) <= 63


def test_prefix_from_environment_is_validated(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NOTIFELECT_PREFIX", HOSTILE_PREFIX)
    with pytest.raises(ConfigurationError, match="a prefix is 0-30 characters"):
        Settings().names  # noqa: B018


@pytest.mark.timeout(60)
@pytest.mark.parametrize("command", ["install", "uninstall"])
def test_cli_rejects_a_hostile_prefix_with_the_rule(command: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "notifelect", command, "--dry-run", "--prefix", HOSTILE_PREFIX],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert "invalid prefix" in result.stderr
    assert "0-30 characters of lowercase ASCII letters, digits and underscores" in result.stderr
    assert "drop table" not in result.stdout.lower()
