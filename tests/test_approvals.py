"""Fix requests and approvals, without a directory: who may approve, how many, for how long.

The jobs that follow an approval are tested against a real slapd in test_remediation_slapd.py.
"""

from __future__ import annotations

import json
import threading
from datetime import UTC, datetime, timedelta

import pytest

from bot.config import Settings
from bot.remediation import (
    APPROVED,
    CLOSED,
    DENIED,
    DUPLICATE,
    EXPIRED,
    NO_APPROVERS,
    NOT_APPROVED,
    NOT_FOUND,
    RECORDED,
    Actor,
    RequestRefused,
    approve,
    create_request,
    describe_change,
    expire_requests,
    get_request,
    run_job,
)
from storage import open_store
from storage.audit_log import verify_log

T0 = datetime(2026, 11, 28, 9, 0, tzinfo=UTC)
DN = "CN=1,CN=SMTP,CN=Protocols,CN=EX01,CN=Servers,CN=AG,CN=Administrative Groups,CN=Org"


def target(flags=7, kind="smtp_virtual_server", dn=DN, name="Default SMTP Virtual Server"):
    """A stored target row as storage.audits.current_targets returns it (the fields used)."""
    return {
        "target_key": dn.lower(),
        "dn": dn,
        "server": "EX01",
        "kind": kind,
        "name": name,
        "flags": flags,
        "audit_id": 1,
        "verdict": "warning",
    }


@pytest.fixture
def settings():
    return Settings(approvers=("U1", "U2", "S0GROUP"), approvals_required=1)


@pytest.fixture
def store(tmp_path):
    store = open_store(str(tmp_path / "authguard.db"))
    yield store
    store.close()


def events(store):
    return [(r["event"], r["user_id"]) for r in store.db["audit_log"].rows_where(order_by="id")]


def unreachable():
    raise AssertionError("no directory may be opened here")


# -- requests -------------------------------------------------------------------------------


def test_a_fix_request_clears_basic_and_gets_an_opaque_id(settings, store):
    request = create_request(settings, store, target(7), "fix", channel="C1", message_ts="1.2")
    assert (request["flags_before"], request["flags_after"]) == (7, 5)
    assert request["status"] == "pending" and request["required_approvals"] == 1
    assert "CN=" not in request["id"] and "7" != request["id"] and len(request["id"]) >= 20
    assert describe_change(request) == (
        "EX01 / Default SMTP Virtual Server (SMTP virtual server): turn off Basic "
        "authentication: msExchAuthenticationFlags 7 (Anonymous, Basic, Integrated Windows) "
        "-> 5 (Anonymous, Integrated Windows)"
    )


def test_a_connector_fix_clears_basicauth_and_basicauthrequiretls(settings, store):
    request = create_request(settings, store, target(31, "receive_connector"), "fix")
    assert (request["flags_before"], request["flags_after"]) == (31, 19)


def test_require_tls_keeps_basic_and_sets_basicauthrequiretls(settings, store):
    request = create_request(settings, store, target(5, "receive_connector"), "require_tls")
    assert (request["flags_before"], request["flags_after"]) == (5, 13)


@pytest.mark.parametrize(
    ("row", "action", "why"),
    [
        (target(2), "fix", "would leave none"),  # Basic is the only method
        (target(5), "fix", "already off"),
        (target(None), "fix", "could not be read"),
        (target(7), "require_tls", "does not record a TLS requirement"),
        (target(4, "receive_connector"), "require_tls", "Tls bit is clear"),
        (target(13, "receive_connector"), "require_tls", "already set"),
        (target(7), "delete", "unknown action"),
    ],
)
def test_requests_that_are_not_offered(settings, store, row, action, why):
    with pytest.raises(RequestRefused, match=why):
        create_request(settings, store, row, action)
    assert store.db["fix_requests"].count == 0


def test_the_same_pending_change_reuses_its_request(settings, store):
    first = create_request(settings, store, target(7), "fix", channel="C1", message_ts="1.1")
    again = create_request(settings, store, target(7), "fix", channel="C1", message_ts="2.2")
    assert again["id"] == first["id"]
    assert again["message_ts"] == "2.2"  # the outcome goes to the newest warning message
    assert store.db["fix_requests"].count == 1


def test_a_changed_target_supersedes_the_older_request(settings, store):
    old = create_request(settings, store, target(7), "fix")
    new = create_request(settings, store, target(3), "fix")
    assert new["id"] != old["id"]
    assert get_request(store, old["id"])["status"] == "superseded"
    result = approve(settings, store, old["id"], "U1", "alice", is_approver=True)
    assert result.outcome == CLOSED and "newer warning" in result.message


def test_a_replaced_request_whose_time_ran_out_is_expired_not_superseded(settings, store):
    old = create_request(settings, store, target(7), "fix", now=T0)
    create_request(settings, store, target(7), "fix", now=T0 + timedelta(hours=80))
    assert get_request(store, old["id"])["status"] == "expired"


def test_a_waive_anchor_is_not_approved(settings, store):
    anchor = create_request(settings, store, target(7), "waive")
    assert (anchor["flags_before"], anchor["flags_after"]) == (7, 7)
    result = approve(settings, store, anchor["id"], "U1", "alice", is_approver=True)
    assert result.outcome == CLOSED and "reason and an expiry" in result.message
    unreadable = create_request(settings, store, target(None, dn=DN + "x"), "waive")
    assert unreadable["flags_before"] is None
    assert (
        create_request(settings, store, target(None, dn=DN + "x"), "waive")["id"]
        == (unreadable["id"])
    )


# -- approvals ------------------------------------------------------------------------------


