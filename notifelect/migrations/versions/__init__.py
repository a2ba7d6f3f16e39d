"""notifelect's Alembic revisions (branch ``notifelect``); Alembic loads them by path."""
