"""Alembic environment of a notifelect checkout: ``alembic upgrade head`` installs the schema.

See ``notifelect/migrations/environment.py`` for the database URL, prefix and version table.
"""

from notifelect.migrations.environment import run

run()
