"""A private OpenLDAP slapd for tests (never the system service).

    server = SlapdServer(tmp_path)
    server.start([ldif_path])        # slapadd the files into a fresh DB, then run slapd
    conn = server.admin_connection()  # ldap3, bound as the rootdn over ldap://
    ...
    server.stop()

Each instance has its own slapd.conf, mdb directory, throwaway TLS CA + server certificate,
RootDSE file and two free loopback ports (chosen once, kept across stop()/start()/restart()
so clients configured with ``ldap_url``/``ldaps_url`` keep working). Listens on 127.0.0.1
only. The accounts and ACLs match the skeleton written by ``forest.forest_ldif``.
"""

from __future__ import annotations

import base64
import shutil
import socket
import subprocess
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import ldap3

from tests.children import ChildProcess, find_tool, free_ports
from tests.forest import BASE, RO_PASSWORD, SVC_PASSWORD, ServerSpec, ro_dn, svc_dn, write_forest

SCHEMA_DIR = Path("/etc/ldap/schema")
MODULE_DIR = Path("/usr/lib/ldap")
EXCHANGE_SCHEMA = Path(__file__).resolve().parent / "ldap" / "exchange.schema"
HOST = "127.0.0.1"
START_TIMEOUT = 10.0
SIZE_LIMIT = 1000  # AD's default MaxPageSize


def _tool(name: str) -> str:
    found = find_tool(name)
    if found is None:
        raise RuntimeError(f"{name} not found: install slapd, ldap-utils, openssl (scripts/test)")
    return found


def _q(value: object) -> str:
    """Quote a slapd.conf argument."""
    text = str(value)
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False, **kw)
    if proc.returncode != 0:
        raise RuntimeError(
            f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
        )
    return proc


# ---------------------------------------------------------------------------
# TLS material
# ---------------------------------------------------------------------------


def _make_ca(openssl: str, key: Path, cert: Path, cn: str) -> None:
    _run(
        [
            openssl, "req", "-x509", "-new", "-newkey", "ec",
            "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
            "-keyout", str(key), "-out", str(cert), "-days", "3650", "-subj", f"/CN={cn}",
            "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,keyCertSign,cRLSign",
            "-addext", "subjectKeyIdentifier=hash",
        ]
    )  # fmt: skip


def make_tls(tls_dir: Path) -> None:
    """Throwaway CA + server cert for 127.0.0.1/localhost, plus an unrelated 'wrong' CA."""
    openssl = _tool("openssl")
    tls_dir.mkdir(parents=True, exist_ok=True)
    _make_ca(openssl, tls_dir / "ca.key", tls_dir / "ca.pem", "authguard test CA")
    _make_ca(openssl, tls_dir / "wrong-ca.key", tls_dir / "wrong-ca.pem", "authguard WRONG CA")
    ext = tls_dir / "server.ext"
    ext.write_text(
        "basicConstraints=critical,CA:FALSE\n"
        "keyUsage=critical,digitalSignature,keyEncipherment\n"
        "extendedKeyUsage=serverAuth\n"
        "subjectAltName=IP:127.0.0.1,DNS:localhost\n"
        "subjectKeyIdentifier=hash\n"
        "authorityKeyIdentifier=keyid\n"
    )
    _run(
        [
            openssl, "req", "-new", "-newkey", "ec",
            "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
            "-keyout", str(tls_dir / "server.key"), "-out", str(tls_dir / "server.csr"),
            "-subj", "/CN=127.0.0.1",
        ]
    )  # fmt: skip
    _run(
        [
            openssl, "x509", "-req", "-in", str(tls_dir / "server.csr"),
            "-CA", str(tls_dir / "ca.pem"), "-CAkey", str(tls_dir / "ca.key"),
            "-set_serial", "2", "-days", "3650", "-extfile", str(ext),
            "-out", str(tls_dir / "server.pem"),
        ]
    )  # fmt: skip
    (tls_dir / "server.key").chmod(0o600)


# ---------------------------------------------------------------------------
# Minimal LDIF reader (content records only), for add_ldif()
# ---------------------------------------------------------------------------


def parse_ldif(text: str) -> list[tuple[str, dict[str, list[str | bytes]]]]:
    records: list[tuple[str, dict[str, list[str | bytes]]]] = []
    lines: list[str] = []
    for raw in text.splitlines():
        if raw.startswith(" ") and lines:
            lines[-1] += raw[1:]
        else:
            lines.append(raw)
    dn: str | None = None
    attrs: dict[str, list[str | bytes]] = {}
    for line in [*lines, ""]:
        if not line.strip():
            if dn is not None:
                records.append((dn, attrs))
            dn, attrs = None, {}
            continue
        if line.startswith("#") or line.startswith("version:"):
            continue
        name, sep, rest = line.partition(":")
        if not sep:
            raise ValueError(f"bad LDIF line: {line!r}")
        value: str | bytes
        if rest.startswith(":"):
            data = base64.b64decode(rest[1:].strip())
            try:
                value = data.decode("utf-8")
            except UnicodeDecodeError:
                value = data
        elif rest.startswith("<"):
            raise ValueError("LDIF URL values are not supported")
        else:
            value = rest.lstrip(" ")
        if name.lower() == "dn":
            dn = str(value)
        elif name.lower() == "changetype":
            if str(value).strip().lower() != "add":
                raise ValueError("only add records are supported")
        else:
            attrs.setdefault(name, []).append(value)
    return records


