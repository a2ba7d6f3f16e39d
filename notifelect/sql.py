"""Queries on the election tables, one named builder each, for a given :class:`Names`.

Every builder returns the text of one statement with asyncpg's ``$n`` parameters; what
each parameter is, and the columns it returns, are in its docstring. Object names come
quoted from ``Names``, so a builder's text is safe for any valid prefix. The DDL (creating
and dropping the objects) lives with the names in :mod:`notifelect.schema`.

(Longer than most modules: one statement per builder, each with the docstring that says
what its parameters and columns are; splitting them would only scatter the SQL.)
"""

from __future__ import annotations

from .schema import Names, quote_ident

#: True for a member row (aliased ``m``) whose session is still connected. The row keeps
#: the session's backend pid and start time, since a pid alone may have been reused; a
#: NULL ``backend_start`` (a session whose details the role may not see) counts as live.
#: The activity is read for that one pid (``pg_stat_activity`` is a view over this
#: function that joins two catalogs more: planning it costs a new backend a millisecond).
LIVE_MEMBER = (
    "EXISTS (SELECT FROM pg_stat_get_activity(m.backend_pid) a"
    " WHERE a.pid = m.backend_pid"
    " AND (a.backend_start = m.backend_start OR a.backend_start IS NULL))"
)

#: This backend's activity row (aliased ``a``: pid, backend_start), as :data:`LIVE_MEMBER`
#: reads it.
OWN_ACTIVITY = "pg_stat_get_activity(pg_backend_pid()) a"

#: Where the connection looks for the schema, and which of the relations given as ``$1``
#: (text[] of quoted names) it cannot find there. Columns: database, schema (NULL when no
#: schema of the search path exists), search_path, missing (text[], as given).
SCHEMA_FACTS = (
    "SELECT current_database() AS database, current_schema() AS schema,"
    " current_setting('search_path') AS search_path,"
    " ARRAY(SELECT n FROM unnest($1::text[]) AS n WHERE to_regclass(n) IS NULL) AS missing"
)

#: The database's clock now (not the start of the transaction).
CLOCK = "SELECT clock_timestamp()"

#: ``$1`` is NULL for every group, or the one namespace to read.
_ONE_OR_ALL = "($1::text IS NULL OR {column} = $1)"


def schema_version(names: Names) -> str:
    """The installed schema version (NULL if the version table is empty)."""
    return f"SELECT max(version) FROM {quote_ident(names.version)}"


def status_leaders(names: Names) -> str:
    """Each group's recorded leader (``$1``: namespace or NULL for all).

    Columns: namespace, node, priority, term, host, pid, since, renewed_at, released,
    standby, renewed_age (seconds since the last renewal, database clock) and live (whether the
    leader's member session is still connected).
    """
    q = quote_ident
    return (
        "SELECT l.namespace, l.node, l.priority, l.term, l.host, l.pid, l.since,"
        " greatest(l.renewed_at, s.renewed_at) AS renewed_at, l.released, l.standby,"
        f" {_RENEWED_AGE} AS renewed_age,"
        f" EXISTS (SELECT FROM {q(names.member)} m WHERE m.namespace = l.namespace"
        f"         AND m.node = l.node AND {LIVE_MEMBER}) AS live"
        f" FROM {q(names.leader)} l LEFT JOIN {q(names.session)} s ON s.node = l.node"
        f" WHERE {_ONE_OR_ALL.format(column='l.namespace')}"
    )


def status_members(names: Names) -> str:
    """Live members (``$1``: namespace or NULL for all), each group's highest rank first.

    Columns: namespace, node, priority, host, pid, joined_at, url.
    """
    return (
        "SELECT m.namespace, m.node, m.priority, m.host, m.pid, m.joined_at, m.url"
        f" FROM {quote_ident(names.member)} m"
        f" WHERE {LIVE_MEMBER} AND {_ONE_OR_ALL.format(column='m.namespace')}"
        f" ORDER BY m.namespace, {RANK_ORDER}"
    )


