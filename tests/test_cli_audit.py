"""The real ``authguard`` command in a subprocess against private OpenLDAP servers (issue 2):
``authguard audit [--json] [--sample]`` and ``authguard status SERVER [--json] [--live]``.

Every run gets only AUTHGUARD_* variables, its own database in a temporary directory and that
directory as its working directory. Exit codes: 0 clean, 1 findings, 2 error. No run may print
a password, which every helper below checks.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from datetime import datetime
from pathlib import Path

import pytest

from storage import audits as audit_store
from storage import open_store
from tests.children import free_ports
from tests.conftest import DEFAULT_SERVERS, EX2016_AG, EX2016_SERIAL
from tests.forest import RO_PASSWORD, SVC_PASSWORD, ServerSpec
from tests.slapd_server import SlapdServer, private_slapd

REPO = Path(__file__).resolve().parent.parent
SCRIPT = Path(sys.executable).with_name("authguard")
COMMAND = [str(SCRIPT)] if SCRIPT.exists() else [sys.executable, "-m", "bot"]
WRONG_PASSWORD = "Wr0ng-Pa55word-for-the-test"
SECRETS = (RO_PASSWORD, SVC_PASSWORD, "admin-secret", WRONG_PASSWORD)

AUDIT_KEYS = {"id": int, "started_at": str, "finished_at": str, "trigger": str, "status": str}
TARGET_KEYS = {
    "server": (str,),
    "kind": (str,),
    "name": (str,),
    "dn": (str,),
    "flags": (int, type(None)),
    "basic_auth": (bool, type(None)),
    "tls_required": (bool, type(None)),
    "verdict": (str,),
    "reason": (str,),
    "version": (str, type(None)),
}
SUMMARY_KEYS = ("warning", "ok", "exempt", "unknown")
VERDICTS = {"warning", "ok", "exempt", "unknown"}
KINDS = {"smtp_virtual_server", "receive_connector"}
DEFAULT_SUMMARY = {"warning": 8, "ok": 5, "exempt": 1, "unknown": 2}
DEFAULT_TARGETS = sum(len(s.smtp_flags) + len(s.connectors) for s in DEFAULT_SERVERS)


# ---------------------------------------------------------------------------
# Running the command
# ---------------------------------------------------------------------------


def ldap_env(server: SlapdServer, db: Path, **extra: str) -> dict[str, str]:
    """AUTHGUARD_* settings for the read-only account over StartTLS with the test CA."""
    env = {
        "AUTHGUARD_LDAP_URL": server.ldap_url,
        "AUTHGUARD_LDAP_STARTTLS": "true",
        "AUTHGUARD_LDAP_CA_FILE": str(server.ca_file),
        "AUTHGUARD_LDAP_BIND_DN": server.ro_dn,
        "AUTHGUARD_LDAP_PASSWORD": server.ro_password,
        "AUTHGUARD_DB": str(db),
    }
    env.update(extra)
    return env


def _process_env(settings: dict[str, str]) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("AUTHGUARD_", "SLACK_")) and k != "PYTHONPATH"
    }
    env["PYTHONPATH"] = str(REPO)
    env.update(settings)
    return env


def assert_no_secret(settings: dict[str, str], *outputs: str) -> None:
    secrets = set(SECRETS)
    if settings.get("AUTHGUARD_LDAP_PASSWORD"):
        secrets.add(settings["AUTHGUARD_LDAP_PASSWORD"])
    for output in outputs:
        for secret in secrets:
            assert secret not in output, f"a password appears in the output:\n{output}"


def authguard(cwd: Path, settings: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """Run ``authguard ARGS`` with stdout and stderr piped; never a password in either."""
    return run_checked_for_secrets([*COMMAND, *args], cwd, settings)


def run_checked_for_secrets(
    argv: list[str], cwd: Path, settings: dict[str, str]
) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` with the settings, stdout and stderr piped; no password and no traceback in
    either."""
    proc = subprocess.run(
        argv,
        cwd=cwd,
        env=_process_env(settings),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert_no_secret(settings, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc


def authguard_on_a_terminal(
    cwd: Path, settings: dict[str, str], *args: str
) -> tuple[int, str, str]:
    """Run with stderr on a pseudo-terminal (stdout piped); return (code, stdout, terminal)."""
    master, slave = os.openpty()
    seen: list[bytes] = []

    def drain() -> None:
        while True:
            try:
                chunk = os.read(master, 4096)
            except OSError:  # EIO: the terminal's last writer is gone
                return
            if not chunk:
                return
            seen.append(chunk)

    try:
        proc = subprocess.Popen(
            [*COMMAND, *args],
            cwd=cwd,
            env=_process_env(settings),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=slave,
        )
        os.close(slave)
        slave = -1
        reader = threading.Thread(target=drain, daemon=True)
        reader.start()
        stdout, _ = proc.communicate(timeout=180)
        reader.join(10)
    finally:
        if slave != -1:
            os.close(slave)
        os.close(master)
    terminal = b"".join(seen).decode("utf-8", "replace")
    out = stdout.decode("utf-8", "replace")
    assert_no_secret(settings, out, terminal)
    return proc.returncode, out, terminal


def runs(db: Path) -> list[dict]:
    """The audit runs stored in ``db``, oldest first."""
    store = open_store(str(db))
    try:
        return list(reversed(audit_store.recent_runs(store, limit=1000)))
    finally:
        store.close()


def table_rows(stdout: str) -> list[str]:
    """The body lines of the printed table (no header, no summary)."""
    lines = stdout.splitlines()
    assert lines[0].split()[:3] == ["SERVER", "KIND", "NAME"]
    body = []
    for line in lines[1:]:
        if not line.strip():
            break
        body.append(line)
    return body


def check_json_contract(doc: dict) -> None:
    """The issue's JSON contract: listed keys exact in name and type (extra keys allowed)."""
    assert set(doc) >= {"audit", "targets", "summary"}
    audit = doc["audit"]
    for key, kind in AUDIT_KEYS.items():
        assert isinstance(audit[key], kind), (key, audit[key])
    for key in ("started_at", "finished_at"):
        assert datetime.fromisoformat(audit[key]).tzinfo is not None
    assert audit["trigger"] == "cli"
    assert audit["status"] in {"succeeded", "failed"}
    for target in doc["targets"]:
        for key, kinds in TARGET_KEYS.items():
            assert key in target, key
            assert type(target[key]) in kinds, (key, target[key])
        assert target["kind"] in KINDS
        assert target["verdict"] in VERDICTS
        if target["kind"] == "smtp_virtual_server":
            assert target["tls_required"] is None
    for key in SUMMARY_KEYS:
        assert type(doc["summary"][key]) is int
        assert doc["summary"][key] == sum(t["verdict"] == key for t in doc["targets"])


@pytest.fixture
def work(tmp_path: Path) -> Path:
    """The working directory of the command (the database lives there too)."""
    return tmp_path


# ---------------------------------------------------------------------------
# Module directories: a clean forest, a big one, and one that may be stopped
# ---------------------------------------------------------------------------

CLEAN_SERVERS = [
    ServerSpec("CLEAN-01", smtp_flags=[1]),
    ServerSpec("CLEAN-02", smtp_flags=[5]),
    ServerSpec(
        "CLEAN16",
        admin_group=EX2016_AG,
        serial=EX2016_SERIAL,
        connectors=[("Default CLEAN16", 3), ("Relay CLEAN16", 1), ("Partner CLEAN16", 9)],
    ),
    ServerSpec(
        "SMALLBIZ",
        operating_system="Windows Small Business Server 2003",
        domain_controller=True,
        smtp_flags=[7],
    ),
    ServerSpec("LEGACY", smtp_flags=[3]),
]
BULK_SERVERS = [ServerSpec(f"BULK{i:05d}", computer=False, smtp_flags=[1, 3]) for i in range(600)]
BULK_TARGETS = 2 * len(BULK_SERVERS)


@pytest.fixture(scope="module")
def clean(tmp_path_factory: pytest.TempPathFactory):
    """No Basic anywhere, except on an SBS and on LEGACY (exempted by configuration)."""
    with private_slapd(tmp_path_factory, "clean-slapd", CLEAN_SERVERS) as server:
        yield server


@pytest.fixture(scope="module")
def bulk(tmp_path_factory: pytest.TempPathFactory):
    """1,200 targets: past the 1,000-entry size limit, long enough for a progress line."""
    with private_slapd(tmp_path_factory, "bulk-slapd", BULK_SERVERS) as server:
        yield server


@pytest.fixture(scope="module")
def fragile(tmp_path_factory: pytest.TempPathFactory):
    """The default forest on a server this module stops and starts."""
    with private_slapd(tmp_path_factory, "fragile-slapd", DEFAULT_SERVERS) as server:
        yield server


# ---------------------------------------------------------------------------
# audit: table, exit codes, storage
# ---------------------------------------------------------------------------


def test_audit_prints_the_table_stores_the_run_and_exits_1_on_findings(
    slapd: SlapdServer, work: Path
) -> None:
    """A forest with findings: one table line per target with flags in words, TLS and the
    verdict, a summary line, exit code 1; the run and its targets are in AUTHGUARD_DB."""
    db = work / "audit.db"
    proc = authguard(work, ldap_env(slapd, db), "audit")
    assert proc.returncode == 1, proc.stderr
    body = table_rows(proc.stdout)
    assert len(body) == DEFAULT_TARGETS
    ex05 = next(line for line in body if line.startswith("EX2003-05 "))
    assert "7 (Anonymous, Basic, Integrated Windows)" in ex05
    assert "unknown" in ex05 and "warning" in ex05  # TLS unknown for a virtual server
    frontend = next(line for line in body if "Client Frontend EX2016-01" in line)
    assert "5 (Tls, BasicAuth)" in frontend and "not required" in frontend
    assert "severe" in frontend
    legacy = next(line for line in body if "Legacy EX2016-02" in line)
    assert "not set" in legacy and "unknown" in legacy
    assert proc.stdout.rstrip().splitlines()[-1] == (
        "Audit 1 succeeded: 8 warning, 5 ok, 1 exempt, 2 unknown (16 targets)"
    )
    [run] = runs(db)
    assert run["status"] == "succeeded" and run["trigger"] == "cli"
    assert (run["total"], run["warning"]) == (16, 8)
    assert not (work / "authguard.db").exists()


def test_json_contract(slapd: SlapdServer, work: Path) -> None:
    """``audit --json`` prints exactly the documented document on stdout and nothing else."""
    proc = authguard(work, ldap_env(slapd, work / "a.db"), "audit", "--json")
    assert proc.returncode == 1, proc.stderr
    doc = json.loads(proc.stdout)
    check_json_contract(doc)
    assert doc["audit"]["status"] == "succeeded" and doc["audit"]["id"] == 1
    assert {k: doc["summary"][k] for k in SUMMARY_KEYS} == DEFAULT_SUMMARY
    assert len(doc["targets"]) == DEFAULT_TARGETS
    assert {t["kind"] for t in doc["targets"]} == KINDS
    by_name = {(t["server"], t["name"]): t for t in doc["targets"]}
    ex05 = by_name["EX2003-05", "Default SMTP Virtual Server"]
    expected = {
        "server": "EX2003-05",
        "kind": "smtp_virtual_server",
        "flags": 7,
        "basic_auth": True,
        "tls_required": None,
        "verdict": "warning",
        "version": "Version 6.5 (Build 7638.2: Service Pack 2)",
    }
    assert {key: ex05[key] for key in expected} == expected
    assert ex05["dn"].lower().startswith("cn=1,cn=smtp,cn=protocols,cn=ex2003-05,cn=servers,")
    default16 = by_name["EX2016-01", "Default EX2016-01"]
    assert (default16["flags"], default16["basic_auth"], default16["tls_required"]) == (
        31,
        True,
        True,
    )
    missing = by_name["EX2003-07", "Default SMTP Virtual Server"]
    assert (missing["flags"], missing["basic_auth"], missing["verdict"]) == (None, None, "unknown")


IMPORTS_PROBE = """
import atexit, sys
atexit.register(lambda: print("heavy:", [m for m in ("sqlite_utils", "numpy") if m in sys.modules],
                              file=sys.stderr))
from bot.cli import main
sys.argv = ["authguard", "audit", *sys.argv[1:]]
main()
"""


def test_an_audit_of_an_up_to_date_database_does_not_import_sqlite_utils(
    slapd: SlapdServer, work: Path
) -> None:
    """The audit's path writes plain SQL, so a scheduled or cron'd ``authguard audit`` does not
    pay for importing sqlite-utils (and numpy, which it imports when installed). The first run
    creates the tables with sqlite-utils; the next ones only audit."""
    settings = ldap_env(slapd, work / "a.db")

    def heavy_imports(*args: str) -> str:
        argv = [sys.executable, "-c", IMPORTS_PROBE, *args]
        proc = run_checked_for_secrets(argv, work, settings)
        assert proc.returncode == 1, proc.stderr  # findings, as in test_json_contract
        if args:
            assert json.loads(proc.stdout)["audit"]["status"] == "succeeded"
        else:
            assert "EX2003-05" in proc.stdout  # the table
        return proc.stderr.strip().splitlines()[-1]

    assert "sqlite_utils" in heavy_imports("--json")  # the first run migrated the new database
    assert heavy_imports("--json") == "heavy: []"
    assert heavy_imports() == "heavy: []"  # the table too
    assert [r["status"] for r in runs(work / "a.db")] == ["succeeded"] * 3


def test_a_clean_forest_exits_0(clean: SlapdServer, work: Path) -> None:
    """No warning and no unknown: exit 0, even with exempt targets (SBS and configured)."""
    env = ldap_env(clean, work / "a.db", AUTHGUARD_EXEMPT_SERVERS="legacy")
    proc = authguard(work, env, "audit", "--json")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    check_json_contract(doc)
    assert {k: doc["summary"][k] for k in SUMMARY_KEYS} == {
        "warning": 0,
        "ok": 5,
        "exempt": 2,
        "unknown": 0,
    }
    verdicts = {t["server"]: t["verdict"] for t in doc["targets"]}
    assert verdicts["SMALLBIZ"] == verdicts["LEGACY"] == "exempt"
    assert authguard(work, env, "audit").returncode == 0


def test_the_same_clean_forest_without_the_exemption_exits_1(
    clean: SlapdServer, work: Path
) -> None:
    """The one Basic-enabled server that is not configured as exempt is a finding."""
    proc = authguard(work, ldap_env(clean, work / "a.db"), "audit")
    assert proc.returncode == 1
    assert "1 warning" in proc.stdout.splitlines()[-1]


def test_unknown_alone_exits_1_and_configured_exemptions_ignore_case(
    slapd: SlapdServer, work: Path
) -> None:
    """With every Basic server exempted (names in another case), the unknown targets still
    make the exit code 1: unreadable is never clean."""
    exempt = "ex2003-02,EX2003-04,ex2003-05,Ex2003-06,EX2003-08,ex(01)*,ex2016-01"
    env = ldap_env(slapd, work / "a.db", AUTHGUARD_EXEMPT_SERVERS=exempt)
    proc = authguard(work, env, "audit", "--json")
    assert proc.returncode == 1
    doc = json.loads(proc.stdout)
    assert {k: doc["summary"][k] for k in SUMMARY_KEYS} == {
        "warning": 0,
        "ok": 4,  # EX2003-06's compliant virtual server is exempted with its server
        "exempt": 10,
        "unknown": 2,
    }
    configured = [t for t in doc["targets"] if t["verdict"] == "exempt" and t["server"] != "SBS01"]
    assert len(configured) == 9
    assert all(t["reason"] == "configured" for t in configured)


# ---------------------------------------------------------------------------
# RootDSE discovery and explicit bases
# ---------------------------------------------------------------------------


def test_naming_contexts_come_from_the_rootdse(slapd: SlapdServer, work: Path) -> None:
    """With no base configured, the Configuration NC and the SBS computer come from the RootDSE."""
    env = ldap_env(slapd, work / "a.db")
    assert not {"AUTHGUARD_LDAP_BASE", "AUTHGUARD_LDAP_DOMAIN_BASE"} & set(env)
    doc = json.loads(authguard(work, env, "audit", "--json").stdout)
    assert all(
        t["dn"].lower().endswith(",cn=configuration,dc=corp,dc=example") for t in doc["targets"]
    )
    assert [t["server"] for t in doc["targets"] if t["verdict"] == "exempt"] == ["SBS01"]


def test_explicit_domain_base_overrides_the_rootdse(slapd: SlapdServer, work: Path) -> None:
    """AUTHGUARD_LDAP_DOMAIN_BASE=cn=Computers,... does not hold the SBS domain controller, so
    SBS01 is no longer exempt; the explicit AUTHGUARD_LDAP_BASE is used as given."""
    env = ldap_env(
        slapd,
        work / "a.db",
        AUTHGUARD_LDAP_BASE="CN=Configuration,DC=corp,DC=example",
        AUTHGUARD_LDAP_DOMAIN_BASE="cn=Computers,dc=corp,dc=example",
    )
    proc = authguard(work, env, "audit", "--json")
    doc = json.loads(proc.stdout)
    assert doc["summary"]["exempt"] == 0 and doc["summary"]["warning"] == 9
    assert len(doc["targets"]) == DEFAULT_TARGETS


def test_a_wrong_explicit_base_is_an_error_naming_the_setting(
    slapd: SlapdServer, work: Path
) -> None:
    """An AUTHGUARD_LDAP_BASE without Exchange under it: exit 2, the message names it."""
    env = ldap_env(slapd, work / "a.db", AUTHGUARD_LDAP_BASE="cn=Elsewhere,dc=corp,dc=example")
    proc = authguard(work, env, "audit")
    assert proc.returncode == 2
    assert "AUTHGUARD_LDAP_BASE" in proc.stderr and proc.stdout == ""
    assert runs(work / "a.db")[-1]["status"] == "failed"


# ---------------------------------------------------------------------------
# Transport security and credentials
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["starttls", "ldaps"])
def test_tls_with_the_ca_succeeds(slapd: SlapdServer, work: Path, how: str) -> None:
    """StartTLS on ldap:// and LDAPS, both verified against AUTHGUARD_LDAP_CA_FILE."""
    extra = {"AUTHGUARD_LDAP_URL": slapd.ldaps_url, "AUTHGUARD_LDAP_STARTTLS": "false"}
    env = ldap_env(slapd, work / "a.db", **(extra if how == "ldaps" else {}))
    proc = authguard(work, env, "audit", "--json")
    assert proc.returncode == 1, proc.stderr
    assert len(json.loads(proc.stdout)["targets"]) == DEFAULT_TARGETS


@pytest.mark.parametrize("how", ["starttls", "ldaps"])
def test_a_wrong_ca_is_refused(slapd: SlapdServer, work: Path, how: str) -> None:
    """A certificate the configured CA did not issue: exit 2, a message that says so, and the
    audit is recorded as failed."""
    extra = {"AUTHGUARD_LDAP_URL": slapd.ldaps_url, "AUTHGUARD_LDAP_STARTTLS": "false"}
    env = ldap_env(
        slapd,
        work / "a.db",
        AUTHGUARD_LDAP_CA_FILE=str(slapd.wrong_ca_file),
        **(extra if how == "ldaps" else {}),
    )
    proc = authguard(work, env, "audit")
    assert proc.returncode == 2
    assert "TLS certificate" in proc.stderr and "not trusted" in proc.stderr
    assert "AUTHGUARD_LDAP_CA_FILE" in proc.stderr
    assert proc.stdout == ""
    assert [r["status"] for r in runs(work / "a.db")] == ["failed"]


def test_password_over_plain_ldap_is_refused_unless_allowed(slapd: SlapdServer, work: Path) -> None:
    """ldap:// without StartTLS would send the password in clear text: refused with the reason,
    exit 2; AUTHGUARD_LDAP_ALLOW_PLAINTEXT=true lets it through."""
    env = ldap_env(slapd, work / "a.db", AUTHGUARD_LDAP_STARTTLS="false")
    refused = authguard(work, env, "audit")
    assert refused.returncode == 2
    assert "clear text" in refused.stderr and "AUTHGUARD_LDAP_ALLOW_PLAINTEXT" in refused.stderr
    assert refused.stdout == ""
    allowed = authguard(work, {**env, "AUTHGUARD_LDAP_ALLOW_PLAINTEXT": "true"}, "audit")
    assert allowed.returncode == 1, allowed.stderr
    assert [r["status"] for r in runs(work / "a.db")] == ["failed", "succeeded"]


def test_bad_credentials(slapd: SlapdServer, work: Path) -> None:
    """A wrong password: exit 2, "invalid credentials", the audit recorded as failed; the
    password is printed nowhere."""
    env = ldap_env(slapd, work / "a.db", AUTHGUARD_LDAP_PASSWORD=WRONG_PASSWORD)
    proc = authguard(work, env, "audit")
    assert proc.returncode == 2
    assert "invalid credentials" in proc.stderr and slapd.ro_dn in proc.stderr
    [run] = runs(work / "a.db")
    assert run["status"] == "failed" and "invalid credentials" in run["error"]
    assert WRONG_PASSWORD not in json.dumps(run)


def test_help_never_shows_a_password(slapd: SlapdServer, work: Path) -> None:
    """``--help`` of the command and its subcommands, with passwords configured."""
    env = ldap_env(slapd, work / "a.db")
    for args in (["--help"], ["audit", "--help"], ["status", "--help"]):
        proc = authguard(work, env, *args)
        assert proc.returncode == 0 and "Usage:" in proc.stdout


# ---------------------------------------------------------------------------
# The directory going away
# ---------------------------------------------------------------------------


def test_directory_down_is_a_failed_audit_and_recovers(fragile: SlapdServer, work: Path) -> None:
    """slapd stopped: exit 2, the audit stored as failed (also in --json, never "succeeded"
    and no targets); after a restart the next audit succeeds."""
    db = work / "a.db"
    env = ldap_env(fragile, db)
    assert authguard(work, env, "audit").returncode == 1
    fragile.stop()
    try:
        down = authguard(work, env, "audit")
        down_json = authguard(work, env, "audit", "--json")
    finally:
        fragile.start()
    assert down.returncode == 2 and down_json.returncode == 2
    assert "cannot reach the directory" in down.stderr and down.stdout == ""
    doc = json.loads(down_json.stdout)
    check_json_contract(doc)
    assert doc["audit"]["status"] == "failed" and doc["targets"] == []
    assert "cannot reach" in doc["audit"]["error"]
    assert [r["status"] for r in runs(db)] == ["succeeded", "failed", "failed"]

    again = authguard(work, env, "audit")
    assert again.returncode == 1
    assert [r["status"] for r in runs(db)][-1] == "succeeded"


def test_nothing_listening_is_a_failed_audit(work: Path) -> None:
    """A port where nothing listens: exit 2, clear message, audit recorded as failed."""
    port = free_ports(1)[0]
    env = {"AUTHGUARD_LDAP_URL": f"ldap://127.0.0.1:{port}", "AUTHGUARD_DB": str(work / "a.db")}
    proc = authguard(work, env, "audit")
    assert proc.returncode == 2
    assert f"cannot reach the directory at ldap://127.0.0.1:{port}" in proc.stderr
    assert [r["status"] for r in runs(work / "a.db")] == ["failed"]


# ---------------------------------------------------------------------------
# Paging and the progress indicator
# ---------------------------------------------------------------------------


def test_big_forest_is_read_completely(bulk: SlapdServer, work: Path) -> None:
    """1,200 targets through the read-only account (size limit 1,000): every one, once."""
    proc = authguard(work, ldap_env(bulk, work / "a.db"), "audit", "--json")
    assert proc.returncode == 1, proc.stderr
    doc = json.loads(proc.stdout)
    check_json_contract(doc)
    assert len(doc["targets"]) == BULK_TARGETS
    assert len({t["dn"].lower() for t in doc["targets"]}) == BULK_TARGETS
    assert doc["summary"]["warning"] == doc["summary"]["ok"] == len(BULK_SERVERS)
    assert "checked" not in proc.stderr  # piped: no progress indicator
    table = authguard(work, ldap_env(bulk, work / "a.db"), "audit")
    assert len(table_rows(table.stdout)) == BULK_TARGETS
    assert "checked" not in table.stderr


def test_progress_shows_on_a_terminal_only_without_json(bulk: SlapdServer, work: Path) -> None:
    """On a terminal a long audit shows "checked N targets..."; with --json it does not."""
    env = ldap_env(bulk, work / "a.db")
    code, out, terminal = authguard_on_a_terminal(work, env, "audit")
    assert code == 1
    assert "checked 250 targets" in terminal and "checked 1000 targets" in terminal
    assert "checked" not in out
    code, out, terminal = authguard_on_a_terminal(work, env, "audit", "--json")
    assert code == 1
    assert "checked" not in terminal
    assert len(json.loads(out)["targets"]) == BULK_TARGETS


# ---------------------------------------------------------------------------
# status SERVER
# ---------------------------------------------------------------------------


def test_status_shows_the_stored_state_of_one_server(slapd: SlapdServer, work: Path) -> None:
    """After an audit, ``status`` prints that server's targets (any case) from the database."""
    env = ldap_env(slapd, work / "a.db")
    assert authguard(work, env, "audit").returncode == 1
    proc = authguard(work, env, "status", "ex2003-06")
    assert proc.returncode == 1
    body = table_rows(proc.stdout)
    assert len(body) == 2 and all(line.startswith("EX2003-06 ") for line in body)
    assert "last checked:" in proc.stdout
    ok = authguard(work, env, "status", "EX2003-01", "--json")
    assert ok.returncode == 0
    doc = json.loads(ok.stdout)
    assert doc["server"] == "EX2003-01" and [t["verdict"] for t in doc["targets"]] == ["ok"]


def test_status_live_reads_the_directory_even_before_any_audit(
    slapd: SlapdServer, work: Path
) -> None:
    """``status SERVER --live`` on an empty database shows what it just read."""
    proc = authguard(
        work, ldap_env(slapd, work / "a.db"), "status", "EX2016-01", "--live", "--json"
    )
    assert proc.returncode == 1, proc.stderr
    doc = json.loads(proc.stdout)
    assert sorted(t["name"] for t in doc["targets"]) == [
        "Client Frontend EX2016-01",
        "Default EX2016-01",
    ]
    assert [r["scope"] for r in runs(work / "a.db")] == ["server:EX2016-01"]


def test_status_live_takes_metacharacters_literally(slapd: SlapdServer, work: Path) -> None:
    """``EX(01)*`` is a real server: --live shows it and nothing else."""
    env = ldap_env(slapd, work / "a.db")
    assert authguard(work, env, "audit").returncode == 1
    proc = authguard(work, env, "status", "EX(01)*", "--live", "--json")
    assert proc.returncode == 1, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["server"] == "EX(01)*"
    assert [(t["server"], t["verdict"]) for t in doc["targets"]] == [("EX(01)*", "warning")]
    table = authguard(work, env, "status", "EX(01)*", "--live")
    assert [line.split()[0] for line in table_rows(table.stdout)] == ["EX(01)*"]


@pytest.mark.parametrize(
    "name",
    ["*", "EX*", "EX(01)", "*)(cn=*", "EX(01)\\2a", "EX\\28\\30\\31\\29\\2a", "\\", "EX(01)**"],
)
def test_status_live_never_acts_as_a_wildcard(slapd: SlapdServer, work: Path, name: str) -> None:
    """A name that is a wildcard or a filter fragment matches no server: exit 2, no targets."""
    env = ldap_env(slapd, work / "a.db")
    assert authguard(work, env, "audit").returncode == 1
    proc = authguard(work, env, "status", name, "--live")
    assert proc.returncode == 2
    assert f"no Exchange server named {name!r}" in proc.stderr
    assert proc.stdout == ""
    live = runs(work / "a.db")[-1]
    assert live["scope"] == f"server:{name}" and live["total"] == 0


def test_status_rejects_control_characters(slapd: SlapdServer, work: Path) -> None:
    """A name with a control character (NUL cannot even be passed in argv) is refused, exit 2."""
    proc = authguard(work, ldap_env(slapd, work / "a.db"), "status", "EX\x01(01)*", "--live")
    assert proc.returncode == 2 and "printable" in proc.stderr
    assert runs(work / "a.db") == []


@pytest.mark.parametrize("live", [False, True])
def test_unknown_server_suggests_close_matches(slapd: SlapdServer, work: Path, live: bool) -> None:
    """An unknown name: exit 2 with "did you mean" and the nearest known servers."""
    env = ldap_env(slapd, work / "a.db")
    assert authguard(work, env, "audit").returncode == 1
    proc = authguard(work, env, "status", "EX2003-1", *(["--live"] if live else []))
    assert proc.returncode == 2
    assert "no Exchange server named 'EX2003-1'" in proc.stderr
    assert "did you mean" in proc.stderr and "EX2003-01" in proc.stderr
    assert proc.stdout == ""


def test_status_before_any_audit_says_to_run_one(slapd: SlapdServer, work: Path) -> None:
    """Without --live and without a stored audit: exit 2 and what to do."""
    proc = authguard(work, ldap_env(slapd, work / "a.db"), "status", "EX2003-01")
    assert proc.returncode == 2 and "authguard audit" in proc.stderr


# ---------------------------------------------------------------------------
# --sample
# ---------------------------------------------------------------------------


def test_sample_audit(work: Path) -> None:
    """The bundled sample: no directory needed, exit 1, every verdict, both kinds, at least
    8 servers in 2 administrative groups, stored in AUTHGUARD_DB."""
    env = {"AUTHGUARD_DB": str(work / "sample.db")}
    proc = authguard(work, env, "audit", "--sample", "--json")
    assert proc.returncode == 1, proc.stderr
    doc = json.loads(proc.stdout)
    check_json_contract(doc)
    targets = doc["targets"]
    assert {t["verdict"] for t in targets} == VERDICTS
    assert {t["kind"] for t in targets} == KINDS
    assert len({t["server"] for t in targets}) >= 8
    groups = {t["dn"].split(",CN=Servers,", 1)[1].split(",", 1)[0].lower() for t in targets}
    assert len(groups) == 2
    assert any(t["verdict"] == "exempt" and t["reason"] == "sbs" for t in targets)
    assert [r["status"] for r in runs(work / "sample.db")] == ["succeeded"]
    table = authguard(work, env, "audit", "--sample")
    assert table.returncode == 1 and table.stdout.startswith("SERVER")


def test_sample_uses_its_own_database_file_by_default(work: Path) -> None:
    """Without AUTHGUARD_DB the sample run goes to authguard-sample.db in the working directory,
    never to the real authguard.db."""
    proc = authguard(work, {}, "audit", "--sample")
    assert proc.returncode == 1, proc.stderr
    assert (work / "authguard-sample.db").exists() and not (work / "authguard.db").exists()


# ---------------------------------------------------------------------------
# A bug is an error too (in-process: the fault has to be injected)
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("args", [["audit"], ["status", "EX01", "--live"]])
def test_an_unexpected_exception_exits_2_without_the_password(
    work: Path, monkeypatch: pytest.MonkeyPatch, args: list[str]
) -> None:
    """An exception nobody expected exits 2 (error), never 1 (findings), and its message is
    shown without the LDAP password even if the exception carried it."""
    from click.testing import CliRunner

    from bot import cli

    def broken(*_args, **_kw):
        raise RuntimeError(f"Connection(password={RO_PASSWORD!r}) went wrong")

    monkeypatch.setattr(cli, "run_audit", broken)
    env = {
        "AUTHGUARD_LDAP_URL": "ldaps://127.0.0.1:1",
        "AUTHGUARD_LDAP_BIND_DN": "cn=authguard-ro",
        "AUTHGUARD_LDAP_PASSWORD": RO_PASSWORD,
        "AUTHGUARD_DB": str(work / "a.db"),
    }
    result = CliRunner().invoke(cli.main, args, env=env)
    assert result.exit_code == 2
    assert "internal error (RuntimeError" in result.output
    assert RO_PASSWORD not in result.output
