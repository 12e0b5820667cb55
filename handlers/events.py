"""Mentions (``@authguard status EX01``), direct messages, and the App Home tab.

Each event is acknowledged at once and handled in a lazy listener afterwards. Slack re-sends an
event it thinks was lost, so each event id is handled once.
"""

from __future__ import annotations

import logging
from typing import Any

from slack_bolt import Ack, App, Say
from slack_sdk import WebClient

from bot.commands import parse
from bot.summary import build_summary
from handlers import blocks
from handlers.lazy import logged
from handlers.replies import audit_started_text, status_reply, summary_reply, who
from handlers.services import Services
from storage import chat as chat_store

log = logging.getLogger(__name__)


def register(app: App, services: Services) -> None:
    def first_time(body: dict[str, Any]) -> bool:
        event_id = body.get("event_id")
        return not event_id or chat_store.first_time_seen(services.store, event_id)

    def converse(event: dict[str, Any], say: Say, body: dict[str, Any]) -> None:
        if not first_time(body):
            return
        thread = event.get("thread_ts") or event.get("ts")
        parsed = parse(event.get("text"))
        asked_by = who(event.get("user"))
        try:
            if parsed.name == "status":
                text, body_blocks = status_reply(services, parsed, asked_by)
            elif parsed.name == "summary":
                text, body_blocks = summary_reply(services)
            elif parsed.name == "audit":
                say(text=audit_started_text(services), thread_ts=thread)
                outcome = services.core.audit(trigger="chat", requested_by=asked_by)
                text, body_blocks = blocks.audit_result_message(outcome.run, outcome.joined)
            else:
                text, body_blocks = blocks.help_message(parsed.problem)
        except Exception:
            log.exception("conversation failed")
            text, body_blocks = blocks.error_message(
                "Something went wrong on authguard's side; the operators can find it in the log."
            )
        say(text=text, blocks=body_blocks, thread_ts=thread)

    def ack_event(ack: Ack) -> None:
        ack()

    def on_mention(event: dict[str, Any], say: Say, body: dict[str, Any]) -> None:
        converse(event, say, body)

    app.event("app_mention")(ack=ack_event, lazy=[logged(on_mention)])

    def is_direct_message(event: dict[str, Any]) -> bool:
        return (
            event.get("channel_type") == "im"
            and not event.get("bot_id")
            and event.get("subtype") is None
        )

    def on_direct_message(event: dict[str, Any], say: Say, body: dict[str, Any]) -> None:
        converse(event, say, body)

    app.event("message", matchers=[lambda event: is_direct_message(event)])(
        ack=ack_event, lazy=[logged(on_direct_message)]
    )

    @app.event("message")
    def ignore_other_messages() -> None:
        """Channel chatter, edits and the bot's own messages: nothing to do."""

    def on_home(event: dict[str, Any], client: WebClient) -> None:
        if event.get("tab") not in (None, "home"):
            return
        client.views_publish(
            user_id=event["user"], view=blocks.home_view(build_summary(services.store))
        )

    app.event("app_home_opened")(ack=ack_event, lazy=[logged(on_home)])
