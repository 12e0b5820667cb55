"""The controlled remediation job: approved, atomic, verified and logged LDAP changes.

Nothing here knows Slack. A chat handler (or the CLI) calls these functions::

    request = create_request(settings, store, target_row, "fix", channel=c, message_ts=ts)
    # the button value is request["id"], an opaque token
    result = approve(settings, store, request["id"], "U123", "alice", is_approver=True)
    if result.ready:                      # enough distinct approvers: run the job once
        outcome = run_job(settings, store, open_directory, request["id"],
                          Actor("U123", "alice"))
        print(outcome.message)            # verified / dry run / drift / conflict / failed

    rollback(settings, store, open_directory, outcome.job_id, Actor(None, "bob (cli)"))
    reconcile_unfinished(settings, store, open_directory)   # at start-up

The job, step by step (:func:`run_job`):

1. **Claim** the request in one ``BEGIN IMMEDIATE`` transaction: ``UPDATE fix_requests SET
   status='running' WHERE id=? AND status IN ('approved','failed')`` and insert the job row.
   Double clicks, two approvers at once, a re-sent Slack event or two processes: exactly one
   caller gets the job; the others get ``already_running`` / ``already_done``. One job per target
   at a time: an unfinished job on the same target makes the claim ``busy``.
2. **Re-read** the target. Flags that differ from the approved ``flags_before`` stop the job:
   nothing is written, the request becomes ``drift``.
3. **Write** (live mode only) with :meth:`Directory.compare_and_swap`: one modify deleting the
   old value and adding the new one, so the server refuses it if the value moved. The job is
   recorded as ``writing`` *before* the modify is sent, so a crash leaves a trace that
   :func:`reconcile_unfinished` settles.
4. **Verify** by reading the value back; before, after and observed values are stored.
5. Every step is appended to the hash-chained audit log.

Failures and retries: a failure that is known to have changed nothing (directory unreachable,
bind refused, a refused modify while the value is still ``flags_before``) leaves the request
``failed``, and ``failed`` is claimable: calling :func:`run_job` again retries the same approved
change without new approvals (while the request has not expired). A lost compare-and-swap (the
value moved) or a verification mismatch makes the request ``drift``: it needs a recheck and a
new request. If the outcome of a write cannot be known (the connection dropped and the value
cannot be read back), the job stays unfinished and :func:`reconcile_unfinished` settles it
from the directory later; it never writes a second time.

``AUTHGUARD_REMEDIATION_MODE=dry-run`` runs every step but the write; results and log rows say
``dry_run``.
"""

from __future__ import annotations

import os
import socket
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from bot.config import ConfigError, Settings
from bot.directory import Directory, DirectoryError, WriteRefused, dn_key
from bot.rules import KINDS, describe, fix_problem, fixed_flags, parse_flags, require_tls_flags
from storage import Store
from storage import audit_log as log
from storage import remediation as rs

OpenDirectory = Callable[[], Directory]

FIX, REQUIRE_TLS, WAIVE = "fix", "require_tls", "waive"
ACTIONS = (FIX, REQUIRE_TLS, WAIVE)
LIVE, DRY_RUN_MODE = "live", "dry-run"

# ApprovalResult.outcome
APPROVED = "approved"  # counted, and enough approvals now: ``ready`` is True
RECORDED = "recorded"  # counted, more approvals needed
DUPLICATE = "duplicate"  # this user had already approved; not counted twice
DENIED = "denied"  # not an approver
NO_APPROVERS = "no_approvers"  # AUTHGUARD_APPROVERS is empty: nobody may approve
NOT_FOUND = "not_found"  # unknown request id
EXPIRED = "expired"  # past AUTHGUARD_APPROVAL_TTL_HOURS
CLOSED = "closed"  # no longer pending (already approved, running, done, drift, superseded)
MISMATCH = "mismatch"  # the button's action is not the stored request's: nothing approved

# JobResult.outcome
VERIFIED = "verified"  # written and read back: done
DRY_RUN = "dry_run"  # every step but the write
DRIFT = "drift"  # the target changed since the warning; nothing written
CONFLICT = "conflict"  # the compare-and-swap lost to a concurrent writer; nothing written
FAILED = "failed"  # nothing changed (or verification failed); see ``retryable``
UNKNOWN = "unknown"  # the write's outcome cannot be known yet; reconciliation settles it
NOT_WRITTEN = "not_written"  # reconciliation: the crashed job's write never landed
UNAVAILABLE = "unavailable"  # reconciliation: the directory could not be read; try later
NOT_APPROVED = "not_approved"
ALREADY_RUNNING = "already_running"
ALREADY_DONE = "already_done"
BUSY = "busy"  # another job on the same target has not finished
REFUSED = "refused"


class RequestRefused(ValueError):
    """:func:`create_request` will not offer this change; the message says why, for people."""


@dataclass(frozen=True)
class Actor:
    """Who did something: a Slack user (``"U123"``, ``"alice"``) or a CLI/system actor."""

    user_id: str | None
    user_name: str | None

    @property
    def label(self) -> str:
        return self.user_name or self.user_id or "someone"

    @classmethod
    def system(cls, what: str) -> Actor:
        """authguard itself, e.g. ``Actor.system("start-up")``."""
        return cls(None, f"authguard ({what})")


@dataclass(frozen=True)
class Approval:
    """One counted approval."""

    user_id: str
    user_name: str | None
    at: str


@dataclass(frozen=True)
class ApprovalResult:
    """What :func:`approve` did. ``ready`` is True for exactly the call that completed the
    approvals: that caller should run the job (a second caller is harmless anyway)."""

    outcome: str
    message: str
    request: dict[str, Any] | None = None
    approvals: tuple[Approval, ...] = ()
    required: int = 1
    ready: bool = False

    @property
    def ok(self) -> bool:
        """The click counted (approved or recorded)."""
        return self.outcome in (APPROVED, RECORDED)

    @property
    def approver_names(self) -> list[str]:
        return [a.user_name or a.user_id for a in self.approvals]


