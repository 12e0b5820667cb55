"""The command core: what authguard can be asked to do, whoever asks (CLI, scheduler, chat).

>>> core = Authguard(settings, store, open_directory)            # doctest: +SKIP
>>> outcome = core.audit(trigger="chat", requested_by="U123")    # doctest: +SKIP
>>> outcome.run["status"], outcome.joined                        # doctest: +SKIP
('succeeded', False)

Only one full audit runs at a time, across every process sharing the database: a second request
while one runs waits for it and gets the same result (``joined`` is true). Listeners registered
with :meth:`Authguard.on_audit` hear about every finished run; the Slack layer uses that to post
warnings, so this module knows nothing of Slack.
"""

from __future__ import annotations

import difflib
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from bot.audit import FULL, AuditFailed, Scope, run_audit
from bot.config import Settings
from bot.directory import Directory
from storage import Store, locks
from storage import audits as audit_store

log = logging.getLogger(__name__)

AUDIT_LOCK = "audit"
AUDIT_LEASE_SECONDS = 300.0
AuditListener = Callable[[dict[str, Any], Scope], None]


@dataclass
class AuditOutcome:
    """A finished run; ``joined`` when this caller waited for someone else's run."""

    run: dict[str, Any]
    joined: bool = False

    @property
    def failed(self) -> bool:
        return self.run.get("status") != "succeeded"


@dataclass
class StatusResult:
    """A server's latest targets, or close matches when the name is unknown."""

    server: str
    rows: list[dict[str, Any]] = field(default_factory=list)
    matches: list[str] = field(default_factory=list)
    no_audit_yet: bool = False

    @property
    def found(self) -> bool:
        return bool(self.rows)


def known_state(store: Store, server: str) -> StatusResult:
    """``server``'s targets as the latest audits left them; when there are none, the close
    matches among the servers the latest full audit saw, and whether any audit succeeded."""
    result = StatusResult(server=server, rows=audit_store.current_targets(store, server))
    if not result.rows:
        result.no_audit_yet = audit_store.latest_run(store, status="succeeded") is None
        result.matches = close_matches(server, audit_store.known_servers(store))
    return result


def close_matches(name: str, names: list[str], limit: int = 5) -> list[str]:
    """Known names like ``name`` (case-insensitive), most alike first, for "did you mean".

    >>> close_matches("ex1", ["EX01", "EX02", "SBS01", "EX16A"])
    ['EX01', 'EX16A', 'EX02']
    """
    key = name.lower()
    scored = []
    for known in names:
        low = known.lower()
        ratio = difflib.SequenceMatcher(None, key, low).ratio()
        if ratio >= 0.5 or (key and (key in low or low in key)):
            scored.append((-ratio, known))
    return [known for _, known in sorted(scored)[:limit]]


class Authguard:
    """The transport-agnostic core. One per process; thread-safe."""

    def __init__(
        self,
        settings: Settings,
        store: Store,
        open_directory: Callable[[], Directory],
        owner: str | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.open_directory = open_directory
        self.owner = owner or locks.process_owner()
        self._listeners: list[AuditListener] = []
        self._guard = threading.Lock()
        self._current: Future[dict[str, Any]] | None = None

    def on_audit(self, listener: AuditListener) -> None:
        """Call ``listener(run, scope)`` after every finished run (succeeded or failed)."""
        self._listeners.append(listener)

    def _notify(self, run: dict[str, Any], scope: Scope) -> None:
        for listener in self._listeners:
            try:
                listener(run, scope)
            except Exception:  # a listener must not break the audit it reports on
                log.exception("audit listener %s failed", getattr(listener, "__name__", listener))

    # -- audits ----------------------------------------------------------------------------
    def audit_running(self) -> dict[str, Any] | None:
        """The full run in progress (in any process), or ``None``."""
        if locks.holder(self.store, AUDIT_LOCK) is None:
            return None
        run = audit_store.latest_run(self.store, FULL.label)
        return run if run and run["status"] == "running" else None

    def audit(
        self,
        trigger: str,
        requested_by: str | None = None,
        progress: Callable[[int], None] | None = None,
    ) -> AuditOutcome:
        """Run a full audit, or wait for the one already running and return its result."""
        with self._guard:
            running, joined = (self._current, True) if self._current else (Future(), False)
            self._current = running
        if joined:
            return AuditOutcome(running.result(), joined=True)
        try:
            if locks.acquire(self.store, AUDIT_LOCK, self.owner, AUDIT_LEASE_SECONDS):
                try:
                    outcome = AuditOutcome(self._run_full(trigger, requested_by, progress))
                finally:
                    locks.release(self.store, AUDIT_LOCK, self.owner)
                self._notify(outcome.run, FULL)
            else:
                outcome = self._join_other_process()
            running.set_result(outcome.run)
            return outcome
        except BaseException as exc:
            running.set_exception(exc)
            raise
        finally:
            with self._guard:
                self._current = None

    def _run_full(
        self, trigger: str, requested_by: str | None, progress: Callable[[int], None] | None
    ) -> dict[str, Any]:
        renewed = time.monotonic()

        def keep_lease(count: int) -> None:
            nonlocal renewed
            if time.monotonic() - renewed > AUDIT_LEASE_SECONDS / 5:
                locks.acquire(self.store, AUDIT_LOCK, self.owner, AUDIT_LEASE_SECONDS)
                renewed = time.monotonic()
            if progress is not None:
                progress(count)

        try:
            return run_audit(
                self.settings,
                self.store,
                self.open_directory,
                trigger,
                requested_by,
                progress=keep_lease,
            )
        except AuditFailed as exc:
            return exc.run

    def _join_other_process(self, poll: float = 0.25, timeout: float = 6 * 3600) -> AuditOutcome:
        """Wait for the full audit another process runs, and return its row."""
        latest = audit_store.latest_run(self.store, FULL.label)
        floor = latest["id"] if latest and latest["status"] != "running" else 0
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            run = audit_store.latest_run(self.store, FULL.label)
            if run is not None and run["id"] > floor and run["status"] != "running":
                return AuditOutcome(run, joined=True)
            if locks.holder(self.store, AUDIT_LOCK) is None:
                if run is not None and run["status"] == "running":
                    audit_store.fail_run(self.store, run["id"], "interrupted: its process stopped")
                    run = audit_store.get_run(self.store, run["id"])
                if run is not None:
                    return AuditOutcome(run, joined=True)
            time.sleep(poll)
        raise TimeoutError("the running audit did not finish in time")

    def check(self, scope: Scope, trigger: str, requested_by: str | None = None) -> AuditOutcome:
        """Re-read one server or one target now (a narrow run; many may run at once)."""
        try:
            run = run_audit(
                self.settings,
                self.store,
                self.open_directory,
                trigger,
                requested_by,
                scope=scope,
            )
        except AuditFailed as exc:
            run = exc.run
        self._notify(run, scope)
        return AuditOutcome(run)

    def fail_stale_runs(self) -> int:
        """Mark runs whose process died while they ran as failed, so no summary shows them as
        running forever. A full audit counts as dead when nobody holds the audit lease; any
        run only once it is older than the lease (a live one renews it)."""
        cutoff = datetime.now(UTC) - timedelta(seconds=AUDIT_LEASE_SECONDS)
        lease_free = locks.holder(self.store, AUDIT_LOCK) is None
        return audit_store.fail_interrupted_runs(self.store, cutoff.isoformat(), lease_free)

    # -- questions -------------------------------------------------------------------------
    def status(self, server: str) -> StatusResult:
        """The latest known state of ``server``'s targets (see :func:`known_state`)."""
        return known_state(self.store, server)