def status_history(names: Names) -> str:
    """The last ``$2`` terms of each group (``$1``: namespace or NULL for all), newest first.

    Columns: namespace, term, node, host, pid, started_at, ended_at, reason.
    """
    return (
        "SELECT namespace, term, node, host, pid, started_at, ended_at, reason FROM ("
        "  SELECT h.*, row_number() OVER (PARTITION BY h.namespace ORDER BY h.term DESC) AS n"
        f"  FROM {quote_ident(names.history)} h"
        f"  WHERE {_ONE_OR_ALL.format(column='h.namespace')}"
        ") x WHERE n <= $2 ORDER BY namespace, term DESC"
    )


def group_names(names: Names) -> str:
    """Every group that has members or a leader row. Column: namespace."""
    return (
        f"SELECT namespace FROM {quote_ident(names.member)}"
        f" UNION SELECT namespace FROM {quote_ident(names.leader)}"
    )


# ---------------------------------------------------------------- the election's own

#: Seconds since the leader (``l``) or its session (``s``, LEFT JOINed) last renewed; the
#: session's renewals count only while the leader row names the session's backend (a group
#: that gave its claim back disowns its row: see ``ElectionQueries.disown``).
_RENEWED_AGE = (
    "extract(epoch FROM clock_timestamp() - greatest(l.renewed_at,"
    " CASE WHEN s.backend_pid = l.backend_pid THEN s.renewed_at END))::float8"
)

#: The mark of a leader's lease renewal (``l``: its leader row; ``s``: its session's row,
#: LEFT JOINed): both renewal times, the session's only while the row names the
#: session's backend. Any renewal changes it; it is compared between readings, never read
#: as a time (the database's clock may step). Columns: renewed_at, session_renewed_at.
RENEWAL_MARK = (
    "l.renewed_at, CASE WHEN s.backend_pid = l.backend_pid THEN s.renewed_at END"
    " AS session_renewed_at"
)

#: The columns of a leader row read by a session's periodic statement, in order.
TICK_LEADER = (
    "namespace",
    "node",
    "priority",
    "term",
    "host",
    "pid",
    "since",
    "released",
    "standby",
    "backend_pid",
    "renewed_at",
)

#: Members (``m``) by rank, best first: the order of candidates and of a leaving leader's
#: successor (``notifelect.rules.successor``; checked against it).
RANK_ORDER = "m.priority DESC, m.node DESC"

#: The order in which live members (``m``) become a leader's standby: the highest priority,
#: and among equals the next node id after the leader's (``{leader}``), wrapping around.
#: Among equals each session then watches one other, whatever the number of groups
#: (``notifelect.rules.standby``; checked against it).
STANDBY_ORDER = "m.priority DESC, (m.node > {leader}) DESC, m.node"


def first_live(member: str, where: str, order: str, columns: str = "m.node") -> str:
    """The first live member (``m``) of table ``member`` that matches ``where`` in
    ``order``: the members are sorted first and checked in that order until one is live
    (``OFFSET 0`` keeps the check out of the sort's input), so a group of a hundred costs
    one or two checks of a backend, not a hundred. Columns: ``columns`` (of ``m``)."""
    return (
        f"SELECT {columns} FROM (SELECT m.node, m.priority, m.backend_pid, m.backend_start"
        f" FROM {member} m WHERE {where} ORDER BY {order} OFFSET 0) m"
        f" WHERE {LIVE_MEMBER} LIMIT 1"
    )


def standby_of(member: str, namespace: str, leader: str) -> str:
    """The live member of group ``namespace`` that watches ``leader`` (SQL expressions)
    while it leads: the first in :data:`STANDBY_ORDER`. Column: node."""
    where = f"m.namespace = {namespace} AND m.node <> {leader}"
    return first_live(member, where, STANDBY_ORDER.format(leader=leader))


