"""Web API clients: the bot's own, which retries, and a quick one for calls before an ack.

>>> client = make_client(settings)        # doctest: +SKIP
>>> quick = quick_client(client)          # doctest: +SKIP
"""

from __future__ import annotations

from slack_sdk import WebClient
from slack_sdk.http_retry.builtin_handlers import (
    ConnectionErrorRetryHandler,
    RateLimitErrorRetryHandler,
    ServerErrorRetryHandler,
)

from bot.config import Settings

# a call made before a request is acknowledged gets one try this long: Slack waits 3 s in all
QUICK_TIMEOUT = 2


def make_client(settings: Settings) -> WebClient:
    """A Web API client for ``AUTHGUARD_SLACK_API_URL`` that retries 429 (after ``Retry-After``),
    5xx answers and broken connections with slack_sdk's own retry handlers."""
    settings.require("slack_bot_token")
    return WebClient(
        token=settings.slack_bot_token.get() if settings.slack_bot_token else None,
        base_url=settings.slack_api_url,
        timeout=30,
        retry_handlers=[
            ConnectionErrorRetryHandler(max_retry_count=2),
            RateLimitErrorRetryHandler(max_retry_count=5),
            ServerErrorRetryHandler(max_retry_count=2),
        ],
    )


def quick_client(client: WebClient) -> WebClient:
    """``client``'s token and URL, one try of at most :data:`QUICK_TIMEOUT` seconds and no
    retries (waiting out a rate limit cannot beat Slack's 3 s): for the approver check's group
    lookups and for opening a modal, both before the ack."""
    return WebClient(
        token=client.token, base_url=client.base_url, timeout=QUICK_TIMEOUT, retry_handlers=[]
    )