@dataclass(frozen=True)
class JobResult:
    """What a job (or a refused attempt to start one) did; ``message`` is a sentence for people.

    ``wrote`` is True when authguard's own modify changed the directory. ``retryable`` is True
    when :func:`run_job` may be called again for the same request without new approvals.
    """

    outcome: str
    ok: bool
    message: str
    request_id: str | None = None
    job_id: int | None = None
    job_kind: str = "fix"
    mode: str = LIVE
    dn: str | None = None
    server: str | None = None
    name: str | None = None
    target_kind: str | None = None
    attribute: str | None = None
    before: int | None = None
    after: int | None = None
    observed: int | None = None
    wrote: bool = False
    retryable: bool = False
    approvals: tuple[Approval, ...] = ()
    at: str | None = None
    rolls_back_job_id: int | None = None
    error: str | None = None

    @property
    def dry_run(self) -> bool:
        return self.mode == DRY_RUN_MODE

    @property
    def change(self) -> str:
        """``"7 (Anonymous, Basic, Integrated Windows) -> 5 (Anonymous, Integrated Windows)"``."""
        if self.target_kind is None:
            return ""
        return change_text(self.target_kind, self.before, self.after)


def change_text(kind: str, before: int | None, after: int | None) -> str:
    """Flags before -> after, in words."""
    return f"{describe(kind, before)} -> {describe(kind, after)}"


def describe_change(request: dict[str, Any]) -> str:
    """The exact change a request stands for, for a confirm dialog.

    >>> describe_change({"server": "EX01", "name": "Default SMTP Virtual Server",
    ...     "kind": "smtp_virtual_server", "action": "fix", "flags_before": 7, "flags_after": 5})
    'EX01 / Default SMTP Virtual Server (SMTP virtual server): turn off Basic authentication: \
msExchAuthenticationFlags 7 (Anonymous, Basic, Integrated Windows) -> 5 (Anonymous, Integrated \
Windows)'
    """
    spec = KINDS[request["kind"]]
    what = {
        FIX: "turn off Basic authentication",
        REQUIRE_TLS: "keep Basic authentication but require TLS",
        WAIVE: "accept the risk (no change)",
    }[request["action"]]
    return (
        f"{request['server']} / {request['name']} ({spec.label}): {what}: {spec.attribute} "
        f"{change_text(request['kind'], request['flags_before'], request['flags_after'])}"
    )


# -- clock, process identity ------------------------------------------------------------------


def utcnow() -> datetime:
    return datetime.now(UTC)


_PROCESS_TOKEN = uuid.uuid4().hex[:12]
_in_flight: set[int] = set()
_in_flight_lock = threading.Lock()


def process_owner() -> str:
    """``host:pid:token`` of this process; the token tells a restarted container's pid 1 apart."""
    return f"{socket.gethostname()}:{os.getpid()}:{_PROCESS_TOKEN}"


def owner_alive(job: dict[str, Any], now: datetime | None = None, stale_after: float = 900) -> bool:
    """Whether the process that owns an unfinished job may still be working on it.

    This process: only while the job is in flight. Another process on this host: while its pid
    exists. Another host (cannot be checked): for ``stale_after`` seconds after the job started.
    """
    host, _, rest = str(job.get("owner") or "").partition(":")
    pid_text, _, token = rest.partition(":")
    if host == socket.gethostname():
        if pid_text == str(os.getpid()) and token == _PROCESS_TOKEN:
            with _in_flight_lock:
                return int(job["id"]) in _in_flight
        if pid_text == str(os.getpid()):
            return False  # same pid, another token: an earlier incarnation (container restart)
        try:
            os.kill(int(pid_text), 0)
        except (ValueError, ProcessLookupError):
            return False
        except PermissionError:
            return True
        return True
    started = rs.parse_iso(job["started_at"])
    return ((now or utcnow()) - started).total_seconds() < stale_after


# -- requests ---------------------------------------------------------------------------------


