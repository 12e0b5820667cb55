"""The audit engine against a real directory: ``Directory`` and ``run_audit`` in-process, talking
to private OpenLDAP servers that hold AD-shaped Exchange forests (issue 2).

The shared ``slapd`` fixture (DEFAULT_SERVERS) is only read. Tests that need another forest, or
that stop the server, start their own ``SlapdServer`` in a module fixture.
"""

from __future__ import annotations

import re
from pathlib import Path

import ldap3
import pytest

import bot.directory as directory_module
from bot.audit import AuditFailed, Scope, run_audit
from bot.config import Settings, load_settings
from bot.directory import Directory, connect
from storage import Store, open_store
from storage import audits as audit_store
from tests.conftest import DEFAULT_SERVERS, EX2016_AG, EX2016_SERIAL, EX2016_VERSION
from tests.forest import (
    BASE,
    ServerSpec,
    dn_key,
    forest_ldif,
    ldif_record,
    server_dn,
    vserver_dn,
    write_forest,
)
from tests.slapd_server import EXCHANGE_SCHEMA, SIZE_LIMIT, SlapdServer, _q

FLAGS = "msExchAuthenticationFlags"
RC_FLAGS = "msExchSMTPReceiveInboundSecurityFlag"
EX2003_SP2 = "Version 6.5 (Build 7638.2: Service Pack 2)"


# ---------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------


def settings_for(server: SlapdServer, **env: str) -> Settings:
    """Settings as the read-only service account over StartTLS with the test CA; ``env`` wins."""
    values = {
        "AUTHGUARD_LDAP_URL": server.ldap_url,
        "AUTHGUARD_LDAP_STARTTLS": "true",
        "AUTHGUARD_LDAP_CA_FILE": str(server.ca_file),
        "AUTHGUARD_LDAP_BIND_DN": server.ro_dn,
        "AUTHGUARD_LDAP_PASSWORD": server.ro_password,
    }
    values.update(env)
    return load_settings(env=values)


def audit(settings: Settings, store: Store, **kw) -> tuple[dict, list[dict]]:
    """Run one audit the way the CLI does; return the run row and its stored targets."""
    run = run_audit(settings, store, lambda: connect(settings), trigger="cli", **kw)
    return run, list(audit_store.iter_run_targets(store, run["id"]))


def by_target(rows: list[dict]) -> dict[tuple[str, str], dict]:
    """Rows keyed by (server, target name)."""
    keyed = {(row["server"], row["name"]): row for row in rows}
    assert len(keyed) == len(rows), "two targets share a server and a name"
    return keyed


