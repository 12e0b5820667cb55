"""Opening the SQLite database: WAL mode, a busy timeout, and versioned migrations.

>>> store = open_store(":memory:")
>>> store.db.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)
True

Each migration is a function that takes the ``sqlite_utils.Database`` and creates or alters
tables; ``PRAGMA user_version`` records how many have run. Add new ones at the end, never edit
an old one.

``store.db`` is sqlite-utils' ``Database`` (tables, upserts, ``rows_where``); ``store.conn`` is
the plain ``sqlite3`` connection under it. sqlite-utils is imported the first time ``store.db``
is used: the audit's own path (:mod:`storage.audits`, the audit log, reading waivers) writes
plain SQL on ``store.conn``, so ``authguard audit`` never pays for importing it (about 0.03 s,
0.07 s when numpy is installed, which sqlite-utils then imports too).
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sqlite_utils import Database


class StorageError(Exception):
    """The database cannot be used (locked, disk full, not a database). Exit code 2."""


# how long a connection waits for another process's write lock before giving up ("locked")
BUSY_TIMEOUT_SECONDS = 15.0


def now_iso() -> str:
    """The current UTC time as ISO 8601, e.g. ``2026-11-28T06:00:00.123456+00:00``."""
    return datetime.now(UTC).isoformat()


def _v1_audits(db: Database) -> None:
    db["audit_runs"].create(
        {
            "id": int,
            "started_at": str,
            "finished_at": str,
            "trigger": str,
            "requested_by": str,
            "scope": str,
            "status": str,
            "error": str,
            "warning": int,
            "ok": int,
            "exempt": int,
            "unknown": int,
            "waived": int,
            "total": int,
        },
        pk="id",
        not_null={"started_at", "trigger", "scope", "status"},
        defaults={"warning": 0, "ok": 0, "exempt": 0, "unknown": 0, "waived": 0, "total": 0},
    )
    db["audit_runs"].create_index(["scope", "status", "id"])
    db["audit_targets"].create(
        {
            "id": int,
            "audit_id": int,
            "target_key": str,
            "server": str,
            "kind": str,
            "name": str,
            "dn": str,
            "flags": int,
            "raw_flags": str,
            "basic_auth": int,
            "tls_required": int,
            "verdict": str,
            "reason": str,
            "severity": str,
            "version": str,
            "fqdn": str,
            "checked_at": str,
        },
        pk="id",
        foreign_keys=[("audit_id", "audit_runs", "id")],
        not_null={"audit_id", "target_key", "server", "kind", "dn", "verdict"},
    )
    db["audit_targets"].create_index(["audit_id", "server"])
    db["audit_targets"].create_index(["target_key", "audit_id"])
    db.execute(
        "CREATE INDEX idx_audit_targets_server_nocase ON audit_targets (server COLLATE NOCASE)"
    )


def _v2_locks(db: Database) -> None:
    db["locks"].create(
        {"name": str, "owner": str, "acquired_at": str, "expires_at": float}, pk="name"
    )


def _v3_chat(db: Database) -> None:
    # one Slack warning message per Exchange server, kept so a re-audit updates instead of reposting
    db["warning_messages"].create(
        {
            "server": str,
            "channel": str,
            "ts": str,
            "state": str,
            "fingerprint": str,
            "detail": str,
            "posted_at": str,
            "updated_at": str,
            "attempts": int,
            "last_error": str,
        },
        pk="server",
        defaults={"attempts": 0},
    )
    db["summaries"].create(
        {"id": int, "at": str, "audit_id": int, "channel": str, "ts": str},
        pk="id",
    )
    # Slack re-sends events it thinks were missed; a seen event id is not handled twice
    db["seen_events"].create({"event_id": str, "at": str}, pk="event_id")
    # one row per scheduled firing: with two processes, only the first to insert runs the job
    db["job_runs"].create(
        {"name": str, "fire_key": str, "owner": str, "at": str}, pk=("name", "fire_key")
    )


def _v4_remediation(db: Database) -> None:
    # approval-gated fix requests: the opaque id is what a Slack button carries
    db["fix_requests"].create(
        {
            "id": str,
            "created_at": str,
            "expires_at": str,
            "target_key": str,
            "dn": str,
            "server": str,
            "kind": str,
            "name": str,
            "action": str,
            "flags_before": int,
            "flags_after": int,
            "audit_id": int,
            "status": str,
            "required_approvals": int,
            "created_by": str,
            "channel": str,
            "message_ts": str,
            "last_error": str,
            "job_id": int,
            "updated_at": str,
        },
        pk="id",
        not_null={"created_at", "expires_at", "target_key", "dn", "kind", "action", "status"},
    )
    db["fix_requests"].create_index(["target_key", "action", "status"])
    db["approvals"].create(
        {"id": int, "request_id": str, "user_id": str, "user_name": str, "at": str},
        pk="id",
        foreign_keys=[("request_id", "fix_requests", "id")],
        not_null={"request_id", "user_id", "at"},
    )
    db["approvals"].create_index(["request_id", "user_id"], unique=True)
    db["jobs"].create(
        {
            "id": int,
            "request_id": str,
            "kind": str,
            "mode": str,
            "state": str,
            "owner": str,
            "actor_id": str,
            "actor_name": str,
            "started_at": str,
            "finished_at": str,
            "target_key": str,
            "dn": str,
            "attribute": str,
            "before": int,
            "after": int,
            "observed": int,
            "verified": int,
            "error": str,
            "error_code": int,
            "rolls_back_job_id": int,
            "reconciled_at": str,
        },
        pk="id",
        foreign_keys=[("request_id", "fix_requests", "id"), ("rolls_back_job_id", "jobs", "id")],
        not_null={"kind", "mode", "state", "owner", "started_at", "target_key", "dn", "attribute"},
    )
    db["jobs"].create_index(["target_key", "state"])
    db["jobs"].create_index(["state"])
    db["jobs"].create_index(["rolls_back_job_id"])
    db["waivers"].create(
        {
            "id": int,
            "target_key": str,
            "dn": str,
            "server": str,
            "kind": str,
            "name": str,
            "reason": str,
            "created_by_id": str,
            "created_by_name": str,
            "created_at": str,
            "expires_at": str,
            "revoked_at": str,
            "revoked_by_id": str,
            "revoked_by_name": str,
        },
        pk="id",
        not_null={"target_key", "dn", "reason", "created_at", "expires_at"},
    )
    db["waivers"].create_index(["target_key", "expires_at"])
    # append-only and hash-chained; AUTOINCREMENT keeps the highest id ever used in
    # sqlite_sequence, so deleting the newest rows is detected too (see storage/audit_log.py)
    db.execute(
        """
        CREATE TABLE audit_log (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            at TEXT NOT NULL,
            event TEXT NOT NULL,
            user_id TEXT,
            user_name TEXT,
            target_dn TEXT,
            before INTEGER,
            after INTEGER,
            job_id INTEGER,
            request_id TEXT,
            detail TEXT,
            prev_hash TEXT NOT NULL,
            hash TEXT NOT NULL UNIQUE
        )
        """
    )
    db["audit_log"].create_index(["at"])
    for action in ("UPDATE", "DELETE"):
        db.execute(
            f"CREATE TRIGGER audit_log_no_{action.lower()} BEFORE {action} ON audit_log "
            f"BEGIN SELECT RAISE(ABORT, 'audit_log is append-only: {action} refused'); END"
        )


def _v5_outbox(db: Database) -> None:
    # Slack posts that failed (Slack down, or rate limited past the client's retries): a job's
    # outcome in a warning's thread, a thread note, a failed-audit notice. The retry job sends
    # them, oldest first, so none is lost.
    db["outbox"].create(
        {
            "id": int,
            "created_at": str,
            "channel": str,
            "thread_ts": str,
            "text": str,
            "blocks": str,
            "attempts": int,
            "last_error": str,
        },
        pk="id",
        not_null={"created_at", "channel", "text"},
        defaults={"attempts": 0},
    )


def _v6_lean_target_indexes(db: Database) -> None:
    # every audit inserts a row per target: fewer, narrower indexes make that cheaper. A run's
    # targets are found by (audit_id, server); a server's across runs through the same index
    db.execute("DROP INDEX IF EXISTS idx_audit_targets_audit_id_server")
    db.execute("DROP INDEX IF EXISTS idx_audit_targets_server_nocase")
    db.execute(
        "CREATE INDEX idx_audit_targets_run_server ON audit_targets "
        "(audit_id, server COLLATE NOCASE)"
    )


MIGRATIONS: list[Callable[[Database], None]] = [
    _v1_audits,
    _v2_locks,
    _v3_chat,
    _v4_remediation,
    _v5_outbox,
    _v6_lean_target_indexes,
]


def migrate(db: Database, migrations: list[Callable[[Database], None]] | None = None) -> int:
    """Run the migrations that have not run yet, each in its own transaction; return the version."""
    migrations = MIGRATIONS if migrations is None else migrations
    conn = db.conn
    # an up-to-date database needs no write lock: reading it (log verify, status) works while
    # another process holds one
    if conn.execute("PRAGMA user_version").fetchone()[0] >= len(migrations):
        return len(migrations)
    conn.execute("BEGIN IMMEDIATE")
    try:
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        for index in range(version, len(migrations)):
            migrations[index](db)
            conn.execute(f"PRAGMA user_version = {index + 1}")
        conn.execute("COMMIT")
    except BaseException:
        _rollback(conn)
        raise
    return len(migrations)


def _rollback(conn: sqlite3.Connection) -> None:
    """Roll back if a transaction is still open. SQLite may already have rolled it back itself
    (a full disk, an I/O error); the original error is the one worth reporting."""
    if conn.in_transaction:
        try:
            conn.execute("ROLLBACK")
        except sqlite3.Error:
            pass


def _connect(path: str) -> sqlite3.Connection:
    conn = sqlite3.connect(
        path, timeout=BUSY_TIMEOUT_SECONDS, check_same_thread=False, isolation_level=None
    )
    conn.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_SECONDS * 1000)}")
    if path != ":memory:":
        conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = NORMAL")
    conn.execute("PRAGMA foreign_keys = ON")
    return conn


def _wrap(conn: sqlite3.Connection) -> Database:
    from sqlite_utils import Database

    # no sqlite-utils plugins on authguard's connection (and no entry-point scan at each open)
    return Database(conn, execute_plugins=False)


def iter_dicts(cursor: sqlite3.Cursor) -> Iterator[dict[str, Any]]:
    """The rows of an executed query as dicts by column name, one at a time (plain ``sqlite3``,
    no sqlite-utils)."""
    names = [column[0] for column in cursor.description]
    for row in cursor:
        yield dict(zip(names, row, strict=True))


def dict_rows(cursor: sqlite3.Cursor) -> list[dict[str, Any]]:
    """All the rows of :func:`iter_dicts`.

    >>> dict_rows(store.conn.execute("select 1 as one"))  # doctest: +SKIP
    [{'one': 1}]
    """
    return list(iter_dicts(cursor))


def explain(exc: sqlite3.Error, path: str) -> str:
    """A clear sentence for a database failure, for people."""
    text = str(exc)
    if "locked" in text or "busy" in text:
        return f"the database {path} is locked by another process; try again when it is free"
    if "disk" in text and ("full" in text or "I/O" in text):
        return f"cannot write the database {path}: the disk is full ({text})"
    if "not a database" in text or "malformed" in text:
        return f"{path} is not a usable authguard database ({text})"
    return f"database {path}: {text}"


class Store:
    """The authguard database. ``store.db`` is this thread's ``sqlite_utils.Database``,
    ``store.conn`` the ``sqlite3`` connection under it.

    Each thread gets its own SQLite connection (SQLite connections are not shared across threads);
    an in-memory store shares one connection, guarded by a lock.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self._local = threading.local()
        self._shared: sqlite3.Connection | None = None
        self._shared_db: Database | None = None
        self.lock = threading.RLock()
        if path == ":memory:":
            self._shared = _connect(path)
        try:
            # an up-to-date database is checked on the plain connection (see the module's note)
            if self.conn.execute("PRAGMA user_version").fetchone()[0] < len(MIGRATIONS):
                migrate(self.db)
        except sqlite3.Error as exc:
            raise StorageError(explain(exc, path)) from exc

    @property
    def conn(self) -> sqlite3.Connection:
        if self._shared is not None:
            return self._shared
        conn = getattr(self._local, "conn", None)
        if conn is None:
            try:
                conn = _connect(self.path)
            except sqlite3.Error as exc:
                raise StorageError(explain(exc, self.path)) from exc
            self._local.conn = conn
        return conn

    @property
    def db(self) -> Database:
        if self._shared is not None:
            if self._shared_db is None:
                self._shared_db = _wrap(self._shared)
            return self._shared_db
        db = getattr(self._local, "db", None)
        if db is None:
            db = self._local.db = _wrap(self.conn)
        return db

    @contextmanager
    def atomic(self) -> Iterator[sqlite3.Connection]:
        """``with store.atomic() as conn:`` runs the block in one IMMEDIATE transaction on the
        plain connection; a database failure becomes a :class:`StorageError` and rolls back."""
        conn = self.conn
        with self.lock if self._shared is not None else nullcontext():
            try:
                conn.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as exc:
                raise StorageError(explain(exc, self.path)) from exc
            try:
                yield conn
            except sqlite3.Error as exc:  # locked, disk full, I/O error: a clear StorageError
                _rollback(conn)
                raise StorageError(explain(exc, self.path)) from exc
            except BaseException:
                _rollback(conn)
                raise
            try:
                conn.execute("COMMIT")
            except sqlite3.Error as exc:
                _rollback(conn)
                raise StorageError(explain(exc, self.path)) from exc

    @contextmanager
    def transaction(self) -> Iterator[Database]:
        """``with store.transaction() as db:`` runs the block in one IMMEDIATE transaction."""
        with self.atomic():
            yield self.db

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None
            self._local.db = None


def database(source: Store | Database) -> Database:
    """``source``'s sqlite-utils ``Database``: for functions that take a store, or the ``db`` of a
    ``store.transaction()`` they run inside."""
    return source.db if isinstance(source, Store) else source


def open_store(path: str) -> Store:
    """Open (creating and migrating as needed) the database at ``path``."""
    try:
        return Store(path)
    except sqlite3.Error as exc:
        raise StorageError(explain(exc, path)) from exc
