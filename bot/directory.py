"""Directory access: connect to AD or the sample, find Exchange SMTP targets, read and write flags.

All LDAP lives here. Searches are paged (500 entries a page) and streamed: the caller gets one
:class:`Target` at a time and memory does not grow with the size of the forest.

>>> with connect(settings) as directory:          # doctest: +SKIP
...     for target in directory.iter_targets():
...         print(target.server, target.kind, target.raw_flags)
"""

from __future__ import annotations

import math
import re
import ssl
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from urllib.parse import urlsplit

from ldap3 import (
    ANONYMOUS,
    BASE,
    MODIFY_ADD,
    MODIFY_DELETE,
    NONE,
    SIMPLE,
    SUBTREE,
    Connection,
    Server,
    Tls,
)
from ldap3.core import exceptions as ldap_errors
from ldap3.utils.conv import escape_filter_chars
from ldap3.utils.dn import parse_dn

from bot.config import ConfigError, Settings
from bot.rules import KIND_BY_CLASS, KINDS, Kind

PAGE_SIZE = 500
SERVER_CLASS = "msexchexchangeserver"
SERVER_CACHE_SIZE = 2048
TARGET_ATTRIBUTES = ["objectClass", "cn", "adminDisplayName"] + [
    k.attribute for k in KINDS.values()
]
SERVER_ATTRIBUTES = ["objectClass", "cn", "serialNumber", "versionNumber", "networkAddress"]
AUDIT_FILTER = "(|{})".format(
    "".join(f"(objectClass={c})" for c in [k.object_class for k in KINDS.values()])
    + "(objectClass=msExchExchangeServer)"
)
SBS_FILTER = "(&(objectClass=computer)(operatingSystem=*Small Business Server*))"
RESULT_SUCCESS = 0


class DirectoryError(Exception):
    """The directory could not be used (unreachable, bind refused, search failed). Exit code 2."""


class WriteRefused(DirectoryError):
    """A modify that the directory refused; ``code`` is the LDAP result code."""

    def __init__(self, message: str, code: int | None) -> None:
        super().__init__(message)
        self.code = code


@dataclass(slots=True)
class ServerInfo:
    """The ``msExchExchangeServer`` object a target sits under."""

    dn: str
    name: str
    version: str | None
    version_number: int | None
    fqdn: str | None


@dataclass(slots=True)
class Target:
    """One SMTP virtual server or receive connector, as read from the directory."""

    kind: str
    dn: str
    key: str
    name: str
    server: str
    raw_flags: tuple[object, ...]
    server_info: ServerInfo | None

    @property
    def version(self) -> str | None:
        return self.server_info.version if self.server_info else None

    @property
    def fqdn(self) -> str | None:
        return self.server_info.fqdn if self.server_info else None


# A DN that ldap3's full RFC 4514 parser would split at every comma and equal sign (no escapes,
# no multi-valued RDNs, no spaces around separators): the common case, parsed here for less.
# A value is runs of other characters with single or repeated spaces only inside; the possessive
# quantifiers never backtrack (twice as fast as the plain form, the same strings match)
_SPECIAL = r'=,\\"#+;<>\x00'
_PLAIN_VALUE = rf"[^ {_SPECIAL}]++(?: ++[^ {_SPECIAL}]++)*+"
_PLAIN_RDN = rf"[A-Za-z][A-Za-z0-9-]*+={_PLAIN_VALUE}"
_PLAIN_DN = re.compile(rf"{_PLAIN_RDN}(?:,{_PLAIN_RDN})*+")


def dn_key(dn: str) -> str:
    """A DN normalised for comparison: ``CN=A,CN=B`` and ``cn=a, cn=b`` give the same key."""
    if _PLAIN_DN.fullmatch(dn):
        return dn.lower()  # the same as joining its lower-cased parts
    return ",".join(f"{attr.lower()}={value.lower()}" for attr, value, _ in parse_dn(dn))


def server_of(dn: str) -> tuple[str, str] | None:
    """``(server name, server DN)`` for a DN under ``CN=<server>,CN=Servers,...``, else ``None``."""
    return _server_of(dn, _PLAIN_DN.fullmatch(dn) is not None)


