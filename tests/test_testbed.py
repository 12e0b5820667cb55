"""Proof that the test directory (private slapd + Exchange forest) behaves like AD where it
matters to authguard: RootDSE, paging and size limit, TLS, ACLs, compare-and-swap writes,
odd server names, stop/restart."""

from __future__ import annotations

import itertools
import os
import ssl
import threading
from pathlib import Path

import ldap3
import pytest
from ldap3.core.exceptions import LDAPSocketOpenError, LDAPStartTLSError
from ldap3.utils.conv import escape_filter_chars

from tests.conftest import DEFAULT_SERVERS
from tests.forest import (
    ServerSpec,
    computer_dn,
    connector_dn,
    dn_key,
    forest_ldif,
    server_dn,
    vserver_dn,
    write_forest,
)
from tests.slapd_server import SlapdServer, private_slapd

FLAGS = "msExchAuthenticationFlags"
RC_FLAGS = "msExchSMTPReceiveInboundSecurityFlag"

ODD_NAMES = [
    "EX(01)*",
    "EX,02",
    "EX+03",
    "#EX04",
    "EX\\05",
    'EX"06"',
    "EX<07>;=",
    "Ünïcødé-08",
    " EX09 ",
]
BULK = 1100  # > 1000 SMTP virtual servers: past the size limit


def _bulk_specs() -> list[ServerSpec]:
    specs = [ServerSpec(f"BULK{i:05d}", smtp_flags=[3], computer=False) for i in range(BULK)]
    specs += [ServerSpec(name, smtp_flags=[3]) for name in ODD_NAMES]
    specs.append(
        ServerSpec(
            "EX2016-W",
            serial="Version 15.1 (Build 2507.6)",
            version_number=1942061522,
            connectors=[("Client Frontend EX2016-W", 5)],
        )
    )
    return specs


SCRATCH_SPECS = _bulk_specs()


@pytest.fixture(scope="module")
def scratch(tmp_path_factory: pytest.TempPathFactory):
    """This module's own writable directory: the bulk forest plus odd names."""
    with private_slapd(tmp_path_factory, "scratch-slapd", SCRATCH_SPECS) as server:
        yield server


def _tls(ca_file: Path) -> ldap3.Tls:
    return ldap3.Tls(ca_certs_file=str(ca_file), validate=ssl.CERT_REQUIRED)


def _read_attr(server: SlapdServer, dn: str, attr: str):
    conn = server.admin_connection()
    try:
        assert conn.search(dn, "(objectClass=*)", ldap3.BASE, attributes=[attr])
        return conn.entries[0].entry_attributes_as_dict.get(attr, [None])[0]
    finally:
        conn.unbind()


# ---------------------------------------------------------------------------
# The server process and the default forest
# ---------------------------------------------------------------------------


def test_slapd_is_our_private_child(slapd: SlapdServer) -> None:
    stat = Path(f"/proc/{slapd.pid}/stat").read_text()
    ppid = int(stat.rsplit(")", 1)[1].split()[1])
    assert ppid == os.getpid()
    cmdline = Path(f"/proc/{slapd.pid}/cmdline").read_bytes().split(b"\0")
    assert str(slapd.conf_file).encode() in cmdline
    assert slapd.ldap_url.startswith("ldap://127.0.0.1:")
    assert slapd.ldaps_url.startswith("ldaps://127.0.0.1:")


def test_default_forest_is_loaded(slapd: SlapdServer) -> None:
    conn = slapd.connection(slapd.ro_dn, slapd.ro_password)
    conn.search(slapd.config_nc, "(objectClass=protocolCfgSMTPServer)", attributes=[FLAGS])
    assert len(conn.entries) == sum(len(s.smtp_flags) for s in DEFAULT_SERVERS)
    ex02 = next(s for s in DEFAULT_SERVERS if s.name == "EX2003-02")
    found = {dn_key(e.entry_dn): e.entry_attributes_as_dict.get(FLAGS) for e in conn.entries}
    assert found[dn_key(vserver_dn(ex02, 1))] == [3]

    conn.search(slapd.config_nc, "(objectClass=msExchSmtpReceiveConnector)", attributes=[RC_FLAGS])
    assert len(conn.entries) == sum(len(s.connectors) for s in DEFAULT_SERVERS)

    conn.search(
        slapd.base,
        "(&(objectClass=computer)(operatingSystem=*small business server*))",
        attributes=["dNSHostName", "msExchExchangeServerLink"],
    )
    sbs = next(s for s in DEFAULT_SERVERS if s.name == "SBS01")
    assert [dn_key(e.entry_dn) for e in conn.entries] == [dn_key(computer_dn(sbs))]
    assert conn.entries[0].dNSHostName.value == "sbs01.corp.example"
    assert dn_key(conn.entries[0].msExchExchangeServerLink.value) == dn_key(server_dn(sbs))

    conn.search(
        slapd.config_nc,
        "(objectClass=msExchExchangeServer)",
        attributes=["serialNumber", "versionNumber", "networkAddress"],
    )
    assert len(conn.entries) == len(DEFAULT_SERVERS)
    ex01 = next(e for e in conn.entries if e.entry_dn.startswith("cn=EX2003-01,"))
    assert ex01.serialNumber.value == "Version 6.5 (Build 7638.2: Service Pack 2)"
    assert ex01.versionNumber.value == 7638
    assert set(ex01.networkAddress.values) == {
        "netbios:EX2003-01",
        "ncacn_np:EX2003-01",
        "ncacn_ip_tcp:ex2003-01.corp.example",
    }
    conn.unbind()


