"""The bundled sample forest: a made-up AD forest with Exchange SMTP servers, served offline.

``authguard audit --sample`` runs the real discovery and rule code against
``bot/data/sample_forest.ldif``, loaded into ldap3's offline mock (``MOCK_SYNC``). No directory
server, network or credentials are needed.

How the mock is set up
----------------------
* **Schema.** ldap3's bundled offline Windows Server 2012 R2 schema (``OFFLINE_AD_2012_R2``), plus
  the Exchange attribute types and classes that the sample uses (:data:`EXCHANGE_ATTRIBUTE_TYPES`,
  :data:`EXCHANGE_OBJECT_CLASSES`). Exchange 2003 names use their real OIDs, taken from
  OpenChange's copy of the Exchange 2003 schema (``setup/AD/*.ldif``). No public OID is known for
  ``msExchSMTPReceiveInboundSecurityFlag``, ``msExchSmtpReceiveConnector``,
  ``msExchCurrentServerRoles`` or the other Exchange 2007+ receive-connector attributes, so these
  are made up under the private arc ``1.2.840.113556.1.8000.2554`` (``.1.x`` attribute types,
  ``.2.x`` classes). Code must never depend on those OIDs.
* **Entries.** Every LDIF record goes in through ``strategy.add_entry(..., validate=False)``:
  values are stored as the LDIF text, as AD would send them. That is how the non-integer
  ``msExchAuthenticationFlags: seven`` on EX05 gets in (a real DC would refuse it). ``objectClass``
  is stored in LDIF order (``top`` first, most specific class last), as AD returns it.
* **RootDSE.** ``server.info`` answers ``configurationNamingContext`` = :data:`SAMPLE_CONFIG_NC`,
  ``defaultNamingContext`` = :data:`SAMPLE_BASE` and the matching ``rootDomainNamingContext``,
  ``schemaNamingContext`` and ``namingContexts``. ldap3's mock cannot search the empty DN (its DN
  parser rejects ``""``), so the connection's search is wrapped: a base-scope search of ``""``
  returns one entry built from ``server.info`` (any filter matches). A subtree or one-level
  search of ``""`` fails with noSuchObject (32). The RootDSE attribute names are not in the AD
  schema, so they are declared under the private arc ``1.2.840.113556.1.8000.2554.3`` only so
  that ldap3's name check accepts them. They are multi-valued, so ldap3 returns them as lists.
* **Naming contexts.** The mock's subtree search matches every DN that ends in the base. Since
  ``CN=Configuration,DC=contoso,DC=example`` ends in ``DC=contoso,DC=example``, a domain search
  would also return configuration objects. The wrapped search drops entries from another naming
  context, as AD does. It also returns entries in LDIF order (parents before children); the
  plain mock's order comes from a Python set and changes from run to run.
* **objectCategory.** AD accepts a class name, e.g. ``(objectCategory=computer)``, and matches
  that class's default category DN. The wrapped equality test does the same for the classes in
  :data:`DEFAULT_OBJECT_CATEGORY`. (slapd does not, so portable code filters on objectClass.)

What the mock does not do (so do not use the sample to test these)
-----------------------------------------------------------------
* **Writes.** Compare-and-swap is not faithful. A stale ``MODIFY_DELETE`` of a value fails with
  1 (operationsError), not 16 (noSuchAttribute). A failed modify is not atomic: earlier changes
  in the same request are not rolled back.
* **Schema rules.** It checks neither MUST/MAY nor possSuperiors, and it does not enforce
  syntax on loaded values.
* **Transport and access.** There is no TLS, no ACL and no size limit.
* **Value formatting.** Values come back formatted by the schema: Integer attributes as ``int``
  (or the raw ``bytes`` when not a number, e.g. ``b"seven"``), and single-valued attributes as a
  scalar, not a list. A real connection opened with ``get_info=NONE`` returns lists of ``str``.
"""

from __future__ import annotations

import base64
import secrets
from functools import lru_cache
from importlib import resources

import ldap3
from ldap3 import MOCK_SYNC, OFFLINE_AD_2012_R2, Connection, Server
from ldap3.core.results import RESULT_NO_SUCH_OBJECT, RESULT_SUCCESS
from ldap3.protocol.rfc4512 import AttributeTypeInfo, ObjectClassInfo
from ldap3.utils.config import get_config_parameter
from ldap3.utils.conv import to_raw
from ldap3.utils.dn import safe_dn

