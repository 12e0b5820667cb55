"""Waivers: an approver accepts the risk on one target until a date; then the warning is back.

The audits run against the shared slapd, read-only. Time is injected (``now=``), never slept.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from bot.audit import run_audit
from bot.config import Secret, Settings
from bot.directory import connect
from bot.waivers import (
    NotAuthorized,
    WaiverRefused,
    active_waivers,
    grant_waiver,
    revoke_waiver,
    validate,
    waiver_override,
)
from storage import open_store
from storage.audit_log import verify_log
from storage.audits import current_targets

T0 = datetime(2026, 11, 28, 9, 0, tzinfo=UTC)
ROW = {
    "target_key": "cn=1,cn=smtp,cn=ex01",
    "dn": "CN=1,CN=SMTP,CN=EX01",
    "server": "EX01",
    "kind": "smtp_virtual_server",
    "name": "Default SMTP Virtual Server",
    "flags": 7,
}


@pytest.fixture
def settings():
    return Settings(approvers=("U1",))


@pytest.fixture
def store(tmp_path):
    store = open_store(str(tmp_path / "authguard.db"))
    yield store
    store.close()


def grant(settings, store, row=ROW, reason="partner company needs Basic", days=90, **kw):
    kw.setdefault("is_approver", True)
    kw.setdefault("now", T0)
    return grant_waiver(settings, store, row, reason, days, "U1", "alice", **kw)


def test_a_waiver_runs_for_its_days(settings, store):
    waiver = grant(settings, store, days=90)
    assert waiver["expires_at"].startswith("2027-02-26T09:00")
    assert [w["id"] for w in active_waivers(store, T0 + timedelta(days=89))] == [waiver["id"]]
    assert active_waivers(store, T0 + timedelta(days=90)) == []


def test_the_override_waives_warnings_and_unknowns_only(settings, store):
    grant(settings, store)
    override = waiver_override(store, now=T0 + timedelta(days=1))
    row = {"target_key": ROW["target_key"], "verdict": "warning"}
    assert override(row) == (
        "waived",
        "waived by alice until 2027-02-26: partner company needs Basic",
    )
    assert override({**row, "verdict": "unknown"})[0] == "waived"
    assert override({**row, "verdict": "ok"}) is None
    assert override({**row, "verdict": "exempt"}) is None
    assert override({"target_key": "cn=other", "verdict": "warning"}) is None
    assert waiver_override(store, now=T0 + timedelta(days=91))(row) is None


@pytest.mark.parametrize(
    ("reason", "days", "why"),
    [
        ("", 90, "give a reason"),
        ("   ", 90, "give a reason"),
        (None, 90, "give a reason"),
        ("x" * 501, 90, "too long"),
        ("ok", 0, "from 1 to 365"),
        ("ok", 366, "from 1 to 365"),
        ("ok", "soon", "number of days"),
        ("ok", True, "number of days"),
    ],
)
def test_bad_input_is_refused(settings, store, reason, days, why):
    with pytest.raises(WaiverRefused, match=why):
        grant(settings, store, reason=reason, days=days)
    assert store.db["waivers"].count == 0


def test_the_limits_are_accepted():
    assert validate("x" * 500, 365) == ("x" * 500, 365)
    assert validate(" why ", "1") == ("why", 1)


def test_only_approvers_may_accept_a_risk_and_refusals_are_logged(settings, store):
    with pytest.raises(NotAuthorized, match="not an approver"):
        grant(settings, store, is_approver=False)
    with pytest.raises(NotAuthorized, match="no approvers are configured"):
        grant(Settings(approvers=()), store)
    assert store.db["waivers"].count == 0
    assert [r["event"] for r in store.db["audit_log"].rows_where()] == ["denial", "denial"]


def test_a_new_waiver_replaces_the_active_one(settings, store):
    first = grant(settings, store, days=30)
    second = grant(settings, store, reason="extended", days=60, now=T0 + timedelta(days=10))
    active = active_waivers(store, T0 + timedelta(days=11))
    assert [w["id"] for w in active] == [second["id"]]
    assert first["id"] != second["id"]


def test_revoking_ends_a_waiver_now(settings, store):
    waiver = grant(settings, store)
    revoked = revoke_waiver(
        settings, store, waiver["id"], "U1", "alice", is_approver=True, now=T0 + timedelta(1)
    )
    assert revoked["revoked_at"].startswith("2026-11-29")
    assert active_waivers(store, T0 + timedelta(days=2)) == []
    with pytest.raises(WaiverRefused, match="already revoked"):
        revoke_waiver(settings, store, waiver["id"], "U1", "alice", is_approver=True)
    events = [r["event"] for r in store.db["audit_log"].rows_where(order_by="id")]
    assert events == ["waiver", "waiver_revoked"]
    assert verify_log(store)[0] is True


def test_an_expired_waiver_turns_the_warning_back_on_at_the_next_audit(slapd, store):
    settings = Settings(
        ldap_url=slapd.ldaps_url,
        ldap_ca_file=str(slapd.ca_file),
        ldap_bind_dn=slapd.ro_dn,
        ldap_password=Secret(slapd.ro_password),
        approvers=("U1",),
    )

    def open_directory():
        return connect(settings)

    def audit(now):
        return run_audit(
            settings, store, open_directory, "schedule", override=waiver_override(store, now=now)
        )

    first = audit(T0)
    row = next(r for r in current_targets(store, "EX2003-02") if r["verdict"] == "warning")
    grant_waiver(settings, store, row, "partner company needs Basic", 30, "U1", "alice",
                 is_approver=True, now=T0)  # fmt: skip

    during = audit(T0 + timedelta(days=29))
    waived = current_targets(store, "EX2003-02")[0]
    assert (waived["verdict"], waived["reason"]) == (
        "waived",
        "waived by alice until 2026-12-28: partner company needs Basic",
    )
    assert (during["waived"], during["warning"]) == (1, first["warning"] - 1)

    after = audit(T0 + timedelta(days=30))
    assert current_targets(store, "EX2003-02")[0]["verdict"] == "warning"
    assert (after["waived"], after["warning"]) == (0, first["warning"])