def test_anonymous_rootdse_publishes_naming_contexts(slapd: SlapdServer) -> None:
    server = ldap3.Server(slapd.ldap_url, get_info=ldap3.DSA)
    conn = ldap3.Connection(server, auto_bind=True)  # anonymous
    assert conn.search(
        "",
        "(objectClass=*)",
        ldap3.BASE,
        attributes=["configurationNamingContext", "defaultNamingContext"],
    )
    entry = conn.entries[0]
    assert entry.configurationNamingContext.value == "cn=Configuration,dc=corp,dc=example"
    assert entry.defaultNamingContext.value == "dc=corp,dc=example"
    assert server.info.other["configurationNamingContext"] == [slapd.config_nc]
    conn.unbind()


def test_anonymous_reads_but_never_sees_passwords(slapd: SlapdServer) -> None:
    conn = ldap3.Connection(slapd.ldap_url, auto_bind=True)
    conn.search(slapd.config_nc, "(objectClass=protocolCfgSMTPServer)", attributes=[FLAGS])
    assert conn.entries
    conn.search(slapd.svc_dn, "(objectClass=*)", ldap3.BASE, attributes=["userPassword"])
    assert conn.response[0]["raw_attributes"].get("userPassword", []) == []
    svc = slapd.connection(slapd.svc_dn, slapd.svc_password)
    svc.search(slapd.svc_dn, "(objectClass=*)", ldap3.BASE, attributes=["userPassword"])
    assert svc.response[0]["raw_attributes"].get("userPassword", []) == []
    svc.unbind()
    conn.unbind()


def test_wrong_password_is_refused(slapd: SlapdServer) -> None:
    conn = ldap3.Connection(slapd.ldap_url, slapd.svc_dn, "wrong")
    assert not conn.bind()
    assert conn.result["result"] == 49


# ---------------------------------------------------------------------------
# Size limit and paging (AD-like)
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("who", ["ro", "anonymous"])
def test_unpaged_search_is_capped_paged_search_returns_all(scratch: SlapdServer, who) -> None:
    expected = sum(len(s.smtp_flags) for s in SCRATCH_SPECS)
    assert expected > 1000
    if who == "ro":
        conn = scratch.connection(scratch.ro_dn, scratch.ro_password)
    else:
        conn = scratch.connection()
    conn.search(scratch.config_nc, "(objectClass=protocolCfgSMTPServer)", attributes=[FLAGS])
    assert conn.result["result"] == 4  # sizeLimitExceeded
    assert len(conn.entries) == 1000

    entries = list(
        conn.extend.standard.paged_search(
            scratch.config_nc,
            "(objectClass=protocolCfgSMTPServer)",
            attributes=[FLAGS],
            paged_size=500,
            generator=True,
        )
    )
    results = [e for e in entries if e["type"] == "searchResEntry"]
    assert len(results) == expected
    assert conn.result["result"] == 0
    conn.unbind()


# ---------------------------------------------------------------------------
# TLS
# ---------------------------------------------------------------------------


def test_starttls_with_the_ca(slapd: SlapdServer) -> None:
    server = ldap3.Server(slapd.host, port=slapd.ldap_port, tls=_tls(slapd.ca_file))
    conn = ldap3.Connection(server, slapd.svc_dn, slapd.svc_password)
    conn.open()
    assert conn.start_tls()
    assert conn.bind()
    assert conn.extend.standard.who_am_i() == "dn:" + slapd.svc_dn
    conn.unbind()


