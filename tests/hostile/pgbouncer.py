"""A PgBouncer for tests, started on a free port in front of a test server."""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType
from urllib.parse import urlsplit

from tests.support.servers import _run_as, free_port

BINARY = shutil.which("pgbouncer") or next(
    (p for p in ("/usr/sbin/pgbouncer", "/usr/bin/pgbouncer") if Path(p).exists()), None
)


class PgBouncer:
    """``pgbouncer`` in ``pool_mode`` before the server of ``upstream`` (trust auth).

    It runs in the foreground as a child process, as an unprivileged user when the tests
    run as root (PgBouncer refuses to run as root), and is stopped on exit.
    """

    def __init__(self, upstream: str, pool_mode: str, *, extra: str = "") -> None:
        if BINARY is None:
            raise RuntimeError("pgbouncer is not installed")
        parts = urlsplit(upstream)
        self.user = parts.username or "postgres"
        self.database = parts.path.lstrip("/") or "postgres"
        self.port = free_port()
        self.root = Path(tempfile.mkdtemp(prefix="notifelect-pgbouncer-"))
        self.root.chmod(0o777)
        self.log = self.root / "pgbouncer.log"
        users = self.root / "users.txt"
        users.write_text(f'"{self.user}" ""\n')
        config = self.root / "pgbouncer.ini"
        config.write_text(
            "[databases]\n"
            f"* = host={parts.hostname or '127.0.0.1'} port={parts.port or 5432}\n"
            "[pgbouncer]\n"
            f"listen_addr = 127.0.0.1\nlisten_port = {self.port}\nunix_socket_dir =\n"
            f"auth_type = trust\nauth_file = {users}\npool_mode = {pool_mode}\n"
            f"default_pool_size = 4\nlogfile = {self.log}\n{extra}"
        )
        for path in (users, config):
            path.chmod(0o644)
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def dsn(self) -> str:
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/{self.database}"

    def start(self) -> PgBouncer:
        assert BINARY is not None
        self._proc = subprocess.Popen(
            [BINARY, str(self.root / "pgbouncer.ini")],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            **_run_as(),
        )
        deadline = time.monotonic() + 20
        while True:
            if self._proc.poll() is not None:
                err = self._proc.stderr.read().decode() if self._proc.stderr else ""
                log = self.log.read_text() if self.log.exists() else ""
                raise RuntimeError(f"pgbouncer exited at start: {err}{log}")
            try:
                socket.create_connection(("127.0.0.1", self.port), 0.5).close()
                return self
            except OSError:
                if time.monotonic() > deadline:
                    raise TimeoutError("pgbouncer did not listen within 20s") from None
                time.sleep(0.02)  # polling a port with a deadline, not synchronisation

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
            if proc.stderr is not None:
                proc.stderr.close()
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> PgBouncer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