def _server_of(dn: str, plain: bool) -> tuple[str, str] | None:
    if plain:  # the same answer as parse_dn's below, for less: every target asks
        located = _plain_server_of(dn, dn.lower())
        return located[:2] if located else None
    parts = parse_dn(dn)
    for index in range(1, len(parts)):
        if parts[index][0].lower() == "cn" and parts[index][1].lower() == "servers":
            name = _unescape(parts[index - 1][1])
            server_dn = ",".join(f"{a}={v}" for a, v, _ in parts[index - 1 :])
            return name, server_dn
    return None


def _plain_server_of(dn: str, lowered: str) -> tuple[str, str, str] | None:
    """``(server name, server DN, its key)`` for a DN that :data:`_PLAIN_DN` matches, whose only
    commas separate RDNs (``lowered`` is ``dn.lower()``): string searches instead of a parse."""
    at = lowered.find(",cn=servers,")
    if at < 0:
        if not lowered.endswith(",cn=servers"):
            return None
        at = len(lowered) - len(",cn=servers")
    start = lowered.rfind(",", 0, at) + 1
    return dn[start:at].partition("=")[2], dn[start:], lowered[start:]


def _unescape(value: str) -> str:
    """Undo RFC 4514 escaping of one RDN value (``EX\\2C01`` or ``EX\\,01`` -> ``EX,01``)."""
    if "\\" not in value:
        return value
    out, i, raw = [], 0, bytearray()
    while i < len(value):
        if value[i] == "\\" and i + 2 < len(value) + 1:
            pair = value[i + 1 : i + 3]
            if len(pair) == 2 and all(c in "0123456789abcdefABCDEF" for c in pair):
                raw.append(int(pair, 16))
                i += 3
                continue
            if raw:
                out.append(raw.decode("utf-8", "replace"))
                raw.clear()
            out.append(value[i + 1 : i + 2])
            i += 2
            continue
        if raw:
            out.append(raw.decode("utf-8", "replace"))
            raw.clear()
        out.append(value[i])
        i += 1
    if raw:
        out.append(raw.decode("utf-8", "replace"))
    return "".join(out)


def _first(values: object) -> object | None:
    if isinstance(values, (list, tuple)):
        return values[0] if values else None
    return values if values not in ("", None) else None


def _fqdn(network_addresses: object) -> str | None:
    values = network_addresses if isinstance(network_addresses, (list, tuple)) else []
    for value in values:
        text = value.decode() if isinstance(value, bytes) else str(value)
        if text.lower().startswith("ncacn_ip_tcp:"):
            return text.split(":", 1)[1].strip().lower() or None
    return None


def _lowered(attributes: dict) -> dict:
    """An entry's attributes by lower-case name: ldap3's case-insensitive dict, for less."""
    return {name.lower(): values for name, values in attributes.items()}


SERVER = object()  # _kind_of's answer for an Exchange server object
_CLASSES: dict[str, Kind | object] = {**KIND_BY_CLASS, SERVER_CLASS: SERVER}


def _kind_of(attrs: dict) -> Kind | object | None:
    """:data:`SERVER`, the :class:`~bot.rules.Kind` of a target, or ``None``, by object class
    (``attrs`` as :func:`_lowered` gives them). A server object is a server whatever else it is."""
    kind = None
    for value in _as_list(attrs.get("objectclass")):
        found = _CLASSES.get(value.lower() if isinstance(value, str) else str(value).lower())
        if found is SERVER:
            return SERVER
        kind = kind or found
    return kind


def _as_list(value: object) -> list | tuple:
    if value is None:
        return ()
    if isinstance(value, (list, tuple)):
        return value
    return (value,)


