"""Button clicks and the waiver modal: where a click on a warning goes.

- ``approve_fix`` / ``require_tls``: approver middleware, ack, then (lazily) record the approval
  and, once enough approvers agreed, run the controlled remediation job.
- ``accept_risk``: approver middleware, then open the waiver modal in the ack half (its trigger
  expires in 3 s; a quick client, one short try) and ack.
- ``accept_risk_modal`` (view submission): approver middleware, validate, grant the waiver.
- ``recheck``: anyone; re-read that one target and redraw the warning.

Button values are opaque request ids; a made-up or stale id changes nothing and says so.
"""

from __future__ import annotations

import logging
from typing import Any

from slack_bolt import Ack, App
from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError, SlackClientError

from bot import remediation, waivers
from bot.audit import Scope
from handlers import blocks, payloads
from handlers.approvers import Approvers, require_approver
from handlers.blocks import ActionId
from handlers.clients import quick_client
from handlers.lazy import logged
from handlers.replies import who
from handlers.services import Services
from storage import audits as audit_store
from storage import chat as chat_store
from storage import remediation as rs

log = logging.getLogger(__name__)
STALE_BUTTON = "That button is no longer valid: recheck the server for fresh ones."


# what each approval button asks for: a click approves only a request of that action
_BUTTON_ACTION = {
    ActionId.APPROVE_FIX.value: remediation.FIX,
    ActionId.REQUIRE_TLS.value: remediation.REQUIRE_TLS,
}


class Clicks:
    """The slow halves of the listeners (run after the ack), sharing the services."""

    def __init__(self, services: Services, client: WebClient) -> None:
        self.services = services
        self.client = client
        self.quick = quick_client(client)  # for calls before the ack

    # -- replies ---------------------------------------------------------------------------
    def tell(self, body: dict[str, Any], text: str, blocks_: list | None = None) -> None:
        """An ephemeral reply to the person who clicked."""
        payloads.tell(self.client, body, text, blocks_)

    def thread(self, server: str, text: str) -> None:
        """A reply in the thread of the server's warning message."""
        kept = chat_store.get_warning(self.services.store, server)
        if not kept or not kept.get("ts"):
            return
        # kept and re-sent if Slack fails: never lost
        self.services.notifier.say(kept["channel"], text, thread_ts=kept["ts"])

    def redraw(self, server: str) -> None:
        self.services.notifier.refresh(server)

    def recheck_target(self, request: dict[str, Any], asked_by: str) -> dict[str, Any]:
        outcome = self.services.core.check(Scope("target", request["dn"]), "chat", asked_by)
        self.redraw(request["server"])
        return outcome.run

    # -- approvals -------------------------------------------------------------------------
    def approve(self, body: dict[str, Any]) -> None:
        settings, store = self.services.settings, self.services.store
        user_id, user_name = payloads.clicker(body)
        request_id = payloads.request_id(body)
        action = _BUTTON_ACTION.get(payloads.action_id(body))
        result = remediation.approve(
            settings, store, request_id, user_id, user_name, True, action=action
        )
        if result.outcome == remediation.EXPIRED:
            text, body_blocks = blocks.expired_message(request_id)
            self.tell(body, text, body_blocks)
            return
        if not result.ok:
            self.tell(body, result.message)
            return
        request = result.request or {}
        if not result.ready:
            self.tell(body, result.message)
            self.redraw(request["server"])
            return
        outcome = remediation.run_job(
            settings,
            store,
            self.services.core.open_directory,
            request_id,
            remediation.Actor(user_id, user_name),
        )
        self.after_job(request, outcome, who(user_id, user_name))

    def after_job(
        self, request: dict[str, Any], outcome: remediation.JobResult, asked_by: str
    ) -> None:
        """Report a job in the warning's thread, re-read the target and redraw the message."""
        if outcome.outcome in (remediation.ALREADY_RUNNING, remediation.ALREADY_DONE):
            return
        approvers = ", ".join(a.user_name or a.user_id for a in outcome.approvals)
        prefix = "[dry run] " if outcome.dry_run else ""
        text = f"{prefix}{request['name']}: {outcome.message}"
        if outcome.change:
            text += f"\nFlags: {outcome.change}"
        if approvers:
            text += f"\nApproved by {approvers}."
        self.thread(request["server"], blocks.esc(text, 2000))
        self.recheck_target(request, asked_by)

    # -- waivers and rechecks --------------------------------------------------------------
    def open_waiver(self, body: dict[str, Any]) -> None:
        """Before the ack: the trigger expires in 3 s, so one short try (a quick client)."""
        request = rs.get_request(self.services.store, payloads.request_id(body))
        if request is None:
            self.tell(body, STALE_BUTTON)
            return
        view = blocks.waiver_modal(request["id"], request["server"], request["name"])
        try:
            self.quick.views_open(trigger_id=body["trigger_id"], view=view)
        except (SlackApiError, SlackClientError, OSError) as exc:
            log.warning("could not open the waiver modal: %s", exc)

    def grant(self, body: dict[str, Any], reason: str, days: int) -> None:
        settings, store = self.services.settings, self.services.store
        user_id, user_name = payloads.clicker(body)
        request = rs.get_request(store, payloads.request_id(body))
        if request is None:
            return
        waiver = waivers.grant_waiver(
            settings, store, request, reason, days, user_id, user_name, is_approver=True
        )
        self.thread(
            request["server"],
            blocks.esc(
                f"Risk accepted on {request['name']} by {user_name or user_id} "
                f"until {waiver['expires_at'][:10]}: {reason}",
                2000,
            ),
        )
        self.recheck_target(request, who(user_id, user_name))

    def recheck(self, body: dict[str, Any]) -> None:
        request = rs.get_request(self.services.store, payloads.request_id(body))
        if request is None:
            self.tell(body, STALE_BUTTON)
            return
        user_id, user_name = payloads.clicker(body)
        run = self.recheck_target(request, who(user_id, user_name))
        if run.get("status") != "succeeded":
            self.tell(body, f"The recheck failed: {run.get('error')}")
            return
        rows = list(audit_store.iter_run_targets(self.services.store, run["id"]))
        if not rows:
            self.tell(body, f"{request['name']} no longer exists in the directory.")
        else:
            row = rows[0]
            self.tell(body, f"Rechecked {row['name']}: {row['verdict']} ({row['reason']}).")


