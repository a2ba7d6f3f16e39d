"""A small TCP proxy between a node and PostgreSQL that can misbehave on command.

Modes (switch at any time with :meth:`FaultProxy.set_mode`; they apply to every connection,
open or new):

* ``pass``: forward bytes both ways.
* ``blackhole``: accept and hold every byte in both directions and never close either side,
  like a network path that silently drops packets. End-of-stream is held too. A connection
  accepted meanwhile is not passed on (not even to a server that is gone): its client
  waits for an answer that never comes, as for a host that drops every packet. Switching
  back to ``pass`` delivers what was held (as TCP retransmission would after a partition
  heals), then forwards normally.
* ``blackhole_replies``: forward what the client sends, hold what the server sends: a path
  that fails in one direction. A client that sent a statement then waits for its answer
  while the server, having answered, waits for the client's next message.
* ``hold_close``: forward every byte, but hold the end of the stream: a client sees what
  a server sent before it closed, and not yet that it closed.
* ``delay_notifications``: forward everything, but hold each PostgreSQL
  ``NotificationResponse`` back for ``delay`` seconds and insert it later at a message
  boundary (the protocol allows asynchronous messages between any two messages).
* ``drop_notifications``: forward everything except ``NotificationResponse`` messages,
  which are discarded; the connection stays open and queries keep working.

Server-to-client traffic is parsed into protocol messages to act on notifications; a
connection that negotiates TLS is forwarded unparsed (notification modes then do nothing),
so clients should connect with TLS disabled (asyncpg: ``ssl=False``).

:meth:`FaultProxy.repoint` sends new connections to another server, as a DNS name or a
floating address moved to a new primary does; open connections stay where they are.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import struct
from dataclasses import dataclass, field

_SSL_REQUEST = struct.pack("!ii", 8, 80877103)
_GSS_REQUEST = struct.pack("!ii", 8, 80877104)
_NOTIFICATION = ord("A")


class Mode(enum.Enum):
    PASS = "pass"
    BLACKHOLE = "blackhole"
    BLACKHOLE_REPLIES = "blackhole_replies"
    HOLD_CLOSE = "hold_close"
    DELAY_NOTIFICATIONS = "delay_notifications"
    DROP_NOTIFICATIONS = "drop_notifications"


@dataclass
class ProxyStats:
    """What the proxy did, for assertions that a fault was really injected."""

    connections: int = 0
    notifications_forwarded: int = 0
    notifications_dropped: int = 0
    notifications_delayed: int = 0
    bytes_held: int = 0
    modes: list[str] = field(default_factory=list)


class _Pipe:
    """One direction of one proxied connection."""

    def __init__(self, proxy: FaultProxy, writer: asyncio.StreamWriter, *, parse: bool) -> None:
        self.proxy = proxy
        self.writer = writer
        self.parse = parse
        self.to_client = parse  # the server-to-client direction (parse may be turned off)
        self.held: list[bytes] = []
        self.eof_held = False
        self.buffer = b""
        self.closed = False
        self.done = asyncio.Event()

    @property
    def holding(self) -> bool:
        """Whether the current mode holds this direction's bytes."""
        mode = self.proxy.mode
        return mode is Mode.BLACKHOLE or (mode is Mode.BLACKHOLE_REPLIES and self.to_client)

    def deliver(self, data: bytes) -> None:
        """Bytes read from the source: forward, hold or filter them by the current mode."""
        if self.holding or self.held:
            self.held.append(data)
            self.proxy.stats.bytes_held += len(data)
            if not self.holding:
                self.flush()
            return
        self._forward(data)

    def _forward(self, data: bytes) -> None:
        if not self.parse:
            self._write(data)
            return
        self.buffer += data
        out = bytearray()
        while len(self.buffer) >= 5:
            (length,) = struct.unpack_from("!i", self.buffer, 1)
            end = 1 + length
            if len(self.buffer) < end:
                break
            message, self.buffer = self.buffer[:end], self.buffer[end:]
            if message[0] != _NOTIFICATION:
                out += message
                continue
            mode = self.proxy.mode
            if mode is Mode.DROP_NOTIFICATIONS:
                self.proxy.stats.notifications_dropped += 1
            elif mode is Mode.DELAY_NOTIFICATIONS:
                self.proxy.stats.notifications_delayed += 1
                loop = asyncio.get_running_loop()
                loop.call_later(self.proxy.delay, self._late, bytes(message))
            else:
                self.proxy.stats.notifications_forwarded += 1
                out += message
        if out:
            self._write(bytes(out))

    def _late(self, message: bytes) -> None:
        # Only whole messages are ever written, so this lands on a message boundary.
        if self.holding or self.held:
            self.held.append(message)
        elif self.proxy.mode is Mode.DROP_NOTIFICATIONS:
            self.proxy.stats.notifications_dropped += 1
        else:
            self._write(message)

    def _write(self, data: bytes) -> None:
        if not self.closed and not self.writer.is_closing():
            self.writer.write(data)

    def end(self) -> None:
        """The source closed: propagate unless the path is black-holed (or the mode
        holds the end of the stream)."""
        if self.holding or self.held or self.proxy.mode is Mode.HOLD_CLOSE:
            self.eof_held = True
            return
        self.close()

    def flush(self) -> None:
        """Deliver what was held (the path healed)."""
        held, self.held = self.held, []
        for data in held:
            self._forward(data)
        if self.eof_held and self.proxy.mode is not Mode.HOLD_CLOSE:
            self.close()

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.done.set()
            with contextlib.suppress(Exception):
                self.writer.close()


