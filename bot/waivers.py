"""Waivers: an approver accepts the risk on one target, with a reason, until a date.

While a waiver runs, an audit turns that target's ``warning`` or ``unknown`` verdict into
``waived`` (reason ``"waived by alice until 2027-02-26: partner company needs Basic"``). When it
expires, the next audit shows the warning again. Nothing is written to the directory.

    waiver = grant_waiver(settings, store, target_row, "partner company needs Basic", days=90,
                          user_id="U123", user_name="alice", is_approver=True)
    run = run_audit(settings, store, open_directory, "schedule",
                    override=waiver_override(store))

``target_row`` is a stored target row (``storage.audits.current_targets``) or a fix request
(``bot.remediation.get_request``): both carry ``target_key``, ``dn``, ``server``, ``kind`` and
``name``. Every grant, refusal and revocation is written to the audit log.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from bot.config import Settings
from bot.directory import dn_key
from bot.rules import OPEN_VERDICTS, WAIVED
from storage import Store
from storage import audit_log as log
from storage import remediation as rs
from storage import waivers as ws

DEFAULT_DAYS, MAX_DAYS, MAX_REASON = 90, 365, 500
# a judged row -> the verdict and reason to store instead, or None (bot.audit.run_audit)
Override = Callable[[dict[str, Any]], tuple[str, str] | None]


class WaiverRefused(ValueError):
    """Bad input (no reason, too long, days out of range) or an unknown/revoked waiver."""


class NotAuthorized(PermissionError):
    """The user may not grant or revoke waivers (not an approver, or none configured)."""


def _now(now: datetime | None) -> datetime:
    return now or datetime.now(UTC)


def _check_approver(
    settings: Settings,
    store: Store,
    is_approver: bool,
    user_id: str | None,
    user_name: str | None,
    target_dn: str | None,
    step: str,
    moment: datetime,
) -> None:
    if settings.approvers and is_approver:
        return
    reason = "no approvers are configured" if not settings.approvers else "not an approver"
    log.log_denial(
        store,
        user_id=user_id,
        user_name=user_name,
        reason=reason,
        target_dn=target_dn,
        at=moment,
        step=step,
    )
    if not settings.approvers:
        raise NotAuthorized(
            "Nobody can accept risks: no approvers are configured (set AUTHGUARD_APPROVERS)."
        )
    raise NotAuthorized("You are not an approver for authguard.")


def validate(reason: Any, days: Any) -> tuple[str, int]:
    """The cleaned ``(reason, days)``; :class:`WaiverRefused` with a sentence otherwise.

    >>> validate("  partner needs Basic ", 30)
    ('partner needs Basic', 30)
    """
    text = reason.strip() if isinstance(reason, str) else ""
    if not text:
        raise WaiverRefused("give a reason for accepting the risk")
    if len(text) > MAX_REASON:
        raise WaiverRefused(
            f"the reason is too long ({len(text)} characters, at most {MAX_REASON})"
        )
    if isinstance(days, bool):
        raise WaiverRefused(f"the expiry must be a number of days from 1 to {MAX_DAYS}")
    try:
        count = int(str(days).strip())
    except ValueError:
        raise WaiverRefused(f"the expiry must be a number of days from 1 to {MAX_DAYS}") from None
    if not 1 <= count <= MAX_DAYS:
        raise WaiverRefused(f"the expiry must be from 1 to {MAX_DAYS} days (got {count})")
    return text, count


def grant_waiver(
    settings: Settings,
    store: Store,
    target_row: dict[str, Any],
    reason: str,
    days: int = DEFAULT_DAYS,
    user_id: str | None = None,
    user_name: str | None = None,
    *,
    is_approver: bool,
    now: datetime | None = None,
) -> dict[str, Any]:
    """Accept the risk on one target for ``days`` (1 to 365, default 90); return the waiver row.

    ``is_approver`` is the caller's verdict, as for approvals; raises :class:`NotAuthorized`
    (logged as a denial) when false or when no approvers are configured, and
    :class:`WaiverRefused` for bad input. A new waiver replaces (revokes) an active one on the
    same target.
    """
    moment = _now(now)
    _check_approver(
        settings, store, is_approver, user_id, user_name, target_row.get("dn"), "waiver", moment
    )
    text, count = validate(reason, days)
    stamp = rs.iso(moment)
    target_key = target_row.get("target_key") or dn_key(target_row["dn"])
    with store.transaction() as db:
        replaced = []
        for old in ws.active_for_target(db, target_key, stamp):
            if ws.revoke(db, old["id"], stamp, user_id, user_name):
                replaced.append(old["id"])
        waiver = ws.insert_waiver(
            db,
            {
                "target_key": target_key,
                "dn": target_row["dn"],
                "server": target_row.get("server"),
                "kind": target_row.get("kind"),
                "name": target_row.get("name"),
                "reason": text,
                "created_by_id": user_id,
                "created_by_name": user_name,
                "created_at": stamp,
                "expires_at": rs.iso(moment + timedelta(days=count)),
            },
        )
        log.append_in(
            db,
            "waiver",
            user_id=user_id,
            user_name=user_name,
            target_dn=waiver["dn"],
            detail={
                "waiver_id": waiver["id"],
                "server": waiver["server"],
                "name": waiver["name"],
                "reason": text,
                "days": count,
                "expires_at": waiver["expires_at"],
                "replaced": replaced,
            },
            at=moment,
        )
    return waiver


def revoke_waiver(
    settings: Settings,
    store: Store,
    waiver_id: int,
    user_id: str | None,
    user_name: str | None,
    *,
    is_approver: bool,
    now: datetime | None = None,
) -> dict[str, Any]:
    """End a waiver now (the next audit shows the warning again); return the updated row."""
    moment = _now(now)
    stamp = rs.iso(moment)
    waiver = ws.get_waiver(store, waiver_id)
    _check_approver(
        settings,
        store,
        is_approver,
        user_id,
        user_name,
        waiver["dn"] if waiver else None,
        "waiver_revoke",
        moment,
    )
    with store.transaction() as db:
        waiver = ws.get_waiver(db, waiver_id)
        if waiver is None:
            raise WaiverRefused(f"there is no waiver {waiver_id}")
        if not ws.revoke(db, waiver["id"], stamp, user_id, user_name):
            raise WaiverRefused(f"waiver {waiver_id} was already revoked")
        log.append_in(
            db,
            "waiver_revoked",
            user_id=user_id,
            user_name=user_name,
            target_dn=waiver["dn"],
            detail={"waiver_id": waiver["id"], "expires_at": waiver["expires_at"]},
            at=moment,
        )
        return ws.get_waiver(db, waiver["id"]) or waiver


def active_waivers(store: Store, now: datetime | None = None) -> list[dict[str, Any]]:
    """Waivers in force at ``now`` (default: the current time), by server then DN."""
    return ws.active_waivers(store, rs.iso(_now(now)))


def waiver_text(waiver: dict[str, Any]) -> str:
    """``"waived by alice until 2027-02-26: partner company needs Basic"``."""
    who = waiver.get("created_by_name") or waiver.get("created_by_id") or "someone"
    until = rs.parse_iso(waiver["expires_at"]).date().isoformat()
    return f"waived by {who} until {until}: {waiver['reason']}"


def waiver_override(store: Store, now: datetime | None = None) -> Override:
    """An ``override`` for :func:`bot.audit.run_audit` that applies the waivers in force.

    The waivers are read once, when this is called (at the start of a run); ``now`` is the
    moment they are judged at (inject it in tests instead of sleeping). Only ``warning`` and
    ``unknown`` rows become ``waived``; ``ok`` and ``exempt`` stay as they are.
    """
    by_target: dict[str, dict[str, Any]] = {}
    for waiver in active_waivers(store, now):
        current = by_target.get(waiver["target_key"])
        if current is None or waiver["expires_at"] > current["expires_at"]:
            by_target[waiver["target_key"]] = waiver

    def override(row: dict[str, Any]) -> tuple[str, str] | None:
        if row.get("verdict") not in OPEN_VERDICTS:
            return None
        waiver = by_target.get(row.get("target_key") or "")
        if waiver is None:
            return None
        return WAIVED, waiver_text(waiver)

    return override
