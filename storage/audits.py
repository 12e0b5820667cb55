"""Audit runs and the targets each one checked.

>>> from storage import open_store
>>> store = open_store(":memory:")
>>> run_id = start_run(store, trigger="cli", requested_by="alice")
>>> add_targets(store, run_id, [{"target_key": "cn=1,...", "server": "EX01", "kind":
...     "smtp_virtual_server", "name": "1", "dn": "CN=1,...", "flags": 7, "verdict": "warning"}])
>>> finish_run(store, run_id, "succeeded", counts={"warning": 1})["status"]
'succeeded'
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Iterator
from operator import itemgetter
from typing import Any

from storage import audit_log
from storage.db import Store, dict_rows, iter_dicts, now_iso

FULL = "full"
RUNNING, SUCCEEDED, FAILED = "running", "succeeded", "failed"
COUNTED = ("warning", "ok", "exempt", "unknown", "waived")
TARGET_COLUMNS = (
    "target_key",
    "server",
    "kind",
    "name",
    "dn",
    "flags",
    "raw_flags",
    "basic_auth",
    "tls_required",
    "verdict",
    "reason",
    "severity",
    "version",
    "fqdn",
    "checked_at",
)


def start_run(
    store: Store, trigger: str, requested_by: str | None = None, scope: str = FULL
) -> int:
    """Record a new run as ``running`` and return its id."""
    with store.atomic() as conn:
        cursor = conn.execute(
            "insert into audit_runs (started_at, trigger, requested_by, scope, status) "
            "values (?, ?, ?, ?, ?)",
            [now_iso(), trigger, requested_by, scope, RUNNING],
        )
        return int(cursor.lastrowid or 0)


def add_targets(store: Store, run_id: int, rows: Iterable[dict[str, Any]]) -> None:
    """Store checked targets of a run in one transaction (call it once per batch)."""
    stamp = now_iso()
    encoded: dict[tuple, str] = {}  # raw flag values as JSON, once per distinct value
    records = []
    for row in rows:
        raw = row.get("raw_flags")
        if isinstance(raw, (list, tuple)):
            raw = tuple(raw)
            text = encoded.get(raw)
            if text is None:
                text = encoded[raw] = json.dumps([str(v) for v in raw])
            raw = text
        try:
            values = _row_values(row)
        except KeyError:  # a partial row (tests, older callers): missing columns are empty
            values = tuple(row.get(name) for name in _ROW_COLUMNS)
        records.append((run_id, *values, raw, row.get("checked_at") or stamp))
    # one prepared statement for the whole batch (sqlite-utils' insert_all costs more than
    # the rest of an audit's storage)
    with store.atomic() as conn:
        conn.executemany(_INSERT_TARGET, records)


# the columns taken from a row as they are (raw_flags is encoded, checked_at defaults to now)
_ROW_COLUMNS = tuple(c for c in TARGET_COLUMNS if c not in ("raw_flags", "checked_at"))
_row_values = itemgetter(*_ROW_COLUMNS)
_INSERT_TARGET = "INSERT INTO audit_targets (audit_id, {}) VALUES (?{})".format(
    ", ".join((*_ROW_COLUMNS, "raw_flags", "checked_at")), ", ?" * len(TARGET_COLUMNS)
)


def finish_run(
    store: Store,
    run_id: int,
    status: str,
    error: str | None = None,
    counts: dict[str, int] | None = None,
) -> dict[str, Any]:
    """Mark a run ``succeeded`` or ``failed`` with its counts and write it to the audit log, in
    one transaction; return the run row."""
    counts = counts or {}
    values: dict[str, Any] = {"finished_at": now_iso(), "status": status, "error": error}
    values.update({name: int(counts.get(name, 0)) for name in COUNTED})
    values["total"] = sum(values[name] for name in COUNTED)
    with store.atomic() as conn:
        conn.execute(
            "update audit_runs set {} where id = ?".format(", ".join(f"{k} = ?" for k in values)),
            [*values.values(), run_id],
        )
        run = _run_row(conn, run_id)
        audit_log.log_audit_run(conn, run)
    return run


def get_run(store: Store, run_id: int) -> dict[str, Any]:
    """The run row as a dict (raises :class:`KeyError` when there is none)."""
    return _run_row(store.conn, run_id)


def _run_row(conn: sqlite3.Connection, run_id: int) -> dict[str, Any]:
    rows = dict_rows(conn.execute("select * from audit_runs where id = ?", [run_id]))
    if not rows:
        raise KeyError(f"no audit run {run_id}")
    return rows[0]


def latest_run(store: Store, scope: str = FULL, status: str | None = None) -> dict | None:
    """The newest run of ``scope`` (optionally with ``status``), or ``None``."""
    where, args = "scope = ?", [scope]
    if status:
        where += " and status = ?"
        args.append(status)
    rows = list(store.db["audit_runs"].rows_where(where, args, order_by="id desc", limit=1))
    return rows[0] if rows else None


def recent_runs(store: Store, limit: int = 20) -> list[dict]:
    """The newest runs of any scope, newest first."""
    return list(store.db["audit_runs"].rows_where(order_by="id desc", limit=limit))


# a run's targets as reports show them
_TARGET_ORDER = "order by server collate nocase, kind, dn"


def iter_run_targets(store: Store, run_id: int) -> Iterator[dict]:
    """The targets a run checked, in server then DN order, one row at a time (plain SQL: the
    audit command's table reads it)."""
    sql = f"select * from audit_targets where audit_id = ? {_TARGET_ORDER}"
    yield from iter_dicts(store.conn.execute(sql, [run_id]))


_TARGET_JSON = f"""
    select json_object(
        'server', server, 'kind', kind, 'name', name, 'dn', dn, 'flags', flags,
        'basic_auth', case when basic_auth is null then null
                           when basic_auth then json('true') else json('false') end,
        'tls_required', case when tls_required is null then null
                             when tls_required then json('true') else json('false') end,
        'verdict', verdict, 'reason', reason, 'version', version, 'severity', severity,
        'checked_at', checked_at)
    from audit_targets where audit_id = ? {_TARGET_ORDER}
"""


def iter_run_targets_json(store: Store, run_id: int) -> Iterator[str]:
    """The targets of a run as JSON objects (the ``--json`` contract), encoded by SQLite itself,
    in the same order as :func:`iter_run_targets`."""
    for (text,) in store.conn.execute(_TARGET_JSON, [run_id]):
        yield text


def current_targets(store: Store, server: str | None = None) -> list[dict]:
    """The latest known state of each target (of one server, case-insensitive, or of all).

    That is the newest row per target from the latest successful full audit or any later
    successful narrower check (``status --live``, a recheck).
    """
    base = latest_run(store, FULL, SUCCEEDED)
    if base is None:
        return []
    sql = """
        select t.*, r.trigger as run_trigger from audit_targets t
        join audit_runs r on r.id = t.audit_id
        where r.status = 'succeeded' and t.audit_id >= :base
          {server_clause}
          and t.id = (
            select max(t2.id) from audit_targets t2 join audit_runs r2 on r2.id = t2.audit_id
            where t2.target_key = t.target_key and r2.status = 'succeeded' and t2.audit_id >= :base
          )
          and t.target_key in (select target_key from audit_targets where audit_id = :base)
        order by t.server collate nocase, t.kind, t.dn
    """
    params: dict[str, Any] = {"base": base["id"]}
    clause = ""
    if server is not None:
        clause = "and t.server = :server collate nocase"
        params["server"] = server
    return [dict(r) for r in store.db.query(sql.format(server_clause=clause), params)]


def known_servers(store: Store) -> list[str]:
    """Server names seen by the latest successful full audit (for "did you mean")."""
    base = latest_run(store, FULL, SUCCEEDED)
    if base is None:
        return []
    rows = store.db.query(
        "select distinct server from audit_targets where audit_id = ? order by server",
        [base["id"]],
    )
    return [r["server"] for r in rows]


def fail_run(store: Store, run_id: int, reason: str) -> None:
    """Mark one run that is still ``running`` as ``failed`` (its process died)."""
    with store.transaction() as db:
        db.execute(
            "update audit_runs set status = ?, error = ?, finished_at = ? "
            "where id = ? and status = ?",
            [FAILED, reason, now_iso(), run_id, RUNNING],
        )


def fail_interrupted_runs(
    store: Store,
    started_before: str,
    include_full: bool,
    reason: str = "interrupted: the process running it stopped",
) -> int:
    """Mark runs left ``running`` by a process that died as ``failed``; return how many.

    Only runs started before ``started_before`` (ISO time) are touched, and full audits only when
    ``include_full`` (the caller knows no process holds the audit lease).
    """
    with store.transaction() as db:
        cursor = db.execute(
            "update audit_runs set status = ?, error = ?, finished_at = ? "
            "where status = ? and started_at < ? and (scope != 'full' or ?)",
            [FAILED, reason, now_iso(), RUNNING, started_before, 1 if include_full else 0],
        )
        return cursor.rowcount


# the verdicts that are findings (bot.rules.OPEN_VERDICTS), for the queries below
_OPEN = "('warning', 'unknown')"


def changes_between(store: Store, old_id: int | None, new_id: int) -> tuple[list[dict], list[dict]]:
    """``(new, resolved)``: open findings (warning/unknown) in run ``new_id`` that were not open in
    run ``old_id``, and those open in ``old_id`` that are not open any more."""
    if old_id is None:
        return [], []
    sql = f"""
        select * from audit_targets a where a.audit_id = :a and a.verdict in {_OPEN}
        and not exists (select 1 from audit_targets b where b.audit_id = :b
                        and b.target_key = a.target_key and b.verdict in {_OPEN})
        order by a.server collate nocase, a.dn
    """
    new = [dict(r) for r in store.db.query(sql, {"a": new_id, "b": old_id})]
    resolved = [dict(r) for r in store.db.query(sql, {"a": old_id, "b": new_id})]
    return new, resolved


def oldest_open(store: Store, run_id: int, limit: int = 5) -> list[dict]:
    """The open findings of a run that have been open longest, with ``first_seen`` (ISO time):
    the first successful full audit since which the target has been open without a break."""
    sql = f"""
        select c.*, (
          select min(r.started_at) from audit_targets t join audit_runs r on r.id = t.audit_id
          where t.target_key = c.target_key and r.scope = 'full' and r.status = 'succeeded'
            and t.verdict in {_OPEN}
            and t.audit_id > coalesce((
              select max(t2.audit_id) from audit_targets t2
              join audit_runs r2 on r2.id = t2.audit_id
              where t2.target_key = c.target_key and r2.scope = 'full' and r2.status = 'succeeded'
                and t2.verdict not in {_OPEN}), 0)
        ) as first_seen
        from audit_targets c where c.audit_id = :run and c.verdict in {_OPEN}
        order by first_seen, c.server collate nocase, c.dn limit :limit
    """
    return [dict(r) for r in store.db.query(sql, {"run": run_id, "limit": limit})]


def daily_open_counts(store: Store, since_iso: str) -> dict[str, int]:
    """``{"2026-11-27": 12, ...}``: open findings (warning + unknown) at the last successful full
    audit of each day since ``since_iso``."""
    rows = store.db.query(
        "select substr(started_at, 1, 10) as day, warning + unknown as open from audit_runs "
        "where scope = 'full' and status = 'succeeded' and started_at >= ? order by id",
        [since_iso],
    )
    counts: dict[str, int] = {}
    for row in rows:
        counts[row["day"]] = row["open"]
    return counts


def prune_targets(store: Store, started_before: str) -> int:
    """Delete the per-target rows of runs started before ``started_before`` (ISO time), and
    return how many went. The run rows stay (counts, trend, history); so do the targets of the
    latest successful full audit and of the audit the last summary compared against."""
    with store.atomic() as conn:
        cursor = conn.execute(
            """
            delete from audit_targets where audit_id in (
              select id from audit_runs where started_at < :before
                and id != coalesce((select max(id) from audit_runs
                                    where scope = 'full' and status = 'succeeded'), 0)
                and id != coalesce((select audit_id from summaries order by id desc limit 1), 0)
            )
            """,
            {"before": started_before},
        )
        return cursor.rowcount
