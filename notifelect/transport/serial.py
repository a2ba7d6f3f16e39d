"""The election connection, shared by every group of a session: its calls run one at a
time (the session's renewal first), each bounded once it runs, and calls of many groups for
one kind of statement run as one."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import weakref
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, Generic, TypeVar

import asyncpg

from .base import TransportError

T = TypeVar("T")
A = TypeVar("A")
R = TypeVar("R")


class Turns:
    """Whose call runs next on the election connection: urgent ones (the session's lease
    renewal) before the groups' calls, and those before background ones (warming
    statements up), each kind in order of arrival."""

    def __init__(self) -> None:
        self._busy = False
        self._urgent: collections.deque[asyncio.Future[None]] = collections.deque()
        self._normal: collections.deque[asyncio.Future[None]] = collections.deque()
        self._background: collections.deque[asyncio.Future[None]] = collections.deque()

    async def acquire(self, *, urgent: bool, background: bool = False) -> None:
        if not self._busy:
            self._busy = True
            return
        turn: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        queue = self._urgent if urgent else self._background if background else self._normal
        queue.append(turn)
        try:
            await turn
        except asyncio.CancelledError:
            if turn.done() and not turn.cancelled():
                self.release()  # handed the turn just as we gave up: pass it on
            elif turn in queue:
                queue.remove(turn)
            raise

    def release(self) -> None:
        for queue in (self._urgent, self._normal, self._background):
            while queue:
                turn = queue.popleft()
                if not turn.done():
                    turn.set_result(None)  # the connection stays busy: handed over
                    return
        self._busy = False


#: The turns of each borrowed connection. It outlives its sessions: one that was lost may
#: still be letting go of it (its last calls, its listeners) while the next one opens, and
#: the calls of both take turns as one.
_BORROWED: weakref.WeakKeyDictionary[asyncpg.Connection[Any], Turns] = weakref.WeakKeyDictionary()


def turns_of(conn: asyncpg.Connection[Any]) -> Turns:
    """The turns every session on the borrowed connection ``conn`` takes."""
    turns = _BORROWED.get(conn)
    if turns is None:
        turns = _BORROWED[conn] = Turns()
    return turns


class Serial:
    """The election connection, used by every group's driver and claims at once.

    asyncpg runs one operation per connection at a time; this runs them one after another
    instead of failing with "another operation is in progress". Each call runs as a task
    of its own, shielded from its caller: a group that stops waiting (it closes, or its
    connection is being replaced) never cuts a call off half-way, which would leave the
    connection, shared with every other group, in an unknown state. Every call is bounded
    by ``timeout`` once it runs (not while it waits for the calls ahead) and every failure
    of the driver comes out as a :class:`TransportError`; the first one breaks the session
    (``on_broken``), so a black-holed path never hangs an election. The calls of the
    sessions that ride one borrowed connection in turn take ``turns`` of that connection
    (:func:`turns_of`).
    """

    def __init__(
        self,
        conn: asyncpg.Connection[Any],
        timeout: float,
        on_broken: Callable[[str], None],
        turns: Turns | None = None,
    ) -> None:
        self.raw = conn
        self.timeout = timeout
        self._turns = Turns() if turns is None else turns
        self._broken: str | None = None
        self._on_broken = on_broken

    def _break(self, reason: str) -> None:
        if self._broken is None:
            self._broken = reason
            self._on_broken(reason)

    async def run(
        self,
        what: str,
        call: Callable[[asyncpg.Connection[Any]], Awaitable[T]],
        timeout: float | None = None,
        *,
        urgent: bool = False,
        background: bool = False,
    ) -> T:
        """Run ``call(connection)`` alone on the connection (see the class docstring);
        an ``urgent`` call goes before every group's call that waits, a ``background``
        one after them all."""
        if self._broken is not None:
            raise TransportError(f"{what} refused: {self._broken}")
        task = asyncio.ensure_future(self._run(what, call, timeout, urgent, background))
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            # The call goes on to its end (bounded); its outcome is retrieved, not lost.
            task.add_done_callback(retrieve)
            raise

    async def _run(
        self,
        what: str,
        call: Callable[[asyncpg.Connection[Any]], Awaitable[T]],
        timeout: float | None,
        urgent: bool,
        background: bool,
    ) -> T:
        limit = self.timeout if timeout is None else timeout
        # Waiting for the calls of other groups ahead is not bounded here: each of them is
        # (the first to overrun breaks the connection, and with it every call waiting).
        await self._turns.acquire(urgent=urgent, background=background)
        try:
            if self._broken is not None:
                raise TransportError(f"{what} refused: {self._broken}")
            try:
                async with asyncio.timeout(limit):
                    return await call(self.raw)
            except TimeoutError as exc:
                self._break(f"{what} took over {limit:g}s")
                raise TransportError(
                    f"{what} on the election connection took over {limit:g}s"
                ) from exc
            except asyncpg.InternalClientError as exc:
                # The protocol is in a state no call can use. Seen when the server ended the
                # session while the connection was idle and this process was not running
                # (frozen while it was fenced): asyncpg is still reading the server's
                # notice of it, and has not yet seen the connection close.
                reason = (
                    f"{what} found the connection unusable; the server has probably ended"
                    f" the session ({exc})"
                )
                self._break(reason)
                raise TransportError(reason) from exc
            except (
                asyncpg.PostgresConnectionError,
                asyncpg.InterfaceError,
                OSError,
            ) as exc:
                self._break(f"{what} failed: {exc!r}")
                raise TransportError(f"{what} failed: {exc!r}") from exc
            except asyncpg.AdminShutdownError as exc:
                self._break("the server ended the session")
                raise TransportError(f"{what} failed: the server ended the session") from exc
            except asyncio.CancelledError:
                self._break(f"a call was cancelled while it ran ({what})")
                raise
        finally:
            self._turns.release()

    async def execute(self, query: str, *args: Any, timeout: float | None = None) -> str:
        return await self.run("a statement", lambda c: c.execute(query, *args), timeout)

    async def fetch(
        self, query: str, *args: Any, timeout: float | None = None, urgent: bool = False
    ) -> list[Any]:
        return await self.run("a query", lambda c: c.fetch(query, *args), timeout, urgent=urgent)

    async def fetchval(self, query: str, *args: Any, timeout: float | None = None) -> Any:
        return await self.run("a query", lambda c: c.fetchval(query, *args), timeout)

    async def fetchrow(
        self, query: str, *args: Any, timeout: float | None = None
    ) -> asyncpg.Record | None:
        return await self.run("a query", lambda c: c.fetchrow(query, *args), timeout)

    async def add_listener(self, channel: str, callback: Any) -> None:
        await self.run("LISTEN", lambda c: c.add_listener(channel, callback))

    async def remove_listener(self, channel: str, callback: Any) -> None:
        await self.run("UNLISTEN", lambda c: c.remove_listener(channel, callback))

    async def unlisten(self, listeners: Iterable[tuple[str, Any]]) -> None:
        """Remove ``listeners`` (channel, callback) in a turn of their own, even once
        calls are refused: a borrowed connection outlives the session that listened on
        it. Bounded by ``timeout``; never raises, breaks nothing."""
        await self._turns.acquire(urgent=False)
        try:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(self.timeout):
                    for channel, callback in listeners:
                        await self.raw.remove_listener(channel, callback)
        finally:
            self._turns.release()


class Batched(Generic[A, R]):
    """Calls of many groups for one kind of statement, run as one.

    A call waits for a turn on the election connection; every call that arrives before
    that turn comes joins it, and ``run`` then does the work of all of them at once (one
    statement, one commit), returning one result per call in the order given. When the
    leader of many groups dies, their standbys' claims thus cost a few statements, not a
    few per group. A call whose caller stopped waiting before the turn came is dropped;
    from then on it is carried out (a claim may be taken), as every call on the connection.
    """

    def __init__(
        self,
        serial: Callable[[], Serial | None],
        what: str,
        run: Callable[[asyncpg.Connection[Any], list[A]], Awaitable[list[R]]],
    ) -> None:
        self._serial = serial
        self._what = what
        self._run = run
        self._pending: list[tuple[A, asyncio.Future[R]]] = []
        self._flusher: asyncio.Task[None] | None = None

    async def __call__(self, arg: A) -> R:
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._pending.append((arg, future))
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush(), name=f"notifelect:{self._what}")
        return await future

    async def _flush(self) -> None:
        while self._pending:
            await self._round()

    async def _round(self) -> None:
        taken: list[tuple[A, asyncio.Future[R]]] = []

        async def run(conn: asyncpg.Connection[Any]) -> list[R]:
            # Everything that arrived before our turn and is still awaited.
            taken.extend(call for call in self._pending if not call[1].done())
            self._pending.clear()
            return await self._run(conn, [arg for arg, _ in taken]) if taken else []

        try:
            serial = self._serial()
            if serial is None:
                raise TransportError("the election session is closed")
            results = await serial.run(self._what, run)
        except BaseException as exc:
            if not taken:  # refused before its turn: nothing of it ran
                taken, self._pending = self._pending, []
            error = exc if isinstance(exc, Exception) else TransportError(repr(exc))
            for _, future in taken:
                if not future.done():
                    future.set_exception(error)
            if not isinstance(exc, Exception):
                raise
            return
        for (_, future), result in zip(taken, results, strict=True):
            if not future.done():
                future.set_result(result)


def retrieve(task: asyncio.Future[Any]) -> None:
    """Retrieve a finished task's outcome, so that its exception is never reported as
    unretrieved (for tasks nobody awaits any more)."""
    if not task.cancelled():
        task.exception()
