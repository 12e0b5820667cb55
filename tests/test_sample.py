"""The bundled sample forest (bot/sample.py + bot/data/sample_forest.ldif) on ldap3's mock."""

from __future__ import annotations

import time

import pytest
from ldap3 import BASE, MODIFY_ADD, MODIFY_DELETE, SUBTREE

from bot import sample
from bot.sample import (
    SAMPLE_BASE,
    SAMPLE_CONFIG_NC,
    SampleDataError,
    parse_ldif,
    sample_connection,
)

EXCHANGE_BASE = "CN=Microsoft Exchange,CN=Services," + SAMPLE_CONFIG_NC
ORG = "CN=Contoso," + EXCHANGE_BASE
AG1 = "CN=First Administrative Group,CN=Administrative Groups," + ORG
AG2 = "CN=Exchange Administrative Group (FYDIBOHF23SPDLT),CN=Administrative Groups," + ORG
AUDIT_FILTER = (
    "(|(objectClass=protocolCfgSMTPServer)(objectClass=msExchSmtpReceiveConnector)"
    "(objectClass=msExchExchangeServer))"
)
AUDIT_ATTRIBUTES = [
    "objectClass",
    "cn",
    "adminDisplayName",
    "msExchAuthenticationFlags",
    "msExchSMTPReceiveInboundSecurityFlag",
    "serialNumber",
    "versionNumber",
    "networkAddress",
]


def vs_dn(server: str, instance: str = "1") -> str:
    return f"CN={instance},CN=SMTP,CN=Protocols,CN={server},CN=Servers,{AG1}"


def connector_dn(server: str, name: str) -> str:
    return f"CN={name},CN=SMTP Receive Connectors,CN=Protocols,CN={server},CN=Servers,{AG2}"


@pytest.fixture
def conn():
    connection = sample_connection()
    yield connection
    connection.unbind()


def classes(entry: dict) -> set[str]:
    return {c.lower() for c in entry["attributes"]["objectClass"]}


def audit_entries(connection) -> list[dict]:
    return list(
        connection.extend.standard.paged_search(
            search_base=EXCHANGE_BASE,
            search_filter=AUDIT_FILTER,
            search_scope=SUBTREE,
            attributes=AUDIT_ATTRIBUTES,
            paged_size=500,
            generator=True,
        )
    )


def server_name_of(dn: str) -> str:
    """The Exchange server a target DN belongs to: the RDN right before CN=Servers."""
    parts = dn.split(",")
    index = [p.lower() for p in parts].index("cn=servers")
    return parts[index - 1].split("=", 1)[1]


def read(connection, dn: str, attributes: list[str]) -> dict:
    assert connection.search(dn, "(objectClass=*)", BASE, attributes=attributes), connection.result
    assert len(connection.response) == 1
    return connection.response[0]["attributes"]


# -- loading ---------------------------------------------------------------------------------


def test_sample_loads_bound_and_fast():
    sample.sample_records.cache_clear()
    timings = []
    for _ in range(3):
        started = time.perf_counter()
        connection = sample_connection()
        timings.append(time.perf_counter() - started)
        assert connection.bound
        assert connection.strategy.no_real_dsa  # the offline mock, not a socket
        connection.unbind()
    assert min(timings) < 0.3, timings


def test_every_entry_has_its_parent(conn):
    dns = {dn.lower() for dn in conn.server.dit if dn.lower() != "cn=schema"}
    roots = {SAMPLE_BASE.lower(), SAMPLE_CONFIG_NC.lower()}
    assert len(dns) > 80
    for dn in dns:
        if dn in roots:
            continue
        parent = dn.split(",", 1)[1]
        assert parent in dns, f"{dn} has no parent entry"


def test_connections_are_isolated(conn):
    dn = vs_dn("SBS01")
    assert conn.modify(
        dn, {"msExchAuthenticationFlags": [(MODIFY_DELETE, ["7"]), (MODIFY_ADD, ["5"])]}
    )
    assert read(conn, dn, ["msExchAuthenticationFlags"])["msExchAuthenticationFlags"] == 5
    other = sample_connection()
    assert read(other, dn, ["msExchAuthenticationFlags"])["msExchAuthenticationFlags"] == 7


# -- naming contexts -------------------------------------------------------------------------


def test_naming_contexts_as_constants_and_server_info(conn):
    assert SAMPLE_BASE == "DC=contoso,DC=example"
    assert SAMPLE_CONFIG_NC == "CN=Configuration,DC=contoso,DC=example"
    info = conn.server.info
    assert info.other["configurationNamingContext"] == [SAMPLE_CONFIG_NC]
    assert info.other["defaultNamingContext"] == [SAMPLE_BASE]
    assert SAMPLE_CONFIG_NC in info.naming_contexts
    assert SAMPLE_BASE in info.naming_contexts


