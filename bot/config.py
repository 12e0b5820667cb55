"""One settings object for authguard, read from options, environment, a TOML file and defaults.

Precedence, highest first: command-line options, environment variables, the TOML file given with
``--config FILE`` (same keys, in sections: ``AUTHGUARD_LDAP_URL`` is ``[ldap] url``), then defaults.

>>> s = load_settings(env={"AUTHGUARD_LDAP_URL": "ldaps://dc1:636"})
>>> s.ldap_url, s.ldap_starttls
('ldaps://dc1:636', False)

Secrets (passwords, tokens) are held in :class:`Secret`, whose ``repr`` and ``str`` never show the
value, so a settings object can be logged without leaking them.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit


class ConfigError(Exception):
    """A missing or invalid setting; the message names the variable. The CLI exits 2 on it."""


class Secret:
    """A string that does not print itself: ``str(Secret("x"))`` is ``'***'``; use ``.get()``."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def get(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__

    def __bool__(self) -> bool:
        return bool(self._value)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


# -- value parsers: each takes the raw text and returns the typed value or raises ValueError ----


def _text(raw: Any) -> str | None:
    text = str(raw).strip()
    return text or None


def _secret(raw: Any) -> Secret | None:
    text = str(raw)
    return Secret(text) if text else None


def _bool(raw: Any) -> bool:
    if isinstance(raw, bool):
        return raw
    text = str(raw).strip().lower()
    if text in {"1", "true", "yes", "on"}:
        return True
    if text in {"0", "false", "no", "off", ""}:
        return False
    raise ValueError("expected true or false")


def _int_range(low: int, high: int) -> Callable[[Any], int]:
    def parse(raw: Any) -> int:
        try:
            value = int(str(raw).strip())
        except ValueError:
            raise ValueError("expected a whole number") from None
        if not low <= value <= high:
            raise ValueError(f"expected a number from {low} to {high}")
        return value

    return parse


def _float_positive(raw: Any) -> float:
    try:
        value = float(str(raw).strip())
    except ValueError:
        raise ValueError("expected a number of seconds") from None
    if value <= 0:
        raise ValueError("expected a positive number of seconds")
    return value


def _ldap_url(raw: Any) -> str:
    text = str(raw).strip()
    parts = urlsplit(text)
    if parts.scheme.lower() not in {"ldap", "ldaps"} or not parts.hostname:
        raise ValueError("expected ldap://host:port or ldaps://host:port")
    try:
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        raise ValueError("the port is not a number from 0 to 65535") from None
    if parts.path not in {"", "/"} or parts.query:
        raise ValueError("expected ldap://host:port or ldaps://host:port, nothing after the port")
    return text.rstrip("/")


def _file(raw: Any) -> str:
    text = str(raw).strip()
    if not Path(text).is_file():
        raise ValueError(f"no readable file at {text!r}")
    return text


def _name_list(raw: Any) -> tuple[str, ...]:
    items = raw if isinstance(raw, list) else str(raw).split(",")
    return tuple(dict.fromkeys(str(item).strip() for item in items if str(item).strip()))


def _slack_ids(raw: Any) -> tuple[str, ...]:
    ids = _name_list(raw)
    for item in ids:
        if not (item[:1] in {"U", "W", "S"} and item[1:].isalnum() and item.isupper()):
            raise ValueError(
                f"{item!r} is not a Slack user id (U..., W...) or user group id (S...)"
            )
    return ids


def _cron(raw: Any) -> str:
    from apscheduler.triggers.cron import CronTrigger

    text = " ".join(str(raw).split())
    try:
        CronTrigger.from_crontab(text)
    except ValueError as exc:
        raise ValueError(f"not a cron expression ({exc})") from None
    return text


def _timezone(raw: Any) -> str:
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    text = str(raw).strip()
    try:
        ZoneInfo(text)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown time zone {text!r}") from None
    return text


def _channel(raw: Any) -> str:
    text = str(raw).strip()
    if not (text[:1] in {"C", "G", "D"} and text.isalnum() and text.isupper()):
        raise ValueError("expected a channel id such as C0123456789 (not a #name)")
    return text


def _http_url(raw: Any) -> str:
    text = str(raw).strip()
    parts = urlsplit(text)
    if parts.scheme not in {"http", "https"} or not parts.hostname:
        raise ValueError("expected an http(s):// URL")
    return text if text.endswith("/") else text + "/"