def test_ldaps_with_the_ca(slapd: SlapdServer) -> None:
    server = ldap3.Server(slapd.host, port=slapd.ldaps_port, use_ssl=True, tls=_tls(slapd.ca_file))
    conn = ldap3.Connection(server, slapd.ro_dn, slapd.ro_password, auto_bind=True)
    assert conn.extend.standard.who_am_i() == "dn:" + slapd.ro_dn
    conn.unbind()


def test_localhost_name_matches_the_certificate(slapd: SlapdServer) -> None:
    server = ldap3.Server("localhost", port=slapd.ldaps_port, use_ssl=True, tls=_tls(slapd.ca_file))
    conn = ldap3.Connection(server, auto_bind=True)
    conn.unbind()


def test_starttls_with_wrong_ca_is_refused(slapd: SlapdServer) -> None:
    server = ldap3.Server(slapd.host, port=slapd.ldap_port, tls=_tls(slapd.wrong_ca_file))
    conn = ldap3.Connection(server)
    conn.open()
    with pytest.raises((LDAPStartTLSError, LDAPSocketOpenError, ssl.SSLError)):
        conn.start_tls()
    # (ldap3 leaves the socket closed: a later unbind() raises LDAPSocketSendError.)


def test_ldaps_with_wrong_ca_is_refused(slapd: SlapdServer) -> None:
    server = ldap3.Server(
        slapd.host, port=slapd.ldaps_port, use_ssl=True, tls=_tls(slapd.wrong_ca_file)
    )
    conn = ldap3.Connection(server, slapd.ro_dn, slapd.ro_password)
    with pytest.raises(LDAPSocketOpenError):
        conn.open()


# ---------------------------------------------------------------------------
# Writes: compare-and-swap and ACLs (on the scratch directory)
# ---------------------------------------------------------------------------


def _cas(conn: ldap3.Connection, dn: str, attr: str, old: int, new: int) -> bool:
    return conn.modify(dn, {attr: [(ldap3.MODIFY_DELETE, [old]), (ldap3.MODIFY_ADD, [new])]})


def test_svc_compare_and_swap(scratch: SlapdServer) -> None:
    dn = vserver_dn(SCRATCH_SPECS[0])
    conn = scratch.connection(scratch.svc_dn, scratch.svc_password)
    assert _cas(conn, dn, FLAGS, 3, 1), conn.result
    assert _read_attr(scratch, dn, FLAGS) == 1

    # Stale old value: noSuchAttribute (16) and nothing changes.
    assert not _cas(conn, dn, FLAGS, 3, 5)
    assert conn.result["result"] == 16
    assert _read_attr(scratch, dn, FLAGS) == 1
    conn.unbind()


def test_svc_compare_and_swap_on_receive_connector(scratch: SlapdServer) -> None:
    spec = SCRATCH_SPECS[-1]
    dn = connector_dn(spec, spec.connectors[0][0])
    conn = scratch.connection(scratch.svc_dn, scratch.svc_password)
    assert _cas(conn, dn, RC_FLAGS, 5, 13), conn.result
    assert _read_attr(scratch, dn, RC_FLAGS) == 13
    assert not _cas(conn, dn, RC_FLAGS, 5, 13)
    assert conn.result["result"] == 16
    conn.unbind()