SAMPLE_BASE = "DC=contoso,DC=example"
SAMPLE_CONFIG_NC = "CN=Configuration,DC=contoso,DC=example"
SAMPLE_SCHEMA_NC = "CN=Schema," + SAMPLE_CONFIG_NC
SAMPLE_EXCHANGE_BASE = "CN=Microsoft Exchange,CN=Services," + SAMPLE_CONFIG_NC
SAMPLE_ORG_DN = "CN=Contoso," + SAMPLE_EXCHANGE_BASE
SAMPLE_DC_HOST = "dc01.contoso.example"
SAMPLE_BIND_DN = "CN=svc-authguard,OU=Service Accounts," + SAMPLE_BASE
SAMPLE_LDIF = "sample_forest.ldif"

NAMING_CONTEXTS = (
    SAMPLE_BASE,
    SAMPLE_CONFIG_NC,
    SAMPLE_SCHEMA_NC,
    "DC=DomainDnsZones," + SAMPLE_BASE,
    "DC=ForestDnsZones," + SAMPLE_BASE,
)

_INTEGER = "1.3.6.1.4.1.1466.115.121.1.27"
_STRING = "1.3.6.1.4.1.1466.115.121.1.15"
_BOOLEAN = "1.3.6.1.4.1.1466.115.121.1.7"
_DN = "1.3.6.1.4.1.1466.115.121.1.12"
_EXCH_ATTR = "1.2.840.113556.1.4.7000.102."  # Exchange 2000/2003 attribute arc (OpenChange)
_EXCH_CLASS = "1.2.840.113556.1.5.7000.62."  # Exchange 2000/2003 class arc (OpenChange)
_PRIVATE = "1.2.840.113556.1.8000.2554."  # made-up OIDs: no public value is known

# (OID, lDAPDisplayName, syntax, single-valued)
EXCHANGE_ATTRIBUTE_TYPES: tuple[tuple[str, str, str, bool], ...] = (
    (_EXCH_ATTR + "2003", "msExchAuthenticationFlags", _INTEGER, True),
    (_EXCH_ATTR + "2001", "msExchServerBindings", _STRING, False),
    (_EXCH_ATTR + "2002", "msExchSecureBindings", _STRING, False),
    (_EXCH_ATTR + "2006", "msExchAccessSSLFlags", _INTEGER, True),
    (_EXCH_ATTR + "2007", "msExchServerAutoStart", _BOOLEAN, True),
    (_EXCH_ATTR + "2008", "msExchSaslLogonDomain", _STRING, True),
    (_EXCH_ATTR + "2009", "msExchNTAuthenticationProviders", _STRING, True),
    (_EXCH_ATTR + "2012", "msExchDefaultDomain", _STRING, True),
    (_EXCH_ATTR + "5018", "msExchSmtpInboundCommandSupportOptions", _INTEGER, True),
    (_EXCH_ATTR + "5020", "msExchSmtpRelayForAuth", _BOOLEAN, True),
    (_EXCH_ATTR + "5029", "msExchSmtpFullyQualifiedDomainName", _STRING, True),
    (_EXCH_ATTR + "71", "msExchExchangeServerLink", _DN, True),
    # Exchange 2007+ names (confirmed by Exchange's own code) without a public OID:
    (_PRIVATE + "1.2", "msExchSMTPReceiveInboundSecurityFlag", _INTEGER, True),
    (_PRIVATE + "1.3", "msExchCurrentServerRoles", _INTEGER, True),
    (_PRIVATE + "1.4", "msExchSmtpReceiveBindings", _STRING, False),
    (_PRIVATE + "1.5", "msExchSMTPReceiveConnectorFQDN", _STRING, True),
    (_PRIVATE + "1.6", "msExchSmtpReceiveProtocolRestrictions", _INTEGER, True),
)

