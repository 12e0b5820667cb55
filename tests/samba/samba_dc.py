"""A private Samba Active Directory domain controller for end-to-end tests.

    dc = SambaDC(tmp_path)  # installs nothing: samba, samba-tool, openssl (scripts/test-samba)
    dc.start()              # TLS, provision, run, Exchange schema, service account, data
    dc.env(db_path)         # AUTHGUARD_* variables for the real CLI, as the service account
    dc.stop()               # SIGTERM by PID, then wait (reap)

What it builds, all under ``workdir`` and on 127.0.0.1 only:

- a throwaway CA and a server certificate for ``IP:127.0.0.1, DNS:localhost`` (openssl), used by
  Samba through its ``tls *file`` options, so ldap3 validates it with
  ``Tls(ca_certs_file=dc.ca_file, validate=CERT_REQUIRED)`` and no ``/etc/hosts`` entry is needed;
- ``samba-tool domain provision`` of realm CORP.EXAMPLE (mdb, no DNS, interfaces=lo only);
- ``samba -i -M single`` with only the LDAP service, as a child process, waited for on LDAPS;
- the Exchange schema objects authguard reads (attributeSchema / classSchema with the real OIDs
  and ``possSuperiors``), activated with ``schemaUpdateNow``;
- a non-admin service account whose only write right is on the two flag attributes, granted by an
  inheritable object ACE on ``CN=Microsoft Exchange`` (``samba-tool dsacl set``) *before* the
  organization is loaded: the Exchange classes carry no default security descriptor, so their
  objects get exactly what they inherit;
- a small Exchange organization (:data:`ORGANIZATION`) in the Configuration NC, plus the
  servers' computer objects in the domain NC.

Samba's AD DC listens on the fixed ports 389/636 (and 3268/3269): run one at a time, with nothing
else on those ports.
"""

from __future__ import annotations

import os
import shutil
import socket
import ssl
import subprocess
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import ldap3

from tests.children import ChildProcess, find_tool

HOST = "127.0.0.1"
LDAP_PORT, LDAPS_PORT = 389, 636
REALM, DOMAIN = "CORP.EXAMPLE", "CORP"
DC_FQDN = "DC1.corp.example"
BASE = "DC=corp,DC=example"
CONFIG_NC = f"CN=Configuration,{BASE}"
SCHEMA_NC = f"CN=Schema,{CONFIG_NC}"
EXCHANGE_DN = f"CN=Microsoft Exchange,CN=Services,{CONFIG_NC}"
ORG = "Contoso"
ORG_DN = f"CN={ORG},{EXCHANGE_DN}"
ADMIN_PASSWORD = "Adm1n-Passw0rd!authguard"
SVC_NAME, SVC_PASSWORD = "authguard-svc", "Svc-Passw0rd!authguard-1"
START_TIMEOUT = 60.0
EX2003_SERIAL = "Version 6.5 (Build 7638.2: Service Pack 2)"
EX2016_SERIAL = "Version 15.1 (Build 2507.6)"
# Exchange 2007+ versionNumber: 0x70000000 | major << 22 | minor << 16 | 0x8000 | build
EX2016_VERSION = 0x70000000 | 15 << 22 | 1 << 16 | 0x8000 | 2507
FIRST_AG = "First Administrative Group"
EX2016_AG = "Exchange Administrative Group (FYDIBOHF23SPDLT)"

# ---------------------------------------------------------------------------------------------
# Schema: real OIDs from the OpenChange copies of the Exchange schema
# (shared/docs/exchange-ad-facts.md, section 6).
#
# PRIVATE ARC: msExchSMTPReceiveInboundSecurityFlag and msExchSmtpReceiveConnector have no
# publicly sourced OID; they use 1.2.840.113556.1.8000.2554.* (Microsoft's arc for
# customer-generated OIDs) with the same made-up suffixes as tests/ldap/exchange.schema. Never
# load them into a real forest. (Samba rejects very long arcs such as 2.25.<uuid>.)
# ---------------------------------------------------------------------------------------------

MSEXCH_AUTH_FLAGS = "msExchAuthenticationFlags"
MSEXCH_RECEIVE_FLAGS = "msExchSMTPReceiveInboundSecurityFlag"
FLAG_ATTRIBUTES = (MSEXCH_AUTH_FLAGS, MSEXCH_RECEIVE_FLAGS)