class Directory:
    """A bound connection and the naming contexts it audits; see :func:`connect`."""

    def __init__(self, connection: Connection, config_nc: str, domain_nc: str | None) -> None:
        self.connection = connection
        self.config_nc = config_nc
        self.domain_nc = domain_nc
        self.exchange_base = f"CN=Microsoft Exchange,CN=Services,{config_nc}"

    # -- context manager -------------------------------------------------------------------
    def __enter__(self) -> Directory:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        _quietly_unbind(self.connection)

    # -- searching -------------------------------------------------------------------------
    def search(
        self, base: str, search_filter: str, attributes: list[str], scope: str = SUBTREE
    ) -> Iterator[dict]:
        """Yield entries page by page, in the order the server sends them; raise on any failure.

        ldap3's own ``paged_search`` generator reverses each page and ends quietly on an error
        result when exceptions are off, so this drives ldap3's paged-results control directly and
        checks every page's result code. Search references (AD referrals) are skipped.
        """
        cookie: bytes | None = None
        while True:
            try:
                self.connection.search(
                    base,
                    search_filter,
                    scope,
                    attributes=attributes,
                    paged_size=PAGE_SIZE if scope != BASE else None,
                    paged_cookie=cookie,
                )
            except ldap_errors.LDAPException as exc:
                raise DirectoryError(
                    f"LDAP search under {base!r} failed: {_describe(exc)}"
                    + _timeout_hint(exc, self.connection.receive_timeout)
                ) from exc
            result = self.connection.result or {}
            code = result.get("result")
            if code == 32 and scope == BASE:  # noSuchObject on a base read: nothing there
                return
            if code != RESULT_SUCCESS:
                raise DirectoryError(
                    f"LDAP search under {base!r} failed: {result.get('description')} "
                    f"({code}) {result.get('message') or ''}".rstrip()
                    + (self._missing_base_hint(base) if code == 32 else "")
                )
            for entry in self.connection.response or ():
                if entry.get("type") == "searchResEntry":
                    yield entry
            try:
                cookie = result["controls"]["1.2.840.113556.1.4.319"]["value"]["cookie"]
            except (KeyError, TypeError):
                cookie = None
            if not cookie:
                return

    def _missing_base_hint(self, base: str) -> str:
        if dn_key(base) == dn_key(self.exchange_base):
            return (
                ": no Exchange organization there; AUTHGUARD_LDAP_BASE must be the Configuration "
                "naming context (CN=Configuration,DC=...)"
            )
        if self.domain_nc and dn_key(base) == dn_key(self.domain_nc):
            return ": check AUTHGUARD_LDAP_DOMAIN_BASE (the domain naming context, DC=...)"
        return ""

    def iter_targets(self, base: str | None = None) -> Iterator[Target]:
        """Every SMTP virtual server and receive connector under ``base`` (default: all Exchange).

        One paged search fetches targets and their server objects together; server objects come
        before their children in practice, and a small cache keeps them. A target whose server
        has not been seen yet costs one extra read.
        """
        cache: OrderedDict[str, ServerInfo | None] = OrderedDict()
        for entry in self.search(
            base or self.exchange_base, AUDIT_FILTER, TARGET_ATTRIBUTES + SERVER_ATTRIBUTES
        ):
            attrs = _lowered(entry["attributes"])
            kind = _kind_of(attrs)
            if kind is SERVER:
                info = self._server_info(entry["dn"], attrs)
                cache[dn_key(info.dn)] = info
                if len(cache) > SERVER_CACHE_SIZE:
                    cache.popitem(last=False)
            elif kind is not None:
                yield self._target(entry, attrs, kind, cache)

    def _target(
        self, entry: dict, attrs: dict, kind: Kind, cache: OrderedDict[str, ServerInfo | None]
    ) -> Target:
        dn = entry["dn"]
        located: tuple[str, str, str] | None
        if _PLAIN_DN.fullmatch(dn):  # the usual case: then a DN's key is its lower case
            key = dn.lower()
            located = _plain_server_of(dn, key)
        else:
            key = dn_key(dn)
            found = _server_of(dn, False)
            located = (*found, dn_key(found[1])) if found else None
        info: ServerInfo | None = None
        server_name = "(no server)"
        if located:
            server_name, server_dn, skey = located
            if skey in cache:
                info = cache[skey]
                cache.move_to_end(skey)
            else:
                info = self.read_server(server_dn)
                cache[skey] = info
                if len(cache) > SERVER_CACHE_SIZE:
                    cache.popitem(last=False)
            if info is not None:
                server_name = info.name
        raw_flags = _raw_values(entry.get("raw_attributes", {}), kind.attribute)
        name = _first(attrs.get("admindisplayname")) or _first(attrs.get("cn")) or dn
        return Target(
            kind=kind.key,
            dn=dn,
            key=key,
            name=str(name),
            server=server_name,
            raw_flags=raw_flags,
            server_info=info,
        )

    def _server_info(self, dn: str, attrs: dict) -> ServerInfo:
        serial = _first(attrs.get("serialnumber"))
        number = _first(attrs.get("versionnumber"))
        try:
            version_number = int(number) if number is not None else None
        except (TypeError, ValueError):
            version_number = None
        name = _first(attrs.get("cn"))
        if not name:
            located = server_of(dn + ",CN=Servers")
            name = located[0] if located else dn
        return ServerInfo(
            dn=dn,
            name=str(name),
            version=str(serial) if serial else None,
            version_number=version_number,
            fqdn=_fqdn(attrs.get("networkaddress")),
        )

    def read_server(self, server_dn: str) -> ServerInfo | None:
        """The server object at ``server_dn``, or ``None`` if there is none."""
        for entry in self.search(
            server_dn, "(objectClass=msExchExchangeServer)", SERVER_ATTRIBUTES, scope=BASE
        ):
            return self._server_info(entry["dn"], _lowered(entry["attributes"]))
        return None

    def find_servers(self, name: str) -> list[ServerInfo]:
        """Exchange servers whose CN is ``name`` (escaped before it goes into the filter)."""
        search_filter = f"(&(objectClass=msExchExchangeServer)(cn={escape_filter_chars(name)}))"
        return [
            self._server_info(e["dn"], _lowered(e["attributes"]))
            for e in self.search(self.exchange_base, search_filter, SERVER_ATTRIBUTES)
        ]

    def read_target(self, dn: str) -> Target | None:
        """Re-read one target by DN now, or ``None`` if it no longer exists."""
        for entry in self.search(dn, AUDIT_FILTER, TARGET_ATTRIBUTES, scope=BASE):
            attrs = _lowered(entry["attributes"])
            kind = _kind_of(attrs)
            if isinstance(kind, Kind):
                return self._target(entry, attrs, kind, OrderedDict())
        return None

    def sbs_hostnames(self) -> frozenset[str]:
        """``dNSHostName`` (lower case) of every computer running Small Business Server.

        One search for the whole audit instead of one per server: SBS machines are few.
        """
        if not self.domain_nc:
            return frozenset()
        names = set()
        for entry in self.search(self.domain_nc, SBS_FILTER, ["dNSHostName", "operatingSystem"]):
            attrs = entry["attributes"]
            host = _first(attrs.get("dNSHostName"))
            system = str(_first(attrs.get("operatingSystem")) or "")
            if host and "small business server" in system.lower():
                names.add(str(host).lower())
        return frozenset(names)

    def operating_system(self, fqdn: str) -> str | None:
        """The ``operatingSystem`` of the computer whose ``dNSHostName`` is ``fqdn``."""
        if not self.domain_nc or not fqdn:
            return None
        search_filter = f"(&(objectClass=computer)(dNSHostName={escape_filter_chars(fqdn)}))"
        for entry in self.search(self.domain_nc, search_filter, ["operatingSystem"]):
            value = _first(entry["attributes"].get("operatingSystem"))
            return str(value) if value else None
        return None

    # -- writing ---------------------------------------------------------------------------
    def compare_and_swap(self, dn: str, attribute: str, old: int, new: int) -> None:
        """Replace ``old`` with ``new`` in one modify, so the server refuses it if the value moved.

        Raises :class:`WriteRefused` with the result code on any non-zero result: OpenLDAP
        answers 16 (noSuchAttribute) for a stale value, AD may answer 16 or others.
        """
        changes = {attribute: [(MODIFY_DELETE, [str(old)]), (MODIFY_ADD, [str(new)])]}
        try:
            ok = self.connection.modify(dn, changes)
        except ldap_errors.LDAPException as exc:
            raise WriteRefused(f"the modify was not confirmed: {_describe(exc)}", None) from exc
        result = self.connection.result or {}
        code = result.get("result")
        if not ok or code != RESULT_SUCCESS:
            raise WriteRefused(
                f"the directory refused the change: {result.get('description')} ({code})"
                + (f": {result['message']}" if result.get("message") else ""),
                code,
            )


