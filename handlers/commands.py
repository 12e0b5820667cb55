"""The ``/authguard`` slash command: ``status SERVER``, ``audit``, ``summary``, ``help``.

The ack answers at once (help right in it, and "audit started" for an audit); anything that reads
the database or the directory runs afterwards in a lazy listener (Bolt starts it once the ack has
returned) and answers through the command's response URL.
"""

from __future__ import annotations

import logging
from typing import Any

from slack_bolt import Ack, App, Respond

from bot.commands import parse
from handlers import blocks
from handlers.replies import audit_started_text, status_reply, summary_reply, who
from handlers.services import Services

log = logging.getLogger(__name__)
COMMAND = "/authguard"


def register(app: App, services: Services) -> None:
    def ack_command(ack: Ack, command: dict[str, Any]) -> None:
        parsed = parse(command.get("text"))
        if parsed.name == "help":
            text, body = blocks.help_message(parsed.problem)
            ack(text=text, blocks=body)
        elif parsed.name == "audit":
            ack(text=audit_started_text(services))
        else:
            ack()

    def answer(respond: Respond, command: dict[str, Any]) -> None:
        parsed = parse(command.get("text"))
        asked_by = who(command.get("user_id"), command.get("user_name"))
        try:
            if parsed.name == "status":
                text, body = status_reply(services, parsed, asked_by)
                respond(text=text, blocks=body, response_type="ephemeral")
            elif parsed.name == "summary":
                text, body = summary_reply(services)
                respond(text=text, blocks=body, response_type="in_channel")
            elif parsed.name == "audit":
                outcome = services.core.audit(trigger="chat", requested_by=asked_by)
                text, body = blocks.audit_result_message(outcome.run, outcome.joined)
                respond(text=text, blocks=body, response_type="in_channel")
        except Exception:
            log.exception("/authguard %s failed", parsed.name)
            text, body = blocks.error_message(
                "Something went wrong on authguard's side; the operators can find it in the log."
            )
            respond(text=text, blocks=body, response_type="ephemeral")

    app.command(COMMAND)(ack=ack_command, lazy=[answer])