@dataclass(frozen=True)
class AttributeDef:
    cn: str
    name: str
    oid: str
    syntax: str = "2.5.5.9"  # Integer
    om_syntax: int = 2
    single: bool = True
    guid: str | None = None  # schemaIDGUID; None: Samba makes one


@dataclass(frozen=True)
class ClassDef:
    cn: str
    name: str
    oid: str
    sub_class_of: str
    poss_superiors: tuple[str, ...] = ()
    may_contain: tuple[str, ...] = ()
    guid: str | None = None


ATTRIBUTES: tuple[AttributeDef, ...] = (
    AttributeDef(
        "ms-Exch-Authentication-Flags",
        MSEXCH_AUTH_FLAGS,
        "1.2.840.113556.1.4.7000.102.2003",
        guid="91f5ddfa-b093-11d2-aa06-00c04f8eedd8",
    ),
    # PRIVATE ARC (see above)
    AttributeDef(
        "ms-Exch-SMTP-Receive-Inbound-Security-Flag",
        MSEXCH_RECEIVE_FLAGS,
        "1.2.840.113556.1.8000.2554.1.1",
    ),
)

# Parents before children: Samba checks subClassOf/possSuperiors against the classes it knows.
# CN=Microsoft Exchange itself stays a plain ``container`` (its class, msExchConfigurationContainer,
# has no sourced OID here and authguard never looks at it); CN=SMTP Receive Connectors likewise.
CLASSES: tuple[ClassDef, ...] = (
    ClassDef(
        "ms-Exch-Organization-Container",
        "msExchOrganizationContainer",
        "1.2.840.113556.1.5.7000.62.50020",
        "container",
        ("container",),
        ("legacyExchangeDN",),
        guid="366a319c-a982-11d2-a9ff-00c04f8eedd8",
    ),
    ClassDef(
        "ms-Exch-Admin-Group-Container",
        "msExchAdminGroupContainer",
        "1.2.840.113556.1.5.7000.62.50019",
        "container",
        ("msExchOrganizationContainer",),
        guid="e7a44058-a980-11d2-a9ff-00c04f8eedd8",
    ),
    ClassDef(
        "ms-Exch-Admin-Group",
        "msExchAdminGroup",
        "1.2.840.113556.1.5.7000.62.50011",
        "top",
        ("msExchAdminGroupContainer",),
        ("legacyExchangeDN",),
        guid="e768a58e-a980-11d2-a9ff-00c04f8eedd8",
    ),
    ClassDef(
        "ms-Exch-Servers-Container",
        "msExchServersContainer",
        "1.2.840.113556.1.5.7000.62.50013",
        "container",
        ("msExchAdminGroup",),
        guid="346e5cba-a982-11d2-a9ff-00c04f8eedd8",
    ),
    ClassDef(
        "ms-Exch-Exchange-Server",
        "msExchExchangeServer",
        "1.2.840.113556.1.5.7000.62.50009",
        "server",
        ("msExchServersContainer",),
        ("versionNumber", "networkAddress", "legacyExchangeDN", "serialNumber"),
        guid="01a9aa9c-a981-11d2-a9ff-00c04f8eedd8",
    ),
    ClassDef(
        "ms-Exch-Protocol-Cfg-Protocol-Container",
        "msExchProtocolCfgProtocolContainer",
        "1.2.840.113556.1.5.7000.62.2000",
        "container",
        ("msExchExchangeServer",),
        guid="90f2b634-b09e-11d2-aa06-00c04f8eedd8",
    ),
    ClassDef(
        "ms-Exch-Protocol-Cfg-SMTP-Container",
        "msExchProtocolCfgSMTPContainer",
        "1.2.840.113556.1.5.7000.62.5010",
        "container",
        ("msExchProtocolCfgProtocolContainer",),
    ),
    ClassDef(
        "ms-Exch-Protocol-Cfg",
        "protocolCfg",
        "1.2.840.113556.1.3.68",
        "top",
        ("container",),
        guid="a8df74c0-c5ea-11d1-bbcb-0080c76670c0",
    ),
    ClassDef(
        "ms-Exch-Protocol-Cfg-SMTP",
        "protocolCfgSMTP",
        "1.2.840.113556.1.5.7000.62.5001",
        "protocolCfg",
    ),
    ClassDef(
        "ms-Exch-Protocol-Cfg-SMTP-Server",
        "protocolCfgSMTPServer",
        "1.2.840.113556.1.5.7000.62.5002",
        "protocolCfgSMTP",
        ("msExchProtocolCfgSMTPContainer",),
        (MSEXCH_AUTH_FLAGS,),
        guid="3378ca84-a982-11d2-a9ff-00c04f8eedd8",
    ),
    # PRIVATE ARC (see above)
    ClassDef(
        "ms-Exch-Smtp-Receive-Connector",
        "msExchSmtpReceiveConnector",
        "1.2.840.113556.1.8000.2554.2.3",
        "top",
        ("container",),
        (MSEXCH_RECEIVE_FLAGS,),
    ),
)

