"""End to end against a real Active Directory implementation (a private Samba AD DC).

Everything goes over LDAPS (or StartTLS) as the non-admin service account of
:mod:`tests.samba.samba_dc`; the CLI runs for real in a subprocess with AUTHGUARD_* variables.
Run alone: ``scripts/test-samba`` (or ``python3 -m pytest -m samba tests/samba``).

Where AD differs from the slapd test directory, and what is checked here:

- DNs come back as ``CN=...`` (AD's own case), keys compare case-insensitively;
- a subtree search of the domain NC yields ``searchResRef`` referrals (skipped);
- a simple bind over plain ldap:// is refused with 8, "transport encryption required";
- the certificate may name only the DC (``AUTHGUARD_LDAP_TLS_NAME``);
- result codes: a stale compare-and-swap is 16, a write outside the ACL 50, a second value in a
  single-valued attribute 20 (slapd: 19), an anonymous write 1 (slapd: 8);
- ``objectCategory=<short name>`` works on AD (not on slapd); authguard filters on objectClass,
  which must find the same objects.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import ldap3
import pytest

from bot import remediation
from bot.config import load_settings
from bot.directory import WriteRefused, connect, dn_key
from storage import audit_log, open_store
from storage import audits as audit_store
from tests.samba.samba_dc import (
    BASE,
    CONFIG_NC,
    MSEXCH_AUTH_FLAGS,
    MSEXCH_RECEIVE_FLAGS,
    ORGANIZATION,
    SambaDC,
    server,
)

pytestmark = pytest.mark.samba

REPO = Path(__file__).resolve().parents[2]
APPROVER = "U0APPROVER"


def cli(dc: SambaDC, db: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    """The real ``authguard`` command (``python -m bot``) with the DC's AUTHGUARD_* variables."""
    return subprocess.run(
        [sys.executable, "-m", "bot", *args],
        cwd=REPO,
        env=dc.env(db, **env),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def expected_targets() -> dict[tuple[str, str], str]:
    """(server, target CN) -> verdict, for every target in the organization."""
    return {(s.name, cn): verdict for s in ORGANIZATION for cn, verdict in s.expected.items()}


def target_cn(dn: str) -> str:
    return dn.split(",", 1)[0].split("=", 1)[1]


@pytest.fixture(scope="module")
def db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("authguard-ad") / "authguard.db"


@pytest.fixture(scope="module")
def audited(samba_dc: SambaDC, db: Path) -> dict:
    """One full ``authguard audit --json`` over LDAPS; later tests build on its database."""
    proc = cli(samba_dc, db, "audit", "--json")
    assert proc.returncode == 1, proc.stderr  # warnings and unknowns: exit 1
    return json.loads(proc.stdout)


def settings_for(dc: SambaDC, db: Path, **env: str):
    return load_settings(env=dc.env(db, **env))


# -- the test bed itself -------------------------------------------------------------------


def test_dc_is_active_directory_with_the_exchange_schema(samba_dc: SambaDC) -> None:
    conn = samba_dc.svc_connection()
    try:
        conn.search("", "(objectClass=*)", ldap3.BASE, attributes=["supportedCapabilities"])
        capabilities = conn.response[0]["attributes"]["supportedCapabilities"]
        assert "1.2.840.113556.1.4.800" in capabilities  # LDAP_CAP_ACTIVE_DIRECTORY_OID
        schema = f"CN=Schema,{CONFIG_NC}"
        conn.search(
            schema,
            "(lDAPDisplayName=msExchAuthenticationFlags)",
            attributes=["attributeID", "isSingleValued"],
        )
        attrs = conn.response[0]["attributes"]
        assert attrs["attributeID"] == ["1.2.840.113556.1.4.7000.102.2003"]
        assert attrs["isSingleValued"] == ["TRUE"]
        conn.search(schema, "(lDAPDisplayName=protocolCfgSMTPServer)", attributes=["possSuperiors"])
        assert conn.response[0]["attributes"]["possSuperiors"] == ["msExchProtocolCfgSMTPContainer"]
    finally:
        conn.unbind()


def test_service_account_may_write_only_the_two_flag_attributes(samba_dc: SambaDC) -> None:
    ex01 = server("EX01")
    vs2 = ex01.virtual_server_dn("2")
    conn = samba_dc.svc_connection()
    try:
        # not an administrator: a plain user in Domain Users
        conn.search(samba_dc.svc_dn, "(objectClass=*)", ldap3.BASE, attributes=["memberOf"])
        assert not conn.response[0]["attributes"].get("memberOf")
        # another attribute of the same object: 50 insufficientAccessRights
        assert not conn.modify(vs2, {"adminDisplayName": [(ldap3.MODIFY_REPLACE, ["x"])]})
        assert conn.result["result"] == 50
        # the server object: no write either
        assert not conn.modify(ex01.dn, {"versionNumber": [(ldap3.MODIFY_REPLACE, ["1"])]})
        assert conn.result["result"] == 50
        # the flag attribute: allowed (and put back)
        for old, new in (("1", "5"), ("5", "1")):
            changes = {MSEXCH_AUTH_FLAGS: [(ldap3.MODIFY_DELETE, [old]), (ldap3.MODIFY_ADD, [new])]}
            assert conn.modify(vs2, changes), conn.result
    finally:
        conn.unbind()
    assert samba_dc.read(vs2, "adminDisplayName") == ["Relay SMTP"]


# -- discovery and reading -----------------------------------------------------------------


def test_rootdse_discovery_of_the_naming_contexts(samba_dc: SambaDC, db: Path) -> None:
    settings = settings_for(samba_dc, db)
    assert settings.ldap_base is None and settings.ldap_domain_base is None
    with connect(settings) as directory:
        assert directory.config_nc == CONFIG_NC
        assert directory.domain_nc == BASE
        assert directory.exchange_base == f"CN=Microsoft Exchange,CN=Services,{CONFIG_NC}"


def test_audit_cli_finds_every_target_with_the_right_verdict(audited: dict) -> None:
    assert audited["audit"]["status"] == "succeeded"
    found = {(t["server"], target_cn(t["dn"])): t["verdict"] for t in audited["targets"]}
    assert found == expected_targets()
    assert audited["summary"] == {"warning": 3, "ok": 1, "exempt": 1, "unknown": 1, "waived": 0}
    by_name = {t["name"]: t for t in audited["targets"]}
    assert by_name["Legacy Relay EX2016"]["severity"] == "high"  # Basic without RequireTLS
    assert by_name["Default EX2016"]["severity"] == "medium"  # Basic, TLS required
    assert by_name["Default EX2016"]["version"] == "Version 15.1 (Build 2507.6)"
    sbs = next(t for t in audited["targets"] if t["server"] == "SBS01")
    assert sbs["flags"] == 7 and sbs["reason"] == "sbs"


def test_dns_come_back_in_ads_case_and_compare_case_insensitively(audited: dict) -> None:
    ex01 = server("EX01")
    dns = {t["dn"] for t in audited["targets"] if t["server"] == "EX01"}
    assert ex01.virtual_server_dn("1") in dns  # exactly as AD returns it: CN=..., DC=...
    assert all(dn.startswith("CN=") and dn.endswith(",DC=corp,DC=example") for dn in dns)
    assert dn_key(ex01.virtual_server_dn("1")) == dn_key(ex01.virtual_server_dn("1").lower())


def test_explicit_naming_contexts_upn_bind_and_a_wrong_base(samba_dc: SambaDC, db: Path) -> None:
    # the Configuration NC given by hand, in lower case: AD compares DNs case-insensitively
    proc = cli(
        samba_dc,
        db,
        "audit",
        "--json",
        AUTHGUARD_LDAP_BASE=CONFIG_NC.lower(),
        AUTHGUARD_LDAP_DOMAIN_BASE=BASE.lower(),
    )
    assert proc.returncode == 1, proc.stderr
    assert json.loads(proc.stdout)["summary"]["exempt"] == 1  # the SBS lookup in the domain NC
    # AD also takes a user principal name as the bind name
    proc = cli(samba_dc, db, "audit", AUTHGUARD_LDAP_BIND_DN="authguard-svc@corp.example")
    assert proc.returncode == 1, proc.stderr
    # a base that is not there: exit 2 and a sentence naming the setting
    proc = cli(samba_dc, db, "audit", AUTHGUARD_LDAP_BASE="CN=Configuration,DC=wrong,DC=example")
    assert proc.returncode == 2
    assert "AUTHGUARD_LDAP_BASE" in proc.stderr and "Traceback" not in proc.stderr


def test_referrals_in_search_results_are_skipped(samba_dc: SambaDC, db: Path) -> None:
    # AD answers a subtree search of the domain NC with the entries plus a searchResRef for the
    # Configuration NC below it (paged searches too).
    conn = samba_dc.svc_connection()
    try:
        conn.search(BASE, "(objectClass=computer)", attributes=["dNSHostName"], paged_size=500)
        kinds = {entry["type"] for entry in conn.response}
    finally:
        conn.unbind()
    assert kinds == {"searchResEntry", "searchResRef"}
    with connect(settings_for(samba_dc, db)) as directory:
        entries = list(directory.search(BASE, "(objectClass=computer)", ["dNSHostName"]))
        assert entries and all(e["type"] == "searchResEntry" for e in entries)
        assert directory.sbs_hostnames() == frozenset({"sbs01.corp.example"})
        assert directory.operating_system("sbs01.corp.example") == (
            "Windows Small Business Server 2003"
        )


def test_objectclass_filter_finds_what_ad_objectcategory_finds(samba_dc: SambaDC, db: Path) -> None:
    with connect(settings_for(samba_dc, db)) as directory:
        targets = list(directory.iter_targets())
        for kind, category in (
            ("smtp_virtual_server", "protocolCfgSMTPServer"),
            ("receive_connector", "msExchSmtpReceiveConnector"),
        ):
            by_category = {
                dn_key(e["dn"])
                for e in directory.search(
                    directory.exchange_base, f"(objectCategory={category})", ["cn"]
                )
            }
            assert by_category == {t.key for t in targets if t.kind == kind}
            assert by_category


def test_result_codes_of_ad(samba_dc: SambaDC, db: Path) -> None:
    ex01 = server("EX01")
    vs2 = ex01.virtual_server_dn("2")
    with connect(settings_for(samba_dc, db)) as directory:
        # a stale compare-and-swap: 16 noSuchAttribute, and nothing changed
        with pytest.raises(WriteRefused) as stale:
            directory.compare_and_swap(vs2, MSEXCH_AUTH_FLAGS, 3, 5)
        assert stale.value.code == 16
        # outside the service account's rights: 50 insufficientAccessRights
        with pytest.raises(WriteRefused) as denied:
            directory.compare_and_swap(ex01.dn, "versionNumber", 7638, 7639)
        assert denied.value.code == 50
        # a second value in a single-valued attribute: 20 on AD (slapd says 19)
        add = {MSEXCH_AUTH_FLAGS: [(ldap3.MODIFY_ADD, ["3"])]}
        assert not directory.connection.modify(vs2, add)
        assert directory.connection.result["result"] == 20
    anonymous = samba_dc.connection(None, None)
    try:  # an anonymous write: 1 operationsError on AD (slapd says 8)
        assert not anonymous.modify(vs2, {MSEXCH_AUTH_FLAGS: [(ldap3.MODIFY_REPLACE, ["3"])]})
        assert anonymous.result["result"] == 1
    finally:
        anonymous.unbind()
    assert samba_dc.read(vs2, MSEXCH_AUTH_FLAGS) == ["1"]
    assert samba_dc.read(ex01.dn, "versionNumber") == ["7638"]


# -- transport security --------------------------------------------------------------------


def test_plain_ldap_bind_is_refused_by_the_tool(samba_dc: SambaDC, db: Path) -> None:
    proc = cli(samba_dc, db, "audit", AUTHGUARD_LDAP_URL=samba_dc.ldap_url)
    assert proc.returncode == 2
    assert "refusing to send the LDAP password in clear text" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_plain_ldap_bind_is_refused_by_ad_with_a_clear_message(samba_dc: SambaDC, db: Path) -> None:
    proc = cli(
        samba_dc,
        db,
        "audit",
        AUTHGUARD_LDAP_URL=samba_dc.ldap_url,
        AUTHGUARD_LDAP_ALLOW_PLAINTEXT="true",
    )
    assert proc.returncode == 2
    assert "requires transport encryption" in proc.stderr
    assert "(8)" in proc.stderr  # strongerAuthRequired
    assert "Traceback" not in proc.stderr


def test_starttls_on_389_works(samba_dc: SambaDC, db: Path) -> None:
    proc = cli(
        samba_dc,
        db,
        "audit",
        "--json",
        AUTHGUARD_LDAP_URL=samba_dc.ldap_url,
        AUTHGUARD_LDAP_STARTTLS="true",
    )
    assert proc.returncode == 1, proc.stderr
    assert json.loads(proc.stdout)["summary"]["warning"] == 3


def test_a_certificate_from_another_ca_is_refused(samba_dc: SambaDC, db: Path) -> None:
    proc = cli(samba_dc, db, "audit", AUTHGUARD_LDAP_CA_FILE=str(samba_dc.wrong_ca_file))
    assert proc.returncode == 2
    assert "is not trusted" in proc.stderr and "AUTHGUARD_LDAP_CA_FILE" in proc.stderr
    assert "Traceback" not in proc.stderr


# -- status --------------------------------------------------------------------------------


def test_status_live_rereads_the_server(samba_dc: SambaDC, db: Path, audited: dict) -> None:
    proc = cli(samba_dc, db, "status", "ex01", "--live", "--json")  # any case
    assert proc.returncode == 1, proc.stderr
    shown = json.loads(proc.stdout)
    assert shown["server"] == "EX01"
    assert {target_cn(t["dn"]): t["verdict"] for t in shown["targets"]} == server("EX01").expected

    # --live reads AD now: set EX02's missing flags behind authguard's back
    ex02 = server("EX02").virtual_server_dn("1")
    samba_dc.replace(ex02, MSEXCH_AUTH_FLAGS, 5)
    try:
        proc = cli(samba_dc, db, "status", "EX02", "--live", "--json")
        assert proc.returncode == 0, proc.stderr
        (target,) = json.loads(proc.stdout)["targets"]
        assert (target["flags"], target["verdict"]) == (5, "ok")
    finally:
        samba_dc.replace(ex02, MSEXCH_AUTH_FLAGS, None)
    proc = cli(samba_dc, db, "status", "EX02", "--live", "--json")
    assert json.loads(proc.stdout)["targets"][0]["verdict"] == "unknown"

    proc = cli(samba_dc, db, "status", "EX99", "--live")
    assert proc.returncode == 2
    assert "EX99" in proc.stderr and "Traceback" not in proc.stderr


# -- approve, fix, verify, roll back, verify the log ---------------------------------------


def _request_and_run(settings, store, row: dict) -> remediation.JobResult:
    request = remediation.create_request(settings, store, row, "fix")
    approval = remediation.approve(
        settings, store, request["id"], APPROVER, "alice", is_approver=True
    )
    assert approval.ready, approval.message
    return remediation.run_job(
        settings,
        store,
        lambda: connect(settings),
        request["id"],
        remediation.Actor(APPROVER, "alice"),
    )


def test_approve_fix_verify_rollback_and_log_verify(
    samba_dc: SambaDC, db: Path, audited: dict
) -> None:
    settings = settings_for(samba_dc, db, AUTHGUARD_APPROVERS=APPROVER)
    store = open_store(str(db))
    ex01 = server("EX01").virtual_server_dn("1")
    relay = server("EX2016").connector_dn("Legacy Relay EX2016")
    rows = {dn_key(r["dn"]): r for r in audit_store.current_targets(store)}

    # Exchange 2003 virtual server: 7 (Anonymous, Basic, Integrated) -> 5
    job = _request_and_run(settings, store, rows[dn_key(ex01)])
    assert job.outcome == remediation.VERIFIED, job.message
    assert job.wrote and (job.before, job.after, job.observed) == (7, 5, 5)
    assert samba_dc.read(ex01, MSEXCH_AUTH_FLAGS) == ["5"]

    # Exchange 2016 receive connector: 5 (Tls, BasicAuth) -> 1 (Tls)
    connector_job = _request_and_run(settings, store, rows[dn_key(relay)])
    assert connector_job.outcome == remediation.VERIFIED, connector_job.message
    assert samba_dc.read(relay, MSEXCH_RECEIVE_FLAGS) == ["1"]

    # authguard sees the fix
    proc = cli(samba_dc, db, "status", "EX01", "--live", "--json")
    verdicts = {target_cn(t["dn"]): t["verdict"] for t in json.loads(proc.stdout)["targets"]}
    assert verdicts == {"1": "ok", "2": "ok"}
    assert proc.returncode == 0

    # roll both back: the first through the CLI, the second through the core API
    proc = cli(samba_dc, db, "remediate", "rollback", str(job.job_id))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert samba_dc.read(ex01, MSEXCH_AUTH_FLAGS) == ["7"]
    undo = remediation.rollback(
        settings,
        store,
        lambda: connect(settings),
        connector_job.job_id,
        remediation.Actor(None, "tests (samba)"),
    )
    assert undo.outcome == remediation.VERIFIED, undo.message
    assert samba_dc.read(relay, MSEXCH_RECEIVE_FLAGS) == ["5"]

    # every step is in the hash-chained log, and the chain holds
    events = {
        (row["event"], row["before"], row["after"])
        for row in audit_log.iter_rows(store)
        if row["target_dn"] and dn_key(row["target_dn"]) == dn_key(ex01)
    }
    assert {
        ("request", 7, 5),
        ("approval", 7, 5),
        ("write", 7, 5),
        ("verification", 7, 5),
        ("rollback", 5, 7),
        ("verification", 5, 7),
    } <= events
    proc = cli(samba_dc, db, "log", "verify")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "audit log" in proc.stdout


def test_a_fix_whose_target_moved_writes_nothing(
    samba_dc: SambaDC, db: Path, audited: dict
) -> None:
    settings = settings_for(samba_dc, db, AUTHGUARD_APPROVERS=APPROVER)
    store = open_store(str(db))
    dn = server("EX2016").connector_dn("Default EX2016")
    (row,) = [r for r in audit_store.current_targets(store) if dn_key(r["dn"]) == dn_key(dn)]
    samba_dc.replace(dn, MSEXCH_RECEIVE_FLAGS, 29)  # someone changed it after the audit
    try:
        job = _request_and_run(settings, store, row)
        assert job.outcome == remediation.DRIFT, job.message
        assert not job.wrote
        assert samba_dc.read(dn, MSEXCH_RECEIVE_FLAGS) == ["29"]
    finally:
        samba_dc.replace(dn, MSEXCH_RECEIVE_FLAGS, 31)


# -- a certificate that names only the DC (runs last: restarts the DC) ---------------------


def test_certificate_for_the_dc_name_needs_tls_name(samba_dc: SambaDC, db: Path) -> None:
    samba_dc.restart(certificate="dcname")  # like Samba's own: DC1.corp.example only
    try:
        proc = cli(samba_dc, db, "audit")
        assert proc.returncode == 2
        assert "not issued to that host name" in proc.stderr, proc.stderr
        assert "AUTHGUARD_LDAP_TLS_NAME" in proc.stderr
        proc = cli(samba_dc, db, "audit", "--json", AUTHGUARD_LDAP_TLS_NAME="dc1.corp.example")
        assert proc.returncode == 1, proc.stderr
        assert json.loads(proc.stdout)["summary"]["warning"] == 3
    finally:
        samba_dc.restart()