# (OID, lDAPDisplayName, superior, kind, MAY attributes)
EXCHANGE_OBJECT_CLASSES: tuple[tuple[str, str, str, str, tuple[str, ...]], ...] = (
    (_EXCH_CLASS + "14", "msExchBaseClass", "top", "AUXILIARY", ("legacyExchangeDN",)),
    (_EXCH_CLASS + "50020", "msExchOrganizationContainer", "container", "STRUCTURAL", ()),
    (_EXCH_CLASS + "50019", "msExchAdminGroupContainer", "container", "STRUCTURAL", ()),
    (_EXCH_CLASS + "50011", "msExchAdminGroup", "top", "STRUCTURAL", ()),
    (_EXCH_CLASS + "50013", "msExchServersContainer", "container", "STRUCTURAL", ()),
    (
        _EXCH_CLASS + "50009",
        "msExchExchangeServer",
        "server",
        "STRUCTURAL",
        ("versionNumber", "networkAddress", "serverRole", "msExchCurrentServerRoles"),
    ),
    (_EXCH_CLASS + "2000", "msExchProtocolCfgProtocolContainer", "container", "STRUCTURAL", ()),
    (_EXCH_CLASS + "2001", "msExchProtocolCfgSharedContainer", "container", "STRUCTURAL", ()),
    (
        _EXCH_CLASS + "5010",
        "msExchProtocolCfgSMTPContainer",
        "msExchProtocolCfgSharedContainer",
        "STRUCTURAL",
        ("versionNumber",),
    ),
    ("1.2.840.113556.1.3.68", "protocolCfg", "top", "STRUCTURAL", ()),
    (_EXCH_CLASS + "5001", "protocolCfgSMTP", "protocolCfg", "STRUCTURAL", ()),
    (
        _EXCH_CLASS + "5002",
        "protocolCfgSMTPServer",
        "protocolCfgSMTP",
        "STRUCTURAL",
        (
            "msExchAuthenticationFlags",
            "msExchDefaultDomain",
            "msExchSaslLogonDomain",
            "msExchSmtpInboundCommandSupportOptions",
            "msExchAccessSSLFlags",
            "msExchServerBindings",
            "msExchSecureBindings",
            "msExchNTAuthenticationProviders",
            "msExchServerAutoStart",
            "msExchSmtpFullyQualifiedDomainName",
            "msExchSmtpRelayForAuth",
        ),
    ),
    (
        _PRIVATE + "2.1",
        "msExchSmtpReceiveConnector",
        "top",
        "STRUCTURAL",
        (
            "msExchSMTPReceiveInboundSecurityFlag",
            "msExchSmtpReceiveBindings",
            "msExchSMTPReceiveConnectorFQDN",
            "msExchSmtpReceiveProtocolRestrictions",
        ),
    ),
)

# lDAPDisplayName -> CN of its defaultObjectCategory, for (objectCategory=<class name>) filters.
DEFAULT_OBJECT_CATEGORY = {
    "computer": "Computer",
    "user": "Person",
    "person": "Person",
    "organizationalPerson": "Person",
    "container": "Container",
    "organizationalUnit": "Organizational-Unit",
    "domainDNS": "Domain-DNS",
    "msExchExchangeServer": "ms-Exch-Exchange-Server",
    "protocolCfgSMTPServer": "ms-Exch-Protocol-Cfg-SMTP-Server",
    "msExchSmtpReceiveConnector": "ms-Exch-Smtp-Receive-Connector",
    "msExchProtocolCfgSMTPContainer": "ms-Exch-Protocol-Cfg-SMTP-Container",
    "msExchServersContainer": "ms-Exch-Servers-Container",
    "msExchAdminGroup": "ms-Exch-Admin-Group",
}

_ROOT_DSE_ARC = _PRIVATE + "3."
_LDAP_EXCLUDED = {a.lower() for a in get_config_parameter("ATTRIBUTES_EXCLUDED_FROM_CHECK")}


class SampleDataError(ValueError):
    """The bundled LDIF is malformed or does not fit the sample schema."""


# -- LDIF ------------------------------------------------------------------------------------


