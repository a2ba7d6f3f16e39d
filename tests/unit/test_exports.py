"""The public API is exactly what ``notifelect.__all__`` lists, sorted."""

from __future__ import annotations

import inspect
import types

import notifelect


def test_all_is_sorted_and_unique() -> None:
    assert list(notifelect.__all__) == sorted(set(notifelect.__all__))


def test_all_lists_every_public_name_and_only_existing_ones() -> None:
    public = {
        name
        for name, value in vars(notifelect).items()
        if not name.startswith("_")
        and (inspect.isclass(value) or inspect.isfunction(value) or name == "election_manager")
        and getattr(value, "__module__", "notifelect").startswith("notifelect")
    }
    assert public == set(notifelect.__all__)
    for name in notifelect.__all__:
        assert hasattr(notifelect, name)


def test_submodules_that_users_import_exist() -> None:
    for module in ("election_manager", "testing", "protocol", "fencing"):
        imported = __import__(f"notifelect.{module}", fromlist=["_"])
        assert isinstance(imported, types.ModuleType)
