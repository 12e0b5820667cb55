"""Build the Bolt app: one Web API client, and each kind of listener registered from its module.

>>> app = build_app(services, client=make_client(settings))   # doctest: +SKIP
"""

from __future__ import annotations

import logging

from slack_bolt import App
from slack_bolt.logger.messages import warning_client_prioritized_and_token_skipped
from slack_sdk import WebClient

from handlers import actions, commands, events
from handlers.lazy import LazyPool
from handlers.services import Services

log = logging.getLogger(__name__)


class _TokenFromEnvironmentIsExpected(logging.Filter):
    """Bolt warns that SLACK_BOT_TOKEN is unused when a client is given; we give one on purpose
    (for the API URL and the retry handlers), built from that very token."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.getMessage() != warning_client_prioritized_and_token_skipped()


def build_app(services: Services, client: WebClient, socket_mode: bool = False) -> App:
    """The Bolt app with every listener registered. HTTP mode verifies each request's signature
    (Bolt's RequestVerification: forged or stale signatures get 401)."""
    settings = services.settings
    if not socket_mode:
        settings.require("slack_signing_secret")
    secret = settings.slack_signing_secret.get() if settings.slack_signing_secret else ""
    slack_logger = logging.getLogger("authguard.slack")
    slack_logger.addFilter(_TokenFromEnvironmentIsExpected())
    app = App(
        client=client,
        signing_secret=secret,
        request_verification_enabled=not socket_mode,
        token_verification_enabled=True,
        # each listener's ack half runs in the request's own thread and the answer goes out as
        # soon as it returns (no hand-off to a pool and no 10 ms polling for the ack); every
        # listener keeps its ack half quick and leaves the slow work to its lazy half
        process_before_response=True,
        # with process_before_response, Bolt's executor runs only the lazy halves: acks first
        listener_executor=LazyPool(),
        logger=slack_logger,
    )
    for module in (commands, events, actions):
        module.register(app, services)
    return app