def _waiver_input(view: dict[str, Any]) -> tuple[str, str]:
    values = (view.get("state") or {}).get("values") or {}
    reason = ((values.get("reason") or {}).get("reason") or {}).get("value") or ""
    days = ((values.get("days") or {}).get("days") or {}).get("value") or ""
    return reason, str(days)


def register(app: App, services: Services) -> None:
    approvers = Approvers(services.settings, app.client)
    only_approvers = require_approver(approvers, services.store)
    clicks = Clicks(services, app.client)

    def ack_now(ack: Ack) -> None:
        ack()

    def approve(body: dict[str, Any]) -> None:
        clicks.approve(body)

    for action in (ActionId.APPROVE_FIX, ActionId.REQUIRE_TLS):
        app.action(action.value, middleware=[only_approvers])(ack=ack_now, lazy=[logged(approve)])

    @app.action(ActionId.ACCEPT_RISK.value, middleware=[only_approvers])
    def accept_risk(ack: Ack, body: dict[str, Any]) -> None:
        clicks.open_waiver(body)
        ack()

    def recheck(body: dict[str, Any]) -> None:
        clicks.recheck(body)

    app.action(ActionId.RECHECK.value)(ack=ack_now, lazy=[logged(recheck)])

    def ack_waiver(ack: Ack, view: dict[str, Any]) -> None:
        reason, days = _waiver_input(view)
        try:
            waivers.validate(reason, days)
        except waivers.WaiverRefused as exc:
            field = "days" if "day" in str(exc).lower() else "reason"
            ack(response_action="errors", errors={field: str(exc)[:150]})
            return
        if rs.get_request(services.store, view.get("private_metadata") or "") is None:
            ack(response_action="errors", errors={"reason": STALE_BUTTON[:150]})
            return
        ack()

    def grant(body: dict[str, Any], view: dict[str, Any]) -> None:
        reason, days = _waiver_input(view)
        text, count = waivers.validate(reason, days)
        clicks.grant(body, text, count)

    app.view(ActionId.WAIVER_MODAL.value, middleware=[only_approvers])(
        ack=ack_waiver, lazy=[logged(grant)]
    )
