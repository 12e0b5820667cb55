"""Which buttons and notes each target of a warning gets (the notifier's ``decorate`` hook).

For a target with Basic authentication on: "Approve fix" (with a confirm dialog stating the exact
change) unless the fix would leave no authentication method, "Require TLS" where a connector has
the Tls bit, "Accept risk" and "Recheck". Button values are opaque ids of stored requests.
Notes show the latest job's outcome, approvals so far, and why a fix needs a person.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from bot import remediation
from bot.config import Settings
from bot.rules import OPEN_VERDICTS
from handlers.blocks import (
    ActionId,
    Button,
    approvals_note,
    confirm_dialog,
    esc,
    job_note,
)
from storage import Store
from storage import chat as chat_store

Buttons = dict[str, list[Button]]
Notes = dict[str, str]


class Offers:
    """The notifier's decorate hook: ``offers(server, rows, revision) -> (buttons, notes)``."""

    def __init__(self, settings: Settings, store: Store) -> None:
        self.settings = settings
        self.store = store

    def __call__(
        self, server: str, rows: Sequence[dict[str, Any]], revision: str
    ) -> tuple[Buttons, Notes]:
        buttons: Buttons = {}
        notes: Notes = {}
        for row in rows:
            key = row["target_key"]
            lines: list[str] = []
            job = chat_store.latest_job(self.store, key)
            if job is not None:
                lines.append(
                    job_note(
                        job,
                        self._approver_names(job.get("request_id")),
                        row["kind"],
                    )
                )
            if row["verdict"] == "ok":
                notes[key] = (
                    "\n".join(lines) or ":white_check_mark: Basic authentication is off now."
                )
                continue
            buttons[key], extra = self._buttons(row)
            notes[key] = "\n".join(lines + extra)
        return buttons, notes

    def _approver_names(self, request_id: str | None) -> list[str]:
        if not request_id:
            return []
        return [a.user_name or a.user_id for a in remediation.approvals_of(self.store, request_id)]

    def _request(self, row: dict[str, Any], action: str) -> dict[str, Any]:
        return remediation.create_request(self.settings, self.store, row, action)

    def _buttons(self, row: dict[str, Any]) -> tuple[list[Button], list[str]]:
        out: list[Button] = []
        lines: list[str] = []
        if row["verdict"] in OPEN_VERDICTS:
            try:
                fix = self._request(row, remediation.FIX)
            except remediation.RequestRefused as exc:
                lines.append(f":raised_hand: *Needs a manual decision:* {esc(exc)}")
            else:
                out.append(self._approve_button(fix))
                approved = self._approver_names(fix["id"])
                if approved:
                    lines.append(approvals_note(approved, fix["required_approvals"]))
            try:
                tls = self._request(row, remediation.REQUIRE_TLS)
            except remediation.RequestRefused:
                pass
            else:
                out.append(
                    Button(
                        ActionId.REQUIRE_TLS,
                        "Require TLS",
                        tls["id"],
                        confirm=confirm_dialog(
                            "Require TLS for Basic?", remediation.describe_change(tls)
                        ),
                    )
                )
        anchor = self._request(row, remediation.WAIVE)
        if row["verdict"] != "waived":
            out.append(Button(ActionId.ACCEPT_RISK, "Accept risk", anchor["id"]))
        out.append(Button(ActionId.RECHECK, "Recheck", anchor["id"]))
        if self.settings.remediation_mode == "dry-run":
            lines.append(":test_tube: Dry-run mode: an approved fix runs every step but the write.")
        return out, lines

    def _approve_button(self, request: dict[str, Any]) -> Button:
        return Button(
            ActionId.APPROVE_FIX,
            "Approve fix",
            request["id"],
            style="danger",
            confirm=confirm_dialog("Approve this change?", remediation.describe_change(request)),
        )
