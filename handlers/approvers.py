"""Who may approve: ``AUTHGUARD_APPROVERS`` user ids, and user groups resolved through Slack.

The check is Bolt listener middleware on every approval action and on waivers: a click from
anyone else changes nothing, gets an ephemeral "you are not an approver for authguard", and is
written to the audit log. A click whose user group lookup Slack did not answer is refused the
same way, with a message saying the check could not be made.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from slack_bolt import BoltContext, BoltResponse
from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError, SlackClientError

from bot.config import Settings
from handlers import payloads
from handlers.clients import quick_client
from storage import Store, audit_log
from storage import remediation as rs

log = logging.getLogger(__name__)

GROUP_CACHE_SECONDS = 120.0
NOT_APPROVER = "You are not an approver for authguard."
CANNOT_CHECK = (
    "authguard could not check with Slack whether you are an approver (its user group lookup "
    "failed), so nothing was changed. Try again in a minute."
)
NO_APPROVERS = (
    "Nobody can approve authguard fixes or waivers yet: no approvers are configured. "
    "An admin sets AUTHGUARD_APPROVERS to Slack user ids (U..., W...) or user group ids (S...)."
)


class Approvers:
    """Decides whether a Slack user may approve, resolving user groups (cached briefly).

    The decision is made before the click is acknowledged, so a group lookup goes through a
    :func:`~handlers.clients.quick_client` (one short try, no waiting out a rate limit); a
    lookup that fails leaves the answer unknown (``None``), which refuses the click with
    :data:`CANNOT_CHECK`.
    """

    def __init__(
        self, settings: Settings, client: WebClient, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.users = {a for a in settings.approvers if a[0] in "UW"}
        self.groups = [a for a in settings.approvers if a[0] == "S"]
        self.client = quick_client(client)
        self.clock = clock
        self._cache: dict[str, tuple[float, frozenset[str]]] = {}
        self._lock = threading.Lock()

    @property
    def configured(self) -> bool:
        return bool(self.users or self.groups)

    def members(self, group: str) -> frozenset[str] | None:
        """The users of a user group, or ``None`` when Slack did not say (not cached)."""
        now = self.clock()
        with self._lock:
            cached = self._cache.get(group)
            if cached and now - cached[0] < GROUP_CACHE_SECONDS:
                return cached[1]
        try:
            users = frozenset(self.client.usergroups_users_list(usergroup=group)["users"])
        except (SlackApiError, SlackClientError, OSError, KeyError) as exc:
            log.warning("cannot read the members of user group %s: %s", group, exc)
            return None
        with self._lock:
            self._cache[group] = (now, users)
        return users

    def allows(self, user_id: str | None) -> bool | None:
        """True: an approver; False: not one; None: a user group could not be read (fail
        closed: the caller refuses)."""
        if not user_id:
            return False
        if user_id in self.users:
            return True
        unknown = False
        for group in self.groups:
            members = self.members(group)
            if members is None:
                unknown = True
            elif user_id in members:
                return True
        return None if unknown else False


def require_approver(approvers: Approvers, store: Store) -> Callable[..., None]:
    """Listener middleware: only approvers pass; others are refused, told so, and logged."""

    def middleware(
        body: dict[str, Any], context: BoltContext, client: WebClient, next: Callable
    ) -> BoltResponse | None:
        user_id, user_name = payloads.clicker(body)
        allowed = approvers.allows(user_id) if approvers.configured else False
        if allowed:
            next()
            return None
        if not approvers.configured:
            message = NO_APPROVERS
        else:
            message = NOT_APPROVER if allowed is False else CANNOT_CHECK
        request_id = payloads.request_id(body)
        request = rs.get_request(store, request_id) if request_id else None
        audit_log.log_denial(
            store,
            user_id=user_id,
            user_name=user_name,
            reason=message,
            request=request,
            request_id=request_id or None,
            action=payloads.action_id(body),
            known_request=bool(request),
        )
        if body.get("type") == "view_submission":
            errors = {"response_action": "errors", "errors": {"reason": message}}
            return BoltResponse(
                status=200,
                body=json.dumps(errors),
                headers={"content-type": "application/json;charset=utf-8"},
            )
        # told on a thread of its own: a slow or rate-limited Slack must not hold the ack
        threading.Thread(
            target=payloads.tell, args=(client, body, message), name="refusal", daemon=True
        ).start()
        return BoltResponse(status=200, body="")  # acknowledged; the listener does not run

    return middleware