# ---------------------------------------------------------------------------
# The server
# ---------------------------------------------------------------------------


class SlapdServer(ChildProcess):
    """A private slapd on 127.0.0.1 with an AD-like Exchange test directory."""

    def __init__(self, workdir: Path, *, admin_password: str = "admin-secret") -> None:  # noqa: S107
        self.workdir = Path(workdir).resolve()
        super().__init__(self.workdir / "slapd.log")
        self.base = BASE
        self.config_nc = "cn=Configuration," + BASE
        self.admin_dn = "cn=admin," + BASE
        self.admin_password = admin_password
        self.svc_dn = svc_dn(BASE)
        self.svc_password = SVC_PASSWORD
        self.ro_dn = ro_dn(BASE)
        self.ro_password = RO_PASSWORD
        self.host = HOST
        self.ldap_port: int | None = None
        self.ldaps_port: int | None = None
        self.tls_dir = self.workdir / "tls"
        self.ca_file = self.tls_dir / "ca.pem"
        self.wrong_ca_file = self.tls_dir / "wrong-ca.pem"
        self.db_dir = self.workdir / "db"
        self.conf_file = self.workdir / "slapd.conf"
        self.rootdse_file = self.workdir / "rootdse.ldif"

    # -- addresses -----------------------------------------------------------

    @property
    def ldap_url(self) -> str:
        return f"ldap://{self.host}:{self.ldap_port}"

    @property
    def ldaps_url(self) -> str:
        return f"ldaps://{self.host}:{self.ldaps_port}"

    # -- configuration ---------------------------------------------------------

    def _write_config(self) -> None:
        if not (self.ca_file.exists() and (self.tls_dir / "server.pem").exists()):
            make_tls(self.tls_dir)
        self.rootdse_file.write_text(
            "dn:\n"
            f"configurationNamingContext: {self.config_nc}\n"
            f"defaultNamingContext: {self.base}\n"
        )
        includes = [SCHEMA_DIR / f"{n}.schema" for n in ("core", "cosine", "inetorgperson")]
        includes.append(EXCHANGE_SCHEMA)
        lines = [f"include {_q(p)}" for p in includes]
        lines += [
            f"pidfile {_q(self.workdir / 'slapd.pid')}",
            f"argsfile {_q(self.workdir / 'slapd.args')}",
        ]
        if MODULE_DIR.is_dir():
            lines += [f"modulepath {_q(MODULE_DIR)}", "moduleload back_mdb"]
        lines += [
            f"TLSCACertificateFile {_q(self.ca_file)}",
            f"TLSCertificateFile {_q(self.tls_dir / 'server.pem')}",
            f"TLSCertificateKeyFile {_q(self.tls_dir / 'server.key')}",
            f"rootDSE {_q(self.rootdse_file)}",
            # Like AD's MaxPageSize: an unpaged search stops at 1000 entries with
            # sizeLimitExceeded (4); a paged search returns everything. The rootdn is exempt.
            f"sizelimit size.soft={SIZE_LIMIT} size.hard={SIZE_LIMIT} size.prtotal=unlimited",
            # RootDSE and subschema: readable by anyone (frontend ACLs).
            'access to dn.base="" by * read',
            'access to dn.base="cn=Subschema" by * read',
            "",
            "database mdb",
            f"suffix {_q(self.base)}",
            f"rootdn {_q(self.admin_dn)}",
            f"rootpw {_q(self.admin_password)}",
            f"directory {_q(self.db_dir)}",
            "dbnosync",
            "maxsize 4294967296",  # 4 GiB map: ample for 10,000 servers (sparse file)
            f"sizelimit size.soft={SIZE_LIMIT} size.hard={SIZE_LIMIT} size.prtotal=unlimited",
            "index objectClass eq",
            "index cn eq",
            "access to attrs=userPassword",
            "    by anonymous auth",
            "    by * none",
            "access to attrs=msExchAuthenticationFlags,msExchSMTPReceiveInboundSecurityFlag",
            f"    by dn.exact={_q(self.svc_dn)} write",
            "    by * read",
            "access to *",
            "    by * read",
            "",
        ]
        self.conf_file.write_text("\n".join(lines))

    def _load(self, ldif_paths: Iterable[Path]) -> None:
        shutil.rmtree(self.db_dir, ignore_errors=True)
        self.db_dir.mkdir(mode=0o700, parents=True)
        slapadd = _tool("slapadd")
        for path in ldif_paths:
            _run([slapadd, "-q", "-f", str(self.conf_file), "-l", str(path)])

    # -- lifecycle -------------------------------------------------------------

    def start(self, ldif_paths: list[Path] | None = None) -> None:
        """Start slapd. With ``ldif_paths`` the DB is wiped and the files slapadd'ed first;
        without, the existing DB (if any) is served as is."""
        if self.running:
            raise RuntimeError(f"slapd already running (pid {self.pid})")
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._write_config()
        if ldif_paths is not None:
            self._load(ldif_paths)
        else:
            self.db_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        fixed_ports = self.ldap_port is not None
        for _attempt in range(1 if fixed_ports else 5):
            if not fixed_ports:
                self.ldap_port, self.ldaps_port = free_ports(2)
            if self._spawn():
                return
        raise RuntimeError(f"slapd did not start; log:\n{self.read_log()}")

    def _spawn(self) -> bool:
        """Run slapd and wait until it answers. False if it exited (e.g. port taken)."""
        proc = self.popen(
            [
                _tool("slapd"), "-d", "0", "-f", str(self.conf_file),
                "-h", f"ldap://{self.host}:{self.ldap_port}/ ldaps://{self.host}:{self.ldaps_port}/",
            ]
        )  # fmt: skip
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                self.reap()
                return False
            if self._answers():
                return True
            time.sleep(0.01)
        self.stop()
        raise RuntimeError(f"slapd did not answer within {START_TIMEOUT}s; log:\n{self.read_log()}")

    def _answers(self) -> bool:
        try:
            with socket.create_connection((self.host, self.ldap_port), timeout=0.5):
                pass
        except OSError:
            return False
        server = ldap3.Server(
            self.host, port=self.ldap_port, get_info=ldap3.NONE, connect_timeout=1
        )
        conn = ldap3.Connection(server, receive_timeout=2)
        try:
            conn.open()
            return bool(conn.search("", "(objectClass=*)", ldap3.BASE, attributes=["1.1"]))
        except ldap3.core.exceptions.LDAPException:
            return False
        finally:
            conn.unbind()

    def restart(self) -> None:
        """Stop and start again on the same ports with the same DB (no reload)."""
        self.stop()
        self.start()

    def reset(self, ldif_paths: list[Path]) -> None:
        """Stop, wipe the DB, slapadd ``ldif_paths`` and start again (same ports)."""
        self.stop()
        self.start(ldif_paths)

    def __enter__(self) -> SlapdServer:
        return self

    def connection(
        self,
        user: str | None = None,
        password: str | None = None,
        *,
        get_info: str = ldap3.SCHEMA,
        **kw,
    ) -> ldap3.Connection:
        """A bound ldap3 connection over ldap:// (anonymous if ``user`` is None). With the
        default ``get_info=SCHEMA`` ldap3 returns typed values (INTEGER -> int)."""
        server = ldap3.Server(self.host, port=self.ldap_port, get_info=get_info, connect_timeout=5)
        kw.setdefault("receive_timeout", 30)
        return ldap3.Connection(server, user=user, password=password, auto_bind=True, **kw)

    def admin_connection(self) -> ldap3.Connection:
        """Bound as the rootdn over ldap:// (no ACLs, no size limit)."""
        return self.connection(self.admin_dn, self.admin_password)

    def add_ldif(self, text: str, *, ignore_existing: bool = False) -> int:
        """Add the LDIF records in ``text`` online as the rootdn; returns the number added.
        With ``ignore_existing`` entries that already exist (68) are skipped."""
        added = 0
        conn = self.admin_connection()
        try:
            for dn, attrs in parse_ldif(text):
                if conn.add(dn, attributes=attrs):
                    added += 1
                elif not (ignore_existing and conn.result["result"] == 68):
                    raise RuntimeError(f"add {dn!r} failed: {conn.result}")
        finally:
            conn.unbind()
        return added

    def modify(self, dn: str, changes: dict) -> None:
        """ldap3-style modify as the rootdn, e.g.
        ``{"msExchAuthenticationFlags": [(ldap3.MODIFY_REPLACE, [3])]}``; raises on failure."""
        conn = self.admin_connection()
        try:
            if not conn.modify(dn, changes):
                raise RuntimeError(f"modify {dn!r} failed: {conn.result}")
        finally:
            conn.unbind()


@contextmanager
def private_slapd(
    tmp_path_factory: Any, name: str, servers: Iterable[ServerSpec]
) -> Iterator[SlapdServer]:
    """A slapd of its own, loaded with ``servers``; ``server.forest`` is the LDIF, so a test
    can put the directory back with ``server.reset([server.forest])``."""
    workdir = tmp_path_factory.mktemp(name)
    ldif = workdir / "forest.ldif"
    write_forest(ldif, servers)
    server = SlapdServer(workdir / "server")
    server.forest = ldif
    server.start([ldif])
    try:
        yield server
    finally:
        server.stop()
