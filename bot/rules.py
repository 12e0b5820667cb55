"""The audit rules: pure functions and tables that turn a target's flags into a verdict.

Nothing here talks to a directory, a database or Slack, so every rule is tested on plain values.

>>> judge("smtp_virtual_server", ["7"]).verdict
'warning'
>>> decode("receive_connector", 31)
['Tls', 'Integrated', 'BasicAuth', 'BasicAuthRequireTLS', 'ExchangeServer']
>>> judge("receive_connector", ["3"]).verdict
'ok'
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

WARNING, OK, EXEMPT, UNKNOWN, WAIVED = "warning", "ok", "exempt", "unknown", "waived"
VERDICTS = (WARNING, UNKNOWN, WAIVED, EXEMPT, OK)  # most urgent first
OPEN_VERDICTS = (WARNING, UNKNOWN)  # findings someone must act on (a waiver may cover them)
SMTP_VIRTUAL_SERVER, RECEIVE_CONNECTOR = "smtp_virtual_server", "receive_connector"


@dataclass(frozen=True)
class Kind:
    """One kind of audited object: where its flags live and what each bit means."""

    key: str
    label: str
    object_class: str
    attribute: str
    bits: tuple[tuple[int, str], ...]
    basic_bits: int
    tls_bit: int | None  # the bit that makes Basic require TLS; None: not recorded here
    fix_clear: int  # bits that a fix clears
    auth_bits: int  # bits that are authentication methods (a fix must leave one of them)
    tls_allowed_bit: int | None  # the bit that must be set to offer "require TLS"


KINDS: dict[str, Kind] = {
    SMTP_VIRTUAL_SERVER: Kind(
        key=SMTP_VIRTUAL_SERVER,
        label="SMTP virtual server",
        object_class="protocolCfgSMTPServer",
        attribute="msExchAuthenticationFlags",
        bits=((1, "Anonymous"), (2, "Basic"), (4, "Integrated Windows")),
        basic_bits=2,
        tls_bit=None,
        fix_clear=2,
        auth_bits=1 | 2 | 4,
        tls_allowed_bit=None,
    ),
    RECEIVE_CONNECTOR: Kind(
        key=RECEIVE_CONNECTOR,
        label="Receive connector",
        object_class="msExchSmtpReceiveConnector",
        attribute="msExchSMTPReceiveInboundSecurityFlag",
        bits=(
            (1, "Tls"),
            (2, "Integrated"),
            (4, "BasicAuth"),
            (8, "BasicAuthRequireTLS"),
            (16, "ExchangeServer"),
            (32, "ExternalAuthoritative"),
        ),
        basic_bits=4,
        tls_bit=8,
        fix_clear=4 | 8,
        auth_bits=1 | 2 | 4 | 8 | 16 | 32,
        tls_allowed_bit=1,
    ),
}

KIND_BY_CLASS = {kind.object_class.lower(): kind for kind in KINDS.values()}

#: what each exemption reason (the ``reason`` of an ``exempt`` verdict) means, for people
EXEMPT_REASONS = {
    "sbs": "Small Business Server, exempt as Microsoft's analyzer did",
    "configured": "listed in AUTHGUARD_EXEMPT_SERVERS",
}

RISK = (
    "Basic authentication sends user names and passwords in clear text (base64) unless the "
    "connection is encrypted with TLS. Turn it off, or where it must stay (for example for a "
    "partner company), require TLS."
)


@dataclass(frozen=True)
class Judgement:
    """The outcome of the rules for one target."""

    flags: int | None
    basic_auth: bool | None
    tls_required: bool | None
    verdict: str
    reason: str
    severity: str  # "high", "medium", "none"


def reason_text(verdict: str, reason: str | None) -> str:
    """A verdict's reason for people: ``"sbs"`` becomes ``"sbs: Small Business Server, ..."``."""
    if verdict == EXEMPT and reason in EXEMPT_REASONS:
        return f"{reason}: {EXEMPT_REASONS[reason]}"
    return reason or ""


def decode(kind: str, flags: int | None) -> list[str]:
    """The names of the bits set in ``flags``; unknown bits are shown as numbers."""
    if flags is None:
        return []
    names = [name for bit, name in KINDS[kind].bits if flags & bit]
    known = sum(bit for bit, _ in KINDS[kind].bits)
    if flags & ~known:
        names.append(f"other bits {flags & ~known}")
    return names


def describe(kind: str, flags: int | None) -> str:
    """Flags in words for people: ``'7 (Anonymous, Basic, Integrated Windows)'``."""
    if flags is None:
        return "not set"
    names = decode(kind, flags)
    return f"{flags} ({', '.join(names)})" if names else f"{flags} (none)"


