"""Fix requests, approvals and remediation jobs: the rows behind an approved LDAP change.

Plain functions over the database; the rules (who may approve, when a job may run) live in
``bot/remediation.py``. Functions that take ``db`` run inside the caller's
``store.transaction()`` so a state change and its audit-log row commit together; functions that
take ``store`` read on their own.

>>> from storage import open_store
>>> store = open_store(":memory:")
>>> with store.transaction() as db:
...     request = insert_request(db, {"target_key": "cn=1", "dn": "CN=1", "server": "EX01",
...         "kind": "smtp_virtual_server", "name": "1", "action": "fix", "flags_before": 7,
...         "flags_after": 5, "status": PENDING, "required_approvals": 1,
...         "created_at": "2026-01-01T00:00:00.000000+00:00",
...         "expires_at": "2026-01-04T00:00:00.000000+00:00"})
>>> get_request(store, request["id"])["status"]
'pending'

Request ``status``: ``pending`` (waiting for approvals) -> ``approved`` -> ``running`` ->
``succeeded`` | ``failed`` (retryable: ``run_job`` may claim it again) | ``drift`` (the target
changed; needs a new request) | ``dry_run``; also ``expired``, ``superseded`` (a newer request
for the same target replaced it) and ``rolled_back``.

Job ``state``: ``claimed`` -> ``writing`` (recorded before the modify is sent) -> ``written``
-> ``verified``; or ``dry_run``, ``drift``, ``failed``, ``not_written`` (a reconciled job whose
write never landed). ``claimed``/``writing``/``written`` are unfinished (see
:data:`UNFINISHED`).
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from storage.db import Store, database

if TYPE_CHECKING:
    from sqlite_utils import Database

# request statuses
PENDING, APPROVED, RUNNING = "pending", "approved", "running"
SUCCEEDED, FAILED, DRIFT, DRY_RUN = "succeeded", "failed", "drift", "dry_run"
EXPIRED, SUPERSEDED, ROLLED_BACK = "expired", "superseded", "rolled_back"
OPEN_STATUSES = (PENDING, APPROVED, FAILED)  # may still lead to a job
CLAIMABLE = (APPROVED, FAILED)  # run_job may claim these (a failed request is retryable)

# job states
CLAIMED, WRITING, WRITTEN, VERIFIED = "claimed", "writing", "written", "verified"
NOT_WRITTEN = "not_written"
UNFINISHED = (CLAIMED, WRITING, WRITTEN)

REQUEST_COLUMNS = (
    "id",
    "created_at",
    "expires_at",
    "target_key",
    "dn",
    "server",
    "kind",
    "name",
    "action",
    "flags_before",
    "flags_after",
    "audit_id",
    "status",
    "required_approvals",
    "created_by",
    "channel",
    "message_ts",
    "last_error",
    "job_id",
    "updated_at",
)


def iso(moment: datetime) -> str:
    """A stored timestamp: UTC ISO 8601 with microseconds, so strings sort as times do."""
    return moment.astimezone(UTC).isoformat(timespec="microseconds")


def parse_iso(text: str) -> datetime:
    """The inverse of :func:`iso` (accepts any ISO 8601 with an offset)."""
    moment = datetime.fromisoformat(text)
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def new_request_id() -> str:
    """An opaque, unguessable id for a button value (never a DN or flags)."""
    return secrets.token_urlsafe(16)


# -- requests -------------------------------------------------------------------------------


def insert_request(db: Database, row: dict[str, Any]) -> dict[str, Any]:
    """Store a new request (an ``id`` is made when missing); return the stored row."""
    record = {column: row.get(column) for column in REQUEST_COLUMNS}
    record["id"] = record["id"] or new_request_id()
    record["updated_at"] = record["updated_at"] or record["created_at"]
    db["fix_requests"].insert(record)
    return dict(db["fix_requests"].get(record["id"]))


def get_request(store_or_db: Store | Database, request_id: str) -> dict[str, Any] | None:
    """The request row, or ``None`` for an unknown id."""
    db = database(store_or_db)
    rows = list(db["fix_requests"].rows_where("id = ?", [str(request_id)], limit=1))
    return rows[0] if rows else None


def find_open_request(
    db: Database, target_key: str, action: str, before: int | None, after: int | None, now: str
) -> dict[str, Any] | None:
    """A pending, unexpired request for exactly this change, if one exists (newest first)."""
    rows = list(
        db["fix_requests"].rows_where(
            "target_key = ? and action = ? and status = ? and expires_at > ? "
            "and flags_before is ? and flags_after is ?",
            [target_key, action, PENDING, now, before, after],
            order_by="created_at desc",
            limit=1,
        )
    )
    return rows[0] if rows else None


def supersede_requests(db: Database, target_key: str, action: str, keep_id: str, now: str) -> int:
    """Close other pending requests of the same target and action; return how many.

    They become ``superseded``, or ``expired`` when their time had run out anyway.
    """
    cursor = db.execute(
        "update fix_requests set status = case when expires_at <= ? then ? else ? end, "
        "updated_at = ? where target_key = ? and action = ? and status = ? and id != ?",
        [now, EXPIRED, SUPERSEDED, now, target_key, action, PENDING, keep_id],
    )
    return cursor.rowcount


def update_request(db: Database, request_id: str, **fields: Any) -> None:
    """Set columns of one request (``updated_at`` must be among them when it matters)."""
    db["fix_requests"].update(request_id, fields)


def move_request(
    db: Database, request_id: str, from_statuses: Iterable[str], to_status: str, **fields: Any
) -> bool:
    """Change a request's status only if it is one of ``from_statuses``; True when it moved.

    This is the atomic claim: ``UPDATE ... WHERE status IN (...)`` inside an IMMEDIATE
    transaction, so of two racing callers exactly one sees ``True``.
    """
    return _move(db, "fix_requests", "status", request_id, from_statuses, to_status, fields)


def _move(
    db: Database,
    table: str,
    column: str,
    row_id: Any,
    from_values: Iterable[str],
    to_value: str,
    fields: dict[str, Any],
) -> bool:
    """``UPDATE table SET column = to_value, fields... WHERE id = row_id AND column IN (...)``;
    True when the row moved."""
    values = list(from_values)
    sets = ", ".join([f"{column} = ?"] + [f"[{name}] = ?" for name in fields])
    marks = ", ".join("?" for _ in values)
    cursor = db.execute(
        f"update {table} set {sets} where id = ? and {column} in ({marks})",
        [to_value, *fields.values(), row_id, *values],
    )
    return cursor.rowcount == 1


def expirable_requests(db: Database, now: str) -> list[dict[str, Any]]:
    """Requests that are pending, approved or failed past their ``expires_at``."""
    return list(
        db["fix_requests"].rows_where(
            "status in (?, ?, ?) and expires_at <= ?", [*OPEN_STATUSES, now], order_by="created_at"
        )
    )


# -- approvals ------------------------------------------------------------------------------


def add_approval(
    db: Database, request_id: str, user_id: str, user_name: str | None, at: str
) -> bool:
    """Record ``user_id``'s approval; False when that user had already approved this request."""
    seen = db.execute(
        "select 1 from approvals where request_id = ? and user_id = ?", [request_id, user_id]
    ).fetchone()
    if seen:
        return False
    db["approvals"].insert(
        {"request_id": request_id, "user_id": user_id, "user_name": user_name, "at": at}
    )
    return True


