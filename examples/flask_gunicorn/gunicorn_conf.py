"""gunicorn settings for flask_app.py: start the election and the scheduler in each
worker after the fork, stop them when the worker exits."""

from __future__ import annotations

from typing import Any


def post_fork(server: Any, worker: Any) -> None:
    from flask_app import start_in_worker

    start_in_worker()


def worker_exit(server: Any, worker: Any) -> None:
    from flask_app import stop_in_worker

    stop_in_worker()
