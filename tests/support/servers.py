"""PostgreSQL servers for tests: the shared one, and throwaway ones tests may break.

The shared server is ``$NOTIFELECT_TEST_DSN`` or, when unset, an embedded PostgreSQL from
the ``pgserver`` package started in a temporary directory. A :class:`ThrowawayPostgres` is
a private server on a free TCP port of 127.0.0.1, from the same binaries, that a test may
restart, stop or kill.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import pwd
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

_SYSTEM_USER = "pgserver"  # the unprivileged user pgserver itself runs PostgreSQL as


def with_database(dsn: str, database: str) -> str:
    """``dsn`` pointing at another database."""
    parts = urlsplit(dsn)
    return urlunsplit(parts._replace(path="/" + database))


def sqlalchemy_url(dsn: str) -> str:
    """A SQLAlchemy URL for the asyncpg driver from a libpq-style DSN (several hosts as
    repeated ``host=h:p`` parameters, as SQLAlchemy writes them)."""
    parts = urlsplit(dsn)
    query = parse_qsl(parts.query)
    return urlunsplit(parts._replace(scheme="postgresql+asyncpg", query=urlencode(query)))


def multi_host_dsn(user: str, database: str, ports: list[int], **params: str) -> str:
    """A DSN listing several servers of 127.0.0.1, in the form SQLAlchemy reads too."""
    query = [("host", f"127.0.0.1:{port}") for port in ports] + list(params.items())
    return f"postgresql://{user}@/{database}?{urlencode(query)}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _bin_dir() -> Path:
    """The PostgreSQL binaries, where the user the servers run as can execute them."""
    import pgserver

    install = Path(pgserver.__file__).parent / "pginstall"
    if os.geteuid() != 0 or _reachable_by_others(install):
        return install / "bin"
    return _shared_copy(install) / "bin"


def _reachable_by_others(path: Path) -> bool:
    """Whether a user other than the owner may traverse every directory down to ``path``."""
    return all(p.stat().st_mode & stat.S_IXOTH for p in (path, *path.parents))


def _shared_copy(install: Path) -> Path:
    """A copy of ``install`` in the temporary directory that any user can read and run.

    When the checkout (and so the virtual environment) sits in a private directory, the
    unprivileged user cannot reach the binaries there. PostgreSQL finds share/ and lib/
    relative to its binaries, and the wheel's binaries find their bundled libraries in
    ``pgserver.libs`` beside the package, so a copy of both, laid out the same way, runs as
    is. It is kept per version of the binaries and reused only if root owns it and no one
    else can write to it.
    """
    package = install.parent
    stamp = (install / "bin" / "postgres").stat()
    key = hashlib.sha256(f"{install}:{stamp.st_size}:{stamp.st_mtime_ns}".encode()).hexdigest()
    target = Path(tempfile.gettempdir()) / f"notifelect-pginstall-{key[:16]}"
    copied = target / package.name / install.name
    with contextlib.suppress(FileNotFoundError):
        info = target.lstat()
        if (
            stat.S_ISDIR(info.st_mode)
            and info.st_uid == os.geteuid()
            and not info.st_mode & (stat.S_IWGRP | stat.S_IWOTH)
            and (copied / "bin" / "postgres").exists()
        ):
            return copied
        target = Path(tempfile.mkdtemp(prefix="notifelect-pginstall-"))  # not ours: a new one
        target.rmdir()
        copied = target / package.name / install.name
    staging = Path(tempfile.mkdtemp(prefix="notifelect-pginstall-staging-"))
    shutil.copytree(install, staging / package.name / install.name, symlinks=True)
    libs = package.with_name(package.name + ".libs")
    if libs.is_dir():
        shutil.copytree(libs, staging / libs.name, symlinks=True)
    for directory, _, _ in os.walk(staging):
        os.chmod(directory, 0o755)
    try:
        os.rename(staging, target)
    except OSError:  # another test process made the same copy first
        shutil.rmtree(staging, ignore_errors=True)
    return copied


def _run_as() -> dict[str, Any]:
    """subprocess arguments that drop root privileges (PostgreSQL refuses to run as root)."""
    if os.geteuid() != 0:
        return {}
    try:
        entry = pwd.getpwnam(_SYSTEM_USER)
    except KeyError:
        subprocess.run(["useradd", "-M", "-s", "/bin/false", _SYSTEM_USER], check=True)
        entry = pwd.getpwnam(_SYSTEM_USER)
    return {"user": entry.pw_uid, "group": entry.pw_gid}


class ThrowawayPostgres:
    """A private PostgreSQL on 127.0.0.1:<free port>; trust auth, superuser ``postgres``.

    :meth:`replicate` makes a hot standby of it (streaming replication), which
    :meth:`promote` turns into a primary: a database failover, as PostgreSQL's own HA
    (Patroni, managed services) performs one.
    """

    def __init__(self, root: Path | None = None, port: int | None = None) -> None:
        self.root = Path(root or tempfile.mkdtemp(prefix="notifelect-pg-"))
        self.root.chmod(0o777)
        self.data = self.root / "data"
        self.port = port or free_port()
        self.log = self.root / "postgres.log"
        self._bin = _bin_dir()
        self._as = _run_as()

    @property
    def dsn(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _ctl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(self._bin / "pg_ctl"), "-D", str(self.data), *args],
            check=check,
            capture_output=True,
            text=True,
            timeout=60,
            **self._as,
        )

    def start(self) -> ThrowawayPostgres:
        if not self.data.exists():
            self.data.mkdir()
            if self._as:
                os.chown(self.data, self._as["user"], self._as["group"])
            subprocess.run(
                [str(self._bin / "initdb"), "-D", str(self.data), "-U", "postgres",
                 "--auth=trust", "--no-sync", "-E", "UTF8"],
                check=True, capture_output=True, text=True, timeout=120, **self._as,
            )  # fmt: skip
            with open(self.data / "postgresql.conf", "a") as conf:
                conf.write(
                    "\nfsync = off\nsynchronous_commit = off\nfull_page_writes = off\n"
                    "max_connections = 200\nlisten_addresses = '127.0.0.1'\n"
                    f"port = {self.port}\nunix_socket_directories = '{self.root}'\n"
                )
        self._ctl("-l", str(self.log), "-w", "-t", "60", "start")
        return self

    def stop(self, mode: str = "fast") -> None:
        done = self._ctl("-m", mode, "-w", "-t", "20", "stop", check=False)
        if done.returncode == 0 or self.postmaster_pid() is None:
            return
        # A backend blocked writing to a client that reads nothing (a black-holed path in
        # the fault tests) holds a shutdown up, even an immediate one: it is blocked in the
        # message that tells its client why it ends. The server stops anyway.
        done = self._ctl("-m", "immediate", "-w", "-t", "10", "stop", check=False)
        postmaster = self.postmaster_pid()
        if done.returncode == 0 or postmaster is None:
            return
        children = subprocess.run(
            ["pgrep", "-P", str(postmaster)], capture_output=True, text=True, check=False
        )
        for pid in children.stdout.split():
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(pid), signal.SIGKILL)
        self._ctl("-w", "-t", "30", "stop", "-m", "immediate", check=False)

    def replicate(self, port: int | None = None) -> ThrowawayPostgres:
        """Start a hot standby of this server (on ``port``, or a free one) and return it.

        A base backup (``pg_basebackup -R``: ``standby.signal`` and a ``primary_conninfo``
        naming this server), streaming asynchronously until :meth:`synchronous` says
        otherwise. The standby is configured to serve as a primary once promoted: no
        synchronous standby of its own.
        """
        replica = ThrowawayPostgres(port=port)
        subprocess.run(
            [str(self._bin / "pg_basebackup"), "-h", "127.0.0.1", "-p", str(self.port),
             "-U", "postgres", "-D", str(replica.data), "-X", "stream", "-R",
             "--checkpoint=fast", "--no-sync"],
            check=True, capture_output=True, text=True, timeout=120, **self._as,
        )  # fmt: skip
        with open(replica.data / "postgresql.conf", "a") as conf:
            conf.write(
                f"\nport = {replica.port}\nunix_socket_directories = '{replica.root}'\n"
                "synchronous_standby_names = ''\nsynchronous_commit = off\n"
            )
        return replica.start()

    def synchronous(self, standbys: str = "*") -> None:
        """Make every commit wait for a standby named by ``standbys`` (reloaded at once)."""
        with open(self.data / "postgresql.conf", "a") as conf:
            conf.write(f"\nsynchronous_standby_names = '{standbys}'\nsynchronous_commit = on\n")
        self._ctl("reload")

    def promote(self) -> None:
        """Turn this standby into a primary; returns once it accepts writes."""
        self._ctl("-w", "-t", "60", "promote")

    def restart(self, mode: str = "fast") -> None:
        self.stop(mode)
        self._ctl("-l", str(self.log), "-w", "-t", "60", "start")

    def postmaster_pid(self) -> int | None:
        pidfile = self.data / "postmaster.pid"
        with contextlib.suppress(OSError, ValueError, IndexError):
            return int(pidfile.read_text().split()[0])
        return None

    def wait_ready(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), 1),
            ):
                return
            time.sleep(0.05)
        raise TimeoutError(f"PostgreSQL on port {self.port} not ready after {timeout}s")

    def destroy(self) -> None:
        self.stop("immediate")
        pid = self.postmaster_pid()
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        shutil.rmtree(self.root, ignore_errors=True)


def libpq_env(dsn: str) -> dict[str, str]:
    """PG* environment variables equivalent to ``dsn`` (for code that calls connect())."""
    parts = urlsplit(dsn)
    query = dict(parse_qsl(parts.query))
    env = {
        "PGHOST": query.get("host") or parts.hostname or "",
        "PGPORT": str(parts.port or query.get("port") or 5432),
        "PGUSER": parts.username or "",
        "PGDATABASE": parts.path.lstrip("/"),
    }
    if parts.password:
        env["PGPASSWORD"] = parts.password
    return {k: v for k, v in env.items() if v}
