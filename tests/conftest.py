"""Shared pytest fixtures.

Sections:
  1. Default Exchange forest (DEFAULT_SERVERS) and the session-wide private slapd (`slapd`).
  (Add further sections below; keep fixtures grouped by what they serve.)
"""

from __future__ import annotations

import pytest

from tests.forest import ServerSpec
from tests.slapd_server import private_slapd

# ---------------------------------------------------------------------------
# 1. Directory: default forest + session slapd
# ---------------------------------------------------------------------------

EX2003_SERIAL = "Version 6.5 (Build 7638.2: Service Pack 2)"
EX2016_SERIAL = "Version 15.1 (Build 2507.6)"
# Exchange 2007+ versionNumber encoding (facts doc, Server.cs constants): major in bits
# 22-27, minor in bits 16-21, build in the low bits; real values carry 0x70000000 and
# bit 15 (e.g. 1942061522 = 15.1.466). This is 15.1 build 2507.
EX2016_VERSION = 0x70000000 | 15 << 22 | 1 << 16 | 0x8000 | 2507
EX2016_AG = "Exchange Administrative Group (FYDIBOHF23SPDLT)"


def _ex2016(name: str, connectors: list[tuple[str, int | None]]) -> ServerSpec:
    return ServerSpec(
        name,
        admin_group=EX2016_AG,
        serial=EX2016_SERIAL,
        version_number=EX2016_VERSION,
        operating_system="Windows Server 2016 Standard",
        connectors=connectors,
    )


# The forest every test sees through the `slapd` fixture. Do NOT modify it in place from a
# test: other tests rely on these values. Tests that write should restore what they changed
# or use their own SlapdServer (see tests/test_testbed.py).
#
# msExchAuthenticationFlags bits: 1 anonymous, 2 basic, 4 integrated.
# msExchSMTPReceiveInboundSecurityFlag bits: 1 Tls, 2 Integrated, 4 BasicAuth,
#   8 BasicAuthRequireTLS, 16 ExchangeServer.
DEFAULT_SERVERS: tuple[ServerSpec, ...] = (
    # --- Exchange 2003, First Administrative Group ------------------------------
    ServerSpec("EX2003-01", smtp_flags=[1]),  # anonymous only: compliant
    ServerSpec("EX2003-02", smtp_flags=[3]),  # anon + basic: finding
    ServerSpec("EX2003-03", smtp_flags=[5]),  # anon + NTLM: compliant
    ServerSpec("EX2003-04", smtp_flags=[6]),  # basic + NTLM: finding
    ServerSpec("EX2003-05", smtp_flags=[7]),  # all three: finding
    # two virtual servers: cn=1 compliant, cn=2 (relay) with basic
    ServerSpec(
        "EX2003-06",
        smtp_flags=[1, 7],
        smtp_display_names=["Default SMTP Virtual Server", "Relay SMTP Virtual Server"],
    ),
    ServerSpec("EX2003-07", smtp_flags=[None]),  # msExchAuthenticationFlags absent
    # Exchange 2003 SP1 in a second admin group, no computer object in the domain NC
    ServerSpec(
        "EX2003-08",
        admin_group="Second Administrative Group",
        serial="Version 6.5 (Build 7226.6: Service Pack 1)",
        version_number=7226,
        computer=False,
        smtp_flags=[3],
    ),
    # Small Business Server 2003 (a DC): basic is expected there, ExBPA exempts SBS
    ServerSpec(
        "SBS01",
        operating_system="Windows Small Business Server 2003",
        domain_controller=True,
        smtp_flags=[7],
    ),
    # LDAP/DN-special characters in the server name: finding
    ServerSpec("EX(01)*", smtp_flags=[3]),
    # --- Exchange 2016 receive connectors --------------------------------------
    _ex2016(
        "EX2016-01",
        [
            ("Default EX2016-01", 31),  # Tls+Integrated+Basic+BasicRequireTLS+ExchangeServer
            ("Client Frontend EX2016-01", 5),  # Tls+Basic, no RequireTLS: finding
        ],
    ),
    _ex2016(
        "EX2016-02",
        [
            ("Default EX2016-02", 3),  # Tls+Integrated: no basic
            ("Relay EX2016-02", 1),  # Tls only
            ("Legacy EX2016-02", None),  # attribute absent
        ],
    ),
)


@pytest.fixture(scope="session")
def slapd(tmp_path_factory: pytest.TempPathFactory):
    """A private slapd loaded with DEFAULT_SERVERS, shared by the whole session."""
    with private_slapd(tmp_path_factory, "slapd", DEFAULT_SERVERS) as server:
        yield server
