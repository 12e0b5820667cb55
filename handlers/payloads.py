"""Reading Slack interaction payloads (button clicks, modal submissions), and answering the person
who clicked.

>>> clicker(body)        # doctest: +SKIP
('U1', 'alice')
>>> request_id(body)     # a button's value, or a modal's private_metadata  # doctest: +SKIP
'r-3f9c...'
"""

from __future__ import annotations

import logging
from typing import Any

from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError, SlackClientError

log = logging.getLogger(__name__)
MAX_ID = 200  # longer button values are not ids authguard made: cut, they match nothing


def clicker(body: dict[str, Any]) -> tuple[str | None, str | None]:
    """``(user id, user name)`` of the person who clicked or submitted."""
    user = body.get("user") or {}
    return user.get("id"), user.get("username") or user.get("name")


def where(body: dict[str, Any]) -> tuple[str | None, str | None]:
    """``(channel, message ts)`` of the clicked message."""
    container = body.get("container") or {}
    channel = (body.get("channel") or {}).get("id") or container.get("channel_id")
    return channel, container.get("message_ts") or (body.get("message") or {}).get("ts")


def action_id(body: dict[str, Any]) -> str:
    """The clicked button's ``action_id``, or the submitted modal's ``callback_id``."""
    actions = body.get("actions") or []
    if actions:
        return str(actions[0].get("action_id"))
    return str((body.get("view") or {}).get("callback_id"))


def request_id(body: dict[str, Any]) -> str:
    """The stored request a click or a submission is about: the button's value, or the modal's
    ``private_metadata`` (``""`` when there is none)."""
    actions = body.get("actions") or []
    if actions:
        value = actions[0].get("value")
    else:
        value = (body.get("view") or {}).get("private_metadata")
    return str(value or "")[:MAX_ID]


def tell(client: WebClient, body: dict[str, Any], text: str, blocks: list | None = None) -> None:
    """An ephemeral reply to the person who clicked, in the clicked message's channel."""
    channel, _ = where(body)
    user_id, _ = clicker(body)
    if not channel or not user_id:
        return
    try:
        client.chat_postEphemeral(channel=channel, user=user_id, text=text, blocks=blocks)
    except (SlackApiError, SlackClientError, OSError) as exc:
        log.warning("ephemeral reply to %s failed: %s", user_id, exc)