def list_approvals(store_or_db: Store | Database, request_id: str) -> list[dict[str, Any]]:
    """Who approved a request, oldest first."""
    db = database(store_or_db)
    return list(db["approvals"].rows_where("request_id = ?", [request_id], order_by="id"))


# -- jobs -----------------------------------------------------------------------------------


def insert_job(db: Database, row: dict[str, Any]) -> dict[str, Any]:
    """Store a new job row; return it with its integer ``id``."""
    table = db["jobs"].insert(row)
    return dict(db["jobs"].get(table.last_pk))


def get_job(store_or_db: Store | Database, job_id: int) -> dict[str, Any] | None:
    """The job row, or ``None``."""
    db = database(store_or_db)
    rows = list(db["jobs"].rows_where("id = ?", [int(job_id)], limit=1))
    return rows[0] if rows else None


def move_job(
    db: Database, job_id: int, from_states: Iterable[str], to_state: str, **fields: Any
) -> bool:
    """Change a job's state only from one of ``from_states``; True when it moved.

    Every transition is guarded like this, so a job finished by start-up reconciliation is never
    overwritten by a late original process, nor the other way round.
    """
    return _move(db, "jobs", "state", int(job_id), from_states, to_state, fields)


def note_job_error(db: Database, job_id: int, error: str) -> None:
    """Record an error on a job without changing its state (an outcome not yet known)."""
    db.execute("update jobs set error = ? where id = ?", [error, int(job_id)])


def unfinished_job_for_target(db: Database, target_key: str) -> dict[str, Any] | None:
    """A job on this target that has not finished (one job per target at a time)."""
    marks = ", ".join("?" for _ in UNFINISHED)
    rows = list(
        db["jobs"].rows_where(
            f"target_key = ? and state in ({marks})", [target_key, *UNFINISHED], limit=1
        )
    )
    return rows[0] if rows else None


def unfinished_jobs(store: Store) -> list[dict[str, Any]]:
    """Every job left ``claimed``, ``writing`` or ``written``, oldest first."""
    marks = ", ".join("?" for _ in UNFINISHED)
    return list(store.db["jobs"].rows_where(f"state in ({marks})", list(UNFINISHED), order_by="id"))


def rollbacks_of(db: Database, job_id: int) -> list[dict[str, Any]]:
    """Rollback jobs that target ``job_id``, newest first."""
    return list(
        db["jobs"].rows_where(
            "rolls_back_job_id = ? and kind = 'rollback'", [int(job_id)], order_by="id desc"
        )
    )


def recent_jobs(store: Store, limit: int = 20) -> list[dict[str, Any]]:
    """The newest jobs with their request's server, name and action, newest first."""
    sql = """
        select j.*, r.server as server, r.name as name, r.action as action,
               r.kind as target_kind, r.status as request_status
        from jobs j left join fix_requests r on r.id = j.request_id
        order by j.id desc limit ?
    """
    return [dict(row) for row in store.db.query(sql, [int(limit)])]
