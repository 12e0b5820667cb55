"""Pure-Python LDIF generator for an Exchange forest as Active Directory lays it out.

Used by the test fixtures (loaded into a private slapd, see ``slapd_server.py``) and by the
benchmark (10,000 servers). ``forest_ldif`` streams: it yields one LDIF record at a time and
keeps only the set of organization/admin-group containers it has already written.

DN layout (lower-case ``cn=`` as slapd stores it; AD would return ``CN=``)::

    cn=<n>,cn=SMTP,cn=Protocols,cn=<server>,cn=Servers,cn=<admin group>,
        cn=Administrative Groups,cn=<org>,cn=Microsoft Exchange,cn=Services,
        cn=Configuration,dc=corp,dc=example
    cn=<connector>,cn=SMTP Receive Connectors,cn=Protocols,cn=<server>,cn=Servers,...
    cn=<server>,cn=Computers,dc=corp,dc=example           (computer object)
    cn=<server>,ou=Domain Controllers,dc=corp,dc=example  (ServerSpec.domain_controller)
"""

from __future__ import annotations

import base64
import hashlib
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from ldap3.utils.dn import escape_rdn

BASE = "dc=corp,dc=example"
CONFIG_NC = "cn=Configuration," + BASE

# Directory accounts created by forest_ldif(include_base=True). The slapd ACLs in
# slapd_server.py are written for exactly these DNs.
SERVICE_ACCOUNTS_OU = "ou=Service Accounts"
SVC_CN, SVC_PASSWORD = "authguard-svc", "svc-secret-1"  # may write the two flag attributes
RO_CN, RO_PASSWORD = "authguard-ro", "ro-secret-1"  # read-only

DEFAULT_VSERVER_NAME = "Default SMTP Virtual Server"


@dataclass
class ServerSpec:
    """One Exchange server and what hangs below it."""

    name: str
    admin_group: str = "First Administrative Group"
    org: str = "Contoso"
    serial: str | None = "Version 6.5 (Build 7638.2: Service Pack 2)"
    version_number: int | None = 7638
    fqdn: str | None = None  # default f"{name.lower()}.corp.example"
    operating_system: str = "Windows Server 2003"
    # Also create the computer object in the domain NC (cn=Computers, or
    # ou=Domain Controllers when domain_controller is set).
    computer: bool = True
    # One protocolCfgSMTPServer per item, cn=1, cn=2, ...; None = attribute absent.
    smtp_flags: list[int | None] = field(default_factory=list)
    # adminDisplayName per virtual server; missing items default to
    # "Default SMTP Virtual Server" for the first and absent for the others; None = absent.
    smtp_display_names: list[str | None] = field(default_factory=list)
    # (connector name, msExchSMTPReceiveInboundSecurityFlag or None = attribute absent)
    connectors: list[tuple[str, int | None]] = field(default_factory=list)
    # Extra (not in the original brief): put the computer object under
    # ou=Domain Controllers instead of cn=Computers (SBS servers are always DCs).
    domain_controller: bool = False

    @property
    def host(self) -> str:
        return self.fqdn if self.fqdn is not None else f"{self.name.lower()}.corp.example"


# ---------------------------------------------------------------------------
# DN helpers (usable by tests to find what the generator wrote)
# ---------------------------------------------------------------------------


def rdn(value: str) -> str:
    return "cn=" + escape_rdn(value)


def exchange_dn(org: str = "Contoso", *, base: str = BASE) -> str:
    """cn=<org>,cn=Microsoft Exchange,cn=Services,cn=Configuration,<base>."""
    return f"{rdn(org)},cn=Microsoft Exchange,cn=Services,cn=Configuration,{base}"


def admin_group_dn(admin_group: str, org: str = "Contoso", *, base: str = BASE) -> str:
    return f"{rdn(admin_group)},cn=Administrative Groups,{exchange_dn(org, base=base)}"