class FaultProxy:
    """A TCP proxy on 127.0.0.1:<port> to ``upstream_host:upstream_port``.

    Use ``async with FaultProxy(host, port) as proxy`` (or :meth:`start` / :meth:`close`);
    point the client at ``proxy.port``. Runs on the event loop that started it.
    """

    def __init__(self, upstream_host: str, upstream_port: int) -> None:
        self.upstream = (upstream_host, upstream_port)
        self.mode = Mode.PASS
        self.delay = 0.0
        self.stats = ProxyStats()
        self._server: asyncio.Server | None = None
        self._pipes: set[_Pipe] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._unblocked = asyncio.Event()
        self._unblocked.set()
        self._closing = False

    @property
    def port(self) -> int:
        assert self._server is not None, "proxy not started"
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    async def start(self) -> FaultProxy:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        return self

    async def __aenter__(self) -> FaultProxy:
        return await self.start()

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    def set_mode(self, mode: Mode | str, *, delay: float | None = None) -> None:
        """Switch every connection (open and future) to ``mode``."""
        self.mode = Mode(mode)
        if delay is not None:
            self.delay = delay
        self.stats.modes.append(self.mode.value)
        if self.mode is Mode.BLACKHOLE:
            self._unblocked.clear()
        else:
            self._unblocked.set()
        for pipe in list(self._pipes):
            if not pipe.holding:
                pipe.flush()

    def repoint(self, upstream_host: str, upstream_port: int) -> None:
        """Send new connections to ``upstream_host:upstream_port`` from now on."""
        self.upstream = (upstream_host, upstream_port)

    async def close(self) -> None:
        self._closing = True
        if self._server is not None:
            self._server.close()
        for pipe in list(self._pipes):
            pipe.close()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(list(self._tasks))
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self.stats.connections += 1
        try:
            await self._serve(reader, writer)
        except (OSError, asyncio.IncompleteReadError):
            pass
        except asyncio.CancelledError:
            # Only close() cancels these tasks, and awaits them: ending quietly keeps
            # asyncio's server from logging the cancellation as an error in its callback.
            if task.cancelling() and not self._closing:
                raise
        finally:
            self._tasks.discard(task)
            with contextlib.suppress(Exception):
                writer.close()

    async def _serve(self, c_reader: asyncio.StreamReader, c_writer: asyncio.StreamWriter) -> None:
        # A black-holed path lets nothing through, not even a refusal from a dead server.
        await self._unblocked.wait()
        s_reader, s_writer = await asyncio.open_connection(*self.upstream)
        to_client = _Pipe(self, c_writer, parse=True)
        to_server = _Pipe(self, s_writer, parse=False)
        pipes = (to_client, to_server)
        self._pipes.update(pipes)
        try:
            # A TLS or GSS negotiation request gets a one-byte answer before the framed
            # protocol starts; with TLS the stream cannot be parsed, so forward it raw.
            first = await c_reader.read(8)
            if first in (_SSL_REQUEST, _GSS_REQUEST):
                s_writer.write(first)
                answer = await s_reader.readexactly(1)
                c_writer.write(answer)
                if answer != b"N":
                    to_client.parse = False
            elif first:
                to_server.deliver(first)
            await asyncio.gather(self._pump(c_reader, to_server), self._pump(s_reader, to_client))
        finally:
            for pipe in pipes:
                self._pipes.discard(pipe)
                pipe.close()

    async def _pump(self, reader: asyncio.StreamReader, pipe: _Pipe) -> None:
        while True:
            try:
                data = await reader.read(65536)
            except OSError:
                data = b""
            if not data:
                pipe.end()
                # Held end-of-stream: keep this side open until the path heals or the
                # proxy closes.
                await pipe.done.wait()
                return
            pipe.deliver(data)
