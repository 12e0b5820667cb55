"""The remediation job against a real OpenLDAP: approved, atomic, verified, logged, recoverable.

This module runs its own slapd (its own small forest), because it writes; the service account
may write only the two flag attributes, as the README asks of an AD delegation. Every test starts
from the forest's original flags. ``Spy`` opens real connections and counts the modifies that
authguard sends; it can also play a concurrent writer or a crash right before a modify.
"""

from __future__ import annotations

import os
import socket
import sqlite3
import threading
from dataclasses import replace

import ldap3
import pytest
from click.testing import CliRunner

from bot.audit import run_audit
from bot.cli import main
from bot.config import Secret, Settings
from bot.directory import DirectoryError, WriteRefused, connect
from bot.remediation import (
    ALREADY_DONE,
    ALREADY_RUNNING,
    APPROVED,
    BUSY,
    CONFLICT,
    DENIED,
    DRIFT,
    DRY_RUN,
    FAILED,
    NOT_APPROVED,
    NOT_WRITTEN,
    RECORDED,
    REFUSED,
    UNKNOWN,
    VERIFIED,
    Actor,
    RequestRefused,
    approve,
    create_request,
    get_request,
    reconcile_unfinished,
    rollback,
    run_job,
)
from storage import open_store
from storage import remediation as rs
from storage.audit_log import verify_log
from storage.audits import current_targets
from tests.forest import ServerSpec, connector_dn, vserver_dn
from tests.slapd_server import private_slapd

EX16_AG = "Exchange Administrative Group (FYDIBOHF23SPDLT)"
SERVERS = (
    ServerSpec("EXA", smtp_flags=[7]),  # Anonymous + Basic + Integrated: fix -> 5
    ServerSpec("EXB", smtp_flags=[6]),  # Basic + Integrated: fix -> 4
    ServerSpec("EXONLY", smtp_flags=[2]),  # Basic only: no fix button
    ServerSpec(
        "EX16",
        admin_group=EX16_AG,
        serial="Version 15.1 (Build 2507.6)",
        connectors=[("Client Frontend EX16", 5), ("Default EX16", 31)],
    ),
)
SMTP, RECV = "msExchAuthenticationFlags", "msExchSMTPReceiveInboundSecurityFlag"
ORIGINAL = {
    vserver_dn(SERVERS[0]): (SMTP, 7),
    vserver_dn(SERVERS[1]): (SMTP, 6),
    vserver_dn(SERVERS[2]): (SMTP, 2),
    connector_dn(SERVERS[3], "Client Frontend EX16"): (RECV, 5),
    connector_dn(SERVERS[3], "Default EX16"): (RECV, 31),
}
EXA, EXB = vserver_dn(SERVERS[0]), vserver_dn(SERVERS[1])
FRONTEND = connector_dn(SERVERS[3], "Client Frontend EX16")
DEFAULT16 = connector_dn(SERVERS[3], "Default EX16")
ALICE, BOB = Actor("U1", "alice"), Actor("U2", "bob")


class SimulatedCrash(BaseException):
    """The process dies (not an Exception: nothing in authguard may catch it)."""


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with private_slapd(tmp_path_factory, "remediation-slapd", SERVERS) as slapd:
        yield slapd


@pytest.fixture(autouse=True)
def original_flags(server):
    """Every test starts from the forest's flags."""
    for dn, (attribute, value) in ORIGINAL.items():
        server.modify(dn, {attribute: [(ldap3.MODIFY_REPLACE, [str(value)])]})


@pytest.fixture
def db_path(tmp_path):
    return str(tmp_path / "authguard.db")


@pytest.fixture
def settings(server, db_path):
    return Settings(
        ldap_url=server.ldaps_url,
        ldap_ca_file=str(server.ca_file),
        ldap_bind_dn=server.svc_dn,
        ldap_password=Secret(server.svc_password),
        approvers=("U1", "U2"),
        db=db_path,
    )


@pytest.fixture
def store(db_path):
    store = open_store(db_path)
    yield store
    store.close()