def _mode(raw: Any) -> str:
    text = str(raw).strip().lower()
    if text not in {"live", "dry-run"}:
        raise ValueError("expected live or dry-run")
    return text


@dataclass(frozen=True)
class Option:
    """How one setting is named in each source and how its text is parsed."""

    name: str
    env: str
    section: str
    key: str
    parse: Callable[[Any], Any]


OPTIONS: tuple[Option, ...] = (
    Option("ldap_url", "AUTHGUARD_LDAP_URL", "ldap", "url", _ldap_url),
    Option("ldap_bind_dn", "AUTHGUARD_LDAP_BIND_DN", "ldap", "bind_dn", _text),
    Option("ldap_password", "AUTHGUARD_LDAP_PASSWORD", "ldap", "password", _secret),
    Option("ldap_password_file", "AUTHGUARD_LDAP_PASSWORD_FILE", "ldap", "password_file", _file),
    Option("ldap_starttls", "AUTHGUARD_LDAP_STARTTLS", "ldap", "starttls", _bool),
    Option("ldap_ca_file", "AUTHGUARD_LDAP_CA_FILE", "ldap", "ca_file", _file),
    Option("ldap_tls_name", "AUTHGUARD_LDAP_TLS_NAME", "ldap", "tls_name", _text),
    Option(
        "ldap_allow_plaintext", "AUTHGUARD_LDAP_ALLOW_PLAINTEXT", "ldap", "allow_plaintext", _bool
    ),
    Option("ldap_base", "AUTHGUARD_LDAP_BASE", "ldap", "base", _text),
    Option("ldap_domain_base", "AUTHGUARD_LDAP_DOMAIN_BASE", "ldap", "domain_base", _text),
    Option("ldap_timeout", "AUTHGUARD_LDAP_TIMEOUT", "ldap", "timeout", _float_positive),
    Option("db", "AUTHGUARD_DB", "storage", "db", _text),
    Option("keep_days", "AUTHGUARD_KEEP_DAYS", "storage", "keep_days", _int_range(7, 3650)),
    Option("exempt_servers", "AUTHGUARD_EXEMPT_SERVERS", "audit", "exempt_servers", _name_list),
    Option("slack_bot_token", "SLACK_BOT_TOKEN", "slack", "bot_token", _secret),
    Option("slack_app_token", "SLACK_APP_TOKEN", "slack", "app_token", _secret),
    Option("slack_signing_secret", "SLACK_SIGNING_SECRET", "slack", "signing_secret", _secret),
    Option("slack_channel", "AUTHGUARD_SLACK_CHANNEL", "slack", "channel", _channel),
    Option("slack_api_url", "AUTHGUARD_SLACK_API_URL", "slack", "api_url", _http_url),
    Option("audit_schedule", "AUTHGUARD_AUDIT_SCHEDULE", "schedule", "audit", _cron),
    Option("summary_schedule", "AUTHGUARD_SUMMARY_SCHEDULE", "schedule", "summary", _cron),
    Option("timezone", "AUTHGUARD_TIMEZONE", "schedule", "timezone", _timezone),
    Option("approvers", "AUTHGUARD_APPROVERS", "approvals", "approvers", _slack_ids),
    Option(
        "approvals_required",
        "AUTHGUARD_APPROVALS_REQUIRED",
        "approvals",
        "required",
        _int_range(1, 5),
    ),
    Option(
        "approval_ttl_hours",
        "AUTHGUARD_APPROVAL_TTL_HOURS",
        "approvals",
        "ttl_hours",
        _int_range(1, 24 * 30),
    ),
    Option("remediation_mode", "AUTHGUARD_REMEDIATION_MODE", "remediation", "mode", _mode),
)

OPTIONS_BY_NAME = {option.name: option for option in OPTIONS}