# ---------------------------------------------------------------------------------------------
# The organization
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Server:
    """One Exchange server, its SMTP targets and its computer object."""

    name: str
    admin_group: str = FIRST_AG
    serial: str = EX2003_SERIAL
    version_number: int = 7638
    operating_system: str = "Windows Server 2003"
    # (CN of the SMTP virtual server, adminDisplayName, msExchAuthenticationFlags or None)
    virtual_servers: tuple[tuple[str, str | None, int | None], ...] = ()
    # (CN of the receive connector, msExchSMTPReceiveInboundSecurityFlag or None)
    connectors: tuple[tuple[str, int | None], ...] = ()
    # the verdict authguard must give each target, by target CN
    expected: dict[str, str] = field(default_factory=dict)

    @property
    def fqdn(self) -> str:
        return f"{self.name.lower()}.corp.example"

    @property
    def dn(self) -> str:
        return f"CN={self.name},CN=Servers,CN={self.admin_group},CN=Administrative Groups,{ORG_DN}"

    def virtual_server_dn(self, cn: str = "1") -> str:
        return f"CN={cn},CN=SMTP,CN=Protocols,{self.dn}"

    def connector_dn(self, cn: str) -> str:
        return f"CN={cn},CN=SMTP Receive Connectors,CN=Protocols,{self.dn}"

    @property
    def computer_dn(self) -> str:
        return f"CN={self.name},CN=Computers,{BASE}"


ORGANIZATION: tuple[Server, ...] = (
    # Exchange 2003: the default virtual server accepts Anonymous+Basic+Integrated (7), a second
    # one Anonymous only (1).
    Server(
        "EX01",
        virtual_servers=(("1", "Default SMTP Virtual Server", 7), ("2", "Relay SMTP", 1)),
        expected={"1": "warning", "2": "ok"},
    ),
    # Small Business Server 2003: Basic is expected there; exempt through the computer object's
    # operatingSystem, found by its dNSHostName = the ncacn_ip_tcp networkAddress.
    Server(
        "SBS01",
        operating_system="Windows Small Business Server 2003",
        virtual_servers=(("1", "Default SMTP Virtual Server", 7),),
        expected={"1": "exempt"},
    ),
    # Exchange 2003 whose virtual server has no msExchAuthenticationFlags: unknown, never ok.
    Server(
        "EX02",
        virtual_servers=(("1", "Default SMTP Virtual Server", None),),
        expected={"1": "unknown"},
    ),
    # Exchange 2016: Default = Tls+Integrated+BasicAuth+BasicAuthRequireTLS+ExchangeServer (31),
    # a legacy relay with Tls+BasicAuth but no BasicAuthRequireTLS (5).
    Server(
        "EX2016",
        admin_group=EX2016_AG,
        serial=EX2016_SERIAL,
        version_number=EX2016_VERSION,
        operating_system="Windows Server 2016 Standard",
        connectors=(("Default EX2016", 31), ("Legacy Relay EX2016", 5)),
        expected={"Default EX2016": "warning", "Legacy Relay EX2016": "warning"},
    ),
)


def server(name: str) -> Server:
    return next(s for s in ORGANIZATION if s.name == name)


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------


class SambaError(RuntimeError):
    """The DC could not be set up; the message carries the tool's output or the log tail."""