def parse_ldif(text: str) -> list[tuple[str, dict[str, list[str]]]]:
    """Parse LDIF content records (RFC 2849): ``attr: value``, ``attr:: base64``, folded lines.

    Returns ``(dn, {attribute: [values]})`` in file order. Change records and ``attr:< URL``
    values are not supported and raise :class:`SampleDataError`.
    """
    records: list[tuple[str, dict[str, list[str]]]] = []
    lines: list[str] = []
    for raw in text.splitlines():
        if raw.startswith(" ") and lines:  # folded continuation of the previous line
            lines[-1] += raw[1:]
        elif raw.startswith(" "):
            raise SampleDataError(f"continuation line with nothing to continue: {raw!r}")
        else:
            lines.append(raw)
    dn: str | None = None
    attrs: dict[str, list[str]] = {}
    for number, line in enumerate(lines + [""], start=1):
        if line.startswith("#"):
            continue
        if not line.strip():
            if dn is not None:
                records.append((dn, attrs))
            dn, attrs = None, {}
            continue
        name, sep, value = line.partition(":")
        if not sep:
            raise SampleDataError(f"line {number}: not 'attribute: value': {line!r}")
        if value.startswith(":"):
            value = base64.b64decode(value[1:].strip()).decode("utf-8")
        elif value.startswith("<"):
            raise SampleDataError(f"line {number}: URL values are not supported")
        else:
            value = value.lstrip(" ")
        name = name.strip()
        if dn is None:
            if name.lower() == "version" and not records:
                continue
            if name.lower() != "dn":
                raise SampleDataError(f"line {number}: record must start with dn: {line!r}")
            dn = value
            continue
        if name.lower() in ("changetype", "control"):
            raise SampleDataError(f"line {number}: change records are not supported")
        for existing in attrs:
            if existing.lower() == name.lower():
                attrs[existing].append(value)
                break
        else:
            attrs[name] = [value]
    return records


@lru_cache(maxsize=1)
def sample_records() -> tuple[tuple[str, tuple[tuple[str, tuple[str, ...]], ...]], ...]:
    """The bundled LDIF's records (parsed once), as immutable ``(dn, ((attr, values), ...))``."""
    text = resources.files("bot").joinpath("data", SAMPLE_LDIF).read_text(encoding="utf-8")
    return tuple(
        (dn, tuple((name, tuple(values)) for name, values in attrs.items()))
        for dn, attrs in parse_ldif(text)
    )


# -- schema and server ------------------------------------------------------------------------


def _add_schema_definitions(server: Server) -> None:
    schema = server.schema
    definitions = [
        f"( {oid} NAME '{name}' SYNTAX '{syntax}'{' SINGLE-VALUE' if single else ''} )"
        for oid, name, syntax, single in EXCHANGE_ATTRIBUTE_TYPES
    ]
    root_dse_names = sorted(
        name
        for name in server.info.raw
        if name not in schema.attribute_types and name.lower() not in _LDAP_EXCLUDED
    )
    definitions += [
        f"( {_ROOT_DSE_ARC}{number} NAME '{name}' SYNTAX '{_STRING}' )"
        for number, name in enumerate(root_dse_names, start=1)
    ]
    for name, info in AttributeTypeInfo.from_definition(definitions).items():
        schema.attribute_types[name] = info
        schema.attribute_types.set_alias(name, info.oid, ignore_duplicates=True)
    class_definitions = [
        f"( {oid} NAME '{name}' SUP {sup} {kind}"
        + (f" MAY ( {' $ '.join(may)} )" if may else "")
        + " )"
        for oid, name, sup, kind, may in EXCHANGE_OBJECT_CLASSES
    ]
    for name, info in ObjectClassInfo.from_definition(class_definitions).items():
        schema.object_classes[name] = info
        schema.object_classes.set_alias(name, info.oid, ignore_duplicates=True)
        for attribute in info.may_contain:
            if attribute in schema.attribute_types:
                schema.attribute_types[attribute].optional_in.append(name)


def _set_root_dse(server: Server) -> None:
    info = server.info
    host = SAMPLE_DC_HOST
    site_server = f"CN=DC01,CN=Servers,CN=Default-First-Site-Name,CN=Sites,{SAMPLE_CONFIG_NC}"
    values = {
        "configurationNamingContext": [SAMPLE_CONFIG_NC],
        "defaultNamingContext": [SAMPLE_BASE],
        "rootDomainNamingContext": [SAMPLE_BASE],
        "schemaNamingContext": [SAMPLE_SCHEMA_NC],
        "namingContexts": list(NAMING_CONTEXTS),
        "dnsHostName": [host],
        "serverName": [site_server],
        "dsServiceName": [f"CN=NTDS Settings,{site_server}"],
        "ldapServiceName": ["contoso.example:dc01$@CONTOSO.EXAMPLE"],
    }
    for name, value in values.items():
        info.raw[name] = list(value)
        if name != "namingContexts":
            info.other[name] = list(value)
    info.naming_contexts = list(NAMING_CONTEXTS)


