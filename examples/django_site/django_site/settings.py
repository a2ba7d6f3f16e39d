"""Settings of the example site: one PostgreSQL database, from DATABASE_URL."""

from __future__ import annotations

import os
from urllib.parse import parse_qs, unquote, urlsplit

_url = urlsplit(os.environ.get("DATABASE_URL", "postgresql://localhost/app"))
_query = parse_qs(_url.query)

SECRET_KEY = "example-only"
DEBUG = False
INSTALLED_APPS = ["leaderjobs"]
DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": _url.path.lstrip("/"),
        "USER": unquote(_url.username or ""),
        "PASSWORD": unquote(_url.password or ""),
        # A Unix socket directory comes as ?host=/path (libpq's form).
        "HOST": _url.hostname or _query.get("host", [""])[0],
        "PORT": str(_url.port or _query.get("port", [""])[0]),
    }
}
USE_TZ = True
