"""The election group of the example site, built from Django's own database settings.

It is created here and started only where a process should take part: the
``run_leader_jobs`` command below (or gunicorn's ``post_fork`` hook for web workers), never
in ``AppConfig.ready()``, which also runs in ``migrate``, ``shell`` and every other command.
"""

from __future__ import annotations

from urllib.parse import quote

from django.conf import settings

from notifelect.sync import SyncElectionGroup


def database_url(alias: str = "default") -> str:
    """A ``postgresql://`` URL for one of ``settings.DATABASES``."""
    db = settings.DATABASES[alias]
    user = quote(db.get("USER") or "", safe="")
    password = quote(db.get("PASSWORD") or "", safe="")
    auth = f"{user}:{password}@" if password else f"{user}@" if user else ""
    host = db.get("HOST") or ""
    name = quote(db["NAME"], safe="")
    if host.startswith("/"):  # a Unix socket directory: libpq's ?host= form
        query = f"?host={quote(host, safe='')}" + (f"&port={db['PORT']}" if db.get("PORT") else "")
        return f"postgresql://{auth}/{name}{query}"
    port = f":{db['PORT']}" if db.get("PORT") else ""
    return f"postgresql://{auth}{host}{port}/{name}"


group = SyncElectionGroup(database_url(), name="django-example")
