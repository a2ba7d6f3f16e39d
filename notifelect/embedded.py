"""An embedded PostgreSQL for demos and tests on machines without a database server.

Uses the ``pgserver`` package (the ``embedded`` extra: ``pip install -e '.[embedded]'`` in
a checkout of notifelect), which ships real PostgreSQL binaries. The server lives in a
temporary directory and is stopped and removed by :meth:`EmbeddedPostgres.close` (also on
garbage collection and at interpreter exit).
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from pathlib import Path
from types import TracebackType

from .errors import ConfigurationError


class EmbeddedPostgres:
    """A throwaway PostgreSQL reachable through a Unix socket; ``dsn`` connects to it."""

    def __init__(self) -> None:
        try:
            from pgserver import get_server
        except ImportError:
            raise ConfigurationError(
                "no database given and the embedded PostgreSQL is not installed: pass --dsn "
                "(or set PGHOST etc.), or install the embedded extra (pip install -e "
                "'.[embedded]' in a checkout of notifelect, or pip install pgserver)"
            ) from None
        self.root = Path(tempfile.mkdtemp(prefix="notifelect-embedded-"))
        self.root.chmod(0o777)  # pgserver runs PostgreSQL as an unprivileged user under root
        try:
            self._server = get_server(self.root, cleanup_mode="stop")
        except BaseException:
            shutil.rmtree(self.root, ignore_errors=True)
            raise
        self.dsn: str = self._server.get_uri()

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._server.cleanup()
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> EmbeddedPostgres:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