def _quietly_unbind(connection: Connection) -> None:
    """Close a connection whose socket may already be broken (ldap3 raises then)."""
    try:
        connection.unbind()
    except (ldap_errors.LDAPException, OSError):
        pass


def _raw_values(raw: dict, attribute: str) -> tuple[object, ...]:
    """The raw values of ``attribute`` (any case) as text, in the order the server sent them."""
    values = raw.get(attribute)  # ldap3's dict ignores case; a plain dict may need the loop
    if values is None:
        wanted = attribute.lower()
        values = next((v for k, v in raw.items() if k.lower() == wanted), ())
    return tuple(v.decode("utf-8", "replace") if isinstance(v, bytes) else v for v in values)


def _describe(exc: BaseException) -> str:
    text = str(exc) or exc.__class__.__name__
    # ldap3 wraps socket and TLS errors in (nested) tuple reprs: ("('wrap socket error: ..',)",)
    while (inner := re.fullmatch(r"""\((['"])(.*)\1,\)""", text, re.DOTALL)) is not None:
        text = inner.group(2)
    return text.replace("\n", " ")[:300]


def _timed_out(exc: BaseException) -> bool:
    return "timed out" in str(exc).lower()


def _within(seconds: float | None) -> str:
    return f" within {seconds:g} s" if seconds else ""