def successor_of(member: str, namespace: str, leaving: str) -> str:
    """The live member of group ``namespace`` that a leaving leader ``leaving`` names as
    its successor: the first in :data:`RANK_ORDER`. Column: node."""
    return first_live(member, f"m.namespace = {namespace} AND m.node <> {leaving}", RANK_ORDER)


#: The wall-clock time in milliseconds: the floor of every new term (see ``take_term``).
TERM_FLOOR = "(extract(epoch FROM clock_timestamp()) * 1000)::bigint"


def lock_halves(key: int) -> tuple[int, int]:
    """The two 32-bit halves of an advisory-lock key, as ``pg_locks`` shows them
    (``classid``, ``objid``)."""
    return (key >> 32) & 0xFFFFFFFF, key & 0xFFFFFFFF


#: Arrays of numbers go as text[] (and are cast in the statement) where nothing else
#: depends on their type: asyncpg reads the codec of any other array type from the server
#: on a connection's first use of it, a round trip and a catalog query that a join or a
#: take-over would wait for.

#: The advisory lock of the claim of a group, held (``$2``, ``$3``: the two halves of the
#: key) by some session of this database. Aliased nowhere; usable as a scalar subquery.
_CLAIM_HOLDER = (
    "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted"
    " AND mode = 'ExclusiveLock' AND classid = $2 AND objid = $3 AND objsubid = 1"
    " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
)