def create_request(
    settings: Settings,
    store: Store,
    target_row: dict[str, Any],
    action: str,
    channel: str | None = None,
    message_ts: str | None = None,
    *,
    created_by: str | None = None,
    now: datetime | None = None,
) -> dict[str, Any]:
    """A pending request for ``action`` on a stored target row; return the request row.

    ``target_row`` is a row of ``storage.audits.current_targets`` / ``iter_run_targets``
    (``target_key``, ``dn``, ``server``, ``kind``, ``name``, ``flags``, ``audit_id``).
    ``action``: ``"fix"`` (clear Basic), ``"require_tls"`` (connectors with the Tls bit: keep
    Basic, set BasicAuthRequireTLS) or ``"waive"`` (no change: an anchor for the accept-risk
    button; see :mod:`bot.waivers`).

    Raises :class:`RequestRefused` when the fix would leave no authentication method, when
    require-TLS does not apply, or when the flags could not be read. A pending, unexpired
    request for exactly the same change is reused (its channel/ts updated to the newest
    message); older pending requests for the same target and action are ``superseded``.
    """
    if action not in ACTIONS:
        raise RequestRefused(f"unknown action {action!r}: expected one of {', '.join(ACTIONS)}")
    kind = target_row.get("kind")
    if kind not in KINDS:
        raise RequestRefused(f"unknown target kind {kind!r}")
    name = target_row.get("name") or target_row.get("dn")
    raw = target_row.get("flags")
    if raw is None:
        if action == WAIVE:
            before = None
        else:
            raise RequestRefused(
                f"the flags of {name} could not be read ({target_row.get('reason') or 'unknown'}):"
                " there is no known value to change; fix the attribute by hand"
            )
    else:
        before = int(raw)
    if action == FIX:
        problem = fix_problem(kind, before)
        if problem:
            raise RequestRefused(problem)
        after = fixed_flags(kind, before)
    elif action == REQUIRE_TLS:
        after = require_tls_flags(kind, before)
        if after is None:
            raise RequestRefused(_require_tls_problem(kind, before))
    else:
        after = before
    moment = now or utcnow()
    stamp = rs.iso(moment)
    target_key = target_row.get("target_key") or dn_key(target_row["dn"])
    with store.transaction() as db:
        existing = rs.find_open_request(db, target_key, action, before, after, stamp)
        if existing is not None:
            moved = {}
            if channel and channel != existing["channel"]:
                moved["channel"] = channel
            if message_ts and message_ts != existing["message_ts"]:
                moved["message_ts"] = message_ts
            if moved:
                rs.update_request(db, existing["id"], updated_at=stamp, **moved)
            return rs.get_request(db, existing["id"]) or existing
        request = rs.insert_request(
            db,
            {
                "created_at": stamp,
                "expires_at": rs.iso(moment + timedelta(hours=settings.approval_ttl_hours)),
                "target_key": target_key,
                "dn": target_row["dn"],
                "server": target_row.get("server"),
                "kind": kind,
                "name": name,
                "action": action,
                "flags_before": before,
                "flags_after": after,
                "audit_id": target_row.get("audit_id"),
                "status": rs.PENDING,
                "required_approvals": settings.approvals_required,
                "created_by": created_by,
                "channel": channel,
                "message_ts": message_ts,
            },
        )
        superseded = rs.supersede_requests(db, target_key, action, request["id"], stamp)
        if action != WAIVE:
            log.append_in(
                db,
                "request",
                user_name=created_by,
                target_dn=request["dn"],
                before=before,
                after=after,
                request_id=request["id"],
                detail={
                    "action": action,
                    "server": request["server"],
                    "name": request["name"],
                    "kind": kind,
                    "audit_id": request["audit_id"],
                    "expires_at": request["expires_at"],
                    "superseded": superseded,
                },
                at=moment,
            )
        return request


def _require_tls_problem(kind: str, flags: int) -> str:
    spec = KINDS[kind]
    if spec.tls_bit is None:
        return (
            f"an {spec.label.lower()} does not record a TLS requirement in {spec.attribute}: "
            "require TLS in Exchange System Manager instead"
        )
    if not flags & spec.basic_bits:
        return "Basic authentication is off: there is nothing to protect with TLS"
    if flags & spec.tls_bit:
        return "BasicAuthRequireTLS is already set"
    return "the connector does not offer TLS (the Tls bit is clear), so TLS cannot be required"


def get_request(store: Store, request_id: str) -> dict[str, Any] | None:
    """The stored request (for a recheck button or a message), or ``None``."""
    return rs.get_request(store, request_id)


def approvals_of(store: Store, request_id: str) -> tuple[Approval, ...]:
    """The counted approvals of a request, oldest first."""
    return _approvals(rs.list_approvals(store, request_id))


def _approvals(rows: list[dict[str, Any]]) -> tuple[Approval, ...]:
    return tuple(Approval(r["user_id"], r["user_name"], r["at"]) for r in rows)


def _required(settings: Settings, request: dict[str, Any]) -> int:
    # the stricter of the value stored with the request and the current setting
    return max(int(request.get("required_approvals") or 1), settings.approvals_required)


def _expired(request: dict[str, Any], stamp: str) -> bool:
    return stamp >= request["expires_at"]


def _closed_message(request: dict[str, Any]) -> str:
    status = request["status"]
    job = f" (job {request['job_id']})" if request.get("job_id") else ""
    return {
        rs.APPROVED: "This change is already approved; its job runs now.",
        rs.RUNNING: f"This change is already being applied{job}.",
        rs.SUCCEEDED: f"This change was already applied and verified{job}.",
        rs.FAILED: f"This change was approved and its job failed{job}; it can be retried.",
        rs.DRIFT: "The target changed since the warning; recheck it and approve the new state.",
        rs.DRY_RUN: f"This change already ran as a dry run{job}.",
        rs.SUPERSEDED: "A newer warning replaced this request; use the newest message.",
        rs.ROLLED_BACK: f"This change was applied and then rolled back{job}.",
        rs.EXPIRED: "This request has expired; recheck the target for a fresh one.",
    }.get(status, f"This request is {status}.")