def _timeout_hint(exc: BaseException, seconds: float | None) -> str:
    """`` (no answer within N s: AUTHGUARD_LDAP_TIMEOUT)`` when ``exc`` is a timeout."""
    if not _timed_out(exc):
        return ""
    return f" (the directory did not answer{_within(seconds)}: AUTHGUARD_LDAP_TIMEOUT)"


def _connect_error(where: str, exc: BaseException, timeout: float | None = None) -> DirectoryError:
    """A clear sentence for a failure to open, secure or bind a connection."""
    text = _describe(exc)
    full = str(exc)
    if isinstance(exc, ldap_errors.LDAPCertificateError) or "doesn't match any name" in full:
        return DirectoryError(
            f"the TLS certificate of {where} is not issued to that host name: use a name the "
            "certificate holds in AUTHGUARD_LDAP_URL, or set AUTHGUARD_LDAP_TLS_NAME to it"
        )
    if "CERTIFICATE_VERIFY_FAILED" in full or "certificate verify failed" in full.lower():
        detail = re.search(r"certificate verify failed: ([^(]*)", text, re.IGNORECASE)
        why = detail.group(1).strip() if detail else "certificate verify failed"
        return DirectoryError(
            f"the TLS certificate of {where} is not trusted ({why}): set AUTHGUARD_LDAP_CA_FILE "
            "to the CA certificate that issued the directory's certificate"
        )
    if _timed_out(exc):
        return DirectoryError(
            f"the directory at {where} did not answer{_within(timeout)} (AUTHGUARD_LDAP_TIMEOUT): "
            f"{text}"
        )
    return DirectoryError(f"cannot reach the directory at {where}: {text}")


def _read_root_dse(connection: Connection) -> dict:
    connection.search(
        "",
        "(objectClass=*)",
        BASE,
        attributes=["configurationNamingContext", "defaultNamingContext"],
    )
    for entry in connection.response or ():
        if entry.get("type") == "searchResEntry":
            return entry["attributes"]
    return {}


def _naming_contexts(connection: Connection, settings: Settings) -> tuple[str, str | None]:
    config_nc, domain_nc = settings.ldap_base, settings.ldap_domain_base
    if not config_nc or not domain_nc:
        root = _read_root_dse(connection)
        config_nc = config_nc or _first(root.get("configurationNamingContext"))
        domain_nc = domain_nc or _first(root.get("defaultNamingContext"))
    if not config_nc:
        raise DirectoryError(
            "the RootDSE has no configurationNamingContext: set AUTHGUARD_LDAP_BASE to the "
            "Configuration naming context (CN=Configuration,DC=...)"
        )
    return str(config_nc), (str(domain_nc) if domain_nc else None)