@dataclass(frozen=True)
class Settings:
    """Every setting authguard reads. Build it with :func:`load_settings`."""

    ldap_url: str | None = None
    ldap_bind_dn: str | None = None
    ldap_password: Secret | None = None
    ldap_password_file: str | None = None
    ldap_starttls: bool = False
    ldap_ca_file: str | None = None
    ldap_tls_name: str | None = None
    ldap_allow_plaintext: bool = False
    ldap_base: str | None = None
    ldap_domain_base: str | None = None
    ldap_timeout: float = 15.0
    db: str = "authguard.db"
    keep_days: int = 180
    exempt_servers: tuple[str, ...] = ()
    slack_bot_token: Secret | None = None
    slack_app_token: Secret | None = None
    slack_signing_secret: Secret | None = None
    slack_channel: str | None = None
    slack_api_url: str = "https://slack.com/api/"
    audit_schedule: str = "0 6 * * *"
    summary_schedule: str = "0 9 * * *"
    timezone: str = "UTC"
    approvers: tuple[str, ...] = ()
    approvals_required: int = 1
    approval_ttl_hours: int = 72
    remediation_mode: str = "live"
    explicit: frozenset[str] = field(default_factory=frozenset, compare=False)

    def password(self) -> str | None:
        """The LDAP bind password, from ``AUTHGUARD_LDAP_PASSWORD`` or the password file."""
        if self.ldap_password:
            return self.ldap_password.get()
        if self.ldap_password_file:
            try:
                text = Path(self.ldap_password_file).read_text(encoding="utf-8")
            except OSError as exc:
                raise ConfigError(
                    f"AUTHGUARD_LDAP_PASSWORD_FILE: cannot read the file ({exc.strerror})"
                ) from None
            return text.rstrip("\r\n")
        return None

    def require(self, *names: str) -> None:
        """Raise one ConfigError naming every variable in ``names`` that has no value."""
        missing = [OPTIONS_BY_NAME[name].env for name in names if not getattr(self, name)]
        if missing:
            raise ConfigError("missing setting: " + ", ".join(missing))

    @cached_property
    def _exempt_folded(self) -> frozenset[str]:
        # worked out once per Settings (a frozen dataclass: the cache sits in its __dict__)
        return frozenset(name.casefold() for name in self.exempt_servers)

    def is_exempt(self, server: str) -> bool:
        """True when ``server`` is listed in AUTHGUARD_EXEMPT_SERVERS (case-insensitive)."""
        return server.casefold() in self._exempt_folded


def _read_toml(path: str) -> dict[str, Any]:
    try:
        with open(path, "rb") as handle:
            data = tomllib.load(handle)
    except OSError as exc:
        raise ConfigError(f"--config {path}: cannot read the file ({exc.strerror})") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"--config {path}: not valid TOML ({exc})") from None
    known = {(option.section, option.key) for option in OPTIONS}
    for section, table in data.items():
        if not isinstance(table, dict):
            raise ConfigError(f"--config {path}: {section!r} must be a [section]")
        for key in table:
            if (section, key) not in known:
                raise ConfigError(f"--config {path}: unknown setting [{section}] {key}")
    return data


def load_settings(
    options: Mapping[str, Any] | None = None,
    env: Mapping[str, str] | None = None,
    config_file: str | None = None,
) -> Settings:
    """Merge the sources into one :class:`Settings`; raise :class:`ConfigError` on a bad value.

    ``options`` holds command-line values by setting name (``{"ldap_url": ...}``; ``None`` values
    are ignored), ``env`` defaults to ``os.environ``.
    """
    env = os.environ if env is None else env
    toml = _read_toml(config_file) if config_file else {}
    values: dict[str, Any] = {}
    explicit: set[str] = set()
    for option in OPTIONS:
        raw: Any = None
        source = ""
        if options and options.get(option.name) is not None:
            raw, source = options[option.name], f"--{option.name.replace('_', '-')}"
        elif env.get(option.env) not in (None, ""):
            raw, source = env[option.env], option.env
        elif option.key in toml.get(option.section, {}):
            raw = toml[option.section][option.key]
            source = f"{option.env} ([{option.section}] {option.key} in {config_file})"
        if source:
            try:
                values[option.name] = option.parse(raw)
            except ValueError as exc:
                raise ConfigError(f"{source}: {exc}") from None
            explicit.add(option.name)
    # a setting not given anywhere keeps the default written on Settings
    if values.get("ldap_password") and values.get("ldap_password_file"):
        raise ConfigError(
            "AUTHGUARD_LDAP_PASSWORD and AUTHGUARD_LDAP_PASSWORD_FILE are both set: keep one"
        )
    return Settings(**values, explicit=frozenset(explicit))
