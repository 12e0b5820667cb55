"""Parse what a person typed ("status EX01", "audit", "help") into a command, for any transport.

>>> parse("  status   EX01 ")
Command(name='status', argument='EX01', problem=None)
>>> parse("<@U0BOT> status ex01").argument
'ex01'
>>> parse("reboot everything").name
'help'
"""

from __future__ import annotations

import re
from dataclasses import dataclass

MAX_TEXT = 1000
MAX_SERVER_NAME = 256
_MENTION = re.compile(r"^\s*<@[A-Z0-9]+(?:\|[^>]*)?>\s*")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
COMMANDS = ("status", "audit", "summary", "help")


@dataclass(frozen=True)
class Command:
    """``name`` is one of :data:`COMMANDS`; ``problem`` explains a refusal (shown with help)."""

    name: str
    argument: str | None = None
    problem: str | None = None


def parse(text: str | None) -> Command:
    """Understand a slash-command text, a mention or a direct message."""
    text = text or ""
    if len(text) > MAX_TEXT:
        return Command("help", problem=f"That message is too long ({len(text)} characters).")
    text = _MENTION.sub("", text)
    if _CONTROL.search(text.replace("\n", " ").replace("\t", " ")):
        return Command("help", problem="That message has control characters in it.")
    words = text.split()
    if not words:
        return Command("help")
    verb = words[0].lower().rstrip("?:,.")
    rest = " ".join(words[1:]).strip()
    if verb == "what" and "status" in [w.lower() for w in words]:
        # "what is the status of server EX01?"
        rest = words[-1].rstrip("?.!")
        verb = "status"
    if verb == "status":
        for filler in ("of", "server", "for"):
            if rest.lower().startswith(filler + " "):
                rest = rest[len(filler) + 1 :].strip()
        rest = rest.rstrip("?")
        if not rest:
            return Command("help", problem="Which server? For example: `status EX01`.")
        if len(rest) > MAX_SERVER_NAME or " " in rest:
            return Command("help", problem="That is not an Exchange server name.")
        return Command("status", rest)
    if verb in ("audit", "summary", "help") and not rest:
        return Command(verb)
    return Command("help", problem=None if verb == "help" else "I did not understand that.")
