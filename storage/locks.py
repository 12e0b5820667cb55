"""Leases in the database, so two authguard processes agree on who does what.

>>> from storage import open_store
>>> store = open_store(":memory:")
>>> acquire(store, "audit", owner="host:1", ttl=600)
True
>>> acquire(store, "audit", owner="host:2", ttl=600)
False
>>> release(store, "audit", owner="host:1")
>>> claim_once(store, "summary", "2026-11-28T09:00", owner="host:2")
True
>>> claim_once(store, "summary", "2026-11-28T09:00", owner="host:1")
False
"""

from __future__ import annotations

import os
import socket
import time

from storage.db import Store, now_iso


def process_owner() -> str:
    """``host:pid``: who holds a lease."""
    return f"{socket.gethostname()}:{os.getpid()}"


def acquire(store: Store, name: str, owner: str, ttl: float, now: float | None = None) -> bool:
    """Take the lease ``name`` for ``ttl`` seconds unless someone else holds a live one."""
    now = time.time() if now is None else now
    with store.transaction() as db:
        row = db.execute("select owner, expires_at from locks where name = ?", [name]).fetchone()
        if row and row[0] != owner and row[1] > now:
            return False
        db.execute(
            "insert or replace into locks (name, owner, acquired_at, expires_at) values (?,?,?,?)",
            [name, owner, now_iso(), now + ttl],
        )
        return True


def holder(store: Store, name: str, now: float | None = None) -> str | None:
    """Who holds a live lease ``name``, or ``None``."""
    now = time.time() if now is None else now
    row = store.db.execute("select owner, expires_at from locks where name = ?", [name]).fetchone()
    return row[0] if row and row[1] > now else None


def release(store: Store, name: str, owner: str) -> None:
    """Give the lease back (only the owner can)."""
    with store.transaction() as db:
        db.execute("delete from locks where name = ? and owner = ?", [name, owner])


def claim_once(store: Store, name: str, key: str, owner: str) -> bool:
    """True for exactly one caller per ``(name, key)``, across processes (a scheduled firing)."""
    with store.transaction() as db:
        cursor = db.execute(
            "insert or ignore into job_runs (name, fire_key, owner, at) values (?,?,?,?)",
            [name, key, owner, now_iso()],
        )
        return cursor.rowcount == 1