def parse_flags(attribute: str, values: Sequence[object] | None) -> tuple[int | None, str | None]:
    """Read a raw attribute value as an integer; return ``(flags, None)`` or ``(None, problem)``."""
    if values is None or (isinstance(values, (list, tuple)) and len(values) == 0):
        return None, f"{attribute} is not set"
    if not isinstance(values, (list, tuple)):
        values = [values]
    if len(values) > 1:
        return None, f"{attribute} has {len(values)} values; it should have one"
    raw = values[0]
    if isinstance(raw, bytes):
        raw = raw.decode("utf-8", "replace")
    if isinstance(raw, bool):
        return None, f"{attribute} is not an integer: {raw!r}"
    if isinstance(raw, int):
        value = raw
    else:
        text = str(raw).strip()
        if not text:
            return None, f"{attribute} is empty"
        try:
            value = int(text)
        except ValueError:
            shown = text if len(text) <= 40 else text[:40] + "..."
            return None, f"{attribute} is not an integer: {shown!r}"
    if value < 0:
        return None, f"{attribute} is negative ({value})"
    return value, None


def judge(
    kind: str, values: Sequence[object] | None, exempt_reason: str | None = None
) -> Judgement:
    """Apply the rules to one target's raw flag values.

    ``exempt_reason`` is ``"sbs"`` or ``"configured"`` when the server is exempt; it becomes
    the verdict's reason as is (see :data:`EXEMPT_REASONS` for words). A value that
    cannot be read is ``unknown``, never ``ok``.
    """
    if type(values) is tuple and all(type(v) is str for v in values):
        # what the directory gives: judged once per distinct value (only text, so 1, 1.0 and
        # True, which hash alike, never share an answer)
        return _judge_cached(kind, values, exempt_reason)
    return _judge(kind, values, exempt_reason)


def _judge(kind: str, values: Sequence[object] | None, exempt_reason: str | None) -> Judgement:
    spec = KINDS[kind]
    flags, problem = parse_flags(spec.attribute, values)
    if flags is None:
        return Judgement(None, None, None, UNKNOWN, problem or "unreadable", "high")
    basic = bool(flags & spec.basic_bits)
    tls: bool | None = None if spec.tls_bit is None else bool(flags & spec.tls_bit)
    if exempt_reason:
        return Judgement(flags, basic, tls, EXEMPT, exempt_reason, "none")
    if not basic:
        return Judgement(flags, basic, tls, OK, "Basic authentication is off", "none")
    if tls is None:
        return Judgement(
            flags,
            basic,
            tls,
            WARNING,
            "Basic authentication is on; whether TLS is required is not recorded in "
            f"{spec.attribute}, so passwords may cross the network in clear text",
            "high",
        )
    if not tls:
        return Judgement(
            flags,
            basic,
            tls,
            WARNING,
            "BasicAuth is on without BasicAuthRequireTLS: passwords can cross the network in "
            "clear text (severe)",
            "high",
        )
    return Judgement(
        flags,
        basic,
        tls,
        WARNING,
        "BasicAuth is on, TLS required (BasicAuthRequireTLS)",
        "medium",
    )


# the rules are pure and a forest has few distinct flag values: an audit of 10,000 targets
# judges a handful of them (the bound keeps odd values from growing it)
_judge_cached = lru_cache(maxsize=4096)(_judge)


def fixed_flags(kind: str, flags: int) -> int:
    """The flags after the fix: Basic cleared (and BasicAuthRequireTLS on a connector)."""
    return flags & ~KINDS[kind].fix_clear


def fix_problem(kind: str, flags: int) -> str | None:
    """Why the Basic fix must not be offered as a button, or ``None`` when it is safe.

    A fix that leaves no authentication method at all needs a person's decision.
    """
    spec = KINDS[kind]
    after = fixed_flags(kind, flags)
    if after == flags:
        return "Basic authentication is already off"
    if not after & spec.auth_bits:
        return (
            f"Basic is the only authentication method on this {spec.label.lower()}: clearing it "
            "would leave none, which would stop clients from sending mail. Decide by hand which "
            "method should replace it."
        )
    return None


def require_tls_flags(kind: str, flags: int) -> int | None:
    """Flags with BasicAuthRequireTLS set, or ``None`` when that option does not apply."""
    spec = KINDS[kind]
    if spec.tls_bit is None or spec.tls_allowed_bit is None:
        return None
    if not flags & spec.basic_bits or flags & spec.tls_bit or not flags & spec.tls_allowed_bit:
        return None
    return flags | spec.tls_bit