def connect(settings: Settings) -> Directory:
    """Open, secure and bind a connection as the settings say; raise a clear error otherwise.

    A password is never sent over plain ``ldap://`` without StartTLS unless
    ``AUTHGUARD_LDAP_ALLOW_PLAINTEXT`` is true: Basic-style clear-text credentials are the very
    weakness this tool hunts.
    """
    settings.require("ldap_url")
    url = urlsplit(settings.ldap_url or "")
    use_ssl = url.scheme.lower() == "ldaps"
    password = settings.password()
    if settings.ldap_bind_dn and not password:
        raise ConfigError(
            "AUTHGUARD_LDAP_BIND_DN is set but AUTHGUARD_LDAP_PASSWORD (or "
            "AUTHGUARD_LDAP_PASSWORD_FILE) is missing"
        )
    if password and not settings.ldap_bind_dn:
        raise ConfigError("a password is set but AUTHGUARD_LDAP_BIND_DN is missing")
    if (
        password
        and not use_ssl
        and not settings.ldap_starttls
        and not settings.ldap_allow_plaintext
    ):
        raise ConfigError(
            "refusing to send the LDAP password in clear text over ldap:// without StartTLS: use "
            "ldaps://, set AUTHGUARD_LDAP_STARTTLS=true, or (not advised) "
            "AUTHGUARD_LDAP_ALLOW_PLAINTEXT=true"
        )
    tls = None
    if use_ssl or settings.ldap_starttls:
        tls = Tls(
            ca_certs_file=settings.ldap_ca_file,
            validate=ssl.CERT_REQUIRED,
            valid_names=[settings.ldap_tls_name] if settings.ldap_tls_name else None,
        )
    server = Server(
        url.hostname,
        port=url.port,
        use_ssl=use_ssl,
        tls=tls,
        get_info=NONE,
        connect_timeout=settings.ldap_timeout,
    )
    connection = Connection(
        server,
        user=settings.ldap_bind_dn,
        password=password,
        authentication=SIMPLE if password else ANONYMOUS,
        # ldap3 packs this into SO_RCVTIMEO with struct.pack('LL', ...): it must be an int
        receive_timeout=max(1, math.ceil(settings.ldap_timeout)),
        raise_exceptions=False,
        auto_referrals=False,
        return_empty_attributes=False,
    )
    where = f"{url.scheme}://{url.hostname}:{url.port or (636 if use_ssl else 389)}"
    try:
        connection.open()
        if settings.ldap_starttls and not use_ssl and not connection.start_tls():
            raise DirectoryError(f"StartTLS with {where} failed: {connection.result}")
        if not connection.bind():
            result = connection.result or {}
            code = result.get("result")
            hint = {
                49: "invalid credentials",
                8: "the directory requires transport encryption (use ldaps:// or StartTLS)",
                13: "the directory requires transport encryption (use ldaps:// or StartTLS)",
            }.get(code, result.get("description"))
            who = settings.ldap_bind_dn or "anonymous"
            raise DirectoryError(f"bind to {where} as {who} refused: {hint} ({code})")
        config_nc, domain_nc = _naming_contexts(connection, settings)
    except (ldap_errors.LDAPException, OSError) as exc:  # OSError: ssl.SSLError, socket errors
        _quietly_unbind(connection)
        raise _connect_error(where, exc, settings.ldap_timeout) from None
    except DirectoryError:
        _quietly_unbind(connection)
        raise
    return Directory(connection, config_nc, domain_nc)


def sample() -> Directory:
    """The bundled sample forest, served by ldap3's offline mock."""
    from bot.sample import sample_connection

    connection = sample_connection()
    # read from the mock's RootDSE, as from a real directory's
    config_nc, domain_nc = _naming_contexts(connection, Settings())
    return Directory(connection, config_nc, domain_nc)
