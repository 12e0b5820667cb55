"""Audit results for the command line: the JSON contract and the readable table.

>>> target_json({"server": "EX01", "kind": "smtp_virtual_server", "name": "1", "dn": "CN=1",
...     "flags": 7, "basic_auth": 1, "tls_required": None, "verdict": "warning", "reason": "r",
...     "version": "Version 6.5", "severity": "high"})["basic_auth"]
True
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any, TextIO

from bot.rules import describe, reason_text
from storage.audits import COUNTED

KIND_SHORT = {"smtp_virtual_server": "SMTP VS", "receive_connector": "Receive conn."}


def _bool(value: Any) -> bool | None:
    return None if value is None else bool(value)


def run_json(run: dict[str, Any]) -> dict[str, Any]:
    """The ``audit`` object of the JSON contract."""
    out = {key: run.get(key) for key in ("id", "started_at", "finished_at", "trigger", "status")}
    if run.get("error"):
        out["error"] = run["error"]
    return out


def target_json(row: dict[str, Any]) -> dict[str, Any]:
    """One element of ``targets`` in the JSON contract."""
    return {
        "server": row["server"],
        "kind": row["kind"],
        "name": row["name"],
        "dn": row["dn"],
        "flags": row["flags"],
        "basic_auth": _bool(row["basic_auth"]),
        "tls_required": _bool(row["tls_required"]),
        "verdict": row["verdict"],
        "reason": row["reason"],
        "version": row["version"],
        "severity": row.get("severity"),
        "checked_at": row.get("checked_at"),
    }


def summary_json(run: dict[str, Any]) -> dict[str, int]:
    """The ``summary`` object: how many targets got each verdict."""
    return {key: int(run.get(key) or 0) for key in COUNTED}


def write_json(out: TextIO, run: dict[str, Any], targets: Iterable[str]) -> None:
    """Write the whole JSON document, streaming the targets (each already a JSON object, see
    :func:`storage.audits.iter_run_targets_json`) one by one."""
    out.write('{"audit": ' + json.dumps(run_json(run)) + ', "targets": [')
    separator = "\n  "
    for text in targets:
        out.write(separator + text)
        separator = ",\n  "
    out.write('],\n "summary": ' + json.dumps(summary_json(run)) + "}\n")


def tls_text(value: Any) -> str:
    """``required``, ``not required`` or ``unknown`` (an SMTP virtual server does not record it)."""
    if value is None:
        return "unknown"
    return "required" if value else "not required"


COLUMNS = ("SERVER", "KIND", "NAME", "FLAGS", "TLS", "VERDICT", "REASON")
WIDTHS = (16, 13, 28, 58, 12, 8, 0)  # 0: no limit


def _cut(text: str, width: int) -> str:
    if not width or len(text) <= width:
        return text
    return text[: width - 1] + "…"


def table_lines(rows: Iterable[dict[str, Any]], style=None) -> Iterable[str]:
    """The readable table, a line at a time; ``style(verdict, text)`` may colour the verdict."""
    yield "  ".join(name.ljust(w) if w else name for name, w in zip(COLUMNS, WIDTHS, strict=True))
    for row in rows:
        cells = [
            row["server"],
            KIND_SHORT.get(row["kind"], row["kind"]),
            row["name"],
            describe(row["kind"], row["flags"]),
            tls_text(row["tls_required"]),
            row["verdict"],
            reason_text(row["verdict"], row["reason"]),
        ]
        parts = []
        for index, (cell, width) in enumerate(zip(cells, WIDTHS, strict=True)):
            text = _cut(str(cell), width)
            padded = text.ljust(width) if width else text
            if index == 5 and style is not None:
                padded = style(row["verdict"], padded)
            parts.append(padded)
        yield "  ".join(parts).rstrip()


def summary_line(run: dict[str, Any]) -> str:
    """``Audit 3 succeeded: 7 warning, 9 ok, 2 exempt, 1 unknown (19 targets)``."""
    counts = ", ".join(f"{run.get(key) or 0} {key}" for key in COUNTED if run.get(key))
    total = run.get("total") or 0
    return f"Audit {run['id']} {run['status']}: {counts or 'no targets'} ({total} targets)"