def test_an_approver_approves_and_the_job_may_run(settings, store):
    request = create_request(settings, store, target(7), "fix")
    result = approve(settings, store, request["id"], "U1", "alice", is_approver=True)
    assert (result.outcome, result.ready, result.approver_names) == (APPROVED, True, ["alice"])
    assert get_request(store, request["id"])["status"] == "approved"
    assert events(store)[-1] == ("approval", "U1")


def test_a_non_approver_changes_nothing_and_is_logged(settings, store):
    request = create_request(settings, store, target(7), "fix")
    result = approve(settings, store, request["id"], "U666", "mallory", is_approver=False)
    assert (result.outcome, result.ready) == (DENIED, False)
    assert result.message == "You are not an approver for authguard."
    assert get_request(store, request["id"])["status"] == "pending"
    assert store.db["approvals"].count == 0
    denial = list(store.db["audit_log"].rows_where("event = 'denial'"))[0]
    assert (denial["user_id"], denial["target_dn"]) == ("U666", DN)
    job = run_job(settings, store, unreachable, request["id"], Actor("U666", "mallory"))
    assert job.outcome == NOT_APPROVED and not job.wrote


def test_no_configured_approvers_means_nobody(store):
    settings = Settings(approvers=())
    request = create_request(settings, store, target(7), "fix")
    result = approve(settings, store, request["id"], "U1", "alice", is_approver=True)
    assert result.outcome == NO_APPROVERS
    assert "no approvers are configured" in result.message
    assert get_request(store, request["id"])["status"] == "pending"
    assert events(store)[-1] == ("denial", "U1")


def test_two_approvers_required_and_the_same_one_twice_counts_once(settings, store):
    settings = Settings(approvers=("U1", "U2"), approvals_required=2)
    request = create_request(settings, store, target(7), "fix")
    first = approve(settings, store, request["id"], "U1", "alice", is_approver=True)
    assert (first.outcome, first.ready) == (RECORDED, False)
    assert "1 of 2 approvals (alice)" in first.message
    twice = approve(settings, store, request["id"], "U1", "alice", is_approver=True)
    assert (twice.outcome, twice.ready) == (DUPLICATE, False)
    assert "waiting for 1 more approver" in twice.message
    job = run_job(settings, store, unreachable, request["id"], Actor("U1", "alice"))
    assert job.outcome == NOT_APPROVED
    second = approve(settings, store, request["id"], "U2", "bob", is_approver=True)
    assert (second.outcome, second.ready) == (APPROVED, True)
    assert second.approver_names == ["alice", "bob"]


def test_raising_the_requirement_applies_to_pending_requests(store):
    request = create_request(Settings(approvers=("U1", "U2")), store, target(7), "fix")
    stricter = Settings(approvers=("U1", "U2"), approvals_required=2)
    assert approve(stricter, store, request["id"], "U1", "a", is_approver=True).outcome == RECORDED


def test_two_approvers_clicking_together_make_one_ready(settings, tmp_path):
    path = str(tmp_path / "race.db")
    request = create_request(settings, open_store(path), target(7), "fix")
    barrier = threading.Barrier(2)
    results = []

    def click(user):
        store = open_store(path)
        barrier.wait()
        results.append(approve(settings, store, request["id"], user, user, is_approver=True))

    threads = [threading.Thread(target=click, args=(u,)) for u in ("U1", "U2")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(r.outcome for r in results) == [APPROVED, CLOSED]
    assert [r.ready for r in results].count(True) == 1


def test_an_unknown_request_is_not_found(settings, store):
    result = approve(settings, store, "no-such-id", "U1", "alice", is_approver=True)
    assert result.outcome == NOT_FOUND
    assert run_job(settings, store, unreachable, "no-such-id", Actor("U1", "a")).outcome == (
        NOT_FOUND
    )


def test_an_expired_request_says_so_and_is_logged(settings, store):
    request = create_request(settings, store, target(7), "fix", now=T0)
    late = T0 + timedelta(hours=settings.approval_ttl_hours)
    result = approve(settings, store, request["id"], "U1", "alice", is_approver=True, now=late)
    assert result.outcome == EXPIRED and "expired" in result.message
    assert get_request(store, request["id"])["status"] == "expired"
    assert events(store)[-1] == ("expired", "U1")
    # a fresh request can be made for the same target afterwards
    fresh = create_request(settings, store, target(7), "fix", now=late)
    assert fresh["id"] != request["id"]


def test_an_approved_request_expires_before_its_job_runs(settings, store):
    request = create_request(settings, store, target(7), "fix", now=T0)
    approve(settings, store, request["id"], "U1", "alice", is_approver=True, now=T0)
    late = T0 + timedelta(hours=73)
    job = run_job(settings, store, unreachable, request["id"], Actor("U1", "a"), now=late)
    assert job.outcome == EXPIRED


def test_the_sweeper_expires_stale_requests(settings, store):
    stale = create_request(settings, store, target(7), "fix", now=T0)
    fresh_dn = DN.replace("CN=1,", "CN=2,")
    fresh = create_request(settings, store, target(7, dn=fresh_dn), "fix", now=T0 + timedelta(2))
    expired = expire_requests(store, now=T0 + timedelta(hours=80))
    assert [r["id"] for r in expired] == [stale["id"]]
    assert get_request(store, fresh["id"])["status"] == "pending"


def test_every_step_is_in_a_verifiable_log(settings, store):
    request = create_request(settings, store, target(7), "fix", created_by="audit 1")
    approve(settings, store, request["id"], "U9", "eve", is_approver=False)
    approve(settings, store, request["id"], "U1", "alice", is_approver=True)
    assert [e for e, _ in events(store)] == ["request", "denial", "approval"]
    detail = json.loads(list(store.db["audit_log"].rows_where("event = 'approval'"))[0]["detail"])
    assert detail["approved_by"] == ["U1"] and detail["counted"] is True
    assert verify_log(store)[0] is True