class ElectionQueries:
    """Every statement of the election transport, built once for a given :class:`Names`.

    Parameters, in every statement: ``$1`` the namespace; others as each attribute says.
    """

    def __init__(self, names: Names) -> None:
        q = quote_ident
        member, leader = q(names.member), q(names.leader)
        term, history = q(names.term), q(names.history)
        session = q(names.session)
        #: The best other live member (``$2``: this node). Column: node.
        self.successor = successor_of(member, "$1", "$2")
        #: Give back claim lock ``$3`` (after its term was released, committed) and read
        #: the best other live member (``$2``: this node) to name as successor, in one
        #: statement. Columns: unlocked, successor.
        self.unlock_successor = (
            f"SELECT pg_advisory_unlock($3) AS unlocked, ({self.successor}) AS successor"
        )
        #: Leave: delete member ``$2``.
        self.unregister_member = f"DELETE FROM {member} WHERE namespace = $1 AND node = $2"
        #: The recorded leader's node, term, whether it released it and its lease.
        self.leader_released = (
            f"SELECT node, term, released, lease FROM {leader} WHERE namespace = $1"
        )
        #: The standby of a leader row ``l``, as its followers read it: as recorded, or,
        #: while none is (its term was taken before any other member had registered, as
        #: in a cold start), the member due to be it now. That member then watches the
        #: leader's process from its first reading of the row, not only once the leader
        #: records it (within a ``leader_timeout``); two watchers of one leader are
        #: harmless, a claim decides. Evaluated only where none is recorded.
        self.standby_read = f"coalesce(l.standby, ({standby_of(member, 'l.namespace', 'l.node')}))"
        #: The whole leader record. Columns as :class:`~notifelect.transport.LeaderRecord`.
        #: Also the renewal's mark (see :data:`RENEWAL_MARK`): renewed_at, session_renewed_at.
        #: Of several groups at once (``$1``: text[]), with a first column namespace.
        self.leader_records = (
            "SELECT l.namespace, l.node, l.priority, l.term, l.host, l.pid, l.since,"
            f" l.released, {self.standby_read} AS standby, {_RENEWED_AGE} AS renewed_age,"
            f" {RENEWAL_MARK}"
            f" FROM {leader} l LEFT JOIN {session} s ON s.node = l.node"
            " WHERE l.namespace = ANY($1::text[])"
        )
        #: Try the claim locks ``$1`` (text[] of bigints) of several groups at once.
        #: Column: got, in the order given.
        self.try_claims = (
            "SELECT pg_try_advisory_lock(u.k) AS got"
            " FROM unnest($1::text[]::bigint[]) WITH ORDINALITY AS u(k, i) ORDER BY u.i"
        )
        #: Take the next term of several groups at once (``$1``: text[]; ``$2``: text[],
        #: their members' priorities; ``$6``: text[], their leases) as node ``$3`` (host
        #: ``$4``, pid ``$5``): one statement, one transaction and one durable commit for
        #: all of them (``synchronous_commit`` is set on for this transaction alone, before
        #: any row is written, and any lock wait is bounded by ``$7`` milliseconds, text:
        #: both in ``cfg``, which every write depends on). A
        #: group whose term row is held by a guarded transaction of the old term (``FOR
        #: SHARE``), or whose leader row another session is writing, is skipped, never
        #: waited for. For each group taken, the open history rows are closed as lost, a
        #: new one is opened and the leader row is recorded with its standby and the lease
        #: its leader acts on. Columns: namespace, term (those taken).
        #:
        #: A lost term ends when the lost leader's lease ran out as last renewed: the
        #: later of its leader row's and its session's renewal, plus the lease the row
        #: records, never later than now nor before the term started. The gap to the
        #: next term's start is then the time the group had no leader. Only while the
        #: session row still names the leader row's backend (see ``_RENEWED_AGE``) is the
        #: last renewal known; without it (the session's row was dropped by a newer
        #: session, or the group gave its claim back) the term ends now, as it does
        #: when the row records no lease.
        self.take_terms = (
            "WITH cfg AS MATERIALIZED (SELECT set_config('synchronous_commit', 'on', true),"
            "              set_config('lock_timeout', $7::text, true)),"
            "     want AS (SELECT w.namespace, w.priority::int, w.lease::float8 FROM cfg,"
            "              unnest($1::text[], $2::text[], $6::text[])"
            "              AS w(namespace, priority, lease)),"
            f"     seen AS (SELECT namespace FROM {term} WHERE namespace = ANY($1::text[])),"
            f"     free AS (SELECT namespace FROM {term} WHERE namespace = ANY($1::text[])"
            "              FOR NO KEY UPDATE SKIP LOCKED),"
            f"     lseen AS (SELECT namespace FROM {leader} WHERE namespace = ANY($1::text[])),"
            f"     lfree AS (SELECT namespace FROM {leader} WHERE namespace = ANY($1::text[])"
            "               FOR NO KEY UPDATE SKIP LOCKED),"
            "     ok AS (SELECT w.* FROM want w WHERE w.namespace NOT IN"
            "            ((SELECT namespace FROM seen EXCEPT SELECT namespace FROM free)"
            "             UNION (SELECT namespace FROM lseen EXCEPT SELECT namespace FROM lfree))),"
            f"     n AS (INSERT INTO {term} AS t (namespace, term)"
            f"           SELECT namespace, {TERM_FLOOR} FROM ok ON CONFLICT (namespace)"
            "           DO UPDATE SET term = greatest(t.term + 1, EXCLUDED.term)"
            "           RETURNING t.namespace, t.term),"
            f"     c AS (UPDATE {history} h SET reason = 'lost', ended_at = greatest(h.started_at,"
            "           least(clock_timestamp(), coalesce((SELECT greatest(l.renewed_at,"
            "            s.renewed_at) + make_interval(secs => l.lease)"
            f"            FROM {leader} l JOIN {session} s ON s.node = l.node"
            "            AND s.backend_pid = l.backend_pid"
            "            WHERE l.namespace = h.namespace AND l.term = h.term),"
            "           clock_timestamp())))"
            "           FROM n WHERE h.namespace = n.namespace AND h.ended_at IS NULL),"
            f"     o AS (INSERT INTO {history} (namespace, term, node, host, pid, started_at)"
            "           SELECT namespace, term, $3, $4, $5, clock_timestamp() FROM n),"
            f"     r AS (INSERT INTO {leader} AS l (namespace, term, node, priority, host, pid,"
            "           backend_pid, since, renewed_at, released, standby, lease)"
            "           SELECT n.namespace, n.term, $3, ok.priority, $4, $5, pg_backend_pid(),"
            "           clock_timestamp(), clock_timestamp(), false,"
            f"           ({standby_of(member, 'n.namespace', '$3')}), ok.lease"
            "           FROM n JOIN ok USING (namespace)"
            "           ON CONFLICT (namespace) DO UPDATE SET term = EXCLUDED.term,"
            "           node = EXCLUDED.node, priority = EXCLUDED.priority,"
            "           host = EXCLUDED.host, pid = EXCLUDED.pid,"
            "           backend_pid = EXCLUDED.backend_pid, since = EXCLUDED.since,"
            "           renewed_at = EXCLUDED.renewed_at, released = false,"
            "           standby = EXCLUDED.standby, lease = EXCLUDED.lease)"
            " SELECT namespace, term FROM n"
        )
        #: The live member of group ``$1`` that watches leader ``$2``. Column: node.
        self.standby = standby_of(member, "$1", "$2")
        #: Who holds the claim (``$2``, ``$3``: key halves), when its session last changed
        #: state and for how long it has been idle (database clock: dates only a first
        #: sighting, see :func:`notifelect.rules.sight`), and the recorded (unreleased)
        #: leadership: node, term, backend, the age of its renewal and the renewal's
        #: mark. Columns: holder, holder_changed, holder_idle, node, term, leader_pid,
        #: age, renewed_at, session_renewed_at.
        self.fence_view = (
            f"WITH c AS (SELECT ({_CLAIM_HOLDER}) AS holder)"
            " SELECT c.holder, a.state_change AS holder_changed,"
            " extract(epoch FROM clock_timestamp() - a.state_change)::float8 AS holder_idle,"
            f" l.node, l.term, l.backend_pid AS leader_pid, {_RENEWED_AGE} AS age,"
            f" {RENEWAL_MARK}"
            " FROM c LEFT JOIN pg_stat_activity a ON a.pid = c.holder"
            f" LEFT JOIN {leader} l ON l.namespace = $1 AND NOT l.released"
            f" LEFT JOIN {session} s ON s.node = l.node"
        )
        #: Terminate every backend, other than this one, whose transaction holds the guard
        #: lock of a group (``$1``, ``$2``: the halves of its claim key, in the two-key
        #: form the fencing guard takes beside the term row's lock). Columns: pid, ended
        #: (what pg_terminate_backend returned), age (seconds its transaction had been
        #: open, database clock; NULL where the role may not see it), state.
        self.fence_guards = (
            "SELECT l.pid, pg_terminate_backend(l.pid) AS ended,"
            " extract(epoch FROM clock_timestamp() - a.xact_start)::float8 AS age, a.state"
            " FROM pg_locks l LEFT JOIN pg_stat_activity a ON a.pid = l.pid"
            " WHERE l.locktype = 'advisory' AND l.granted AND l.mode = 'ShareLock'"
            " AND l.classid = $1 AND l.objid = $2 AND l.objsubid = 2"
            " AND l.pid <> pg_backend_pid()"
            " AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())"
        )
        #: Renew term ``$3`` of node ``$2`` and record its standby. Columns: ok (the term is
        #: still this node's, unreleased), standby.
        self.renew = (
            f"WITH b AS ({self.standby}),"
            f" r AS (UPDATE {leader} SET renewed_at = clock_timestamp(),"
            "        standby = (SELECT node FROM b)"
            "        WHERE namespace = $1 AND term = $3 AND node = $2 AND NOT released"
            "        RETURNING 1)"
            " SELECT EXISTS (SELECT FROM r) AS ok, (SELECT node FROM b) AS standby"
        )
        #: One session's periodic statement: renew session ``$1`` (one lease for every
        #: group it leads) and read the leadership rows changed since transaction id
        #: ``$2`` (text; NULL: none), every group's of ``$3`` (text[], groups not read
        #: yet) and the sessions ``$4`` (text[] of node ids) and of the leaders read. Its
        #: cost does not depend on the number of groups, only on what changed. Columns:
        #: renewed (1 if the session row was renewed), at (the database's clock), horizon
        #: (the oldest transaction still running: the ``$2`` of the next statement),
        #: leaders (JSON text: an array of :data:`TICK_LEADER` values per row) and
        #: sessions (JSON text: [node, backend_pid, renewed_at] each). A row written by a
        #: transaction still running now is read next time: its id is at least the horizon.
        #:
        #: Its arrays go as text and as JSON sent as text, types the driver knows without
        #: asking the server (and that no codec an engine installs for JSON changes): an
        #: array of rows, of bigints or of times would make a new connection look the
        #: type up first (an extra statement on the server, per session).
        leader_columns = ", ".join(
            f"{self.standby_read} AS standby" if column == "standby" else f"l.{column}"
            for column in TICK_LEADER
        )
        leader_values = ", ".join(f"c.{column}" for column in TICK_LEADER)
        self.tick = (
            f"WITH r AS (UPDATE {session} SET renewed_at = clock_timestamp()"
            "            WHERE node = $1 RETURNING 1),"
            f"     c AS (SELECT {leader_columns} FROM {leader} l"
            "           WHERE l.changed >= $2::text::xid8"
            f"           UNION SELECT {leader_columns} FROM {leader} l"
            "           WHERE l.namespace = ANY($3::text[]))"
            " SELECT (SELECT count(*) FROM r) AS renewed, clock_timestamp() AS at,"
            " pg_snapshot_xmin(pg_current_snapshot())::text AS horizon,"
            f" (SELECT json_agg(json_build_array({leader_values})) FROM c)::text AS leaders,"
            " (SELECT json_agg(json_build_array(s.node, s.backend_pid, s.renewed_at))"
            f"  FROM {session} s WHERE s.node = ANY($4::text[]::bigint[])"
            "   OR s.node IN (SELECT node FROM c))::text AS sessions"
        )
        #: Record the standby of every group (``$2``: text[]) that session ``$1`` leads,
        #: where it changed. Columns: namespace, standby (the changed ones).
        self.update_standbys = (
            f"WITH b AS (SELECT g.namespace, ({standby_of(member, 'g.namespace', '$1')}) AS standby"
            "   FROM unnest($2::text[]) AS g(namespace))"
            f" UPDATE {leader} l SET standby = b.standby FROM b"
            " WHERE l.namespace = b.namespace AND l.node = $1 AND NOT l.released"
            " AND l.standby IS DISTINCT FROM b.standby RETURNING l.namespace, l.standby"
        )
        #: Register session ``$1`` (host ``$2``, pid ``$3``), dropping sessions whose
        #: backends are gone.
        self.register_session = (
            f"WITH gone AS (DELETE FROM {session} m WHERE m.node <> $1 AND NOT {LIVE_MEMBER})\n"
            f"INSERT INTO {session}"
            " (node, host, pid, backend_pid, backend_start, started_at, renewed_at)"
            " SELECT $1, $2, $3, a.pid, a.backend_start, clock_timestamp(), clock_timestamp()"
            f" FROM {OWN_ACTIVITY}"
            " ON CONFLICT (node) DO UPDATE SET backend_pid = EXCLUDED.backend_pid,"
            " backend_start = EXCLUDED.backend_start, renewed_at = EXCLUDED.renewed_at"
        )
        #: The unreleased leadership of group ``$1`` by node ``$2`` is no longer held by
        #: this session (its claim is being given back): its renewals stop counting for
        #: it. Never waits for the row (``NOWAIT``: LockNotAvailableError).
        self.disown = (
            f"WITH d AS (SELECT namespace FROM {leader} WHERE namespace = $1 AND node = $2"
            "            AND NOT released FOR NO KEY UPDATE NOWAIT)"
            f" UPDATE {leader} l SET backend_pid = 0 FROM d WHERE l.namespace = d.namespace"
        )
        #: The same for whatever node leads group ``$1`` from this backend (a borrowed
        #: connection's earlier session).
        self.disown_backend = (
            f"UPDATE {leader} SET backend_pid = 0"
            " WHERE namespace = $1 AND backend_pid = pg_backend_pid() AND NOT released"
        )
        #: Whether this backend holds the advisory lock ``$1``, ``$2`` (the key's halves).
        self.backend_holds = (
            "SELECT EXISTS (SELECT FROM pg_locks WHERE locktype = 'advisory' AND granted"
            " AND pid = pg_backend_pid() AND classid = $1 AND objid = $2 AND objsubid = 1"
            " AND database = (SELECT oid FROM pg_database WHERE datname = current_database()))"
        )
        #: Open a session: draw its node id, register it (host ``$1``, pid ``$2``),
        #: dropping sessions whose backends are gone, and unless ``$3`` is false, name the
        #: connection ``$5`` followed by the node id if it still has the name ``$4`` (the
        #: user's own name is kept). Column: node.
        self.open_session = (
            f"WITH n AS MATERIALIZED (SELECT nextval('{q(names.sequence)}'::regclass) AS node),"
            f" gone AS (DELETE FROM {session} m WHERE NOT {LIVE_MEMBER}),"
            f" s AS (INSERT INTO {session}"
            "  (node, host, pid, backend_pid, backend_start, started_at, renewed_at)"
            "  SELECT n.node, $1, $2, a.pid, a.backend_start, clock_timestamp(), clock_timestamp()"
            f"  FROM n CROSS JOIN {OWN_ACTIVITY}"
            "  RETURNING node)"
            " SELECT s.node, CASE WHEN $3::bool AND current_setting('application_name') = $4"
            " THEN set_config('application_name', $5::text || s.node::text, false) END AS named"
            " FROM s"
        )
        #: Drop session ``$1``.
        self.unregister_session = f"DELETE FROM {session} WHERE node = $1"
        #: The recorded leadership of several groups (``$1``: text[]). Columns:
        #: namespace, node, term, released, lease.
        self.leaders_released = (
            f"SELECT namespace, node, term, released, lease FROM {leader}"
            " WHERE namespace = ANY($1::text[])"
        )
        #: What a standby's watcher reads once the anchor of leader ``$3`` was seen to end,
        #: in one round trip: the rows of :attr:`leaders_released` (``$1``), and before
        #: they are returned, a wait bounded by ``$4`` milliseconds (text) until no session
        #: holds the claim locks (``$2``: text[], in the order of ``$1``) of the groups
        #: whose row names that leader unreleased (its election session ends with its
        #: process, about when its anchor does). The statement starts once the anchor's
        #: end was seen, so the rows read are not older than it: that is what tells a
        #: release (recorded before anything was let go) from a death. The wait only
        #: spares the claims that follow a second try. Columns: as leaders_released.
        self.leaders_ended = (
            f"WITH r AS MATERIALIZED (SELECT namespace, node, term, released, lease FROM {leader}"
            "  WHERE namespace = ANY($1::text[])),"
            " c AS MATERIALIZED (SELECT set_config('lock_timeout', $4::text, true)),"
            " w AS MATERIALIZED (SELECT pg_advisory_lock_shared(k.key::bigint),"
            "  pg_advisory_unlock_shared(k.key::bigint)"
            "  FROM c, r JOIN unnest($1::text[], $2::text[]) AS k(namespace, key) USING (namespace)"
            "  WHERE r.node = $3 AND NOT r.released)"
            " SELECT r.namespace, r.node, r.term, r.released, r.lease FROM r"
            " WHERE (SELECT count(*) FROM w) >= 0"
        )
        #: Mark term ``$2`` released and close its history row with reason ``$3``.
        self.release = (
            f"WITH l AS (UPDATE {leader} SET released = true,"
            "            renewed_at = clock_timestamp() WHERE namespace = $1 AND term = $2)"
            f" UPDATE {history} SET ended_at = clock_timestamp(), reason = $3"
            " WHERE namespace = $1 AND term = $2"
        )
        #: The survey of several groups at once (``$1``: text[] of namespaces; ``$2``,
        #: ``$3``: text[], the halves of their claim keys), in the order given: whether
        #: each group's claim is held, its best live candidate (not counting the recorded
        #: leader while it holds the claim) and its recorded (unreleased) leadership with
        #: its standby. The lock table is read once for all of them. Columns: namespace,
        #: held, priority, node, leader_priority, leader_node, leader_term, leader_standby.
        self.surveys = (
            "WITH locks AS MATERIALIZED (SELECT classid::bigint AS classid,"
            "  objid::bigint AS objid FROM pg_locks WHERE locktype = 'advisory' AND granted"
            "  AND mode = 'ExclusiveLock' AND objsubid = 1"
            "  AND database = (SELECT oid FROM pg_database WHERE datname = current_database())),"
            " g AS (SELECT g.namespace, g.classid::bigint, g.objid::bigint, g.i"
            "  FROM unnest($1::text[], $2::text[], $3::text[])"
            "  WITH ORDINALITY AS g(namespace, classid, objid, i))"
            " SELECT g.namespace, h.held, b.priority, b.node, l.priority AS leader_priority,"
            f" l.node AS leader_node, l.term AS leader_term, {self.standby_read} AS leader_standby"
            " FROM g CROSS JOIN LATERAL (SELECT EXISTS (SELECT FROM locks k"
            "  WHERE k.classid = g.classid AND k.objid = g.objid) AS held) h"
            f" LEFT JOIN LATERAL (SELECT namespace, node, priority, term, standby FROM {leader}"
            "  WHERE namespace = g.namespace AND NOT released) l ON true"
            " LEFT JOIN LATERAL ("
            + first_live(
                member,
                "m.namespace = g.namespace AND NOT (h.held AND m.node IS NOT DISTINCT FROM l.node)",
                RANK_ORDER,
                columns="m.priority, m.node",
            )
            + ") b ON true"
            " ORDER BY g.i"
        )
        #: Register this session as member ``$2`` of several groups at once (``$1``:
        #: text[] of namespaces; ``$3``: text[], their priorities; host ``$4``, pid
        #: ``$5``; ``$6``: text[], the URLs they advertise), dropping the members of those
        #: groups whose sessions are gone.
        self.register_members = (
            f"WITH gone AS (DELETE FROM {member} m WHERE m.namespace = ANY($1::text[])"
            f" AND m.node <> $2 AND NOT {LIVE_MEMBER})\n"
            f"INSERT INTO {member}"
            " (namespace, node, priority, host, pid, backend_pid, backend_start, joined_at, url)"
            " SELECT g.namespace, $2, g.priority::int, $4, $5, a.pid, a.backend_start,"
            " clock_timestamp(), g.url"
            " FROM unnest($1::text[], $3::text[], $6::text[]) AS g(namespace, priority, url)"
            f" CROSS JOIN {OWN_ACTIVITY}"
            " ON CONFLICT (namespace, node) DO UPDATE SET priority = EXCLUDED.priority,"
            " host = EXCLUDED.host, pid = EXCLUDED.pid, backend_pid = EXCLUDED.backend_pid,"
            " backend_start = EXCLUDED.backend_start, url = EXCLUDED.url"
        )
        #: Whether node ``$2`` is a live member with priority ``$3``.
        self.is_member = (
            f"SELECT EXISTS (SELECT FROM {member} m WHERE m.namespace = $1"
            f" AND m.node = $2 AND m.priority = $3 AND {LIVE_MEMBER})"
        )
