"""What the chat layer remembers: each server's warning message, summaries, events already seen.

>>> from storage import open_store
>>> store = open_store(":memory:")
>>> save_warning(store, "EX01", channel="C1", ts="1.2", state="open", fingerprint="f1")
>>> get_warning(store, "ex01")["ts"]
'1.2'
>>> first_time_seen(store, "Ev1"), first_time_seen(store, "Ev1")
(True, False)
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

from storage.db import Store, now_iso

OPEN, RESOLVED, PENDING = "open", "resolved", "pending"


def get_warning(store: Store, server: str) -> dict[str, Any] | None:
    """The warning message kept for ``server`` (case-insensitive), or ``None``."""
    rows = list(
        store.db["warning_messages"].rows_where("server = ? collate nocase", [server], limit=1)
    )
    return rows[0] if rows else None


def all_warnings(store: Store, states: tuple[str, ...] = (OPEN, PENDING)) -> dict[str, dict]:
    """Warning messages in the given states, by lower-case server name."""
    marks = ",".join("?" for _ in states)
    rows = store.db["warning_messages"].rows_where(f"state in ({marks})", list(states))
    return {row["server"].lower(): row for row in rows}


def save_warning(store: Store, server: str, **values: Any) -> None:
    """Create or update the warning row of ``server`` with ``values`` (upsert)."""
    stamp = now_iso()
    with store.transaction() as db:  # read and write in one transaction
        existing = get_warning(store, server)
        record = {"server": existing["server"] if existing else server, "updated_at": stamp}
        record.update(values)
        if not existing:
            record.setdefault("posted_at", stamp)
        db["warning_messages"].upsert(record, pk="server")


def record_summary(store: Store, audit_id: int | None, channel: str | None, ts: str | None) -> int:
    """Remember that a summary went out (the next one reports changes since this audit)."""
    with store.transaction() as db:
        table = db["summaries"].insert(
            {"at": now_iso(), "audit_id": audit_id, "channel": channel, "ts": ts}
        )
        return int(table.last_pk)


def last_summary(store: Store) -> dict[str, Any] | None:
    """The newest summary that was posted, or ``None``."""
    rows = list(store.db["summaries"].rows_where(order_by="id desc", limit=1))
    return rows[0] if rows else None


def first_time_seen(store: Store, event_id: str, keep_days: int = 2) -> bool:
    """True the first time an event id is seen (Slack re-sends events it thinks were lost)."""
    cutoff = (datetime.now(UTC) - timedelta(days=keep_days)).isoformat()
    with store.transaction() as db:
        db.execute("delete from seen_events where at < ?", [cutoff])
        cursor = db.execute(
            "insert or ignore into seen_events (event_id, at) values (?, ?)", [event_id, now_iso()]
        )
        return cursor.rowcount == 1


OUTBOX_MAX_ATTEMPTS = 100  # about eight hours of five-minute retries, then it is given up


def queue_post(
    store: Store,
    channel: str,
    text: str,
    thread_ts: str | None = None,
    blocks: list[dict[str, Any]] | None = None,
    error: str | None = None,
) -> int:
    """Keep a Slack post that failed, for the retry job; return its id."""
    with store.transaction() as db:
        table = db["outbox"].insert(
            {
                "created_at": now_iso(),
                "channel": channel,
                "thread_ts": thread_ts,
                "text": text,
                "blocks": json.dumps(blocks) if blocks is not None else None,
                "attempts": 1,
                "last_error": error,
            }
        )
        return int(table.last_pk)


def queued_posts(store: Store, limit: int = 100) -> list[dict[str, Any]]:
    """Kept posts, oldest first (``blocks`` decoded)."""
    rows = [dict(r) for r in store.db["outbox"].rows_where(order_by="id", limit=limit)]
    for row in rows:
        row["blocks"] = json.loads(row["blocks"]) if row["blocks"] else None
    return rows


def post_sent(store: Store, post_id: int) -> None:
    """A kept post went out: forget it."""
    with store.transaction() as db:
        db.execute("delete from outbox where id = ?", [post_id])


def post_failed(store: Store, post_id: int, error: str | None) -> bool:
    """A kept post failed again; False when it has failed too often and was given up."""
    with store.transaction() as db:
        db.execute(
            "update outbox set attempts = attempts + 1, last_error = ? where id = ?",
            [error, post_id],
        )
        row = db.execute("select attempts from outbox where id = ?", [post_id]).fetchone()
        if row and row[0] >= OUTBOX_MAX_ATTEMPTS:
            db.execute("delete from outbox where id = ?", [post_id])
            return False
        return True


def latest_job(store: Store, target_key: str, since: str | None = None) -> dict[str, Any] | None:
    """The newest remediation job on a target (started at or after ``since``), or ``None``."""
    where, args = "target_key = ?", [target_key]
    if since:
        where += " and started_at >= ?"
        args.append(since)
    rows = list(store.db["jobs"].rows_where(where, args, order_by="id desc", limit=1))
    return rows[0] if rows else None