def test_racing_compare_and_swap_has_one_winner(scratch: SlapdServer) -> None:
    dn = vserver_dn(SCRATCH_SPECS[1])
    writers = 4
    barrier = threading.Barrier(writers)
    results: list[tuple[bool, int]] = []
    lock = threading.Lock()

    def writer(new: int) -> None:
        conn = scratch.connection(scratch.svc_dn, scratch.svc_password)
        barrier.wait()
        ok = _cas(conn, dn, FLAGS, 3, new)
        with lock:
            results.append((ok, conn.result["result"]))
        conn.unbind()

    threads = [threading.Thread(target=writer, args=(n,)) for n in (1, 5, 17, 21)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sorted(ok for ok, _ in results) == [False, False, False, True]
    assert {rc for ok, rc in results if not ok} == {16}
    assert _read_attr(scratch, dn, FLAGS) in {1, 5, 17, 21}


def test_svc_cannot_write_other_attributes(scratch: SlapdServer) -> None:
    dn = vserver_dn(SCRATCH_SPECS[2])
    conn = scratch.connection(scratch.svc_dn, scratch.svc_password)
    assert not conn.modify(dn, {"adminDisplayName": [(ldap3.MODIFY_REPLACE, ["pwned"])]})
    assert conn.result["result"] == 50  # insufficientAccessRights
    assert _read_attr(scratch, dn, "adminDisplayName") == "Default SMTP Virtual Server"
    assert not conn.delete(dn)
    assert conn.result["result"] == 50
    conn.unbind()


@pytest.mark.parametrize("who", ["ro", "anonymous"])
def test_read_only_and_anonymous_cannot_write(scratch: SlapdServer, who) -> None:
    dn = vserver_dn(SCRATCH_SPECS[3])
    if who == "ro":
        conn = scratch.connection(scratch.ro_dn, scratch.ro_password)
    else:
        conn = scratch.connection()
    assert not _cas(conn, dn, FLAGS, 3, 1)
    assert conn.result["result"] in (8, 50)  # slapd: 50; AD/Samba may say 1 or 8
    assert not conn.modify(dn, {FLAGS: [(ldap3.MODIFY_REPLACE, [1])]})
    assert _read_attr(scratch, dn, FLAGS) == 3
    conn.unbind()


# ---------------------------------------------------------------------------
# Odd server names
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", ODD_NAMES)
def test_server_names_with_special_characters(scratch: SlapdServer, name: str) -> None:
    spec = next(s for s in SCRATCH_SPECS if s.name == name)
    conn = scratch.connection(scratch.ro_dn, scratch.ro_password)
    filt = f"(&(objectClass=msExchExchangeServer)(cn={escape_filter_chars(name)}))"
    conn.search(scratch.config_nc, filt, attributes=["cn", "networkAddress"])
    assert len(conn.entries) == 1, filt
    entry = conn.entries[0]
    assert entry.cn.value == name
    assert f"netbios:{name}" in entry.networkAddress.values
    assert dn_key(entry.entry_dn) == dn_key(server_dn(spec))
    # The DNs built with escape_rdn address the same entries.
    assert conn.search(vserver_dn(spec), "(objectClass=*)", ldap3.BASE, attributes=[FLAGS])
    assert conn.entries[0][FLAGS].value == 3
    assert conn.search(computer_dn(spec), "(objectClass=computer)", ldap3.BASE)
    conn.unbind()


# ---------------------------------------------------------------------------
# Lifecycle helpers: stop/start/restart/reset/add_ldif/modify
# ---------------------------------------------------------------------------


def test_lifecycle(tmp_path: Path) -> None:
    first = ServerSpec("LIFE01", smtp_flags=[7])
    ldif = tmp_path / "one.ldif"
    write_forest(ldif, [first])
    server = SlapdServer(tmp_path / "server")
    with server:
        server.start([ldif])
        url, pid = server.ldap_url, server.pid
        server.modify(vserver_dn(first), {FLAGS: [(ldap3.MODIFY_REPLACE, [5])]})

        server.stop()
        assert server.pid is None
        with pytest.raises(LDAPSocketOpenError):
            ldap3.Connection(url, auto_bind=True)

        server.restart()  # same ports, same data
        assert server.ldap_url == url and server.pid != pid
        assert _read_attr(server, vserver_dn(first), FLAGS) == 5

        # Online add of more servers (new admin group) into the running directory.
        # include_base=False still yields the org/admin-group containers: the org exists.
        extra = ServerSpec("LIFE02", admin_group="Other Group", smtp_flags=[3])
        text = "".join(forest_ldif([extra], include_base=False))
        with pytest.raises(RuntimeError, match="entryAlreadyExists"):
            server.add_ldif(text)
        assert server.add_ldif(text, ignore_existing=True) == 7  # AG, Servers, server, ...
        assert _read_attr(server, vserver_dn(extra), FLAGS) == 3
        computer = server.connection(server.ro_dn, server.ro_password)
        assert computer.search(computer_dn(extra), "(dNSHostName=life02.corp.example)")
        computer.unbind()

        # Reset to a different forest.
        other = tmp_path / "two.ldif"
        write_forest(other, [ServerSpec("RESET01", smtp_flags=[1])])
        server.reset([other])
        assert server.ldap_url == url
        conn = server.admin_connection()
        conn.search(server.config_nc, "(objectClass=msExchExchangeServer)", attributes=["cn"])
        assert [e.cn.value for e in conn.entries] == ["RESET01"]
        conn.unbind()
    assert server.pid is None


def test_forest_ldif_streams() -> None:
    endless = (ServerSpec(f"S{i}", smtp_flags=[1]) for i in itertools.count())
    chunks = list(itertools.islice(forest_ldif(endless), 200))
    assert len(chunks) == 200
    assert all(c.startswith("dn") and c.endswith("\n\n") for c in chunks)
