"""Small helpers shared by the test modules: waiting for a condition, reading rows and flags."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable
from typing import Any, TypeVar

import ldap3

T = TypeVar("T")
SMTP_FLAGS = "msExchAuthenticationFlags"


def wait_until(check: Callable[[], T], timeout: float = 20.0, what: str = "condition") -> T:
    """Poll ``check`` until it returns something true, and return that; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        time.sleep(0.05)
    raise AssertionError(f"{what} not met within {timeout}s")


def rows(db: str, sql: str, *args: Any) -> list[dict]:
    """Rows of a query on a database file, read with a connection of its own."""
    conn = sqlite3.connect(db, timeout=10)
    conn.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in conn.execute(sql, args)]
    finally:
        conn.close()


def read_flags(directory: Any, dn: str, attribute: str = SMTP_FLAGS) -> int | None:
    """A target's flags read straight from the test directory as its admin."""
    conn = directory.admin_connection()
    try:
        conn.search(dn, "(objectClass=*)", ldap3.BASE, attributes=[attribute])
        values = conn.entries[0][attribute].values
        return int(values[0]) if values else None
    finally:
        conn.unbind()