def count_verdicts(rows: list[dict]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for row in rows:
        counts[row["verdict"]] = counts.get(row["verdict"], 0) + 1
    return counts


def start_slapd(workdir: Path, ldif_files: list[Path], cls: type = SlapdServer) -> SlapdServer:
    server = cls(workdir / "server")
    server.start(ldif_files)
    return server


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return open_store(str(tmp_path / "authguard.db"))


# ---------------------------------------------------------------------------
# Forests of this module
# ---------------------------------------------------------------------------

LAB_BASE = "dc=lab,dc=corp,dc=example"
LAB_CONFIG_NC = "cn=Configuration," + LAB_BASE

# Names full of LDAP filter metacharacters; each is one real server.
META_NAMES = ["*", "EX(01)*", "EX(01)", "EX\\(01\\)", "EX01"]

SPECIAL_SERVERS = [
    # The Exchange server's name differs from its computer's: only the FQDN links them.
    ServerSpec("MAIL", fqdn="smallbiz.corp.example", computer=False, smtp_flags=[7]),
    # Named like an SBS, runs an ordinary Windows Server: not exempt.
    ServerSpec("SBS-LOOKALIKE", operating_system="Windows Server 2008 R2", smtp_flags=[7]),
    # No computer object at all (while SBS computers exist in the domain): not exempt.
    ServerSpec("NO-COMPUTER", computer=False, smtp_flags=[7]),
    # Odd values a real INTEGER attribute can hold, and missing server attributes.
    ServerSpec("NEGATIVE", smtp_flags=[-2]),
    ServerSpec(
        "NEGATIVE16",
        admin_group=EX2016_AG,
        serial=EX2016_SERIAL,
        version_number=EX2016_VERSION,
        connectors=[("Negative NEGATIVE16", -4)],
    ),
    ServerSpec(
        "BARE", serial=None, version_number=None, smtp_flags=[1, 3], smtp_display_names=[None]
    ),
    *(ServerSpec(name, computer=False, smtp_flags=[3]) for name in META_NAMES),
]

EXTRA_COMPUTERS = [
    ("SMALLBIZ", "SMALLBIZ.Corp.Example", "Windows Small Business Server 2011 Standard"),
    ("OLDSBS", "oldsbs.corp.example", "Windows Small Business Server 2003"),
]

# A second Exchange forest, under dc=lab: reachable only with explicit bases.
LAB_SERVERS = [
    ServerSpec("LAB-01", smtp_flags=[7], fqdn="lab-01.lab.corp.example"),
    ServerSpec(
        "LAB-SBS",
        fqdn="lab-sbs.lab.corp.example",
        operating_system="Windows Small Business Server 2008",
        smtp_flags=[7],
    ),
]


@pytest.fixture(scope="module")
def special(tmp_path_factory: pytest.TempPathFactory):
    """This module's directory for SBS, exemptions, odd values, bases and odd names."""
    workdir = tmp_path_factory.mktemp("special-slapd")
    ldif = workdir / "special.ldif"
    with ldif.open("w", encoding="utf-8") as fh:
        fh.writelines(forest_ldif(SPECIAL_SERVERS))
        for cn, host, system in EXTRA_COMPUTERS:
            fh.write(
                ldif_record(
                    f"cn={cn},cn=Computers,{BASE}",
                    [
                        ("objectClass", "top"),
                        ("objectClass", "computer"),
                        ("cn", cn),
                        ("dNSHostName", host),
                        ("operatingSystem", system),
                    ],
                )
            )
        fh.writelines(forest_ldif(LAB_SERVERS, base=LAB_BASE))
    server = start_slapd(workdir, [ldif])
    yield server
    server.stop()


# A forest larger than the 1,000-entry size limit, written servers first and targets after
# (so most targets arrive pages after their server object).
BULK_2003 = [
    ServerSpec(f"BULK{i:05d}", computer=False, smtp_flags=[(1, 3, 5, 7)[i % 4]])
    for i in range(1100)
]
BULK_2016 = [
    ServerSpec(
        f"BULK16-{i:03d}",
        admin_group=EX2016_AG,
        serial=EX2016_SERIAL,
        version_number=EX2016_VERSION,
        computer=False,
        connectors=[(f"Default BULK16-{i:03d}", 3), (f"Client BULK16-{i:03d}", 5 if i % 2 else 13)],
    )
    for i in range(150)
]
BULK_TARGETS = len(BULK_2003) + 2 * len(BULK_2016)
BULK_WARNINGS = sum(1 for s in BULK_2003 if s.smtp_flags[0] & 2) + len(BULK_2016)


@pytest.fixture(scope="module")
def bulk(tmp_path_factory: pytest.TempPathFactory):
    """This module's big directory: 1,250 servers, 1,400 targets, about six pages."""
    workdir = tmp_path_factory.mktemp("bulk-slapd")
    records = list(forest_ldif(BULK_2003 + BULK_2016))
    below_protocols = [r for r in records if ",cn=protocols," in r.split("\n", 1)[0].lower()]
    (workdir / "servers.ldif").write_text("".join(r for r in records if r not in below_protocols))
    (workdir / "targets.ldif").write_text("".join(below_protocols))
    server = start_slapd(workdir, [workdir / "servers.ldif", workdir / "targets.ldif"])
    yield server
    server.stop()


# ---------------------------------------------------------------------------
# RootDSE discovery and explicit bases
# ---------------------------------------------------------------------------


def test_rootdse_gives_both_naming_contexts(slapd: SlapdServer) -> None:
    """Without AUTHGUARD_LDAP_BASE/DOMAIN_BASE the naming contexts come from the RootDSE."""
    with connect(settings_for(slapd)) as directory:
        assert dn_key(directory.config_nc) == dn_key(slapd.config_nc)
        assert dn_key(directory.domain_nc) == dn_key(slapd.base)
        assert dn_key(directory.exchange_base) == dn_key(
            "CN=Microsoft Exchange,CN=Services," + slapd.config_nc
        )


def test_explicit_base_overrides_the_rootdse(special: SlapdServer, store: Store) -> None:
    """AUTHGUARD_LDAP_BASE points the audit at another Configuration NC than the RootDSE's."""
    _, discovered = audit(settings_for(special), store)
    assert {row["server"] for row in discovered} >= {"MAIL", "NEGATIVE"}
    assert not {"LAB-01", "LAB-SBS"} & {row["server"] for row in discovered}

    settings = settings_for(special, AUTHGUARD_LDAP_BASE=LAB_CONFIG_NC)
    with connect(settings) as directory:
        assert directory.config_nc == LAB_CONFIG_NC
        assert dn_key(directory.domain_nc) == dn_key(BASE)  # still from the RootDSE
    _, rows = audit(settings, store)
    assert {row["server"] for row in rows} == {"LAB-01", "LAB-SBS"}
    assert by_target(rows)["LAB-SBS", "Default SMTP Virtual Server"]["verdict"] == "exempt"


@pytest.mark.parametrize(
    ("domain_base", "verdict"),
    [(LAB_BASE, "exempt"), ("cn=Computers," + BASE, "warning")],
)
def test_explicit_domain_base_decides_where_computers_are_found(
    special: SlapdServer, store: Store, domain_base: str, verdict: str
) -> None:
    """AUTHGUARD_LDAP_DOMAIN_BASE replaces the RootDSE's defaultNamingContext for SBS lookups."""
    settings = settings_for(
        special, AUTHGUARD_LDAP_BASE=LAB_CONFIG_NC, AUTHGUARD_LDAP_DOMAIN_BASE=domain_base
    )
    with connect(settings) as directory:
        assert directory.domain_nc == domain_base
    _, rows = audit(settings, store)
    assert by_target(rows)["LAB-SBS", "Default SMTP Virtual Server"]["verdict"] == verdict


def test_a_base_without_exchange_fails_and_names_the_setting(
    slapd: SlapdServer, store: Store
) -> None:
    """A Configuration NC with no Exchange organization fails the run and says what to check."""
    settings = settings_for(slapd, AUTHGUARD_LDAP_BASE="cn=Nowhere," + BASE)
    with pytest.raises(AuditFailed, match="AUTHGUARD_LDAP_BASE") as failed:
        audit(settings, store)
    assert failed.value.run["status"] == "failed"


# ---------------------------------------------------------------------------
# Every rule and verdict, end to end
# ---------------------------------------------------------------------------

# (server, target name) -> (flags, basic_auth, tls_required, verdict), from DEFAULT_SERVERS
EXPECTED_DEFAULT = {
    ("EX2003-01", "Default SMTP Virtual Server"): (1, False, None, "ok"),
    ("EX2003-02", "Default SMTP Virtual Server"): (3, True, None, "warning"),
    ("EX2003-03", "Default SMTP Virtual Server"): (5, False, None, "ok"),
    ("EX2003-04", "Default SMTP Virtual Server"): (6, True, None, "warning"),
    ("EX2003-05", "Default SMTP Virtual Server"): (7, True, None, "warning"),
    ("EX2003-06", "Default SMTP Virtual Server"): (1, False, None, "ok"),
    ("EX2003-06", "Relay SMTP Virtual Server"): (7, True, None, "warning"),
    ("EX2003-07", "Default SMTP Virtual Server"): (None, None, None, "unknown"),
    ("EX2003-08", "Default SMTP Virtual Server"): (3, True, None, "warning"),
    ("SBS01", "Default SMTP Virtual Server"): (7, True, None, "exempt"),
    ("EX(01)*", "Default SMTP Virtual Server"): (3, True, None, "warning"),
    ("EX2016-01", "Default EX2016-01"): (31, True, True, "warning"),
    ("EX2016-01", "Client Frontend EX2016-01"): (5, True, False, "warning"),
    ("EX2016-02", "Default EX2016-02"): (3, False, False, "ok"),
    ("EX2016-02", "Relay EX2016-02"): (1, False, False, "ok"),
    ("EX2016-02", "Legacy EX2016-02"): (None, None, None, "unknown"),
}


def test_every_rule_and_verdict_on_the_default_forest(slapd: SlapdServer, store: Store) -> None:
    """Each virtual server and receive connector gets the flags, Basic/TLS reading and verdict
    the rules give; the run and every target are stored."""
    run, rows = audit(settings_for(slapd), store)
    got = {
        key: (row["flags"], row["basic_auth"], row["tls_required"], row["verdict"])
        for key, row in by_target(rows).items()
    }
    expected = {
        key: (flags, None if basic is None else int(basic), None if tls is None else int(tls), v)
        for key, (flags, basic, tls, v) in EXPECTED_DEFAULT.items()
    }
    assert got == expected
    assert run["status"] == "succeeded" and run["error"] is None
    counts = {key: run[key] for key in ("warning", "ok", "exempt", "unknown", "total")}
    assert counts == {"warning": 8, "ok": 5, "exempt": 1, "unknown": 2, "total": 16}
    assert audit_store.latest_run(store, status="succeeded")["id"] == run["id"]


def test_reasons_say_why_and_basic_without_tls_is_the_severe_case(
    slapd: SlapdServer, store: Store
) -> None:
    """Basic without BasicAuthRequireTLS is high severity and says so; with TLS it is medium;
    a virtual server cannot tell, so it never claims TLS; unknown names the attribute."""
    _, rows = audit(settings_for(slapd), store)
    rows_by = by_target(rows)
    no_tls = rows_by["EX2016-01", "Client Frontend EX2016-01"]
    with_tls = rows_by["EX2016-01", "Default EX2016-01"]
    assert no_tls["severity"] == "high" and "severe" in no_tls["reason"]
    assert with_tls["severity"] == "medium" and "TLS required" in with_tls["reason"]
    vserver = rows_by["EX2003-05", "Default SMTP Virtual Server"]
    assert vserver["tls_required"] is None and "not recorded" in vserver["reason"]
    assert FLAGS in rows_by["EX2003-07", "Default SMTP Virtual Server"]["reason"]
    assert RC_FLAGS in rows_by["EX2016-02", "Legacy EX2016-02"]["reason"]
    assert rows_by["SBS01", "Default SMTP Virtual Server"]["reason"] == "sbs"


def test_targets_carry_their_exchange_server(slapd: SlapdServer) -> None:
    """Each target knows its server's name, version (serialNumber) and FQDN (networkAddress);
    DN keys compare case-insensitively (slapd says cn=, AD says CN=)."""
    with connect(settings_for(slapd)) as directory:
        targets = {(t.server, t.name): t for t in directory.iter_targets()}
    assert len(targets) == len(EXPECTED_DEFAULT)
    ex01 = targets["EX2003-01", "Default SMTP Virtual Server"]
    assert ex01.kind == "smtp_virtual_server"
    assert ex01.version == EX2003_SP2
    assert ex01.fqdn == "ex2003-01.corp.example"
    assert ex01.server_info.version_number == 7638
    spec = next(s for s in DEFAULT_SERVERS if s.name == "EX2003-01")
    assert ex01.key == directory_module.dn_key(vserver_dn(spec).upper())
    sp1 = targets["EX2003-08", "Default SMTP Virtual Server"]
    assert sp1.version == "Version 6.5 (Build 7226.6: Service Pack 1)"
    connector = targets["EX2016-01", "Client Frontend EX2016-01"]
    assert connector.kind == "receive_connector" and connector.version == EX2016_SERIAL


def test_display_name_falls_back_to_the_cn_and_missing_versions_are_none(
    special: SlapdServer,
) -> None:
    """Without adminDisplayName a virtual server is named by its CN (the instance number);
    a server without serialNumber has no version rather than a made-up one."""
    with connect(settings_for(special)) as directory:
        bare = [t for t in directory.iter_targets() if t.server == "BARE"]
    assert sorted(t.name for t in bare) == ["1", "2"]
    assert {t.version for t in bare} == {None}


# ---------------------------------------------------------------------------
# Small Business Server and configured exemptions
# ---------------------------------------------------------------------------


def test_sbs_is_found_through_the_fqdn_in_network_address(
    special: SlapdServer, store: Store
) -> None:
    """The computer whose dNSHostName is the ncacn_ip_tcp FQDN (any case) runs SBS: exempt,
    even though its computer name differs from the Exchange server name."""
    _, rows = audit(settings_for(special), store)
    mail = by_target(rows)["MAIL", "Default SMTP Virtual Server"]
    assert mail["verdict"] == "exempt"
    assert mail["reason"] == "sbs"
    assert mail["fqdn"] == "smallbiz.corp.example"


def test_sbs_exemption_needs_the_computer_object(special: SlapdServer, store: Store) -> None:
    """No exemption by name, and none for a server that has no computer object at all."""
    _, rows = audit(settings_for(special), store)
    rows_by = by_target(rows)
    assert rows_by["SBS-LOOKALIKE", "Default SMTP Virtual Server"]["verdict"] == "warning"
    assert rows_by["NO-COMPUTER", "Default SMTP Virtual Server"]["verdict"] == "warning"


def test_sbs_on_the_default_forest(slapd: SlapdServer) -> None:
    """SBS01 (a domain controller) is the only SBS host; EX2003-08 has no computer object."""
    with connect(settings_for(slapd)) as directory:
        assert directory.sbs_hostnames() == frozenset({"sbs01.corp.example"})
        assert directory.operating_system("SBS01.corp.example") == (
            "Windows Small Business Server 2003"
        )
        assert directory.operating_system("ex2003-08.corp.example") is None


def test_a_narrow_check_finds_sbs_without_searching_the_whole_domain(
    slapd: SlapdServer, store: Store
) -> None:
    """A check of one server (a recheck, ``status --live``) asks for that server's computer
    only; the verdicts are those of a full audit."""
    settings = settings_for(slapd)
    opened: list[Directory] = []

    def counted() -> Directory:
        directory = connect(settings)
        searched = directory.sbs_hostnames

        def sbs_hostnames() -> frozenset[str]:
            opened.append(directory)
            return searched()

        directory.sbs_hostnames = sbs_hostnames  # type: ignore[method-assign]
        return directory

    for name, verdict, reason in (("SBS01", "exempt", "sbs"), ("EX2003-05", "warning", None)):
        run = run_audit(settings, store, counted, trigger="cli", scope=Scope("server", name))
        [row] = audit_store.iter_run_targets(store, run["id"])
        assert row["verdict"] == verdict
        assert reason is None or row["reason"] == reason
    assert opened == []  # no domain-wide search for either
    run_audit(settings, store, counted, trigger="cli")
    assert len(opened) == 1  # a full audit makes it once


def test_configured_exemptions_are_case_insensitive(slapd: SlapdServer, store: Store) -> None:
    """AUTHGUARD_EXEMPT_SERVERS exempts the listed servers, whatever the case; others keep
    their verdict."""
    settings = settings_for(slapd, AUTHGUARD_EXEMPT_SERVERS=" ex2003-02,EX2016-01 , ex(01)* ")
    run, rows = audit(settings, store)
    rows_by = by_target(rows)
    for key in [
        ("EX2003-02", "Default SMTP Virtual Server"),
        ("EX2016-01", "Default EX2016-01"),
        ("EX2016-01", "Client Frontend EX2016-01"),
        ("EX(01)*", "Default SMTP Virtual Server"),
    ]:
        assert rows_by[key]["verdict"] == "exempt", key
        assert rows_by[key]["reason"] == "configured"
    assert rows_by["EX2003-04", "Default SMTP Virtual Server"]["verdict"] == "warning"
    assert rows_by["SBS01", "Default SMTP Virtual Server"]["verdict"] == "exempt"
    assert (run["warning"], run["exempt"]) == (4, 5)


# ---------------------------------------------------------------------------
# Missing and odd attribute values: unknown, never ok
# ---------------------------------------------------------------------------


def test_missing_flags_are_unknown(slapd: SlapdServer, store: Store) -> None:
    """A target without its flags attribute is unknown with the reason, never ok."""
    _, rows = audit(settings_for(slapd), store)
    for key in [("EX2003-07", "Default SMTP Virtual Server"), ("EX2016-02", "Legacy EX2016-02")]:
        row = by_target(rows)[key]
        assert (row["verdict"], row["flags"], row["basic_auth"]) == ("unknown", None, None)
        assert "not set" in row["reason"]


def test_negative_flags_are_unknown(special: SlapdServer, store: Store) -> None:
    """A negative integer is not a set of bits: unknown."""
    _, rows = audit(settings_for(special), store)
    for key in [("NEGATIVE", "Default SMTP Virtual Server"), ("NEGATIVE16", "Negative NEGATIVE16")]:
        row = by_target(rows)[key]
        assert row["verdict"] == "unknown" and "negative" in row["reason"]


LOOSE_SCHEMA_CASES = {
    # server: (flag values as stored, words expected in the reason)
    "ODD-TEXT": (["basic"], "not an integer"),
    "ODD-EMPTY": ([""], "empty"),
    "ODD-HEX": (["0x2"], "not an integer"),
    "ODD-MULTI": (["3", "5"], "2 values"),
}


class LooseSchemaSlapd(SlapdServer):
    """slapd whose two flag attributes are multi-valued octet strings instead of integers,
    so the directory can hold what the rules must survive: text, empty values, several values."""

    def _write_config(self) -> None:
        super()._write_config()
        loose = self.workdir / "exchange-loose.schema"
        text = EXCHANGE_SCHEMA.read_text()
        for name in (FLAGS, RC_FLAGS):
            block = re.compile(
                r"(attributetype \( [0-9.]+ NAME '" + name + r"'\n\tDESC '[^']*'\n).*?\)\n", re.S
            )
            text, found = block.subn(
                lambda m: (
                    m.group(1)
                    + "\tEQUALITY octetStringMatch\n\tSYNTAX 1.3.6.1.4.1.1466.115.121.1.40 )\n"
                ),
                text,
            )
            assert found == 1, name
        loose.write_text(text)
        conf = self.conf_file.read_text()
        assert _q(EXCHANGE_SCHEMA) in conf
        self.conf_file.write_text(conf.replace(_q(EXCHANGE_SCHEMA), _q(loose)))


@pytest.fixture(scope="module")
def loose(tmp_path_factory: pytest.TempPathFactory):
    """A directory holding flag values no integer attribute could."""
    workdir = tmp_path_factory.mktemp("loose-slapd")
    specs = [ServerSpec(name, smtp_flags=[None]) for name in LOOSE_SCHEMA_CASES]
    specs.append(
        ServerSpec("ODD16", admin_group=EX2016_AG, serial=EX2016_SERIAL, connectors=[("Odd", None)])
    )
    write_forest(workdir / "loose.ldif", specs)
    server = start_slapd(workdir, [workdir / "loose.ldif"], cls=LooseSchemaSlapd)
    for spec in specs[:-1]:
        values = LOOSE_SCHEMA_CASES[spec.name][0]
        server.modify(vserver_dn(spec), {FLAGS: [(ldap3.MODIFY_ADD, values)]})
    connector = f"cn=Odd,cn=SMTP Receive Connectors,cn=Protocols,{server_dn(specs[-1])}"
    server.modify(connector, {RC_FLAGS: [(ldap3.MODIFY_ADD, ["BasicAuth"])]})
    yield server
    server.stop()


def test_non_integer_empty_and_multiple_values_are_unknown(
    loose: SlapdServer, store: Store
) -> None:
    """Text, an empty value, hex and two values are each unknown with the reason, never ok."""
    run, rows = audit(settings_for(loose), store)
    rows_by = {row["server"]: row for row in rows}
    for server, (_, words) in LOOSE_SCHEMA_CASES.items():
        row = rows_by[server]
        assert (row["verdict"], row["flags"]) == ("unknown", None), server
        assert words in row["reason"], (server, row["reason"])
    assert rows_by["ODD16"]["verdict"] == "unknown"
    assert "not an integer" in rows_by["ODD16"]["reason"]
    assert run["unknown"] == run["total"] == 5


# ---------------------------------------------------------------------------
# Paging: more targets than the 1,000-entry size limit
# ---------------------------------------------------------------------------


def test_unpaged_search_would_be_cut_at_the_size_limit(bulk: SlapdServer) -> None:
    """The premise: the read-only account gets only 1,000 entries without paging."""
    conn = bulk.connection(bulk.ro_dn, bulk.ro_password)
    conn.search(bulk.config_nc, "(objectClass=protocolCfgSMTPServer)", attributes=[FLAGS])
    assert conn.result["result"] == 4  # sizeLimitExceeded
    assert len(conn.entries) == SIZE_LIMIT < BULK_TARGETS
    conn.unbind()


def test_paged_search_reads_every_target_exactly_once(bulk: SlapdServer) -> None:
    """iter_targets pages through all 1,400 targets in several 500-entry pages, none twice."""
    with connect(settings_for(bulk)) as directory:
        pages: list[object] = []
        search = directory.connection.search

        def counting_search(*args, **kw):
            if kw.get("paged_size"):
                pages.append(kw.get("paged_cookie"))
            return search(*args, **kw)

        directory.connection.search = counting_search
        targets = list(directory.iter_targets())
    assert len(targets) == BULK_TARGETS
    assert len({t.key for t in targets}) == BULK_TARGETS
    assert len(pages) >= 3 and pages[0] is None and all(pages[1:])
    assert {t.server for t in targets} == {s.name for s in BULK_2003 + BULK_2016}
    assert all(t.version for t in targets)


def test_audit_of_a_big_forest_stores_the_exact_count(bulk: SlapdServer, store: Store) -> None:
    """run_audit stores one row per target and counts every verdict exactly."""
    run, rows = audit(settings_for(bulk), store)
    assert run["status"] == "succeeded"
    assert len(rows) == run["total"] == BULK_TARGETS
    assert count_verdicts(rows) == {"warning": BULK_WARNINGS, "ok": BULK_TARGETS - BULK_WARNINGS}


def test_server_objects_are_re_read_when_not_cached(
    bulk: SlapdServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With a tiny server cache every target re-reads its server in the middle of the paged
    search; the paging survives and every target still gets its server."""
    monkeypatch.setattr(directory_module, "SERVER_CACHE_SIZE", 4)
    reads: list[str] = []
    read_server = Directory.read_server

    def counting_read(self: Directory, server_dn: str):
        reads.append(server_dn)
        return read_server(self, server_dn)

    monkeypatch.setattr(Directory, "read_server", counting_read)
    with connect(settings_for(bulk)) as directory:
        targets = list(directory.iter_targets())
    assert len(targets) == BULK_TARGETS
    assert len({dn_key(dn) for dn in reads}) >= len(BULK_2003 + BULK_2016) - 4
    assert all(t.version and t.server_info.dn for t in targets)


# ---------------------------------------------------------------------------
# Server names full of LDAP filter metacharacters
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", META_NAMES)
def test_find_servers_matches_only_the_literal_name(special: SlapdServer, name: str) -> None:
    """``*``, parentheses and backslashes in a name are escaped: exactly that server."""
    with connect(settings_for(special)) as directory:
        found = directory.find_servers(name)
    assert [s.name for s in found] == [name]


@pytest.mark.parametrize(
    "name",
    [
        "EX*",
        "EX(0*",
        "*)(cn=*",
        "*)(|(objectClass=*",
        "EX(01)\x00",
        "\x00",
        "EX\\28\\30\\31\\29\\2a",  # the filter-escaped spelling of EX(01)*, taken literally
        "EX\\2a",
        "\\",
    ],
)
def test_find_servers_never_treats_input_as_a_filter(special: SlapdServer, name: str) -> None:
    """A name that would be a wildcard or a filter injection if unescaped matches nothing."""
    with connect(settings_for(special)) as directory:
        assert directory.find_servers(name) == []


def test_server_scope_audits_only_the_literal_server(special: SlapdServer, store: Store) -> None:
    """A scoped run for the server named ``*`` covers that server's targets and no other."""
    run, rows = audit(settings_for(special), store, scope=Scope("server", "*"))
    assert run["status"] == "succeeded" and run["scope"] == "server:*"
    assert [(row["server"], row["verdict"]) for row in rows] == [("*", "warning")]


def test_server_scope_with_an_unknown_or_nul_name_fails(special: SlapdServer, store: Store) -> None:
    """No server by that literal name: the scoped run is failed, nothing is stored for it."""
    for name in ("EX(01)*\x00", "EX*"):
        with pytest.raises(AuditFailed, match="no Exchange server named") as failed:
            audit(settings_for(special), store, scope=Scope("server", name))
        run = failed.value.run
        assert run["status"] == "failed" and run["total"] == 0
        assert list(audit_store.iter_run_targets(store, run["id"])) == []


# ---------------------------------------------------------------------------
# Connection failures: every one is a failed run, never an all clear
# ---------------------------------------------------------------------------


def test_bad_credentials_fail_the_run(slapd: SlapdServer, store: Store) -> None:
    """A refused bind is recorded as a failed run with the reason."""
    settings = settings_for(slapd, AUTHGUARD_LDAP_PASSWORD="not-the-password")
    with pytest.raises(AuditFailed, match="invalid credentials") as failed:
        audit(settings, store)
    run = failed.value.run
    assert run["status"] == "failed" and "invalid credentials" in run["error"]
    assert run["total"] == 0 and audit_store.latest_run(store, status="succeeded") is None


def test_plaintext_password_bind_is_refused_before_connecting(
    slapd: SlapdServer, store: Store
) -> None:
    """A password over ldap:// without StartTLS is refused (a failed run) unless allowed."""
    plain = {"AUTHGUARD_LDAP_STARTTLS": "false"}
    with pytest.raises(AuditFailed, match="clear text") as failed:
        audit(settings_for(slapd, **plain), store)
    assert failed.value.run["status"] == "failed"
    run, rows = audit(settings_for(slapd, AUTHGUARD_LDAP_ALLOW_PLAINTEXT="true", **plain), store)
    assert run["status"] == "succeeded" and len(rows) == len(EXPECTED_DEFAULT)


@pytest.mark.parametrize("how", ["starttls", "ldaps"])
def test_tls_with_the_ca_works_and_a_wrong_ca_is_refused(
    slapd: SlapdServer, store: Store, how: str
) -> None:
    """StartTLS and LDAPS verify the directory's certificate against AUTHGUARD_LDAP_CA_FILE."""
    env = {"AUTHGUARD_LDAP_URL": slapd.ldaps_url, "AUTHGUARD_LDAP_STARTTLS": "false"}
    if how == "starttls":
        env = {}
    run, rows = audit(settings_for(slapd, **env), store)
    assert run["status"] == "succeeded" and len(rows) == len(EXPECTED_DEFAULT)
    wrong = settings_for(slapd, AUTHGUARD_LDAP_CA_FILE=str(slapd.wrong_ca_file), **env)
    with pytest.raises(AuditFailed, match="not trusted.*AUTHGUARD_LDAP_CA_FILE"):
        audit(wrong, store)


def test_directory_down_fails_the_run_and_a_later_run_succeeds(
    bulk: SlapdServer, store: Store
) -> None:
    """With slapd stopped the run is failed ("cannot reach"); after a restart the next
    run succeeds with every target."""
    settings = settings_for(bulk)
    bulk.stop()
    try:
        with pytest.raises(AuditFailed, match="cannot reach the directory") as failed:
            audit(settings, store)
        assert failed.value.run["status"] == "failed"
    finally:
        bulk.start()
    run, rows = audit(settings, store)
    assert run["status"] == "succeeded" and len(rows) == BULK_TARGETS


def test_nothing_listening_fails_the_run(store: Store) -> None:
    """A port where nothing listens is a failed run, not an empty (clean) one."""
    settings = load_settings(
        env={"AUTHGUARD_LDAP_URL": "ldap://127.0.0.1:1", "AUTHGUARD_LDAP_TIMEOUT": "5"}
    )
    with pytest.raises(AuditFailed, match="cannot reach") as failed:
        audit(settings, store)
    assert failed.value.run["status"] == "failed"


@pytest.mark.parametrize("when", ["after the first target", "between two pages"])
def test_directory_down_in_the_middle_of_a_paged_audit(
    bulk: SlapdServer, store: Store, when: str
) -> None:
    """slapd stopping after the first page of targets fails the run: the targets already read
    stay in a failed run, the last good audit stays the current state, the next audit succeeds.

    (The 1,250 server objects come first: the fourth page is the second one holding targets.)"""
    settings = settings_for(bulk)
    good, _ = audit(settings, store)

    def stop_once(count: int) -> None:
        if count == 1 and bulk.running:
            bulk.stop()

    class StopBeforePageFour(Directory):
        def search(self, base, search_filter, attributes, scope=ldap3.SUBTREE):
            search = self.connection.search
            pages = []

            def stop_before_page_four(*args, **kw):
                if kw.get("paged_size"):
                    pages.append(1)
                    if len(pages) == 4 and bulk.running:
                        bulk.stop()
                return search(*args, **kw)

            self.connection.search = stop_before_page_four
            try:
                yield from super().search(base, search_filter, attributes, scope)
            finally:
                self.connection.search = search

    def open_directory() -> Directory:
        real = connect(settings)
        if when == "after the first target":
            return real
        return StopBeforePageFour(real.connection, real.config_nc, real.domain_nc)

    progress = stop_once if when == "after the first target" else None
    try:
        with pytest.raises(AuditFailed, match="failed") as failed:
            run_audit(settings, store, open_directory, trigger="cli", progress=progress)
    finally:
        if not bulk.running:
            bulk.start()
    run = failed.value.run
    assert run["status"] == "failed" and run["error"]
    assert 0 < run["total"] < BULK_TARGETS
    assert audit_store.latest_run(store, status="succeeded")["id"] == good["id"]
    assert len(audit_store.current_targets(store)) == BULK_TARGETS
    after, rows = audit(settings, store)
    assert after["status"] == "succeeded" and len(rows) == BULK_TARGETS