class Spy:
    """Opens real directory connections; records each compare-and-swap authguard sends.

    ``before_write(dn, attribute, old, new)`` runs right before the modify goes out;
    ``crash`` is ``"before"`` or ``"after"`` the modify reaches the server; ``lose_answer``
    drops the server's answer to a modify that landed; ``blind_after_write`` makes every read
    after the modify fail, as if the connection dropped.
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.writes: list[tuple[str, str, int, int]] = []
        self.before_write = None
        self.crash: str | None = None
        self.lose_answer = False
        self.blind_after_write = False
        self.lock = threading.Lock()

    def __call__(self):
        directory = connect(self.settings)
        send = directory.compare_and_swap

        def compare_and_swap(dn, attribute, old, new):
            if self.before_write is not None:
                self.before_write(dn, attribute, old, new)
            with self.lock:
                self.writes.append((dn, attribute, old, new))
            if self.crash == "before":
                raise SimulatedCrash
            send(dn, attribute, old, new)
            if self.crash == "after":
                raise SimulatedCrash
            if self.blind_after_write:
                directory.read_target = blind
            if self.lose_answer:
                raise WriteRefused("the modify was not confirmed: connection reset", None)

        def blind(dn):
            raise DirectoryError("cannot reach the directory: connection reset")

        directory.compare_and_swap = compare_and_swap
        return directory


@pytest.fixture
def spy(settings):
    return Spy(settings)


def flags(server, dn):
    conn = server.admin_connection()
    try:
        conn.search(dn, "(objectClass=*)", ldap3.BASE, attributes=[SMTP, RECV])
        attrs = conn.entries[0].entry_attributes_as_dict
        return int((attrs.get(SMTP) or attrs.get(RECV))[0])
    finally:
        conn.unbind()


def set_flags(server, dn, value):
    attribute = ORIGINAL[dn][0]
    server.modify(dn, {attribute: [(ldap3.MODIFY_REPLACE, [str(value)])]})


def audit(settings, store, opener):
    """An audit run (run_audit writes it to the audit log itself)."""
    return run_audit(settings, store, opener, trigger="cli", requested_by="test")


def target(store, dn):
    return next(r for r in current_targets(store) if r["dn"].lower() == dn.lower())


def approved_request(settings, store, spy, dn=EXA, action="fix", approvers=(ALICE,)):
    """Audit, make the request a warning button would carry, and approve it."""
    audit(settings, store, spy)
    request = create_request(settings, store, target(store, dn), action, "C1", "111.222")
    for actor in approvers:
        approve(settings, store, request["id"], actor.user_id, actor.user_name, is_approver=True)
    return request


def events(store):
    return [r["event"] for r in store.db["audit_log"].rows_where(order_by="id")]


def run_together(count, call):
    barrier = threading.Barrier(count)
    results = []

    def worker(index):
        barrier.wait()
        results.append(call(index))

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


# -- the happy path -------------------------------------------------------------------------


def test_an_approved_fix_clears_exactly_the_basic_bit_and_is_verified(settings, store, spy, server):
    request = approved_request(settings, store, spy)
    result = run_job(settings, store, spy, request["id"], ALICE)

    assert (result.outcome, result.ok, result.wrote) == (VERIFIED, True, True)
    assert (result.before, result.after, result.observed) == (7, 5, 5)
    assert (
        result.change
        == "7 (Anonymous, Basic, Integrated Windows) -> 5 (Anonymous, Integrated Windows)"
    )
    assert [a.user_name for a in result.approvals] == ["alice"]
    assert flags(server, EXA) == 5
    assert flags(server, EXB) == 6  # nothing else moved
    assert spy.writes == [(EXA, SMTP, 7, 5)]

    job = rs.get_job(store, result.job_id)
    assert (job["state"], job["before"], job["after"], job["observed"], job["verified"]) == (
        "verified", 7, 5, 5, 1
    )  # fmt: skip
    assert get_request(store, request["id"])["status"] == "succeeded"
    assert events(store) == [
        "audit_run", "request", "approval", "job_started", "write", "verification"
    ]  # fmt: skip
    assert verify_log(store)[0] is True


def test_a_connector_fix_clears_basicauth_and_basicauthrequiretls(settings, store, spy, server):
    request = approved_request(settings, store, spy, dn=DEFAULT16)
    result = run_job(settings, store, spy, request["id"], ALICE)
    assert result.outcome == VERIFIED
    assert flags(server, DEFAULT16) == 19  # 31 without BasicAuth (4) and BasicAuthRequireTLS (8)


def test_require_tls_keeps_basic_and_sets_basicauthrequiretls(settings, store, spy, server):
    request = approved_request(settings, store, spy, dn=FRONTEND, action="require_tls")
    result = run_job(settings, store, spy, request["id"], ALICE)
    assert result.outcome == VERIFIED
    assert flags(server, FRONTEND) == 13  # Tls + BasicAuth + BasicAuthRequireTLS


def test_no_fix_is_offered_when_basic_is_the_only_method(settings, store, spy):
    audit(settings, store, spy)
    with pytest.raises(RequestRefused, match="would leave none"):
        create_request(settings, store, target(store, vserver_dn(SERVERS[2])), "fix")


# -- who may approve ------------------------------------------------------------------------


def test_a_non_approver_changes_nothing_and_is_logged(settings, store, spy, server):
    request = approved_request(settings, store, spy, approvers=())
    denied = approve(settings, store, request["id"], "U666", "mallory", is_approver=False)
    result = run_job(settings, store, spy, request["id"], Actor("U666", "mallory"))
    assert (denied.outcome, result.outcome) == (DENIED, NOT_APPROVED)
    assert spy.writes == [] and flags(server, EXA) == 7
    assert events(store)[-1] == "denial"


def test_two_approvers_are_needed_when_configured(settings, store, spy, server):
    settings = replace(settings, approvals_required=2)
    request = approved_request(settings, store, spy, approvers=(ALICE,))
    assert run_job(settings, store, spy, request["id"], ALICE).outcome == NOT_APPROVED
    again = approve(settings, store, request["id"], "U1", "alice", is_approver=True)
    assert again.ready is False and flags(server, EXA) == 7
    second = approve(settings, store, request["id"], "U2", "bob", is_approver=True)
    assert (second.outcome, second.ready) == (APPROVED, True)
    result = run_job(settings, store, spy, request["id"], BOB)
    assert result.outcome == VERIFIED and flags(server, EXA) == 5
    assert [a.user_name for a in result.approvals] == ["alice", "bob"]


# -- exactly one job ------------------------------------------------------------------------


def test_a_double_click_gives_exactly_one_write(settings, store, spy, server):
    request = approved_request(settings, store, spy)
    results = run_together(4, lambda _: run_job(settings, store, spy, request["id"], ALICE))
    outcomes = sorted(r.outcome for r in results)
    assert outcomes.count(VERIFIED) == 1
    assert set(outcomes) - {VERIFIED} <= {ALREADY_RUNNING, ALREADY_DONE}
    assert len(spy.writes) == 1 and flags(server, EXA) == 5
    assert store.db["jobs"].count == 1


def test_two_approvers_clicking_together_give_exactly_one_write(settings, store, spy, server):
    request = approved_request(settings, store, spy, approvers=())
    actors = (ALICE, BOB)

    def click(index):
        actor = actors[index]
        approve(settings, store, request["id"], actor.user_id, actor.user_name, is_approver=True)
        # a careless handler runs the job whatever approve() said: still one write
        return run_job(settings, store, spy, request["id"], actor)

    results = run_together(2, click)
    assert sorted(r.outcome for r in results).count(VERIFIED) == 1
    assert len(spy.writes) == 1 and flags(server, EXA) == 5


def test_two_processes_claiming_the_same_request_give_one_job(settings, db_path, spy, server):
    """Separate Store objects have separate SQLite connections, as two processes do."""
    request = approved_request(settings, open_store(db_path), spy)
    stores = [open_store(db_path) for _ in range(3)]
    results = run_together(3, lambda i: run_job(settings, stores[i], spy, request["id"], ALICE))
    assert [r.outcome for r in results].count(VERIFIED) == 1
    assert len(spy.writes) == 1


# -- the directory moved --------------------------------------------------------------------


def test_drift_between_warning_and_approval_is_refused(settings, store, spy, server):
    request = approved_request(settings, store, spy)
    set_flags(server, EXA, 3)  # someone changed it after the warning was posted
    result = run_job(settings, store, spy, request["id"], ALICE)
    assert (result.outcome, result.ok, result.wrote, result.observed) == (DRIFT, False, False, 3)
    assert "changed since the warning" in result.message
    assert spy.writes == [] and flags(server, EXA) == 3
    assert get_request(store, request["id"])["status"] == "drift"
    assert events(store)[-1] == "drift"
    assert run_job(settings, store, spy, request["id"], ALICE).outcome == REFUSED


def test_a_compare_and_swap_lost_to_a_concurrent_writer_changes_nothing(
    settings, store, spy, server
):
    request = approved_request(settings, store, spy)
    spy.before_write = lambda dn, *_: set_flags(server, dn, 3)  # wins the race by a hair
    result = run_job(settings, store, spy, request["id"], ALICE)
    assert (result.outcome, result.wrote, result.observed) == (CONFLICT, False, 3)
    assert "LDAP result 16" in result.message  # noSuchAttribute: the old value was gone
    assert flags(server, EXA) == 3  # the other writer's value stands
    assert get_request(store, request["id"])["status"] == "drift"
    assert rs.get_job(store, result.job_id)["state"] == "failed"
    assert events(store)[-1] == "failure"


def test_the_directory_down_fails_retryably_and_the_retry_needs_no_new_approval(
    settings, store, spy, server
):
    request = approved_request(settings, store, spy)

    def down():
        raise DirectoryError("cannot reach the directory at ldaps://127.0.0.1:1")

    failed = run_job(settings, store, down, request["id"], ALICE)
    assert (failed.outcome, failed.retryable, failed.wrote) == (FAILED, True, False)
    assert get_request(store, request["id"])["status"] == "failed"
    retried = run_job(settings, store, spy, request["id"], ALICE)
    assert retried.outcome == VERIFIED and flags(server, EXA) == 5


# -- dry run --------------------------------------------------------------------------------


def test_dry_run_does_every_step_but_the_write(settings, store, spy, server):
    settings = replace(settings, remediation_mode="dry-run")
    spy.settings = settings
    request = approved_request(settings, store, spy)
    result = run_job(settings, store, spy, request["id"], ALICE)
    assert (result.outcome, result.ok, result.dry_run, result.wrote) == (DRY_RUN, True, True, False)
    assert result.message.startswith("Dry run")
    assert spy.writes == [] and flags(server, EXA) == 7
    assert events(store)[-2:] == ["job_started", "dry_run"]
    refused = rollback(settings, store, spy, result.job_id, ALICE)
    assert refused.outcome == REFUSED and "dry run" in refused.message


# -- rollback -------------------------------------------------------------------------------


def test_rollback_restores_the_previous_value_once(settings, store, spy, server):
    request = approved_request(settings, store, spy)
    fix = run_job(settings, store, spy, request["id"], ALICE)
    undo = rollback(settings, store, spy, fix.job_id, BOB)
    assert (undo.outcome, undo.job_kind, undo.rolls_back_job_id) == (
        VERIFIED,
        "rollback",
        fix.job_id,
    )
    assert (undo.before, undo.after, undo.observed) == (5, 7, 7)
    assert flags(server, EXA) == 7
    assert spy.writes == [(EXA, SMTP, 7, 5), (EXA, SMTP, 5, 7)]
    assert get_request(store, request["id"])["status"] == "rolled_back"
    assert events(store)[-2:] == ["rollback", "verification"]
    again = rollback(settings, store, spy, fix.job_id, BOB)
    assert again.outcome == REFUSED and "already rolled back" in again.message
    assert rollback(settings, store, spy, undo.job_id, BOB).outcome == REFUSED


def test_rollback_is_refused_when_the_value_moved(settings, store, spy, server):
    request = approved_request(settings, store, spy)
    fix = run_job(settings, store, spy, request["id"], ALICE)
    set_flags(server, EXA, 4)
    undo = rollback(settings, store, spy, fix.job_id, BOB)
    assert (undo.outcome, undo.wrote) == (DRIFT, False)
    assert flags(server, EXA) == 4 and len(spy.writes) == 1


def test_a_failed_job_cannot_be_rolled_back(settings, store, spy, server):
    request = approved_request(settings, store, spy)
    set_flags(server, EXA, 3)
    drift = run_job(settings, store, spy, request["id"], ALICE)
    refused = rollback(settings, store, spy, drift.job_id, BOB)
    assert refused.outcome == REFUSED and "nothing to roll back" in refused.message


def cli_env(settings):
    return {
        "AUTHGUARD_LDAP_URL": settings.ldap_url,
        "AUTHGUARD_LDAP_CA_FILE": settings.ldap_ca_file,
        "AUTHGUARD_LDAP_BIND_DN": settings.ldap_bind_dn,
        "AUTHGUARD_LDAP_PASSWORD": settings.ldap_password.get(),
        "AUTHGUARD_DB": settings.db,
    }


def test_cli_rollback_and_list(settings, store, spy, server):
    request = approved_request(settings, store, spy)
    fix = run_job(settings, store, spy, request["id"], ALICE)
    runner, env = CliRunner(), cli_env(settings)

    done = runner.invoke(main, ["remediate", "rollback", str(fix.job_id)], env=env)
    assert done.exit_code == 0, done.output
    assert "Rolled back EXA / Default SMTP Virtual Server" in done.output
    assert flags(server, EXA) == 7
    assert settings.ldap_password.get() not in done.output

    again = runner.invoke(main, ["remediate", "rollback", str(fix.job_id)], env=env)
    assert again.exit_code == 1 and "already rolled back" in again.output
    for bad in ("abc", "0", "999"):
        result = runner.invoke(main, ["remediate", "rollback", bad], env=env)
        assert result.exit_code == 2, (bad, result.output)

    listing = runner.invoke(main, ["remediate", "list"], env=env)
    assert listing.exit_code == 0
    lines = listing.output.splitlines()
    assert "rollback" in lines[1] and "verified" in lines[1] and "(cli" in lines[1]
    assert "fix" in lines[2] and "7 (Anonymous, Basic, Integrated Windows) -> 5" in lines[2]
    rollback_row = next(r for r in store.db["audit_log"].rows_where("event = 'rollback'"))
    assert rollback_row["user_name"].endswith("(cli)")


# -- crash recovery -------------------------------------------------------------------------


def test_a_crash_before_the_write_landed_is_reconciled_as_not_written(settings, store, spy, server):
    request = approved_request(settings, store, spy)
    spy.crash = "before"
    with pytest.raises(SimulatedCrash):
        run_job(settings, store, spy, request["id"], ALICE)
    job = rs.unfinished_jobs(store)[0]
    assert job["state"] == "writing"  # the trace recorded before the modify was sent
    spy.crash = None
    assert run_job(settings, store, spy, request["id"], ALICE).outcome == ALREADY_RUNNING

    [settled] = reconcile_unfinished(settings, store, spy)
    assert (settled.outcome, settled.retryable, settled.observed) == (NOT_WRITTEN, True, 7)
    assert rs.get_job(store, job["id"])["reconciled_at"] is not None
    assert get_request(store, request["id"])["status"] == "failed"
    assert len(spy.writes) == 1  # reconciliation never writes

    retried = run_job(settings, store, spy, request["id"], ALICE)
    assert retried.outcome == VERIFIED and flags(server, EXA) == 5


def test_a_crash_after_the_write_landed_is_reconciled_as_verified(settings, store, spy, server):
    request = approved_request(settings, store, spy)
    spy.crash = "after"
    with pytest.raises(SimulatedCrash):
        run_job(settings, store, spy, request["id"], ALICE)
    assert flags(server, EXA) == 5
    [settled] = reconcile_unfinished(settings, store, spy)
    assert (settled.outcome, settled.observed, settled.wrote) == (VERIFIED, 5, True)
    assert get_request(store, request["id"])["status"] == "succeeded"
    assert len(spy.writes) == 1
    assert events(store)[-1] == "reconcile"
    assert reconcile_unfinished(settings, store, spy) == []  # nothing left half-known


def test_a_write_that_cannot_be_read_back_stays_unknown_until_reconciled(
    settings, store, spy, server
):
    request = approved_request(settings, store, spy)
    spy.blind_after_write = True
    result = run_job(settings, store, spy, request["id"], ALICE)
    assert (result.outcome, result.ok, result.wrote) == (UNKNOWN, False, True)
    assert rs.get_job(store, result.job_id)["state"] == "written"
    assert get_request(store, request["id"])["status"] == "running"
    # this process is no longer working on it, so reconciliation may settle it now
    [settled] = reconcile_unfinished(settings, store, spy)
    assert (settled.outcome, settled.observed) == (VERIFIED, 5)
    assert get_request(store, request["id"])["status"] == "succeeded"
    assert len(spy.writes) == 1


def test_a_modify_whose_answer_was_lost_is_verified_by_reading_back(settings, store, spy, server):
    request = approved_request(settings, store, spy)
    spy.lose_answer = True
    result = run_job(settings, store, spy, request["id"], ALICE)
    assert (result.outcome, result.wrote, result.observed) == (VERIFIED, True, 5)
    assert "answer to the modify was lost" in result.message
    assert events(store)[-2:] == ["write", "verification"]


def test_a_crashed_job_whose_target_moved_is_drift(settings, store, spy, server):
    request = approved_request(settings, store, spy)
    spy.crash = "before"
    with pytest.raises(SimulatedCrash):
        run_job(settings, store, spy, request["id"], ALICE)
    set_flags(server, EXA, 1)
    [settled] = reconcile_unfinished(settings, store, spy)
    assert settled.outcome == DRIFT
    assert get_request(store, request["id"])["status"] == "drift"


def test_reconciliation_leaves_jobs_of_live_processes_alone(settings, store, spy, server):
    request = approved_request(settings, store, spy)
    with store.transaction() as db:
        job = rs.insert_job(
            db,
            {
                "request_id": request["id"],
                "kind": "fix",
                "mode": "live",
                "state": rs.WRITING,
                "owner": f"{socket.gethostname()}:{os.getppid()}:another",  # alive: our parent
                "started_at": rs.iso(rs.parse_iso(request["created_at"])),
                "target_key": request["target_key"],
                "dn": request["dn"],
                "attribute": SMTP,
                "before": 7,
                "after": 5,
            },
        )
    assert reconcile_unfinished(settings, store, spy) == []
    again = run_job(settings, store, spy, request["id"], ALICE)
    assert again.outcome == BUSY and spy.writes == []
    [settled] = reconcile_unfinished(settings, store, spy, is_alive=lambda job: False)
    assert (settled.job_id, settled.outcome) == (job["id"], NOT_WRITTEN)


# -- the log --------------------------------------------------------------------------------


def test_the_whole_story_is_in_a_log_that_detects_tampering(settings, store, spy, server):
    settings = replace(settings, approvals_required=2)
    request = approved_request(settings, store, spy, approvers=(ALICE,))
    assert approve(settings, store, request["id"], "U9", "eve", is_approver=False).outcome == DENIED
    assert approve(settings, store, request["id"], "U2", "bob", is_approver=True).ready
    fix = run_job(settings, store, spy, request["id"], BOB)
    rollback(settings, store, spy, fix.job_id, ALICE)
    assert events(store) == [
        "audit_run", "request", "approval", "denial", "approval", "job_started", "write",
        "verification", "job_started", "rollback", "verification",
    ]  # fmt: skip
    runner, env = CliRunner(), cli_env(settings)
    assert runner.invoke(main, ["log", "verify"], env=env).exit_code == 0

    write_row = next(store.db["audit_log"].rows_where("event = 'write'"))
    conn = sqlite3.connect(settings.db, isolation_level=None)
    conn.execute("DROP TRIGGER audit_log_no_update")
    conn.execute("UPDATE audit_log SET after = 1 WHERE id = ?", [write_row["id"]])
    conn.close()
    result = runner.invoke(main, ["log", "verify"], env=env)
    assert result.exit_code == 1
    assert f"first bad row {write_row['id']}" in result.output


def test_pending_two_approver_request_shows_who_approved(settings, store, spy):
    settings = replace(settings, approvals_required=2)
    request = approved_request(settings, store, spy, approvers=())
    first = approve(settings, store, request["id"], "U1", "alice", is_approver=True)
    assert (first.outcome, first.approver_names, first.required) == (RECORDED, ["alice"], 2)