def tool(name: str) -> str:
    """Full path of a program, or a SambaError saying how to get it."""
    found = find_tool(name)
    if found is None:
        raise SambaError(
            f"{name} not found: run scripts/test-samba (installs samba, samba-ad-dc, ...)"
        )
    return found


def available() -> str | None:
    """``None`` when the DC can run here, else why not (for a pytest skip)."""
    for name in ("samba", "samba-tool", "openssl"):
        try:
            tool(name)
        except SambaError as exc:
            return str(exc)
    if os.geteuid() != 0:
        return "the Samba AD DC must run as root"
    return None


def ports_in_use(ports: tuple[int, ...] = (LDAP_PORT, LDAPS_PORT)) -> list[int]:
    """Which of ``ports`` something already listens on at 127.0.0.1."""
    taken = []
    for port in ports:
        with socket.socket() as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind((HOST, port))
            except OSError:
                taken.append(port)
    return taken


def _tool_env() -> dict[str, str]:
    # samba-tool is a system Python program: keep the test interpreter's settings away from it.
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    env["LC_ALL"] = "C.UTF-8"
    return env


def _run(cmd: list[str], timeout: float = 120) -> str:
    proc = subprocess.run(
        cmd, capture_output=True, text=True, check=False, env=_tool_env(), timeout=timeout
    )
    if proc.returncode != 0:
        shown = " ".join(a if "pass" not in a else a.split("=")[0] + "=***" for a in cmd)
        raise SambaError(
            f"{shown} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        )
    return proc.stdout


def _server_cert(openssl: str, tls_dir: Path, name: str, cn: str, san: str) -> None:
    ext = tls_dir / f"{name}.ext"
    ext.write_text(
        "basicConstraints=critical,CA:FALSE\n"
        "keyUsage=critical,digitalSignature,keyEncipherment\n"
        "extendedKeyUsage=serverAuth\n"
        f"subjectAltName={san}\n"
    )
    _run(
        [
            openssl, "req", "-new", "-newkey", "ec",
            "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
            "-keyout", str(tls_dir / f"{name}.key"), "-out", str(tls_dir / f"{name}.csr"),
            "-subj", f"/CN={cn}",
        ]
    )  # fmt: skip
    _run(
        [
            openssl, "x509", "-req", "-in", str(tls_dir / f"{name}.csr"),
            "-CA", str(tls_dir / "ca.pem"), "-CAkey", str(tls_dir / "ca.key"),
            "-set_serial", str(uuid.uuid4().int >> 65), "-days", "30", "-extfile", str(ext),
            "-out", str(tls_dir / f"{name}.pem"),
        ]
    )  # fmt: skip
    (tls_dir / f"{name}.key").chmod(0o600)  # Samba refuses a key others can read


def make_tls(tls_dir: Path) -> None:
    """A throwaway CA with two server certificates, plus an unrelated "wrong" CA.

    ``server.pem`` names ``IP:127.0.0.1, DNS:localhost``: what the suite uses. ``dcname.pem``
    names only ``DC1.corp.example``, like the certificate Samba makes for itself, which nothing
    resolves on a test machine: connecting to 127.0.0.1 needs ``AUTHGUARD_LDAP_TLS_NAME``.
    """
    openssl = tool("openssl")
    tls_dir.mkdir(parents=True, exist_ok=True)
    for name, cn in (("ca", "authguard Samba test CA"), ("wrong-ca", "authguard WRONG CA")):
        _run(
            [
                openssl, "req", "-x509", "-new", "-newkey", "ec",
                "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                "-keyout", str(tls_dir / f"{name}.key"), "-out", str(tls_dir / f"{name}.pem"),
                "-days", "30", "-subj", f"/CN={cn}",
                "-addext", "basicConstraints=critical,CA:TRUE",
                "-addext", "keyUsage=critical,keyCertSign,cRLSign",
            ]
        )  # fmt: skip
    _server_cert(openssl, tls_dir, "server", "127.0.0.1", "IP:127.0.0.1,DNS:localhost")
    _server_cert(openssl, tls_dir, "dcname", DC_FQDN, f"DNS:{DC_FQDN}")


# ---------------------------------------------------------------------------------------------
# the DC
# ---------------------------------------------------------------------------------------------


class SambaDC(ChildProcess):
    """A private Samba AD DC on 127.0.0.1:389/636 holding :data:`ORGANIZATION`."""

    def __init__(self, workdir: Path | str) -> None:
        self.workdir = Path(workdir).resolve()
        super().__init__(self.workdir / "samba.log")
        self.target = self.workdir / "dc"
        self.tls_dir = self.workdir / "tls"
        self.ca_file = self.tls_dir / "ca.pem"
        self.wrong_ca_file = self.tls_dir / "wrong-ca.pem"
        self.smb_conf = self.target / "etc" / "smb.conf"
        self.sam_ldb = self.target / "private" / "sam.ldb"
        self.admin_dn = f"CN=Administrator,CN=Users,{BASE}"
        self.admin_password = ADMIN_PASSWORD
        self.svc_dn = f"CN={SVC_NAME},CN=Users,{BASE}"
        self.svc_password = SVC_PASSWORD
        self.svc_sid: str | None = None
        self.base, self.config_nc, self.exchange_dn = BASE, CONFIG_NC, EXCHANGE_DN
        self.timings: dict[str, float] = {}

    # -- addresses ------------------------------------------------------------------------
    ldap_url = f"ldap://{HOST}:{LDAP_PORT}"
    ldaps_url = f"ldaps://{HOST}:{LDAPS_PORT}"

    def env(self, db: Path | str, **overrides: str) -> dict[str, str]:
        """Environment for the real ``authguard`` CLI: LDAPS as the service account."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("AUTHGUARD_")}
        env.update(
            AUTHGUARD_LDAP_URL=self.ldaps_url,
            AUTHGUARD_LDAP_CA_FILE=str(self.ca_file),
            AUTHGUARD_LDAP_BIND_DN=self.svc_dn,
            AUTHGUARD_LDAP_PASSWORD=self.svc_password,
            AUTHGUARD_DB=str(db),
        )
        env.update(overrides)
        return env

    # -- lifecycle ------------------------------------------------------------------------
    def start(self) -> None:
        """Build and start everything; on any failure the DC is stopped and SambaError raised."""
        reason = available()
        if reason:
            raise SambaError(reason)
        taken = ports_in_use()
        if taken:
            raise SambaError(
                f"127.0.0.1 port(s) {taken} already in use: stop the system slapd/samba "
                "(scripts/test-samba does) and run one AD suite at a time"
            )
        self.workdir.mkdir(parents=True, exist_ok=True)
        try:
            self._timed("tls", lambda: make_tls(self.tls_dir))
            self._timed("provision", self.provision)
            self._timed("first start", self.spawn)
            self._timed("schema", self.extend_schema)
            self._timed("service account", self.create_service_account)
            self._timed("organization", self.load_organization)
        except BaseException:
            self.stop()
            raise

    def _timed(self, label: str, step) -> None:
        started = time.monotonic()
        step()
        self.timings[label] = round(time.monotonic() - started, 2)

    def provision(self) -> None:
        shutil.rmtree(self.target, ignore_errors=True)
        run_dir = self.target / "run"
        (self.target / "log").mkdir(parents=True)
        run_dir.mkdir()
        options = {
            "interfaces": "lo",
            "bind interfaces only": "yes",
            "pid directory": str(run_dir),
            "ncalrpc dir": str(run_dir / "ncalrpc"),
            "log file": str(self.target / "log" / "log.%m"),
            "tls enabled": "yes",
            "tls keyfile": str(self.tls_dir / "server.key"),
            "tls certfile": str(self.tls_dir / "server.pem"),
            "tls cafile": str(self.ca_file),
        }
        _run(
            [
                tool("samba-tool"), "domain", "provision",
                f"--targetdir={self.target}", f"--realm={REALM}", f"--domain={DOMAIN}",
                "--server-role=dc", "--dns-backend=NONE", f"--adminpass={self.admin_password}",
                "--host-name=dc1", f"--host-ip={HOST}", "--backend-store=mdb",
                *(f"--option={key}={value}" for key, value in options.items()),
            ],
        )  # fmt: skip

    def spawn(self, certificate: str = "server") -> None:
        """Run samba in the foreground as a child and wait until LDAPS answers.

        ``certificate`` names the server certificate in the TLS directory (``"server"`` or
        ``"dcname"``, see :func:`make_tls`); it overrides the one in smb.conf.
        """
        if self.running:
            raise SambaError(f"samba already running (pid {self.pid})")
        proc = self.popen(
            [
                tool("samba"), "-i", "-M", "single", "-s", str(self.smb_conf),
                "--option=server services=ldap",
                "--option=dsdb:schema update allowed=true",
                "--option=ldb:nosync=true",
                f"--option=tls certfile={self.tls_dir / (certificate + '.pem')}",
                f"--option=tls keyfile={self.tls_dir / (certificate + '.key')}",
            ],
            env=_tool_env(),
        )  # fmt: skip
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                code = proc.returncode
                self.reap()
                raise SambaError(f"samba exited ({code}); log:\n{self.read_log()}")
            if self._answers():
                return
            time.sleep(0.1)
        self.stop()
        raise SambaError(f"samba did not answer on LDAPS in {START_TIMEOUT}s:\n{self.read_log()}")

    def _answers(self) -> bool:
        try:
            with socket.create_connection((HOST, LDAPS_PORT), timeout=0.5):
                pass
        except OSError:
            return False
        # any of our certificates will do here (restart() may switch to the DC-name one)
        conn = self.connection(None, None, bind=False, valid_names=[DC_FQDN])
        try:
            conn.open()
            return bool(conn.search("", "(objectClass=*)", ldap3.BASE, attributes=["1.1"]))
        except ldap3.core.exceptions.LDAPException:
            return False
        finally:
            conn.unbind()

    def restart(self, certificate: str = "server") -> None:
        """Stop and start again on the same database, with ``certificate``."""
        self.stop()
        self.spawn(certificate)

    def __enter__(self) -> SambaDC:
        return self

    # -- clients --------------------------------------------------------------------------
    def tls(self, valid_names: list[str] | None = None) -> ldap3.Tls:
        """Validation against the test CA; ``valid_names`` are accepted besides 127.0.0.1."""
        return ldap3.Tls(
            ca_certs_file=str(self.ca_file), validate=ssl.CERT_REQUIRED, valid_names=valid_names
        )

    def connection(
        self,
        user: str | None,
        password: str | None,
        *,
        bind: bool = True,
        valid_names: list[str] | None = None,
    ) -> ldap3.Connection:
        """An ldap3 connection over LDAPS (validated against the test CA), bound unless told."""
        srv = ldap3.Server(
            HOST, port=LDAPS_PORT, use_ssl=True, tls=self.tls(valid_names), get_info=ldap3.NONE,
            connect_timeout=5,
        )  # fmt: skip
        conn = ldap3.Connection(srv, user=user, password=password, receive_timeout=30)
        if bind and not conn.bind():
            raise SambaError(f"bind as {user} failed: {conn.result}")
        return conn

    def admin_connection(self) -> ldap3.Connection:
        return self.connection(self.admin_dn, self.admin_password)

    def svc_connection(self) -> ldap3.Connection:
        return self.connection(self.svc_dn, self.svc_password)

    def read(self, dn: str, attribute: str) -> list[str]:
        """The values of ``attribute`` on ``dn`` as the administrator sees them."""
        conn = self.admin_connection()
        try:
            if not conn.search(dn, "(objectClass=*)", ldap3.BASE, attributes=[attribute]):
                raise SambaError(f"read {dn!r}: {conn.result}")
            value = conn.response[0]["raw_attributes"].get(attribute, [])
            return [v.decode() for v in value]
        finally:
            conn.unbind()

    def replace(self, dn: str, attribute: str, value: int | str | None) -> None:
        """Set (or with ``None`` clear) one attribute as the administrator."""
        conn = self.admin_connection()
        try:
            values = [] if value is None else [str(value)]
            if not conn.modify(dn, {attribute: [(ldap3.MODIFY_REPLACE, values)]}):
                raise SambaError(f"modify {dn!r}: {conn.result}")
        finally:
            conn.unbind()

    def _add(self, conn: ldap3.Connection, dn: str, classes: list[str], attrs: dict) -> None:
        values = {k: v for k, v in attrs.items() if v is not None}
        if not conn.add(dn, classes, values):
            raise SambaError(f"add {dn!r} failed: {conn.result}")

    # -- setup steps ----------------------------------------------------------------------
    def extend_schema(self) -> None:
        """attributeSchema and classSchema objects, then ``schemaUpdateNow``."""
        conn = self.admin_connection()
        try:
            for attr in ATTRIBUTES:
                self._add(
                    conn,
                    f"CN={attr.cn},{SCHEMA_NC}",
                    ["top", "attributeSchema"],
                    {
                        "cn": attr.cn,
                        "lDAPDisplayName": attr.name,
                        "attributeID": attr.oid,
                        "attributeSyntax": attr.syntax,
                        "oMSyntax": str(attr.om_syntax),
                        "isSingleValued": "TRUE" if attr.single else "FALSE",
                        "adminDisplayName": attr.cn,
                        "schemaIDGUID": uuid.UUID(attr.guid).bytes_le if attr.guid else None,
                    },
                )
            self._update_schema(conn)
            for cls in CLASSES:
                self._add(
                    conn,
                    f"CN={cls.cn},{SCHEMA_NC}",
                    ["top", "classSchema"],
                    {
                        "cn": cls.cn,
                        "lDAPDisplayName": cls.name,
                        "governsID": cls.oid,
                        "subClassOf": cls.sub_class_of,
                        "objectClassCategory": "1",  # structural
                        "rDNAttID": "cn",
                        "possSuperiors": list(cls.poss_superiors) or None,
                        "mayContain": list(cls.may_contain) or None,
                        "adminDisplayName": cls.cn,
                        "schemaIDGUID": uuid.UUID(cls.guid).bytes_le if cls.guid else None,
                    },
                )
            self._update_schema(conn)
        finally:
            conn.unbind()

    @staticmethod
    def _update_schema(conn: ldap3.Connection) -> None:
        conn.check_names = False  # ldap3 refuses the empty (RootDSE) DN otherwise
        if not conn.modify("", {"schemaUpdateNow": [(ldap3.MODIFY_REPLACE, ["1"])]}):
            raise SambaError(f"schemaUpdateNow failed: {conn.result}")
        conn.check_names = True

    def attribute_guid(self, conn: ldap3.Connection, name: str) -> str:
        conn.search(SCHEMA_NC, f"(lDAPDisplayName={name})", attributes=["schemaIDGUID"])
        raw = conn.response[0]["raw_attributes"]["schemaIDGUID"][0]
        return str(uuid.UUID(bytes_le=raw))

    def create_service_account(self) -> None:
        """A plain domain user, then write rights on the two flag attributes only.

        The object ACEs (``OA;CI;WP;<attribute schemaIDGUID>;;<SID>``) sit on CN=Microsoft
        Exchange and are inherited by everything created below it afterwards. The account is in
        no group but Domain Users: it can read what Authenticated Users read, nothing more.
        """
        conn = self.admin_connection()
        try:
            self._add(
                conn,
                self.svc_dn,
                ["top", "person", "organizationalPerson", "user"],
                {
                    "cn": SVC_NAME,
                    "sAMAccountName": SVC_NAME,
                    "userPrincipalName": f"{SVC_NAME}@{REALM.lower()}",
                    "unicodePwd": f'"{self.svc_password}"'.encode("utf-16-le"),
                    "userAccountControl": "66048",  # NORMAL_ACCOUNT | DONT_EXPIRE_PASSWORD
                },
            )
            conn.search(self.svc_dn, "(objectClass=*)", ldap3.BASE, attributes=["objectSid"])
            raw_sid = conn.response[0]["raw_attributes"]["objectSid"][0]
            self.svc_sid = _sid_text(raw_sid)
            self._add(conn, EXCHANGE_DN, ["top", "container"], {"cn": "Microsoft Exchange"})
            guids = [self.attribute_guid(conn, name) for name in FLAG_ATTRIBUTES]
        finally:
            conn.unbind()
        # Exchange's classes have an empty default security descriptor: Exchange setup makes
        # its configuration readable by an inheritable "Authenticated Users: read" ACE on the
        # organization tree. Do the same, then the two write ACEs for the service account.
        sddl = "(A;CI;RPLCLORC;;;AU)" + "".join(
            f"(OA;CI;WP;{guid};;{self.svc_sid})" for guid in guids
        )
        _run(
            [
                tool("samba-tool"), "dsacl", "set", "-H", f"tdb://{self.sam_ldb}",
                "-s", str(self.smb_conf), f"--objectdn={EXCHANGE_DN}", f"--sddl={sddl}",
            ]
        )  # fmt: skip

    def load_organization(self, servers: tuple[Server, ...] = ORGANIZATION) -> None:
        conn = self.admin_connection()
        try:
            c = ["top", "container"]
            self._add(
                conn,
                ORG_DN,
                [*c, "msExchOrganizationContainer"],
                {"cn": ORG, "legacyExchangeDN": f"/o={ORG}"},
            )
            groups = f"CN=Administrative Groups,{ORG_DN}"
            self._add(
                conn, groups, [*c, "msExchAdminGroupContainer"], {"cn": "Administrative Groups"}
            )
            for group in dict.fromkeys(s.admin_group for s in servers):
                group_dn = f"CN={group},{groups}"
                self._add(
                    conn,
                    group_dn,
                    ["top", "msExchAdminGroup"],
                    {"cn": group, "legacyExchangeDN": f"/o={ORG}/ou={group}"},
                )
                self._add(
                    conn,
                    f"CN=Servers,{group_dn}",
                    [*c, "msExchServersContainer"],
                    {"cn": "Servers"},
                )
            for spec in servers:
                self._load_server(conn, spec)
        finally:
            conn.unbind()

    def _load_server(self, conn: ldap3.Connection, spec: Server) -> None:
        c = ["top", "container"]
        self._add(
            conn,
            spec.dn,
            ["top", "server", "msExchExchangeServer"],
            {
                "cn": spec.name,
                "serialNumber": spec.serial,
                "versionNumber": str(spec.version_number),
                "networkAddress": [
                    f"netbios:{spec.name}",
                    f"ncacn_np:{spec.name}",
                    f"ncacn_ip_tcp:{spec.fqdn}",
                ],
                "legacyExchangeDN": (
                    f"/o={ORG}/ou={spec.admin_group}/cn=Configuration/cn=Servers/cn={spec.name}"
                ),
            },
        )
        protocols = f"CN=Protocols,{spec.dn}"
        self._add(conn, protocols, [*c, "msExchProtocolCfgProtocolContainer"], {"cn": "Protocols"})
        if spec.virtual_servers:
            smtp = f"CN=SMTP,{protocols}"
            self._add(conn, smtp, [*c, "msExchProtocolCfgSMTPContainer"], {"cn": "SMTP"})
            for cn, display, flags in spec.virtual_servers:
                self._add(
                    conn,
                    spec.virtual_server_dn(cn),
                    ["top", "protocolCfg", "protocolCfgSMTP", "protocolCfgSMTPServer"],
                    {
                        "cn": cn,
                        "adminDisplayName": display,
                        MSEXCH_AUTH_FLAGS: None if flags is None else str(flags),
                    },
                )
        if spec.connectors:
            receive = f"CN=SMTP Receive Connectors,{protocols}"
            self._add(conn, receive, c, {"cn": "SMTP Receive Connectors"})
            for cn, flags in spec.connectors:
                self._add(
                    conn,
                    spec.connector_dn(cn),
                    ["top", "msExchSmtpReceiveConnector"],
                    {"cn": cn, MSEXCH_RECEIVE_FLAGS: None if flags is None else str(flags)},
                )
        self._add(
            conn,
            spec.computer_dn,
            ["top", "person", "organizationalPerson", "user", "computer"],
            {
                "cn": spec.name,
                "sAMAccountName": f"{spec.name}$",
                "userAccountControl": "4096",  # WORKSTATION_TRUST_ACCOUNT
                "dNSHostName": spec.fqdn,
                "operatingSystem": spec.operating_system,
            },
        )


def _sid_text(raw: bytes) -> str:
    """A binary SID as ``S-1-5-21-...``."""
    revision, count = raw[0], raw[1]
    authority = int.from_bytes(raw[2:8], "big")
    subs = [int.from_bytes(raw[8 + 4 * i : 12 + 4 * i], "little") for i in range(count)]
    return "-".join(["S", str(revision), str(authority), *map(str, subs)])
