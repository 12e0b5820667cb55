"""DN keys and server lookup: the shortcuts in ``bot.directory`` give what ldap3's full RFC 4514
parser gives.

Every target of an audit needs its key (a DN normalised for comparison) and the Exchange server it
sits under. ``bot.directory`` answers both with string operations for the DNs directories really
return, and falls back to ``ldap3.utils.dn.parse_dn`` for the rest. These tests hold the shortcut
to the parser on thousands of generated DNs with escapes, quotes, multi-valued RDNs, spaces,
OIDs and non-ASCII letters.
"""

from __future__ import annotations

import random

import pytest
from ldap3.core.exceptions import LDAPInvalidDnError
from ldap3.utils.dn import parse_dn

from bot.directory import _server_of, dn_key, server_of

TYPES = ["cn", "CN", "Cn", "ou", "OU", "dc", "o", "2.5.4.3", "msExch-X"]
PLAIN_CHARS = "abcXYZ019 -_.()'ÄéΣς@:/"
ESCAPES = ["\\,", "\\+", '\\"', "\\\\", "\\<", "\\>", "\\;", "\\=", "\\2C", "\\c3\\a4", "\\#"]


def _value(rng: random.Random) -> str:
    out = []
    for _ in range(rng.randint(1, 8)):
        out.append(rng.choice(ESCAPES) if rng.random() < 0.08 else rng.choice(PLAIN_CHARS))
    text = "".join(out).strip(" ")
    return text or "x"


def _rdn(rng: random.Random) -> str:
    if rng.random() < 0.15:
        return rng.choice(["cn=Servers", "CN=SERVERS", "cn=servers"])
    rdn = f"{rng.choice(TYPES)}={_value(rng)}"
    if rng.random() < 0.05:
        rdn += f"+{rng.choice(TYPES)}={_value(rng)}"
    return rdn


def _dn(rng: random.Random) -> str:
    rdns = [_rdn(rng) for _ in range(rng.randint(1, 9))]
    seps = [rng.choice([",", ",", ",", ", ", " ,"]) for _ in rdns[1:]]
    dn = rdns[0]
    for sep, rdn in zip(seps, rdns[1:], strict=True):
        dn += sep + rdn
    return dn


def reference_key(dn: str) -> str:
    return ",".join(f"{a.lower()}={v.lower()}" for a, v, _ in parse_dn(dn))


def generated_dns(count: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    dns = []
    while len(dns) < count:
        dn = _dn(rng)
        try:
            parse_dn(dn)
        except LDAPInvalidDnError:
            continue
        dns.append(dn)
    return dns


@pytest.mark.parametrize("seed", range(4))
def test_keys_and_servers_match_the_full_parser(seed):
    for dn in generated_dns(5000, seed):
        assert dn_key(dn) == reference_key(dn), dn
        assert server_of(dn) == _server_of(dn, False), dn


def test_what_directories_return():
    dn = "CN=1,CN=SMTP,CN=Protocols,CN=EX01,CN=Servers,CN=AG,CN=Administrative Groups,DC=x"
    assert dn_key(dn) == dn.lower()
    assert server_of(dn) == ("EX01", "CN=EX01,CN=Servers,CN=AG,CN=Administrative Groups,DC=x")
    assert server_of("CN=EX01,CN=Servers") == ("EX01", "CN=EX01,CN=Servers")
    assert server_of("CN=Servers,CN=EX01") is None  # the first RDN is not under a server
    assert server_of("CN=EX01,CN=Serversx,DC=x") is None


def test_escaped_names_are_unescaped_and_keys_ignore_case():
    dn = "CN=1,CN=EX\\2C01,CN=Servers,DC=x"
    assert server_of(dn) == ("EX,01", "CN=EX\\2C01,CN=Servers,DC=x")
    assert dn_key("CN=A,cn=B") == dn_key("cn=a,CN=b") == "cn=a,cn=b"
