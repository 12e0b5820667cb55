"""Answers shared by the slash command, mentions and direct messages (one place for each reply)."""

from __future__ import annotations

from typing import Any

from bot.commands import Command
from bot.summary import build_summary
from handlers import blocks
from handlers.services import Services


def who(user_id: str | None, user_name: str | None = None) -> str:
    """How a Slack user is recorded as the one who asked: ``slack:U123 (alice)``."""
    return f"slack:{user_id}" + (f" ({user_name})" if user_name else "")


def status_reply(services: Services, command: Command, asked_by: str) -> tuple[str, list[dict]]:
    result = services.core.status(command.argument or "")
    return blocks.status_message(
        command.argument or "", result.rows, result.matches, result.no_audit_yet
    )


def summary_reply(services: Services) -> tuple[str, list[dict[str, Any]]]:
    return blocks.summary_message(build_summary(services.store))


def audit_started_text(services: Services) -> str:
    running = services.core.audit_running()
    if running:
        started = blocks.when(running["started_at"])
        return (
            f"An audit is already running (#{running['id']}, started {started}). "
            "You will get its result here when it is done."
        )
    return "Audit started. The result will be posted here when it is done."
