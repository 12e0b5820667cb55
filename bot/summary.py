"""The daily summary: counts, what changed, the oldest open warnings, the last audit, a trend.

>>> summary = build_summary(store)          # doctest: +SKIP
>>> summary.counts["warning"], summary.last_run["status"]  # doctest: +SKIP
(7, 'succeeded')

A failed last audit is never hidden behind an "all clear": :attr:`Summary.alarm` says so, and
the counts shown are those of the last successful audit, labelled as such.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

from bot.rules import OPEN_VERDICTS
from storage import Store
from storage import audits as audit_store
from storage import chat as chat_store

TREND_DAYS = 14
SPARKS = "▁▂▃▄▅▆▇█"


@dataclass
class Summary:
    """Everything the daily summary and the App Home show."""

    counts: dict[str, int] = field(default_factory=dict)
    last_run: dict[str, Any] | None = None  # the newest full run, whatever its status
    last_success: dict[str, Any] | None = None
    new: list[dict[str, Any]] = field(default_factory=list)
    resolved: list[dict[str, Any]] = field(default_factory=list)
    oldest_open: list[dict[str, Any]] = field(default_factory=list)
    trend: list[tuple[str, int | None]] = field(default_factory=list)
    since: str | None = None  # when the previous summary went out

    @property
    def alarm(self) -> str | None:
        """Why this summary must not read as "all clear", or ``None``."""
        if self.last_run is None:
            return "No audit has run yet."
        if self.last_run["status"] == "failed":
            return f"The last audit (#{self.last_run['id']}) FAILED: {self.last_run.get('error')}"
        if self.last_run["status"] == "running":
            return None if self.last_success else "The first audit is still running."
        return None

    @property
    def open_count(self) -> int:
        return sum(self.counts.get(verdict, 0) for verdict in OPEN_VERDICTS)


def sparkline(values: list[int | None]) -> str:
    """``[0, 2, 4, None, 4]`` -> ``'▁▄█·█'``: one character a day, ``·`` where no audit ran."""
    known = [v for v in values if v is not None]
    top = max(known) if known else 0
    out = []
    for value in values:
        if value is None:
            out.append("·")
        elif top == 0:
            out.append(SPARKS[0])
        else:
            out.append(SPARKS[min(len(SPARKS) - 1, round(value / top * (len(SPARKS) - 1)))])
    return "".join(out)


def build_summary(store: Store, today: date | None = None) -> Summary:
    """Assemble the summary from the stored audits (no directory access)."""
    today = today or datetime.now(UTC).date()
    summary = Summary()
    summary.last_run = audit_store.latest_run(store)
    summary.last_success = audit_store.latest_run(store, status="succeeded")
    base = summary.last_success
    if base is not None:
        summary.counts = {key: int(base.get(key) or 0) for key in audit_store.COUNTED}
        summary.oldest_open = audit_store.oldest_open(store, base["id"])
        previous = chat_store.last_summary(store)
        if previous is not None:
            summary.since = previous["at"]
            summary.new, summary.resolved = audit_store.changes_between(
                store, previous["audit_id"], base["id"]
            )
    start = today - timedelta(days=TREND_DAYS - 1)
    daily = audit_store.daily_open_counts(store, start.isoformat())
    summary.trend = [
        (day.isoformat(), daily.get(day.isoformat()))
        for day in (start + timedelta(days=n) for n in range(TREND_DAYS))
    ]
    return summary
