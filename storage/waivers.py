"""Waivers: an accepted risk on one target, with a reason and an expiry.

>>> from storage import open_store
>>> store = open_store(":memory:")
>>> with store.transaction() as db:
...     waiver = insert_waiver(db, {"target_key": "cn=1", "dn": "CN=1", "server": "EX01",
...         "reason": "partner needs Basic", "created_by_id": "U1", "created_by_name": "alice",
...         "created_at": "2026-01-01T00:00:00.000000+00:00",
...         "expires_at": "2026-04-01T00:00:00.000000+00:00"})
>>> [w["id"] for w in active_waivers(store, "2026-02-01T00:00:00.000000+00:00")]
[1]
>>> active_waivers(store, "2026-04-01T00:00:00.000000+00:00")
[]

Times are the ISO strings of :func:`storage.remediation.iso`, which sort as times do.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from storage.db import Store, database, dict_rows

if TYPE_CHECKING:
    from sqlite_utils import Database

COLUMNS = (
    "target_key",
    "dn",
    "server",
    "kind",
    "name",
    "reason",
    "created_by_id",
    "created_by_name",
    "created_at",
    "expires_at",
)


def insert_waiver(db: Database, row: dict[str, Any]) -> dict[str, Any]:
    """Store a waiver; return it with its ``id``."""
    table = db["waivers"].insert({column: row.get(column) for column in COLUMNS})
    return dict(db["waivers"].get(table.last_pk))


def get_waiver(store_or_db: Store | Database, waiver_id: int) -> dict[str, Any] | None:
    """The waiver row, or ``None``."""
    db = database(store_or_db)
    rows = list(db["waivers"].rows_where("id = ?", [int(waiver_id)], limit=1))
    return rows[0] if rows else None


def active_for_target(db: Database, target_key: str, now: str) -> list[dict[str, Any]]:
    """Unrevoked, unexpired waivers of one target."""
    return list(
        db["waivers"].rows_where(
            "target_key = ? and revoked_at is null and expires_at > ?",
            [target_key, now],
            order_by="id",
        )
    )


def revoke(
    db: Database, waiver_id: int, now: str, user_id: str | None, user_name: str | None
) -> bool:
    """Revoke a waiver that is not revoked yet; True when it was."""
    cursor = db.execute(
        "update waivers set revoked_at = ?, revoked_by_id = ?, revoked_by_name = ? "
        "where id = ? and revoked_at is null",
        [now, user_id, user_name, int(waiver_id)],
    )
    return cursor.rowcount == 1


def active_waivers(store: Store, now: str) -> list[dict[str, Any]]:
    """Every unrevoked waiver that has not expired at ``now``, by server then DN.

    Every audit reads these, so this is plain SQL on ``store.conn`` (see :mod:`storage.db`)."""
    return dict_rows(
        store.conn.execute(
            "select * from waivers where revoked_at is null and expires_at > ? "
            "order by server collate nocase, dn, id",
            [now],
        )
    )