def server_dn(spec: ServerSpec, *, base: str = BASE) -> str:
    ag = admin_group_dn(spec.admin_group, spec.org, base=base)
    return f"{rdn(spec.name)},cn=Servers,{ag}"


def vserver_dn(spec: ServerSpec, number: int = 1, *, base: str = BASE) -> str:
    """DN of SMTP virtual server ``number`` (1-based, the IIS instance number)."""
    return f"cn={number},cn=SMTP,cn=Protocols,{server_dn(spec, base=base)}"


def connector_dn(spec: ServerSpec, connector: str, *, base: str = BASE) -> str:
    return f"{rdn(connector)},cn=SMTP Receive Connectors,cn=Protocols,{server_dn(spec, base=base)}"


def computer_dn(spec: ServerSpec, *, base: str = BASE) -> str:
    parent = "ou=Domain Controllers" if spec.domain_controller else "cn=Computers"
    return f"{rdn(spec.name)},{parent},{base}"


_HEX = set("0123456789abcdefABCDEF")


def dn_key(dn: str) -> tuple[tuple[str, str], ...]:
    """Normalized form of a DN for comparisons: ((type, value), ...) lower-cased, escapes
    resolved. slapd hands DNs back with hex escapes (``cn=EX\\2C02`` for ``cn=EX\\,02``)
    and AD with ``CN=``; both compare equal to what the helpers above produce."""
    rdns: list[tuple[str, str]] = []
    attr_type: str | None = None
    buf = bytearray()
    i = 0

    def flush() -> None:
        value = buf.decode("utf-8").strip().lower()
        rdns.append(((attr_type or "").strip().lower(), value))
        buf.clear()

    while i < len(dn):
        c = dn[i]
        if c == "\\" and i + 1 < len(dn):
            if i + 2 < len(dn) and dn[i + 1] in _HEX and dn[i + 2] in _HEX:
                buf.append(int(dn[i + 1 : i + 3], 16))
                i += 3
                continue
            buf.extend(dn[i + 1].encode("utf-8"))
            i += 2
            continue
        if c == "=" and attr_type is None:
            attr_type = buf.decode("utf-8")
            buf.clear()
        elif c in ",+" and attr_type is not None:
            flush()
            attr_type = None
        else:
            buf.extend(c.encode("utf-8"))
        i += 1
    if attr_type is not None:
        flush()
    return tuple(rdns)


def svc_dn(base: str = BASE) -> str:
    return f"cn={SVC_CN},{SERVICE_ACCOUNTS_OU},{base}"


def ro_dn(base: str = BASE) -> str:
    return f"cn={RO_CN},{SERVICE_ACCOUNTS_OU},{base}"


# ---------------------------------------------------------------------------
# LDIF encoding
# ---------------------------------------------------------------------------

_SAFE_INIT_EXCLUDED = {" ", ":", "<"}


def _needs_base64(value: str) -> bool:
    # RFC 2849 SAFE-STRING: printable ASCII, no NUL/CR/LF, no leading space/colon/less-than,
    # and (for round-tripping through tools) no trailing space.
    if not value:
        return False
    if value[0] in _SAFE_INIT_EXCLUDED or value.endswith(" "):
        return True
    return any(not (32 <= ord(c) < 127) for c in value)


def ldif_line(attr: str, value: str | int | bytes) -> str:
    if isinstance(value, bytes):
        return f"{attr}:: {base64.b64encode(value).decode('ascii')}\n"
    text = str(value)
    if _needs_base64(text):
        return f"{attr}:: {base64.b64encode(text.encode('utf-8')).decode('ascii')}\n"
    return f"{attr}: {text}\n"


def ldif_record(dn: str, attrs: Iterable[tuple[str, str | int | bytes | None]]) -> str:
    """One LDIF record (ending in a blank line); attributes whose value is None are skipped."""
    lines = [ldif_line("dn", dn)]
    lines.extend(ldif_line(a, v) for a, v in attrs if v is not None)
    lines.append("\n")
    return "".join(lines)