def test_naming_contexts_from_a_root_dse_search(conn):
    assert conn.search(
        "",
        "(objectClass=*)",
        BASE,
        attributes=["configurationNamingContext", "defaultNamingContext"],
    )
    [entry] = conn.response
    assert entry["dn"] == ""
    assert entry["attributes"]["configurationNamingContext"] == [SAMPLE_CONFIG_NC]
    assert entry["attributes"]["defaultNamingContext"] == [SAMPLE_BASE]
    assert set(entry["attributes"]) == {"configurationNamingContext", "defaultNamingContext"}


def test_root_dse_only_answers_a_base_search(conn):
    assert not conn.search("", "(objectClass=*)", SUBTREE, attributes=["cn"])
    assert conn.result["result"] == 32


def test_domain_search_stays_in_its_naming_context(conn):
    conn.search(SAMPLE_BASE, "(objectClass=*)", SUBTREE, attributes=["cn"])
    dns = [e["dn"].lower() for e in conn.response]
    assert dns and not [dn for dn in dns if dn.endswith(SAMPLE_CONFIG_NC.lower())]
    conn.search(SAMPLE_CONFIG_NC, "(objectClass=computer)", SUBTREE, attributes=["cn"])
    assert conn.response == []


# -- the audit search ------------------------------------------------------------------------


def test_paged_search_finds_servers_in_two_admin_groups(conn):
    entries = audit_entries(conn)
    assert entries
    for entry in entries:
        assert entry["type"] == "searchResEntry"
        assert {"dn", "attributes", "raw_attributes"} <= set(entry)
    servers = [e for e in entries if "msexchexchangeserver" in classes(e)]
    assert len(servers) >= 10
    groups = {e["dn"].split(",CN=Servers,", 1)[1] for e in servers}
    assert groups == {AG1, AG2}
    names = {e["attributes"]["cn"] for e in servers}
    assert {"EX01", "EX03-PARTNER", "SBS01", "EX16A", "EX16B", "EX19-EDGE"} <= names


def test_paged_search_with_small_pages_yields_the_same_entries(conn):
    everything = {e["dn"] for e in audit_entries(conn)}
    paged = conn.extend.standard.paged_search(
        EXCHANGE_BASE, AUDIT_FILTER, SUBTREE, attributes=["cn"], paged_size=7, generator=True
    )
    assert {e["dn"] for e in paged} == everything


def test_both_target_kinds_under_their_servers(conn):
    entries = audit_entries(conn)
    servers = {e["dn"].lower() for e in entries if "msexchexchangeserver" in classes(e)}
    vservers = [e for e in entries if "protocolcfgsmtpserver" in classes(e)]
    connectors = [e for e in entries if "msexchsmtpreceiveconnector" in classes(e)]
    assert len(vservers) == 9
    assert len(connectors) == 19
    for entry in vservers + connectors:
        server = server_name_of(entry["dn"])
        assert any(s.startswith(f"cn={server.lower()},cn=servers,") for s in servers)
    assert {server_name_of(e["dn"]) for e in vservers} == {
        "EX01",
        "EX02",
        "EX03-PARTNER",
        "EX04",
        "EX05",
        "EX06",
        "SBS01",
    }
    assert {server_name_of(e["dn"]) for e in connectors} == {"EX16A", "EX16B", "EX19A"}


def test_results_come_in_ldif_order_parents_first(conn):
    # Server order as sent; ldap3's own paged_search generator yields each page reversed.
    def search() -> list[str]:
        assert conn.search(EXCHANGE_BASE, AUDIT_FILTER, SUBTREE, attributes=["cn"], paged_size=500)
        return [e["dn"] for e in conn.response]

    dns = search()
    assert dns == search()
    for index, dn in enumerate(dns):
        if dn.lower().startswith("cn=1,cn=smtp,"):
            server = dn.split(",", 3)[3]
            assert server in dns[:index]


def test_server_versions(conn):
    entries = audit_entries(conn)
    by_name = {e["attributes"]["cn"]: e for e in entries if "msexchexchangeserver" in classes(e)}
    ex01 = by_name["EX01"]["attributes"]
    assert ex01["serialNumber"] == ["Version 6.5 (Build 7638.2: Service Pack 2)"]
    assert ex01["versionNumber"] == 7638
    assert {"netbios:EX01", "ncacn_np:EX01", "ncacn_ip_tcp:ex01.contoso.example"} <= set(
        ex01["networkAddress"]
    )
    ex16a = by_name["EX16A"]["attributes"]
    assert ex16a["serialNumber"] == ["Version 15.1 (Build 2507.6)"]
    assert ex16a["versionNumber"] == 1942061522
    assert by_name["EX19A"]["attributes"]["serialNumber"][0].startswith("Version 15.2")


