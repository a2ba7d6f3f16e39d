"""Flask with APScheduler's BackgroundScheduler under gunicorn: every worker schedules the
job, one worker runs it, once per tick across all workers.

    pip install -e '.[examples,psycopg2]' flask gunicorn   # from a checkout of notifelect
    python -m notifelect install                           # once per database
    export DATABASE_URL=postgresql://user@localhost/app
    cd examples/flask_gunicorn
    gunicorn -c gunicorn_conf.py --preload -w 4 flask_app:app

The group and the scheduler are *created* when the module is imported (with ``--preload``
that is in gunicorn's master, before the workers are forked) and *started* in each
worker, by the ``post_fork`` hook in gunicorn_conf.py: threads do not survive a fork, and a
group started before one refuses to be used in the child. ``worker_exit`` stops both, so a
worker that leaves hands leadership over at once. ``GET /leader`` says what the worker
that answers knows. ``REPORT_EVERY`` sets the pace in seconds (60 by default);
``REPORT_RECORDS`` names a file each run appends a line to (the tests read it).
"""

from __future__ import annotations

import os
import time
from typing import Any

import sqlalchemy as sa
from apscheduler.schedulers.background import BackgroundScheduler  # type: ignore[import-untyped]
from flask import Flask, jsonify

from notifelect import current_leadership
from notifelect.sync import ElectionGroup

# A plain postgresql:// URL is psycopg2 in SQLAlchemy: the application's own engine. The
# election reads where it connects and keeps connections of its own; this pool is untouched.
engine = sa.create_engine(os.environ.get("DATABASE_URL", "postgresql://"))
group = ElectionGroup(engine, name="flask-example")
scheduler = BackgroundScheduler()
app = Flask(__name__)


@group.leader_only
def send_report() -> None:
    """Must not run twice per tick: on the workers that do not lead it returns at once."""
    leadership = current_leadership()
    assert leadership is not None
    line = f"{os.getpid()} {leadership.term} {time.time():.3f}"
    print(f"report sent: {line}", flush=True)
    records = os.environ.get("REPORT_RECORDS")
    if records:
        with open(records, "a") as out:
            out.write(line + "\n")


scheduler.add_job(send_report, "interval", seconds=float(os.environ.get("REPORT_EVERY", "60")))


@app.get("/leader")
def leader() -> Any:
    info = group.leader
    return jsonify(
        worker=os.getpid(),
        node=group.node,
        leading=group.is_leader,
        leader=None if info is None else info.node,
    )


def start_in_worker() -> None:
    """Join the election and start the scheduler (gunicorn's ``post_fork``)."""
    group.start()
    scheduler.start()
    print(f"worker {os.getpid()} joined as node {group.node}", flush=True)


def stop_in_worker() -> None:
    """Stop scheduling, wait for a running job, resign (gunicorn's ``worker_exit``)."""
    scheduler.shutdown(wait=True)
    group.close()
