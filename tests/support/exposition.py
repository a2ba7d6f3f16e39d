"""Reading a Prometheus text exposition back, for tests of the metrics."""

from __future__ import annotations

import re

from notifelect import ElectionGroup

#: A sample's name and labels.
Sample = tuple[str, frozenset[tuple[str, str]]]


def samples(text: str | bytes) -> dict[Sample, float]:
    """(name, labels) -> value of every sample in ``text``."""
    if isinstance(text, bytes):
        text = text.decode()
    result = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        head, value = line.rsplit(" ", 1)
        name, _, rest = head.partition("{")
        result[name, frozenset(re.findall(r'(\w+)="([^"]*)"', rest))] = float(value)
    return result


def sample(lines: dict[Sample, float], name: str, group: ElectionGroup, **labels: object) -> float:
    """The value of metric ``name`` of ``group`` with exactly these further labels."""
    wanted = {"group": group.name, "node": group.instance} | {k: str(v) for k, v in labels.items()}
    return lines[name, frozenset(wanted.items())]


def labelled(lines: dict[Sample, float], name: str, group: ElectionGroup) -> list[dict[str, str]]:
    """The labels of every sample of ``name`` of ``group``."""
    found = []
    for (metric, labels), _ in lines.items():
        values = dict(labels)
        if metric == name and (values.get("group"), values.get("node")) == (
            group.name,
            group.instance,
        ):
            found.append(values)
    return found