def approve(
    settings: Settings,
    store: Store,
    request_id: str,
    user_id: str,
    user_name: str | None,
    is_approver: bool,
    *,
    action: str | None = None,
    now: datetime | None = None,
) -> ApprovalResult:
    """Record one approval click; every click, counted or not, is written to the audit log.

    ``is_approver`` is the caller's verdict (Slack user ids and resolved user groups). An empty
    ``AUTHGUARD_APPROVERS`` refuses everyone here too. With ``AUTHGUARD_APPROVALS_REQUIRED=2``
    the same user twice counts once. ``action`` is what the clicked button asks for (``"fix"``,
    ``"require_tls"``); a stored request for another action is refused (``mismatch``), so a
    click approves only what its own button offered. Returns :class:`ApprovalResult`; run the
    job when ``result.ready``.
    """
    moment = now or utcnow()
    stamp = rs.iso(moment)
    if not settings.approvers or not is_approver:
        request = rs.get_request(store, request_id)
        reason = "no approvers are configured" if not settings.approvers else "not an approver"
        log.log_denial(
            store,
            user_id=user_id,
            user_name=user_name,
            reason=reason,
            request=request,
            request_id=str(request_id),
            at=moment,
            known_request=request is not None,
        )
        if not settings.approvers:
            return ApprovalResult(
                NO_APPROVERS,
                "Nobody can approve fixes: no approvers are configured "
                "(set AUTHGUARD_APPROVERS to Slack user or user group ids).",
                request,
            )
        return ApprovalResult(DENIED, "You are not an approver for authguard.", request)
    with store.transaction() as db:
        request = rs.get_request(db, request_id)
        if request is None:
            log.append_in(
                db,
                "refusal",
                user_id=user_id,
                user_name=user_name,
                request_id=str(request_id),
                detail={"reason": "unknown request id", "step": "approval"},
                at=moment,
            )
            return ApprovalResult(NOT_FOUND, "This request does not exist (any more).")
        if action is not None and request["action"] not in (action, WAIVE):
            log.append_in(
                db,
                "refusal",
                user_id=user_id,
                user_name=user_name,
                target_dn=request["dn"],
                request_id=request["id"],
                detail={
                    "reason": "the button does not match the request",
                    "button": action,
                    "request_action": request["action"],
                    "step": "approval",
                },
                at=moment,
            )
            return ApprovalResult(
                MISMATCH,
                "That button does not match its request: nothing was approved. "
                "Use the buttons on the newest warning.",
                request,
            )
        required = _required(settings, request)
        approvals = _approvals(rs.list_approvals(db, request["id"]))
        if request["status"] == rs.EXPIRED or (
            request["status"] in rs.OPEN_STATUSES and _expired(request, stamp)
        ):
            rs.move_request(db, request["id"], rs.OPEN_STATUSES, rs.EXPIRED, updated_at=stamp)
            log.append_in(
                db,
                "expired",
                user_id=user_id,
                user_name=user_name,
                target_dn=request["dn"],
                before=request["flags_before"],
                after=request["flags_after"],
                request_id=request["id"],
                detail={"expires_at": request["expires_at"], "step": "approval"},
                at=moment,
            )
            request = rs.get_request(db, request["id"])
            return ApprovalResult(
                EXPIRED,
                f"This request expired at {request['expires_at'][:16].replace('T', ' ')} UTC; "
                "recheck the target for a fresh one.",
                request,
                approvals,
                required,
            )
        if request["action"] == WAIVE:
            return ApprovalResult(
                CLOSED,
                "Accepting a risk needs a reason and an expiry, not an approval.",
                request,
                approvals,
                required,
            )
        if request["status"] != rs.PENDING:
            return ApprovalResult(CLOSED, _closed_message(request), request, approvals, required)
        counted = rs.add_approval(db, request["id"], user_id, user_name, stamp)
        approvals = _approvals(rs.list_approvals(db, request["id"]))
        ready = counted and len(approvals) >= required
        if ready:
            rs.move_request(db, request["id"], [rs.PENDING], rs.APPROVED, updated_at=stamp)
        log.append_in(
            db,
            "approval",
            user_id=user_id,
            user_name=user_name,
            target_dn=request["dn"],
            before=request["flags_before"],
            after=request["flags_after"],
            request_id=request["id"],
            detail={
                "action": request["action"],
                "counted": counted,
                "approvals": len(approvals),
                "required": required,
                "approved_by": [a.user_id for a in approvals],
            },
            at=moment,
        )
        request = rs.get_request(db, request["id"])
    names = ", ".join(a.user_name or a.user_id for a in approvals)
    if not counted:
        missing = max(required - len(approvals), 0)
        return ApprovalResult(
            DUPLICATE,
            f"You already approved this change; waiting for {missing} more approver"
            f"{'s' if missing != 1 else ''}."
            if missing
            else "You already approved this change.",
            request,
            approvals,
            required,
        )
    if ready:
        return ApprovalResult(
            APPROVED, f"Approved by {names}.", request, approvals, required, ready=True
        )
    return ApprovalResult(
        RECORDED,
        f"{len(approvals)} of {required} approvals ({names}); waiting for another approver.",
        request,
        approvals,
        required,
    )


def expire_requests(store: Store, *, now: datetime | None = None) -> list[dict[str, Any]]:
    """Mark open requests past their TTL ``expired`` (logged); return them. For a scheduler."""
    moment = now or utcnow()
    stamp = rs.iso(moment)
    expired = []
    with store.transaction() as db:
        for request in rs.expirable_requests(db, stamp):
            if rs.move_request(db, request["id"], rs.OPEN_STATUSES, rs.EXPIRED, updated_at=stamp):
                log.append_in(
                    db,
                    "expired",
                    user_name="authguard",
                    target_dn=request["dn"],
                    before=request["flags_before"],
                    after=request["flags_after"],
                    request_id=request["id"],
                    detail={"expires_at": request["expires_at"], "step": "sweep"},
                    at=moment,
                )
                expired.append(rs.get_request(db, request["id"]))
    return expired


# -- jobs -------------------------------------------------------------------------------------


class _Refusal(Exception):
    def __init__(self, result: JobResult) -> None:
        super().__init__(result.message)
        self.result = result