def ssha(password: str, salt: bytes | None = None) -> str:
    """A {SSHA} userPassword value (slapd checks it natively). Deterministic by default."""
    if salt is None:
        salt = hashlib.sha256(b"authguard-test:" + password.encode("utf-8")).digest()[:8]
    digest = hashlib.sha1(password.encode("utf-8") + salt, usedforsecurity=False).digest()
    return "{SSHA}" + base64.b64encode(digest + salt).decode("ascii")


def _container(dn: str, cn: str, *classes: str) -> str:
    return ldif_record(
        dn, [("objectClass", "top"), *(("objectClass", c) for c in classes), ("cn", cn)]
    )


# ---------------------------------------------------------------------------
# Generator
# ---------------------------------------------------------------------------


def _skeleton(base: str) -> Iterator[str]:
    dc = base.split(",", 1)[0].split("=", 1)[1]
    yield ldif_record(base, [("objectClass", "top"), ("objectClass", "domain"), ("dc", dc)])
    config = f"cn=Configuration,{base}"
    yield _container(config, "Configuration", "container")
    yield _container(f"cn=Services,{config}", "Services", "container")
    yield _container(
        f"cn=Microsoft Exchange,cn=Services,{config}",
        "Microsoft Exchange",
        "container",
        "msExchConfigurationContainer",
    )
    # Domain side.
    yield _container(f"cn=Computers,{base}", "Computers", "container")
    yield ldif_record(
        f"ou=Domain Controllers,{base}",
        [
            ("objectClass", "top"),
            ("objectClass", "organizationalUnit"),
            ("ou", "Domain Controllers"),
        ],
    )
    yield ldif_record(
        f"{SERVICE_ACCOUNTS_OU},{base}",
        [("objectClass", "top"), ("objectClass", "organizationalUnit"), ("ou", "Service Accounts")],
    )
    for cn, password in ((SVC_CN, SVC_PASSWORD), (RO_CN, RO_PASSWORD)):
        yield ldif_record(
            f"cn={cn},{SERVICE_ACCOUNTS_OU},{base}",
            [
                ("objectClass", "top"),
                ("objectClass", "applicationProcess"),
                ("objectClass", "simpleSecurityObject"),
                ("cn", cn),
                ("userPassword", ssha(password)),
            ],
        )


def _server_entries(spec: ServerSpec, base: str) -> Iterator[str]:
    sdn = server_dn(spec, base=base)
    host = spec.host
    yield ldif_record(
        sdn,
        [
            ("objectClass", "top"),
            ("objectClass", "server"),
            ("objectClass", "msExchExchangeServer"),
            ("cn", spec.name),
            ("serialNumber", spec.serial),
            ("versionNumber", spec.version_number),
            ("networkAddress", f"netbios:{spec.name}"),
            ("networkAddress", f"ncacn_np:{spec.name}"),
            ("networkAddress", f"ncacn_ip_tcp:{host}"),
            (
                "legacyExchangeDN",
                f"/o={spec.org}/ou={spec.admin_group}/cn=Configuration/cn=Servers/cn={spec.name}",
            ),
        ],
    )
    if spec.smtp_flags or spec.connectors:
        yield _container(
            f"cn=Protocols,{sdn}", "Protocols", "container", "msExchProtocolCfgProtocolContainer"
        )
    if spec.smtp_flags:
        yield _container(
            f"cn=SMTP,cn=Protocols,{sdn}",
            "SMTP",
            "container",
            "msExchProtocolCfgSharedContainer",
            "msExchProtocolCfgSMTPContainer",
        )
        for index, flags in enumerate(spec.smtp_flags):
            if index < len(spec.smtp_display_names):
                display = spec.smtp_display_names[index]
            else:
                display = DEFAULT_VSERVER_NAME if index == 0 else None
            yield ldif_record(
                f"cn={index + 1},cn=SMTP,cn=Protocols,{sdn}",
                [
                    ("objectClass", "top"),
                    ("objectClass", "protocolCfg"),
                    ("objectClass", "protocolCfgSMTP"),
                    ("objectClass", "protocolCfgSMTPServer"),
                    ("cn", str(index + 1)),
                    ("adminDisplayName", display),
                    ("msExchAuthenticationFlags", flags),
                ],
            )
    if spec.connectors:
        yield _container(
            f"cn=SMTP Receive Connectors,cn=Protocols,{sdn}", "SMTP Receive Connectors", "container"
        )
        for name, flags in spec.connectors:
            yield ldif_record(
                connector_dn(spec, name, base=base),
                [
                    ("objectClass", "top"),
                    ("objectClass", "msExchSmtpReceiveConnector"),
                    ("cn", name),
                    ("msExchSMTPReceiveInboundSecurityFlag", flags),
                ],
            )
    if spec.computer:
        yield ldif_record(
            computer_dn(spec, base=base),
            [
                ("objectClass", "top"),
                ("objectClass", "computer"),
                ("cn", spec.name),
                ("sAMAccountName", f"{spec.name}$"),
                ("dNSHostName", host),
                ("operatingSystem", spec.operating_system),
                ("msExchExchangeServerLink", sdn),
            ],
        )