def test_smtp_virtual_server_flags(conn):
    flags = {}
    for entry in audit_entries(conn):
        if "protocolcfgsmtpserver" in classes(entry):
            key = (server_name_of(entry["dn"]), entry["attributes"]["cn"])
            flags[key] = entry["attributes"].get("msExchAuthenticationFlags")
    assert flags == {
        ("EX01", "1"): 1,
        ("EX01", "2"): 5,
        ("EX02", "1"): 3,
        ("EX03-PARTNER", "1"): 1,
        ("EX03-PARTNER", "2"): 7,
        ("EX04", "1"): None,  # attribute absent: verdict unknown
        ("EX05", "1"): b"seven",  # not an integer: the Integer formatter gives the raw bytes
        ("EX06", "1"): 6,
        ("SBS01", "1"): 7,
    }
    assert {1, 3, 5, 6, 7} <= {v for v in flags.values() if isinstance(v, int)}


def test_admin_display_name_present_on_some_virtual_servers_only(conn):
    names = {}
    for entry in audit_entries(conn):
        if "protocolcfgsmtpserver" in classes(entry):
            names[entry["dn"]] = entry["attributes"].get("adminDisplayName")
    assert names[vs_dn("EX01")] == "Default SMTP Virtual Server"
    assert names[vs_dn("EX03-PARTNER", "2")] == "Fabrikam Partner SMTP Virtual Server"
    assert names[vs_dn("EX04")] is None
    assert names[vs_dn("EX01", "2")] is None


def test_receive_connector_flags(conn):
    flags = {}
    for entry in audit_entries(conn):
        if "msexchsmtpreceiveconnector" in classes(entry):
            flags[entry["attributes"]["cn"]] = entry["attributes"][
                "msExchSMTPReceiveInboundSecurityFlag"
            ]
    assert flags["Default Frontend EX16A"] == 31
    assert flags["Client Frontend EX16A"] == 15
    assert flags["Partner Relay EX16A"] == 5  # BasicAuth without BasicAuthRequireTLS
    assert flags["Anonymous Relay EX16A"] == 1
    assert flags["Scanner EX16B"] == 20  # BasicAuth + ExchangeServer, no Tls
    assert flags["App Relay EX16B"] == 3  # no Basic
    assert {31, 5, 15, 3, 20, 1} <= set(flags.values())
    plaintext_basic = {name for name, value in flags.items() if value & 4 and not value & 8}
    assert plaintext_basic == {"Partner Relay EX16A", "Scanner EX16B"}


def test_partner_server_has_basic_on(conn):
    attrs = read(conn, vs_dn("EX03-PARTNER", "2"), ["msExchAuthenticationFlags"])
    assert attrs["msExchAuthenticationFlags"] & 2


# -- the domain side -------------------------------------------------------------------------


def test_computer_by_dns_host_name(conn):
    assert conn.search(
        SAMPLE_BASE,
        "(&(objectClass=computer)(dNSHostName=ex01.contoso.example))",
        SUBTREE,
        attributes=["operatingSystem", "dNSHostName"],
    )
    [entry] = conn.response
    assert entry["dn"] == "CN=EX01,OU=Exchange Servers,DC=contoso,DC=example"
    assert entry["attributes"]["operatingSystem"] == "Windows Server 2003"


def test_small_business_server_computer(conn):
    assert conn.search(
        SAMPLE_BASE,
        "(&(objectClass=computer)(operatingSystem=*Small Business Server*))",
        SUBTREE,
        attributes=["operatingSystem", "dNSHostName"],
    )
    [entry] = conn.response
    assert entry["attributes"]["operatingSystem"] == "Windows Small Business Server 2003"
    assert entry["attributes"]["dNSHostName"] == "sbs01.contoso.example"
    server = read(conn, f"CN=SBS01,CN=Servers,{AG1}", ["networkAddress"])
    assert "ncacn_ip_tcp:sbs01.contoso.example" in server["networkAddress"]


