"""Settings of the example site: one PostgreSQL database, from DATABASE_URL."""

from __future__ import annotations

import os
from urllib.parse import unquote, urlsplit

_url = urlsplit(os.environ.get("DATABASE_URL", "postgresql://localhost/app"))

SECRET_KEY = "example-only"
DEBUG = False
INSTALLED_APPS = ["leaderjobs"]
DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": _url.path.lstrip("/"),
        "USER": unquote(_url.username or ""),
        "PASSWORD": unquote(_url.password or ""),
        "HOST": _url.hostname or "",
        "PORT": str(_url.port or ""),
    }
}
USE_TZ = True
