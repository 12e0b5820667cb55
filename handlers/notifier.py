"""Warnings in the channel: one message per Exchange server, updated instead of reposted.

After each audit :meth:`Notifier.sync` compares every server's open findings (``warning`` or
``unknown``) with the message it keeps for that server:

- no message yet: post one (``chat.postMessage``), paced at one per second per channel;
- a message whose findings changed: ``chat.update`` it and reply in its thread saying what changed;
- a message whose findings are all gone: update it to "resolved" and say so in the thread;
- unchanged: nothing at all, so re-auditing an unchanged directory makes no Slack calls.

A post that fails (Slack down, rate limited past the retries) is kept as ``pending`` and tried
again by the next sync or the retry job; nothing is lost and nothing is posted twice. Thread
replies (a job's outcome, what changed) and notices go through :meth:`Notifier.say`, which keeps
a failed one in the database's outbox for the retry job.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from itertools import groupby
from typing import Any

from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError, SlackClientError

from bot.audit import Scope
from bot.rules import OPEN_VERDICTS, WAIVED, describe
from handlers import blocks
from storage import Store, locks
from storage import audits as audit_store
from storage import chat as chat_store

log = logging.getLogger(__name__)

SHOWN = {*OPEN_VERDICTS, WAIVED}  # a server's warning stays up while any target is one of these
NOTIFY_LOCK = "notify"
# (server, open rows, revision) -> (buttons by target key, notes by target key)
Decorate = Callable[[str, Sequence[dict[str, Any]], str], tuple[dict, dict]]


@dataclass
class SyncStats:
    posted: int = 0
    updated: int = 0
    resolved: int = 0
    failed: int = 0
    unchanged: int = 0
    errors: list[str] = field(default_factory=list)


class Pacer:
    """Waits so that calls to one channel are at least ``interval`` seconds apart."""

    def __init__(self, interval: float = 1.0, sleep: Callable[[float], None] = time.sleep) -> None:
        self.interval = interval
        self.sleep = sleep
        self._last: dict[str, float] = {}
        self._lock = threading.Lock()

    def wait(self, channel: str) -> None:
        with self._lock:
            now = time.monotonic()
            due = self._last.get(channel, 0.0) + self.interval
            if due > now:
                self.sleep(due - now)
            self._last[channel] = max(now, due)


def fingerprint(rows: Iterable[dict[str, Any]]) -> str:
    """What a warning shows, hashed: it changes when a finding appears, goes or changes."""
    state = sorted((r["target_key"], r["verdict"], r["flags"], r["reason"]) for r in rows)
    return hashlib.sha256(json.dumps(state, default=str).encode()).hexdigest()[:32]


def _detail(rows: Iterable[dict[str, Any]]) -> str:
    return json.dumps(
        {r["target_key"]: [r["name"], r["kind"], r["verdict"], r["flags"]] for r in rows}
    )


def describe_changes(old_detail: str | None, rows: Sequence[dict[str, Any]]) -> list[str]:
    """Lines for the thread reply: which findings are new, changed or gone since the last post."""
    old: dict[str, list] = json.loads(old_detail) if old_detail else {}
    lines = []
    for row in rows:
        before = old.get(row["target_key"])
        name = blocks.esc(row["name"], 120)
        if before is None:
            lines.append(
                f"New: *{name}* is {row['verdict']} ({describe(row['kind'], row['flags'])})"
            )
        elif before[2] != row["verdict"] or before[3] != row["flags"]:
            lines.append(
                f"*{name}*: {before[2]}, flags {describe(row['kind'], before[3])} → "
                f"{row['verdict']}, flags {describe(row['kind'], row['flags'])}"
            )
    current = {r["target_key"] for r in rows}
    for key, (name, _kind, _verdict, _flags) in old.items():
        if key not in current:
            lines.append(
                f"Resolved: *{blocks.esc(name, 120)}* no longer has Basic authentication open"
            )
    return lines or ["The details of this warning were refreshed."]


class Notifier:
    """Keeps the channel's warning messages in step with the latest audit."""

    def __init__(
        self,
        client: WebClient,
        store: Store,
        channel: str,
        pacer: Pacer | None = None,
        decorate: Decorate | None = None,
        owner: str | None = None,
    ) -> None:
        self.client = client
        self.store = store
        self.channel = channel
        self.pacer = pacer or Pacer()
        self.decorate = decorate
        self.owner = owner or locks.process_owner()
        self._lock = threading.Lock()

    # -- hooks -----------------------------------------------------------------------------
    def on_audit(self, run: dict[str, Any], scope: Scope) -> None:
        """Listener for :meth:`bot.service.Authguard.on_audit`."""
        if scope.kind == "target":
            return  # a one-target recheck comes from a click, whose handler redraws the message
        if run.get("status") == "succeeded":
            self.sync(only_server=scope.value if scope.kind == "server" else None)
        elif run.get("trigger") == "schedule" and scope.kind == "full":
            self.post_failure(run)

    def post_failure(self, run: dict[str, Any]) -> None:
        """Say loudly in the channel that a scheduled audit failed."""
        text, body = blocks.audit_result_message(run)
        self.say(self.channel, text, blocks=body)

    def say(
        self,
        channel: str,
        text: str,
        thread_ts: str | None = None,
        blocks: list[dict[str, Any]] | None = None,
    ) -> Any:
        """Post a message (a thread reply, a notice) now and return Slack's answer; if Slack
        fails, keep it for the retry job and return ``None``."""
        kwargs: dict[str, Any] = {"channel": channel, "text": text}
        if thread_ts:
            kwargs["thread_ts"] = thread_ts
        if blocks is not None:
            kwargs["blocks"] = blocks
        response = self._call("chat_postMessage", **kwargs)
        if response is None:
            chat_store.queue_post(self.store, channel, text, thread_ts, blocks, self.last_error)
        return response

    def _flush(self) -> None:
        """Send the posts kept while Slack failed, oldest first (under the notify lock)."""
        for post in chat_store.queued_posts(self.store):
            kwargs: dict[str, Any] = {"channel": post["channel"], "text": post["text"]}
            if post["thread_ts"]:
                kwargs["thread_ts"] = post["thread_ts"]
            if post["blocks"] is not None:
                kwargs["blocks"] = post["blocks"]
            if self._call("chat_postMessage", **kwargs) is not None:
                chat_store.post_sent(self.store, post["id"])
            elif not chat_store.post_failed(self.store, post["id"], self.last_error):
                log.error("gave up a Slack post to %s after repeated failures", post["channel"])

    # -- the sync --------------------------------------------------------------------------
    def sync(self, only_server: str | None = None) -> SyncStats:
        """Post, update or resolve warning messages so they match the stored state."""
        with self._lock:
            deadline = time.monotonic() + 60
            while not locks.acquire(self.store, NOTIFY_LOCK, self.owner, ttl=900):
                if time.monotonic() > deadline:
                    log.warning("another process keeps the warning messages busy; sync skipped")
                    return SyncStats(errors=["busy"])
                time.sleep(0.5)
            try:
                self._flush()
                return self._sync(only_server)
            finally:
                locks.release(self.store, NOTIFY_LOCK, self.owner)

    def _sync(self, only_server: str | None) -> SyncStats:
        stats = SyncStats()
        rows = audit_store.current_targets(self.store, only_server)
        if only_server is not None:
            kept = chat_store.get_warning(self.store, only_server)
            existing = (
                {kept["server"].lower(): kept} if kept and kept["state"] != "resolved" else {}
            )
        else:
            existing = chat_store.all_warnings(self.store)
        seen: set[str] = set()
        for server, group in groupby(rows, key=lambda r: r["server"]):
            kept = existing.get(server.lower())
            tracked = set(json.loads(kept["detail"])) if kept and kept.get("detail") else set()
            shown = [r for r in group if r["verdict"] in SHOWN or r["target_key"] in tracked]
            if not any(r["verdict"] in SHOWN for r in shown):
                if kept and kept["state"] == chat_store.OPEN:
                    self._resolve(kept, shown, stats)
                    seen.add(server.lower())  # done: not "gone from the directory" below
                continue
            seen.add(server.lower())
            self._one(server, shown, kept, stats)
        for key, kept in existing.items():
            if key in seen:
                continue
            if kept["state"] == chat_store.OPEN and only_server is None:
                self._resolve(kept, [], stats)  # the server is gone from the directory
            elif kept["state"] == chat_store.PENDING:
                chat_store.save_warning(self.store, kept["server"], state=chat_store.RESOLVED)
        return stats

    def retry_pending(self) -> SyncStats | None:
        """The retry job: sync again if an earlier post or update failed."""
        kept = chat_store.all_warnings(self.store)
        if chat_store.queued_posts(self.store, limit=1) or any(
            w["state"] == chat_store.PENDING or w.get("last_error") for w in kept.values()
        ):
            return self.sync()
        return None

    def refresh(self, server: str) -> None:
        """Redraw a server's warning now (after an approval or a job), whatever its fingerprint."""
        kept = chat_store.get_warning(self.store, server)
        if kept and kept["state"] == chat_store.OPEN:
            chat_store.save_warning(self.store, kept["server"], fingerprint=None)
        self.sync(only_server=server)

    def _render(self, server: str, rows: Sequence[dict[str, Any]], resolved: bool = False):
        revision = str(int(time.time() * 1000))
        buttons, notes = ({}, {})
        if self.decorate is not None:
            buttons, notes = self.decorate(server, rows, revision)
        return blocks.warning_message(
            server, rows, resolved=resolved, buttons=buttons, notes=notes, revision=revision
        )

    def _one(
        self, server: str, rows: list[dict[str, Any]], kept: dict | None, stats: SyncStats
    ) -> None:
        mark = fingerprint(rows)
        if kept and kept["state"] == chat_store.OPEN and kept["fingerprint"] == mark:
            stats.unchanged += 1
            return
        text, body = self._render(server, rows)
        if kept and kept["state"] == chat_store.OPEN and kept.get("ts"):
            ok = self._call(
                "chat_update", channel=kept["channel"], ts=kept["ts"], text=text, blocks=body
            )
            if ok is None:
                chat_store.save_warning(self.store, server, last_error=self.last_error)
                stats.failed += 1
                return
            if kept["fingerprint"] is not None:
                note = blocks.thread_note(describe_changes(kept.get("detail"), rows))
                self.say(kept["channel"], note, thread_ts=kept["ts"])
            chat_store.save_warning(
                self.store, server, fingerprint=mark, detail=_detail(rows), last_error=None
            )
            stats.updated += 1
            return
        response = self._call("chat_postMessage", channel=self.channel, text=text, blocks=body)
        if response is None:
            attempts = (kept or {}).get("attempts") or 0
            chat_store.save_warning(
                self.store,
                server,
                state=chat_store.PENDING,
                channel=self.channel,
                ts=None,
                fingerprint=None,
                attempts=attempts + 1,
                last_error=self.last_error,
            )
            stats.failed += 1
            stats.errors.append(f"{server}: {self.last_error}")
            return
        chat_store.save_warning(
            self.store,
            server,
            state=chat_store.OPEN,
            channel=response["channel"],
            ts=response["ts"],
            fingerprint=mark,
            detail=_detail(rows),
            attempts=0,
            last_error=None,
        )
        stats.posted += 1

    def _resolve(self, kept: dict[str, Any], rows: list[dict[str, Any]], stats: SyncStats) -> None:
        server = kept["server"]
        text, body = self._render(server, rows, resolved=True)
        updated = self._call(
            "chat_update", channel=kept["channel"], ts=kept["ts"], text=text, blocks=body
        )
        if updated is None:
            chat_store.save_warning(self.store, server, last_error=self.last_error)
            stats.failed += 1
            return
        self.say(
            kept["channel"],
            ":white_check_mark: Resolved: the latest check found no Basic authentication "
            "open on this server.",
            thread_ts=kept["ts"],
        )
        chat_store.save_warning(
            self.store, server, state=chat_store.RESOLVED, fingerprint=None, last_error=None
        )
        stats.resolved += 1

    last_error: str | None = None

    def _call(self, method: str, **kwargs: Any) -> Any:
        """Call the Web API (paced; the client retries 429 and 5xx); ``None`` on failure."""
        self.pacer.wait(kwargs.get("channel", ""))
        try:
            return getattr(self.client, method)(**kwargs)
        except SlackApiError as exc:
            self.last_error = str(exc.response.get("error") or exc.response.status_code)
        except (SlackClientError, OSError) as exc:
            self.last_error = exc.__class__.__name__
        log.warning("Slack %s failed: %s", method, self.last_error)
        return None
