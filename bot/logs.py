"""Logging set-up that never lets a configured secret reach a log line.

>>> settings = load_settings(env={"SLACK_BOT_TOKEN": "xoxb-123"})  # doctest: +SKIP
>>> setup_logging(settings)                                         # doctest: +SKIP

Every handler of the root logger gets :class:`Redactor`, which replaces each configured token and
password (and anything shaped like a Slack token) with ``***`` in the final message.
"""

from __future__ import annotations

import logging
import re
import sys
import threading

from bot.config import Secret, Settings

SLACK_TOKEN = re.compile(r"xox[abposr]-[A-Za-z0-9-]+|xapp-[A-Za-z0-9-]+")


def secrets_of(settings: Settings) -> list[str]:
    """Every secret value the settings hold (passwords, tokens, signing secret)."""
    values = [getattr(settings, name) for name in vars(settings) if name != "explicit"]
    found = [v.get() for v in values if isinstance(v, Secret) and v.get()]
    try:
        password = settings.password()
    except Exception:  # an unreadable password file has nothing to redact
        password = None
    if password:
        found.append(password)
    return sorted(set(found), key=len, reverse=True)


def redact(text: str, secrets: list[str]) -> str:
    """``text`` with each secret (and Slack-token-shaped strings) replaced by ``***``."""
    for secret in secrets:
        if len(secret) >= 3:
            text = text.replace(secret, "***")
    return SLACK_TOKEN.sub("***", text)


class Redactor(logging.Filter):
    """A filter that rewrites each record's message with the secrets taken out."""

    def __init__(self, secrets: list[str]) -> None:
        super().__init__()
        self.secrets = secrets

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if record.exc_info:
            message += "\n" + logging.Formatter().formatException(record.exc_info)
            record.exc_info = None
            record.exc_text = None
        cleaned = redact(message, self.secrets)
        record.msg, record.args = cleaned, None
        return True


def setup_logging(settings: Settings, level: int = logging.INFO) -> None:
    """Log to stderr with timestamps, every line passed through the :class:`Redactor`.

    Uncaught exceptions (in any thread) and warnings are logged too, so their text is redacted
    like everything else instead of going to stderr on their own.
    """
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    redactor = Redactor(secrets_of(settings))
    for handler in logging.getLogger().handlers:
        handler.addFilter(redactor)
    logging.captureWarnings(True)
    crashes = logging.getLogger("authguard.crash")

    def log_uncaught(exc_type, exc_value, exc_traceback) -> None:
        crashes.critical("uncaught exception", exc_info=(exc_type, exc_value, exc_traceback))

    def log_uncaught_in_thread(args: threading.ExceptHookArgs) -> None:
        if args.exc_type is SystemExit:
            return
        name = args.thread.name if args.thread is not None else "?"
        crashes.error(
            "uncaught exception in thread %s",
            name,
            exc_info=(args.exc_type, args.exc_value, args.exc_traceback),
        )

    sys.excepthook = log_uncaught
    threading.excepthook = log_uncaught_in_thread