def _base(request: dict[str, Any] | None, job: dict[str, Any] | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if request is not None:
        out.update(
            request_id=request["id"],
            dn=request["dn"],
            server=request["server"],
            name=request["name"],
            target_kind=request["kind"],
            attribute=KINDS[request["kind"]].attribute,
            before=request["flags_before"],
            after=request["flags_after"],
        )
    if job is not None:
        out.update(
            job_id=job["id"],
            job_kind=job["kind"],
            mode=job["mode"],
            dn=job["dn"],
            attribute=job["attribute"],
            before=job["before"],
            after=job["after"],
            rolls_back_job_id=job.get("rolls_back_job_id"),
        )
    return out


def _refuse(outcome: str, message: str, **fields: Any) -> _Refusal:
    return _Refusal(JobResult(outcome, False, message, **fields))


def run_job(
    settings: Settings,
    store: Store,
    open_directory: OpenDirectory,
    request_id: str,
    actor: Actor,
    *,
    now: datetime | None = None,
) -> JobResult:
    """Claim an approved request and apply it (see the module docstring for the steps).

    Safe to call from any number of threads or processes at once: exactly one call runs the
    job, the others return ``already_running`` / ``already_done``. Also the retry: a ``failed``
    request is claimed again. Returns :class:`JobResult`; it never raises for directory
    problems (they are results), only for a broken database or a programming error.
    """
    moment = now or utcnow()
    try:
        job, request = _claim(settings, store, request_id, actor, moment)
    except _Refusal as refusal:
        return refusal.result
    return _execute(store, open_directory, job, request, actor)


def _claim(
    settings: Settings, store: Store, request_id: str, actor: Actor, moment: datetime
) -> tuple[dict[str, Any], dict[str, Any]]:
    stamp = rs.iso(moment)
    with store.transaction() as db:
        request = rs.get_request(db, request_id)
        if request is None:
            log.append_in(
                db,
                "refusal",
                user_id=actor.user_id,
                user_name=actor.user_name,
                request_id=str(request_id),
                detail={"reason": "unknown request id", "step": "job"},
                at=moment,
            )
            raise _refuse(NOT_FOUND, "This request does not exist (any more).")
        base = _base(request)
        status = request["status"]
        if request["action"] == WAIVE:
            raise _refuse(REFUSED, "A waiver request changes nothing in the directory.", **base)
        if status == rs.RUNNING:
            raise _refuse(
                ALREADY_RUNNING,
                f"A job for this change is already running (job {request['job_id']}).",
                job_id=request["job_id"],
                **base,
            )
        if status in (rs.SUCCEEDED, rs.DRY_RUN, rs.ROLLED_BACK):
            raise _refuse(
                ALREADY_DONE,
                f"A job for this change already ran (job {request['job_id']}, {status}).",
                job_id=request["job_id"],
                **base,
            )
        if status in rs.CLAIMABLE and _expired(request, stamp):
            rs.move_request(db, request["id"], rs.CLAIMABLE, rs.EXPIRED, updated_at=stamp)
            log.append_in(
                db,
                "expired",
                user_id=actor.user_id,
                user_name=actor.user_name,
                target_dn=request["dn"],
                request_id=request["id"],
                detail={"expires_at": request["expires_at"], "step": "job"},
                at=moment,
            )
            raise _refuse(EXPIRED, "This request has expired; recheck the target.", **base)
        if status == rs.PENDING:
            have = len(rs.list_approvals(db, request["id"]))
            raise _refuse(
                NOT_APPROVED,
                f"This change has {have} of {_required(settings, request)} approvals.",
                **base,
            )
        if status not in rs.CLAIMABLE:
            raise _refuse(
                EXPIRED if status == rs.EXPIRED else REFUSED, _closed_message(request), **base
            )
        approvals = _approvals(rs.list_approvals(db, request["id"]))
        if len(approvals) < _required(settings, request):
            raise _refuse(
                NOT_APPROVED,
                f"This change has {len(approvals)} of {_required(settings, request)} approvals.",
                **base,
            )
        job = _insert_claimed_job(
            db,
            settings,
            actor,
            stamp,
            base,
            request_id=request["id"],
            kind="fix",
            target_key=request["target_key"],
            dn=request["dn"],
            attribute=KINDS[request["kind"]].attribute,
            before=request["flags_before"],
            after=request["flags_after"],
        )
        if not rs.move_request(
            db,
            request["id"],
            rs.CLAIMABLE,
            rs.RUNNING,
            job_id=job["id"],
            updated_at=stamp,
            last_error=None,
        ):  # pragma: no cover - the IMMEDIATE transaction makes this impossible
            raise RuntimeError("lost the claim inside an IMMEDIATE transaction")
        _log_started(
            db,
            job,
            actor,
            moment,
            action=request["action"],
            approved_by=[a.user_id for a in approvals],
        )
        return job, rs.get_request(db, request["id"]) or request


def _insert_claimed_job(
    db: Any, settings: Settings, actor: Actor, stamp: str, base: dict[str, Any], **fields: Any
) -> dict[str, Any]:
    """Insert a job in state ``claimed`` for this process and mark it in flight here; refused
    while another job on the same target has not finished (one job per target at a time:
    ``busy``, or ``already_running`` for a rollback behind another rollback)."""
    busy = rs.unfinished_job_for_target(db, fields["target_key"])
    if busy is not None:
        raise _refuse(
            BUSY if fields["kind"] == "fix" or busy.get("kind") == "fix" else ALREADY_RUNNING,
            f"Job {busy['id']} on this target has not finished; try again when it has.",
            **base,
        )
    job = rs.insert_job(
        db,
        {
            "mode": settings.remediation_mode,
            "state": rs.CLAIMED,
            "owner": process_owner(),
            "actor_id": actor.user_id,
            "actor_name": actor.user_name,
            "started_at": stamp,
            **fields,
        },
    )
    with _in_flight_lock:
        _in_flight.add(int(job["id"]))
    return job


def _log_started(
    db: Any, job: dict[str, Any], actor: Actor, moment: datetime, **detail: Any
) -> None:
    """The ``job_started`` row of a fix or a rollback (``detail`` adds to kind, mode and the job
    rolled back)."""
    log.append_in(
        db,
        "job_started",
        user_id=actor.user_id,
        user_name=actor.user_name,
        target_dn=job["dn"],
        before=job["before"],
        after=job["after"],
        job_id=job["id"],
        request_id=job["request_id"],
        detail={
            "kind": job["kind"],
            "mode": job["mode"],
            **detail,
            "rolls_back_job_id": job.get("rolls_back_job_id"),
        },
        at=moment,
    )


def _read_flags(directory: Directory, dn: str, attribute: str) -> tuple[int | None, str | None]:
    """``(flags, None)``, or ``(None, problem)``; raises DirectoryError when unreachable."""
    target = directory.read_target(dn)
    if target is None:
        return None, "the object no longer exists"
    return parse_flags(attribute, list(target.raw_flags))


_NOW = object()  # placeholder in _Finisher.final(fields=...): the finishing time

# request status for each final job outcome (fix jobs); rollback jobs only touch a request when
# they succeed (-> rolled_back)
_REQUEST_AFTER = {
    VERIFIED: rs.SUCCEEDED,
    DRY_RUN: rs.DRY_RUN,
    DRIFT: rs.DRIFT,
    CONFLICT: rs.DRIFT,
    NOT_WRITTEN: rs.FAILED,
}


def _execute(
    store: Store,
    open_directory: OpenDirectory,
    job: dict[str, Any],
    request: dict[str, Any] | None,
    actor: Actor,
) -> JobResult:
    try:
        return _steps(store, open_directory, job, request, actor)
    finally:
        with _in_flight_lock:
            _in_flight.discard(int(job["id"]))


def _steps(
    store: Store,
    open_directory: OpenDirectory,
    job: dict[str, Any],
    request: dict[str, Any] | None,
    actor: Actor,
) -> JobResult:
    dn, attribute = job["dn"], job["attribute"]
    before, after = job["before"], job["after"]
    kind = request["kind"] if request else _kind_of(attribute)
    approvals = approvals_of(store, request["id"]) if request else ()
    finish = _Finisher(store, job, request, actor, kind, approvals)
    where = f"{request['server']} / {request['name']}" if request else dn
    try:
        directory = open_directory()
    except (DirectoryError, ConfigError, OSError) as exc:
        return finish.failed(
            f"Nothing was changed on {where}: cannot use the directory ({exc}). "
            "The change can be retried.",
            error=str(exc),
            observed=None,
            from_states=[rs.CLAIMED],
        )
    with directory:
        # 2. re-read
        try:
            current, problem = _read_flags(directory, dn, attribute)
        except DirectoryError as exc:
            return finish.failed(
                f"Nothing was changed on {where}: re-reading the target failed ({exc}). "
                "The change can be retried.",
                error=str(exc),
                observed=None,
                from_states=[rs.CLAIMED],
            )
        if current != before:
            now_text = describe(kind, current) if current is not None else problem
            return finish.final(
                DRIFT,
                f"Nothing was changed on {where}: it changed since the warning "
                f"({attribute} is now {now_text}, approved was {describe(kind, before)}). "
                "Recheck it and decide again.",
                observed=current,
                from_states=[rs.CLAIMED],
                error=f"drift: expected {before}, found {current}",
            )
        if job["mode"] == DRY_RUN_MODE:
            return finish.final(
                DRY_RUN,
                f"Dry run on {where}: would change {attribute} {change_text(kind, before, after)}; "
                "nothing was written (AUTHGUARD_REMEDIATION_MODE=dry-run).",
                observed=current,
                from_states=[rs.CLAIMED],
            )
        # 3. write: the trace first, then one compare-and-swap modify
        if not finish.move([rs.CLAIMED], rs.WRITING):
            return finish.taken_over()
        write_error: WriteRefused | None = None
        try:
            directory.compare_and_swap(dn, attribute, before, after)
        except WriteRefused as exc:
            write_error = exc
        # 4. read back
        read_error: DirectoryError | None = None
        try:
            observed, _ = _read_flags(directory, dn, attribute)
        except DirectoryError as exc:
            observed, read_error = None, exc
    return finish.after_write(where, write_error, read_error, observed)


def _kind_of(attribute: str) -> str:
    for spec in KINDS.values():
        if spec.attribute.lower() == attribute.lower():
            return spec.key
    raise ValueError(attribute)  # pragma: no cover


class _Finisher:
    """Records a job's end in one transaction per step: job row, request row, audit log."""

    def __init__(
        self,
        store: Store,
        job: dict[str, Any],
        request: dict[str, Any] | None,
        actor: Actor,
        kind: str,
        approvals: tuple[Approval, ...],
    ) -> None:
        self.store, self.job, self.request, self.actor = store, job, request, actor
        self.kind, self.approvals = kind, approvals
        self.rollback = job["kind"] == "rollback"

    def _result(self, outcome: str, ok: bool, message: str, **fields: Any) -> JobResult:
        base = _base(self.request, self.job)
        base.update(fields)
        base.setdefault("target_kind", self.kind)
        return JobResult(outcome, ok, message, approvals=self.approvals, **base)

    def move(self, from_states: list[str], to_state: str, **fields: Any) -> bool:
        with self.store.transaction() as db:
            return rs.move_job(db, self.job["id"], from_states, to_state, **fields)

    def taken_over(self) -> JobResult:
        current = rs.get_job(self.store, self.job["id"]) or {}
        return self._result(
            FAILED,
            False,
            f"Job {self.job['id']} was settled elsewhere (now {current.get('state')}).",
        )

    def _log(self, db: Any, event: str, moment: datetime, **detail: Any) -> None:
        log.append_in(
            db,
            event,
            user_id=self.actor.user_id,
            user_name=self.actor.user_name,
            target_dn=self.job["dn"],
            before=self.job["before"],
            after=self.job["after"],
            job_id=self.job["id"],
            request_id=self.job["request_id"],
            detail={"kind": self.job["kind"], "mode": self.job["mode"], **detail},
            at=moment,
        )

    def _settle_request(
        self, db: Any, outcome: str, stamp: str, error: str | None, wrote: bool
    ) -> None:
        if self.request is None:
            return
        if self.rollback:
            if outcome == VERIFIED:
                rs.move_request(
                    db,
                    self.request["id"],
                    [rs.SUCCEEDED],
                    rs.ROLLED_BACK,
                    updated_at=stamp,
                )
            return
        status = _REQUEST_AFTER.get(outcome, rs.FAILED)
        if wrote and status == rs.FAILED:
            status = rs.DRIFT  # written, then read back as something else: needs a recheck
        rs.move_request(
            db,
            self.request["id"],
            [rs.RUNNING],
            status,
            updated_at=stamp,
            last_error=error,
        )

    def final(
        self,
        outcome: str,
        message: str,
        *,
        observed: int | None,
        from_states: list[str],
        error: str | None = None,
        wrote: bool = False,
        verified: bool = False,
        events: tuple[str, ...] | None = None,
        fields: dict[str, Any] | None = None,
    ) -> JobResult:
        """Finish the job in state ``outcome`` (a job state) with one audit-log row per event."""
        moment = utcnow()
        stamp = rs.iso(moment)
        state = {CONFLICT: rs.FAILED}.get(outcome, outcome)
        with self.store.transaction() as db:
            moved = rs.move_job(
                db,
                self.job["id"],
                from_states,
                state,
                observed=observed,
                verified=1 if verified else 0,
                error=error,
                finished_at=stamp,
                **{k: (stamp if v is _NOW else v) for k, v in (fields or {}).items()},
            )
            if not moved:
                return self.taken_over()
            self._settle_request(db, outcome, stamp, error, wrote)
            event = {
                VERIFIED: "verification",
                DRY_RUN: "dry_run",
                DRIFT: "drift",
                CONFLICT: "failure",
                FAILED: "failure",
            }.get(outcome, outcome)
            for name in events or (event,):
                self._log(
                    db,
                    name,
                    moment,
                    outcome=outcome,
                    observed=observed,
                    verified=verified,
                    error=error,
                )
        retryable = not self.rollback and not wrote and outcome in (FAILED, NOT_WRITTEN)
        return self._result(
            outcome,
            outcome in (VERIFIED, DRY_RUN),
            message,
            observed=observed,
            wrote=wrote,
            retryable=retryable,
            at=stamp,
            error=error,
        )

    def failed(
        self, message: str, *, error: str, observed: int | None, from_states: list[str]
    ) -> JobResult:
        return self.final(FAILED, message, observed=observed, from_states=from_states, error=error)

    def after_write(
        self,
        where: str,
        write_error: WriteRefused | None,
        read_error: DirectoryError | None,
        observed: int | None,
    ) -> JobResult:
        kind, before, after = self.kind, self.job["before"], self.job["after"]
        attribute = self.job["attribute"]
        change = change_text(kind, before, after)
        wrote_event = "rollback" if self.rollback else "write"
        verb = "Rolled back" if self.rollback else "Changed"
        if write_error is None:
            moment = utcnow()
            with self.store.transaction() as db:
                if not rs.move_job(db, self.job["id"], [rs.WRITING], rs.WRITTEN):
                    return self.taken_over()
                self._log(db, wrote_event, moment, outcome="written", result_code=0)
            if observed == after:
                return self.final(
                    VERIFIED,
                    f"{verb} {where}: {attribute} {change}, verified by reading it back.",
                    observed=observed,
                    from_states=[rs.WRITTEN],
                    wrote=True,
                    verified=True,
                )
            if read_error is not None:
                self._log_unknown(str(read_error), written=True)
                return self._result(
                    UNKNOWN,
                    False,
                    f"The directory accepted the change on {where}, but reading it back failed "
                    f"({read_error}); authguard will verify it when it reconciles.",
                    wrote=True,
                    error=str(read_error),
                )
            return self.final(
                FAILED,
                f"The directory accepted the change on {where}, but reading it back shows "
                f"{describe(kind, observed)} instead of {describe(kind, after)}: someone changed "
                "it again. Recheck it.",
                observed=observed,
                from_states=[rs.WRITTEN],
                wrote=True,
                error=f"verification failed: read back {observed}, expected {after}",
            )
        code = write_error.code
        error = f"{write_error} (LDAP result {code})" if code is not None else str(write_error)
        if observed == before:
            return self.final(
                FAILED,
                f"Nothing was changed on {where}: {write_error}. The change can be retried.",
                observed=observed,
                from_states=[rs.WRITING],
                error=error,
            )
        if observed == after and code is None:
            # the modify landed but its answer was lost
            return self.final(
                VERIFIED,
                f"{verb} {where}: {attribute} {change}, verified by reading it back "
                "(the directory's answer to the modify was lost).",
                observed=observed,
                from_states=[rs.WRITING],
                wrote=True,
                verified=True,
                error=error,
                events=(wrote_event, "verification"),
            )
        if read_error is not None:
            self._log_unknown(f"{error}; read back failed: {read_error}", written=False)
            return self._result(
                UNKNOWN,
                False,
                f"The change on {where} may or may not have been applied ({write_error}; "
                f"reading it back failed: {read_error}). authguard will settle it from the "
                "directory when it reconciles; it will not write again.",
                error=error,
            )
        return self.final(
            CONFLICT,
            f"Nothing was changed on {where}: the directory refused the change because "
            f"{attribute} moved to {describe(kind, observed)} while the job ran "
            f"(LDAP result {code}). Recheck it and decide again.",
            observed=observed,
            from_states=[rs.WRITING],
            error=error,
        )

    def _log_unknown(self, error: str, written: bool) -> None:
        moment = utcnow()
        with self.store.transaction() as db:
            rs.note_job_error(db, self.job["id"], error)
            self._log(db, "failure", moment, outcome=UNKNOWN, written=written, error=error)


# -- rollback ---------------------------------------------------------------------------------


def rollback(
    settings: Settings,
    store: Store,
    open_directory: OpenDirectory,
    job_id: int,
    actor: Actor,
    *,
    now: datetime | None = None,
) -> JobResult:
    """Restore the value a verified fix job replaced, with the same compare-and-swap discipline.

    The current value must still be the job's ``after`` (otherwise: ``drift``, nothing
    written). Refused for a dry run, a job that changed nothing, a rollback job, and a job that
    was already rolled back. In dry-run mode every step but the write runs. Logged.
    """
    moment = now or utcnow()
    try:
        job, request = _claim_rollback(settings, store, job_id, actor, moment)
    except _Refusal as refusal:
        return refusal.result
    return _execute(store, open_directory, job, request, actor)


def _claim_rollback(
    settings: Settings, store: Store, job_id: int, actor: Actor, moment: datetime
) -> tuple[dict[str, Any], dict[str, Any] | None]:
    stamp = rs.iso(moment)
    with store.transaction() as db:
        original = rs.get_job(db, job_id)
        if original is None:
            raise _refuse(NOT_FOUND, f"There is no job {job_id}.")
        request = rs.get_request(db, original["request_id"]) if original["request_id"] else None
        base = _base(request, original)
        base["rolls_back_job_id"] = original["id"]
        if original["kind"] != "fix":
            raise _refuse(
                REFUSED, f"Job {job_id} is itself a rollback; it cannot be rolled back.", **base
            )
        if original["mode"] == DRY_RUN_MODE or original["state"] == rs.DRY_RUN:
            raise _refuse(
                REFUSED, f"Job {job_id} was a dry run: it wrote nothing to roll back.", **base
            )
        if original["state"] in rs.UNFINISHED:
            raise _refuse(REFUSED, f"Job {job_id} has not finished ({original['state']}).", **base)
        if original["state"] != rs.VERIFIED:
            raise _refuse(
                REFUSED,
                f"Job {job_id} did not change the directory (it ended {original['state']}): "
                "there is nothing to roll back.",
                **base,
            )
        for earlier in rs.rollbacks_of(db, original["id"]):
            if earlier["state"] == rs.VERIFIED:
                raise _refuse(
                    REFUSED,
                    f"Job {job_id} was already rolled back by job {earlier['id']}.",
                    **base,
                )
        job = _insert_claimed_job(
            db,
            settings,
            actor,
            stamp,
            base,
            request_id=original["request_id"],
            kind="rollback",
            target_key=original["target_key"],
            dn=original["dn"],
            attribute=original["attribute"],
            before=original["after"],
            after=original["before"],
            rolls_back_job_id=original["id"],
        )
        _log_started(db, job, actor, moment)
        return job, request


# -- reconciliation ---------------------------------------------------------------------------


def reconcile_unfinished(
    settings: Settings,
    store: Store,
    open_directory: OpenDirectory,
    *,
    is_alive: Callable[[dict[str, Any]], bool] | None = None,
    now: datetime | None = None,
) -> list[JobResult]:
    """Settle jobs left ``claimed``/``writing``/``written`` by a process that is gone.

    Call it at start-up (and, if you like, now and then). For each abandoned job it re-reads the
    directory and records what actually happened, never writing anything:

    - value == the job's ``after``: the write landed -> ``verified`` (request ``succeeded``);
    - value == ``before``: it never landed -> ``not_written`` (request ``failed``, retryable);
    - anything else: ``drift`` (request ``drift``).

    A job only ``claimed`` never sent its modify (``writing`` is recorded first), so it is
    ``not_written`` or ``drift``. ``is_alive(job)`` decides whether the owner may still be
    working (default :func:`owner_alive`); such jobs are left alone. A directory that cannot be
    read gives ``unavailable`` results and leaves the jobs for the next call.
    """
    moment = now or utcnow()
    alive = is_alive or (lambda job: owner_alive(job, moment))
    abandoned = [job for job in rs.unfinished_jobs(store) if not alive(job)]
    if not abandoned:
        return []
    actor = Actor.system("reconcile")
    results: list[JobResult] = []
    try:
        directory = open_directory()
    except (DirectoryError, ConfigError, OSError) as exc:
        return [
            JobResult(
                UNAVAILABLE,
                False,
                f"Job {job['id']} is unfinished and the directory cannot be read ({exc}); "
                "it will be reconciled later.",
                **_base(
                    rs.get_request(store, job["request_id"]) if job["request_id"] else None, job
                ),
                error=str(exc),
            )
            for job in abandoned
        ]
    with directory:
        for job in abandoned:
            results.append(_reconcile_one(store, directory, job, actor))
    return results


def _reconcile_one(
    store: Store, directory: Directory, job: dict[str, Any], actor: Actor
) -> JobResult:
    request = rs.get_request(store, job["request_id"]) if job["request_id"] else None
    kind = request["kind"] if request else _kind_of(job["attribute"])
    finish = _Finisher(store, job, request, actor, kind, ())
    where = f"{request['server']} / {request['name']}" if request else job["dn"]
    try:
        current, problem = _read_flags(directory, job["dn"], job["attribute"])
    except DirectoryError as exc:
        return finish._result(
            UNAVAILABLE,
            False,
            f"Job {job['id']} is unfinished and {where} cannot be read ({exc}); it will be "
            "reconciled later.",
            error=str(exc),
        )
    before, after, state = job["before"], job["after"], job["state"]
    sent = state in (rs.WRITING, rs.WRITTEN)
    if sent and current == after:
        outcome, message = (
            VERIFIED,
            f"Job {job['id']} on {where} was interrupted; the directory shows its change landed "
            f"({change_text(kind, before, after)}): recorded as verified.",
        )
    elif current == before:
        outcome, message = (
            NOT_WRITTEN,
            f"Job {job['id']} on {where} was interrupted before its change landed: nothing was "
            "changed; the change can be retried.",
        )
    else:
        shown = describe(kind, current) if current is not None else problem
        outcome, message = (
            DRIFT,
            f"Job {job['id']} on {where} was interrupted and the target now shows {shown} "
            f"(neither {before} nor {after}): recorded as drift; recheck it.",
        )
    result = finish.final(
        outcome,
        message,
        observed=current,
        from_states=[state],
        wrote=outcome == VERIFIED,
        verified=outcome == VERIFIED,
        error=f"reconciled from {state}",
        events=("reconcile",),
        fields={"reconciled_at": _NOW},
    )
    return result
