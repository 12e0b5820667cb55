"""The audit log: append-only, hash-chained, for an auditor.

>>> from storage import open_store
>>> store = open_store(":memory:")
>>> row = append(store, "approval", user_id="U1", user_name="alice", target_dn="CN=1,...",
...              before=7, after=5, request_id="abc", detail={"approvals": 1})
>>> row["id"], row["prev_hash"] == GENESIS
(1, True)
>>> verify_log(store)
(True, None, 'intact: 1 rows')

Every row carries ``hash`` = SHA-256 over a canonical JSON of the row's content (every column
but ``hash``, including ``id`` and ``prev_hash``), and ``prev_hash`` = the previous row's hash
(:data:`GENESIS` for the first row). So:

- an edited row no longer matches its own hash;
- a deleted row leaves a gap in the ids and breaks the next row's ``prev_hash``;
- a reordered row breaks the ``prev_hash`` links (and its hash, which covers its id);
- deleting the newest rows is caught by ``sqlite_sequence``, where SQLite keeps the highest
  ``AUTOINCREMENT`` id ever used.

Triggers refuse ``UPDATE`` and ``DELETE`` on the table. Appends run inside an ``IMMEDIATE``
transaction (the caller's, when it passes ``db``), so two processes cannot fork the chain.

The canonical form (:func:`canonical`) is plain JSON with sorted keys and no spaces, so an auditor
can recompute every hash from an export with a few lines of any language.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from collections.abc import Iterator, Mapping
from datetime import UTC, date, datetime
from typing import TYPE_CHECKING, Any

from storage.db import Store

if TYPE_CHECKING:
    from sqlite_utils import Database

GENESIS = "0" * 64
COLUMNS = (
    "id",
    "at",
    "event",
    "user_id",
    "user_name",
    "target_dn",
    "before",
    "after",
    "job_id",
    "request_id",
    "detail",
    "prev_hash",
    "hash",
)
HASHED = COLUMNS[:-1]

# The events written by authguard (others may be added; the chain does not care).
EVENTS = (
    "audit_run",
    "request",
    "approval",
    "denial",
    "expired",
    "refusal",
    "job_started",
    "dry_run",
    "write",
    "verification",
    "failure",
    "drift",
    "rollback",
    "reconcile",
    "waiver",
    "waiver_revoked",
)


def canonical(row: Mapping[str, Any]) -> bytes:
    """The exact bytes that are hashed: the row's columns but ``hash``, as compact sorted JSON."""
    content = {name: row.get(name) for name in HASHED}
    return json.dumps(content, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode(
        "utf-8"
    )


def row_hash(row: Mapping[str, Any]) -> str:
    """SHA-256 (hex) of :func:`canonical` of ``row``."""
    return hashlib.sha256(canonical(row)).hexdigest()


def _int_or_none(value: Any) -> int | None:
    return None if value is None else int(value)


def _str_or_none(value: Any) -> str | None:
    return None if value is None else str(value)


def append_in(
    db: Database | sqlite3.Connection,
    event: str,
    *,
    user_id: str | None = None,
    user_name: str | None = None,
    target_dn: str | None = None,
    before: int | None = None,
    after: int | None = None,
    job_id: int | None = None,
    request_id: str | None = None,
    detail: Mapping[str, Any] | None = None,
    at: datetime | None = None,
) -> dict[str, Any]:
    """Append one row inside the caller's open ``store.transaction()`` (its ``Database``) or
    ``store.atomic()`` (its connection); return the row.

    Use this when the event must commit together with the state change it records.
    """
    conn = db if isinstance(db, sqlite3.Connection) else db.conn
    if not conn.in_transaction:
        raise RuntimeError("append_in() needs an open store.transaction()")
    last = conn.execute("select id, hash from audit_log order by id desc limit 1").fetchone()
    seq = conn.execute("select seq from sqlite_sequence where name = 'audit_log'").fetchone()
    next_id = max(last[0] if last else 0, seq[0] if seq else 0) + 1
    stamp = (at or datetime.now(UTC)).astimezone(UTC).isoformat(timespec="microseconds")
    row: dict[str, Any] = {
        "id": next_id,
        "at": stamp,
        "event": str(event),
        "user_id": _str_or_none(user_id),
        "user_name": _str_or_none(user_name),
        "target_dn": _str_or_none(target_dn),
        "before": _int_or_none(before),
        "after": _int_or_none(after),
        "job_id": _int_or_none(job_id),
        "request_id": _str_or_none(request_id),
        "detail": None
        if detail is None
        else json.dumps(dict(detail), sort_keys=True, ensure_ascii=False, default=str),
        "prev_hash": last[1] if last else GENESIS,
    }
    row["hash"] = row_hash(row)
    conn.execute(_INSERT_ROW, [row[name] for name in COLUMNS])
    return row


_INSERT_ROW = "insert into audit_log ({}) values ({})".format(
    ", ".join(COLUMNS), ", ".join("?" * len(COLUMNS))
)


def append(store: Store, event: str, **fields: Any) -> dict[str, Any]:
    """Append one row in its own IMMEDIATE transaction; see :func:`append_in` for the fields."""
    with store.atomic() as conn:
        return append_in(conn, event, **fields)


def log_denial(
    store: Store,
    *,
    user_id: str | None,
    user_name: str | None,
    reason: str,
    request: Mapping[str, Any] | None = None,
    request_id: str | None = None,
    target_dn: str | None = None,
    at: datetime | None = None,
    **detail: Any,
) -> dict[str, Any]:
    """Record a refused approval or waiver: who, on what (the stored request, when known), why.

    >>> log_denial(store, user_id="U2", user_name="mallory", reason="not an approver",
    ...            request=request, action="approve_fix")  # doctest: +SKIP
    """
    return append(
        store,
        "denial",
        user_id=user_id,
        user_name=user_name,
        target_dn=request["dn"] if request else target_dn,
        before=request.get("flags_before") if request else None,
        after=request.get("flags_after") if request else None,
        request_id=request_id if request_id is not None else (request or {}).get("id"),
        detail={"reason": reason, **detail},
        at=at,
    )


def log_audit_run(
    db: Database | sqlite3.Connection,
    run: Mapping[str, Any],
    user_id: str | None = None,
    user_name: str | None = None,
) -> dict[str, Any]:
    """Record one finished (or failed) audit run, from its ``audit_runs`` row, inside the open
    transaction that finished it (see :func:`append_in`).

    >>> with store.atomic() as conn:                                     # doctest: +SKIP
    ...     log_audit_run(conn, run, user_id="U1", user_name="alice")
    """
    detail = {
        key: run.get(key)
        for key in (
            "id",
            "trigger",
            "scope",
            "status",
            "requested_by",
            "started_at",
            "finished_at",
            "error",
            "warning",
            "ok",
            "exempt",
            "unknown",
            "waived",
            "total",
        )
    }
    return append_in(
        db,
        "audit_run",
        user_id=user_id,
        user_name=user_name if user_name is not None else run.get("requested_by"),
        detail=detail,
    )


def iter_rows(store: Store, since: date | None = None) -> Iterator[dict[str, Any]]:
    """The stored rows in id order (``since``: only rows at or after that UTC day)."""
    where, args = None, None
    if since is not None:
        where, args = "at >= ?", [since.isoformat()]
    yield from store.db["audit_log"].rows_where(where, args, order_by="id")


def verify_log(store: Store) -> tuple[bool, int | None, str]:
    """Recompute the chain: ``(True, None, "intact: N rows")`` or ``(False, first_bad_id, why)``.

    >>> ok, bad_id, why = verify_log(store)  # doctest: +SKIP
    """
    expected_prev, expected_id, count = GENESIS, 1, 0
    for row in iter_rows(store):
        row_id = row["id"]
        if row_id != expected_id:
            missing = (
                f"row {expected_id} is missing"
                if row_id == expected_id + 1
                else f"rows {expected_id} to {row_id - 1} are missing"
            )
            return False, expected_id, f"{missing} (deleted, or the log was reordered)"
        if row_hash(row) != row["hash"]:
            return (
                False,
                row_id,
                f"row {row_id} was altered: its content does not match its hash",
            )
        if row["prev_hash"] != expected_prev:
            return (
                False,
                row_id,
                f"row {row_id} does not follow row {row_id - 1}: its prev_hash is not that "
                "row's hash (a row was removed, inserted or reordered)",
            )
        expected_prev, expected_id, count = row["hash"], row_id + 1, count + 1
    seq = store.db.execute("select seq from sqlite_sequence where name = 'audit_log'").fetchone()
    highest = seq[0] if seq else 0
    if highest >= expected_id:
        return (
            False,
            expected_id,
            f"rows {expected_id} to {highest} are missing: the newest rows were deleted",
        )
    return True, None, f"intact: {count} rows"


def export_log(store: Store, since: date | None = None) -> Iterator[dict[str, Any]]:
    """Every row (all columns, ``detail`` as the stored JSON text so hashes can be recomputed),
    oldest first; ``since`` keeps rows from that UTC day on.

    >>> for row in export_log(store, since=date(2026, 1, 1)):  # doctest: +SKIP
    ...     print(row["id"], row["event"], row["hash"])
    """
    for row in iter_rows(store, since):
        yield {name: row.get(name) for name in COLUMNS}


def head(store: Store) -> dict[str, Any] | None:
    """The newest row (its ``hash`` anchors the whole chain), or ``None`` when empty."""
    rows = list(store.db["audit_log"].rows_where(order_by="id desc", limit=1))
    return rows[0] if rows else None