def forest_ldif(
    servers: Iterable[ServerSpec], *, base: str = BASE, include_base: bool = True
) -> Iterator[str]:
    """Yield LDIF records (one string each) for an Exchange forest, parents before children.

    ``include_base=True`` also yields the shared skeleton: the suffix entry, cn=Configuration,
    cn=Services, cn=Microsoft Exchange, cn=Computers, ou=Domain Controllers and the two service
    accounts. Organization, Administrative Groups, each admin group and its Servers container
    are yielded the first time a server needs them (in either mode), so with
    ``include_base=False`` the output can be added to a running directory that already has the
    skeleton but not these organizations/admin groups.
    """
    if include_base:
        yield from _skeleton(base)
    seen_orgs: set[str] = set()
    seen_groups: set[tuple[str, str]] = set()
    for spec in servers:
        org_key = spec.org.lower()
        if org_key not in seen_orgs:
            seen_orgs.add(org_key)
            odn = exchange_dn(spec.org, base=base)
            yield ldif_record(
                odn,
                [
                    ("objectClass", "top"),
                    ("objectClass", "container"),
                    ("objectClass", "msExchOrganizationContainer"),
                    ("cn", spec.org),
                    ("legacyExchangeDN", f"/o={spec.org}"),
                ],
            )
            yield _container(
                f"cn=Administrative Groups,{odn}",
                "Administrative Groups",
                "container",
                "msExchAdminGroupContainer",
            )
        group_key = (org_key, spec.admin_group.lower())
        if group_key not in seen_groups:
            seen_groups.add(group_key)
            agdn = admin_group_dn(spec.admin_group, spec.org, base=base)
            yield ldif_record(
                agdn,
                [
                    ("objectClass", "top"),
                    ("objectClass", "msExchAdminGroup"),
                    ("cn", spec.admin_group),
                    ("legacyExchangeDN", f"/o={spec.org}/ou={spec.admin_group}"),
                ],
            )
            yield _container(f"cn=Servers,{agdn}", "Servers", "container", "msExchServersContainer")
        yield from _server_entries(spec, base)


def write_forest(path: str | os.PathLike[str], servers: Iterable[ServerSpec], **kw) -> None:
    """Write forest_ldif(servers, **kw) to ``path`` (streamed, UTF-8)."""
    with Path(path).open("w", encoding="utf-8", newline="\n") as fh:
        for chunk in forest_ldif(servers, **kw):
            fh.write(chunk)