def test_every_domain_joined_server_has_a_computer(conn):
    entries = audit_entries(conn)
    servers = [e for e in entries if "msexchexchangeserver" in classes(e)]
    seen = {}
    for server in servers:
        fqdn = next(
            a.split(":", 1)[1]
            for a in server["attributes"]["networkAddress"]
            if a.startswith("ncacn_ip_tcp:")
        )
        conn.search(
            SAMPLE_BASE,
            f"(&(objectClass=computer)(dNSHostName={fqdn}))",
            SUBTREE,
            attributes=["operatingSystem"],
        )
        seen[server["attributes"]["cn"]] = [
            e["attributes"]["operatingSystem"] for e in conn.response
        ]
    assert seen.pop("EX19-EDGE") == []  # Edge Transport is not domain-joined
    assert all(len(v) == 1 for v in seen.values()), seen
    assert seen["EX01"] == ["Windows Server 2003"]
    assert seen["EX16A"][0].startswith("Windows Server 2016")
    assert seen["SBS01"] == ["Windows Small Business Server 2003"]


def test_object_category_short_name_like_ad(conn):
    conn.search(SAMPLE_BASE, "(objectCategory=computer)", SUBTREE, attributes=["cn"])
    by_name = len(conn.response)
    conn.search(
        SAMPLE_BASE,
        f"(objectCategory=CN=Computer,CN=Schema,{SAMPLE_CONFIG_NC})",
        SUBTREE,
        attributes=["cn"],
    )
    assert by_name == len(conn.response) == 12  # 10 servers, DC01, a workstation
    conn.search(EXCHANGE_BASE, "(objectCategory=msExchExchangeServer)", attributes=["cn"])
    assert len(conn.response) == 11


# -- reads and writes ------------------------------------------------------------------------


def test_base_scope_read_of_one_dn(conn):
    dn = connector_dn("EX16A", "Default Frontend EX16A")
    attrs = read(conn, dn, ["cn", "msExchSMTPReceiveInboundSecurityFlag", "objectClass"])
    assert attrs["cn"] == "Default Frontend EX16A"
    assert attrs["msExchSMTPReceiveInboundSecurityFlag"] == 31
    assert attrs["objectClass"] == ["top", "msExchSmtpReceiveConnector"]
    assert not conn.search("CN=NOPE," + EXCHANGE_BASE, "(objectClass=*)", BASE, attributes=["cn"])
    assert conn.result["result"] == 32


def test_compare_and_swap_modify(conn):
    dn = vs_dn("EX03-PARTNER", "2")
    change = {"msExchAuthenticationFlags": [(MODIFY_DELETE, ["7"]), (MODIFY_ADD, ["5"])]}
    assert conn.modify(dn, change), conn.result
    assert read(conn, dn, ["msExchAuthenticationFlags"])["msExchAuthenticationFlags"] == 5
    # Stale old value: the mock refuses without crashing (its result code is not AD's 16).
    assert not conn.modify(dn, change)
    assert conn.result["result"] != 0
    assert read(conn, dn, ["msExchAuthenticationFlags"])["msExchAuthenticationFlags"] == 5


def test_receive_connector_compare_and_swap(conn):
    dn = connector_dn("EX16A", "Partner Relay EX16A")
    change = {
        "msExchSMTPReceiveInboundSecurityFlag": [(MODIFY_DELETE, ["5"]), (MODIFY_ADD, ["13"])]
    }
    assert conn.modify(dn, change), conn.result
    attrs = read(conn, dn, ["msExchSMTPReceiveInboundSecurityFlag"])
    assert attrs["msExchSMTPReceiveInboundSecurityFlag"] == 13


# -- the LDIF reader -------------------------------------------------------------------------


def test_parse_ldif_folding_base64_and_comments():
    text = (
        "# a comment\n"
        "version: 1\n"
        "\n"
        "dn: CN=Folded Na\n"
        " me,DC=x\n"
        "objectClass: top\n"
        "# comment inside a record\n"
        "description:: aMOpbGxv\n"
        "Description: second\n"
        "\n\n"
        "dn: CN=b,DC=x\n"
        "cn: b"
    )
    assert parse_ldif(text) == [
        (
            "CN=Folded Name,DC=x",
            {"objectClass": ["top"], "description": ["héllo", "second"]},
        ),
        ("CN=b,DC=x", {"cn": ["b"]}),
    ]


@pytest.mark.parametrize(
    "text",
    [
        "dn: CN=a,DC=x\nchangetype: modify\n",
        "cn: no dn first\n",
        "dn: CN=a,DC=x\nphoto:< file:///etc/passwd\n",
        "dn: CN=a,DC=x\nnot an attribute line\n",
    ],
)
def test_parse_ldif_rejects_what_it_does_not_support(text):
    with pytest.raises(SampleDataError):
        parse_ldif(text)