def _naming_context_of(dn: str) -> str:
    dn = dn.lower()
    best = ""
    for nc in NAMING_CONTEXTS:
        candidate = nc.lower()
        if (dn == candidate or dn.endswith("," + candidate)) and len(candidate) > len(best):
            best = candidate
    return best


def _result(code: int, message: str = "") -> dict:
    return {"resultCode": code, "matchedDN": "", "diagnosticMessage": message, "referral": None}


def _patch_strategy(connection: Connection) -> None:
    """Teach this connection's mock the three AD behaviours described in the module docstring."""
    strategy = connection.strategy
    server = connection.server
    original_search = strategy._execute_search
    original_equal = strategy.equal
    categories = {
        name.lower(): to_raw(f"CN={cn},{SAMPLE_SCHEMA_NC}")
        for name, cn in DEFAULT_OBJECT_CATEGORY.items()
    }

    def execute_search(request: dict) -> tuple[list, dict]:
        base = str(request["base"]).strip()
        if not base:
            return _root_dse_search(server, request)
        responses, result = original_search(request)
        context = _naming_context_of(safe_dn(base))
        position = {dn.lower(): index for index, dn in enumerate(server.dit)}
        kept = [r for r in responses if _naming_context_of(r["object"]) == context]
        kept.sort(key=lambda r: position.get(r["object"].lower(), len(position)))
        return kept, result

    def equal(dn: str, attribute_type: str, value_to_check: object) -> bool:
        if attribute_type.lower() == "objectcategory":
            text = (
                value_to_check.decode("utf-8", "replace")
                if isinstance(value_to_check, bytes)
                else str(value_to_check)
            )
            if "=" not in text and text.lower() in categories:
                value_to_check = categories[text.lower()]
        return original_equal(dn, attribute_type, value_to_check)

    strategy._execute_search = execute_search
    strategy.equal = equal


def _root_dse_search(server: Server, request: dict) -> tuple[list, dict]:
    if request["scope"] != 0:
        return [], _result(RESULT_NO_SUCH_OBJECT, "only a base search of the RootDSE is possible")
    wanted = {str(a).lower() for a in request["attributes"]}
    every = not wanted or "*" in wanted
    attributes = [
        {"type": name, "vals": [to_raw(v) for v in values]}
        for name, values in server.info.raw.items()
        if every or name.lower() in wanted
    ]
    return [{"object": "", "attributes": attributes}], _result(RESULT_SUCCESS)


def _load(connection: Connection) -> None:
    strategy = connection.strategy
    dit = connection.server.dit
    for dn, attrs in sample_records():
        attributes = {name: list(values) for name, values in attrs}
        if not strategy.add_entry(dn, attributes, validate=False):
            raise SampleDataError(f"the mock refused entry {dn!r} (unknown class or duplicate?)")
        stored = dit[safe_dn(dn)]
        listed = next((list(v) for n, v in attrs if n.lower() == "objectclass"), [])
        ordered = [to_raw(v) for v in listed]
        if set(ordered) != set(stored.get("objectClass", [])):
            raise SampleDataError(f"{dn!r}: objectClass must list the whole class chain")
        stored["objectClass"] = ordered


def sample_connection() -> ldap3.Connection:
    """A bound MOCK_SYNC connection serving the bundled sample forest (read it with paged searches like a real DC)."""  # noqa: E501
    server = Server("sample-dc", get_info=OFFLINE_AD_2012_R2)
    _add_schema_definitions(server)
    _set_root_dse(server)
    password = secrets.token_urlsafe(24)  # the sample's own, never shown or reused
    connection = Connection(
        server,
        user=SAMPLE_BIND_DN,
        password=password,
        client_strategy=MOCK_SYNC,
        raise_exceptions=False,
        auto_referrals=False,
        return_empty_attributes=False,
    )
    _patch_strategy(connection)
    _load(connection)
    connection.server.dit[safe_dn(SAMPLE_BIND_DN)]["userPassword"] = [to_raw(password)]
    if not connection.bind():
        raise SampleDataError(f"bind to the sample forest failed: {connection.result}")
    return connection
